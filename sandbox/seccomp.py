"""Seccomp: compile the spec's filter to classic BPF in prepare(), load it in apply().

The records a plan carries (Prepared, Restrictions) and the loading (apply; and
load_program for the extra filters) are sandbox.seccomp_filter's, the first three
re-exported here: the shim's seccomp step imports only that module, never this one's
compiler, profiles and interpreter.

prepare() resolves profiles and @groups, picks the rules that apply to the target's
capabilities, and has libseccomp (through pyseccomp, imported only there: its import
runs ldconfig) build and export the raw program.  apply() is a single
seccomp(SECCOMP_SET_MODE_FILTER) on those bytes, so the process that loads the filter
never needs libseccomp, and the program can be exported for bwrap --seccomp FD.

Rule semantics, per syscall, in the order rules are given:
  * a rule without `args` sets the syscall's action and replaces every earlier rule for
    that syscall;
  * a rule with `args` (all must hold) applies where it matches, on top of that action;
  * a syscall no rule names gets `default_action`.
A spec's own rules and its seccomp profile's are two layers (see _merge_layers): for a
syscall both name, the spec's rules apply after the profile's as above, but a call never
gets a weaker action than the profile alone gives it (deny wins: kill_process >
kill_thread > trap > errno > log > allow), so naming `clone` cannot drop the profile's
CLONE_NEWUSER rule.  Only a spec rule with `replace_profile_rules` (or the seccomp
section's) replaces the profile's rules for the syscalls it names; Prepared.replaced
lists what it replaced.
libseccomp itself drops conditional rules when an unconditional rule exists for the same
syscall, so "allow ioctl, except TIOCSTI" is compiled here into conditional rules that
cover every *other* value (see _complement).

Architecture safety: only the ABIs in `architectures` pass ("native" by default).  A
syscall made through another ABI -- i386 `int 0x80` on x86_64, or an x32 number (bit
0x40000000) -- kills the process: libseccomp checks seccomp_data.arch, and for x86_64
rejects nr >= 0x40000000 unless x32 was named.
"""

from __future__ import annotations

import os

from . import _libc
from ._record import frozen
from .errors import SpecError
from .fds import read_all
from .seccomp_filter import Prepared, Restrictions, apply

__all__ = ["ARCHES", "Prepared", "prepare", "apply", "ADDRESS_FAMILIES", "Restrictions",
           "prepare_restrictions", "INT_ARGS", "kernel_width", "highest_known",
           "profile_names", "load_profile",
           "load_groups", "group_names", "expand", "action_value", "action_name",
           "evaluate", "resolve_arch", "native_arch", "BPF_MAXINSNS", "check_execve",
           "check_getpid"]

BPF_MAXINSNS = 4096          # the kernel refuses longer classic-BPF programs

# AUDIT_ARCH_* (<linux/audit.h>), which are also libseccomp's SCMP_ARCH_* values.
_LE, _64 = 0x40000000, 0x80000000
ARCHES = {
    "x86_64": 62 | _64 | _LE, "x86": 3 | _LE, "x32": 62 | _LE,
    "aarch64": 183 | _64 | _LE, "arm": 40 | _LE, "riscv64": 243 | _64 | _LE,
    "ppc64le": 21 | _64 | _LE, "ppc64": 21 | _64, "s390x": 22 | _64, "s390": 22,
}
_ARCH_ALIASES = {"i386": "x86", "i686": "x86", "x86-64": "x86_64", "amd64": "x86_64",
                 "arm64": "aarch64", "armv7l": "arm"}

# seccomp return values (<linux/seccomp.h>)
_RET = {"kill_process": 0x80000000, "kill_thread": 0x00000000, "trap": 0x00030000,
        "errno": 0x00050000, "log": 0x7FFC0000, "allow": 0x7FFF0000}
# libseccomp's scmp_compare: our op names -> SCMP_CMP_*
_OPS = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}
_ALL64 = 2**64 - 1


# --------------------------------------------------------------------------- names

def resolve_arch(name: str, path: str = "seccomp.architectures") -> str:
    """'native', 'x86_64', 'SCMP_ARCH_X86_64', 'amd64' ... -> our canonical name."""
    n = name.strip()
    if n.upper().startswith("SCMP_ARCH_"):
        n = n[len("SCMP_ARCH_"):]
    n = n.lower()
    if n == "native":
        return native_arch()
    n = _ARCH_ALIASES.get(n, n)
    if n not in ARCHES:
        raise SpecError(f"unknown architecture {name!r} (expected native or one of: "
                        f"{', '.join(ARCHES)})", path)
    return n


def native_arch() -> str:
    m = os.uname().machine
    return _ARCH_ALIASES.get(m, m)


def action_value(action: str) -> int:
    from .spec import parse_action
    kind, arg = parse_action(action)
    return _RET[kind] | (arg & 0xFFFF if kind == "errno" else 0)


def action_name(value: int) -> str:
    """The inverse of action_value, for messages and tests."""
    data, kind = value & 0xFFFF, value & 0xFFFF0000
    if value & 0x80000000 and kind == 0x80000000:
        return "kill_process"
    for k, v in _RET.items():
        if kind == v and k != "kill_process":
            return f"errno:{data}" if k == "errno" else k
    return hex(value)


# --------------------------------------------------------------------------- data files

def _dirs() -> "list[str]":
    from . import profile
    return profile.search_path()


_GROUPS: dict = {}       # load_groups()'s memo (not functools.cache: the shim imports
                         # this module, and functools costs it an import)


def load_groups() -> "dict[str, tuple[str, ...]]":
    """profiles/syscalls.toml: {'@mount': ('mount', ...), ...}; members may be @groups."""
    if not _GROUPS:
        _GROUPS.update(_load_groups())
    return _GROUPS


def _load_groups() -> "dict[str, tuple[str, ...]]":
    import tomllib
    for d in _dirs():
        p = os.path.join(d, "syscalls.toml")
        if os.path.isfile(p):
            try:
                with open(p, "rb") as f:
                    data = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise SpecError(f"syscall groups {p} are unreadable: {e}") from None
            out = {}
            for name, g in data.items():
                if not isinstance(g, dict) or not isinstance(g.get("syscalls"), list):
                    raise SpecError(f"syscall group {name!r} in {p} has no 'syscalls' list")
                out["@" + name] = tuple(g["syscalls"])
            return out
    raise SpecError("syscall groups (syscalls.toml) not found in "
                    f"{', '.join(_dirs())}")


def group_names() -> "list[str]":
    return sorted(load_groups())


def expand(name: str, path: str = "", _seen: "tuple[str, ...]" = ()) -> "list[str]":
    """A syscall name, or an @group expanded (recursively) to its syscall names."""
    if not name.startswith("@"):
        return [name]
    groups = load_groups()
    if name not in groups:
        raise SpecError(f"unknown syscall group {name!r} (known: {', '.join(sorted(groups))})",
                        path)
    if name in _seen:
        raise SpecError(f"syscall group {name!r} includes itself", path)
    out: "list[str]" = []
    for member in groups[name]:
        for s in expand(member, path, _seen + (name,)):
            if s not in out:
                out.append(s)
    return out


def _profile_path(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise SpecError(f"bad seccomp profile name {name!r}", "seccomp.profile")
    for d in _dirs():
        p = os.path.join(d, "seccomp", name + ".toml")
        if os.path.isfile(p):
            return p
    raise SpecError(f"unknown seccomp profile {name!r} (known: {', '.join(profile_names())})",
                    "seccomp.profile")


def profile_names() -> "list[str]":
    out: "set[str]" = set()
    for d in _dirs():
        sd = os.path.join(d, "seccomp")
        if os.path.isdir(sd):
            out.update(f[:-5] for f in os.listdir(sd) if f.endswith(".toml"))
    return sorted(out)


def load_profile(name: str):
    """A named profile (profiles/seccomp/NAME.toml) as a validated spec.Seccomp."""
    import tomllib

    from .spec import Seccomp
    p = _profile_path(name)
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"seccomp profile {name!r} ({p}) is unreadable: {e}",
                        "seccomp.profile") from None
    data.pop("description", None)
    if "profile" in data:
        raise SpecError(f"seccomp profile {name!r}: a profile cannot name another profile",
                        "seccomp.profile")
    return Seccomp.load(data, f"seccomp profile {name!r}")


def profile_description(name: str) -> str:
    import tomllib
    with open(_profile_path(name), "rb") as f:
        return str(tomllib.load(f).get("description", ""))


# --------------------------------------------------------------------------- compile

@frozen
class _Entry:
    name: str
    action: str
    args: tuple
    where: str
    replace: bool = False          # a spec rule that replaces the profile's for its name


def _rules(sc, kept: int, origin: str, skipped: list) -> "list[_Entry]":
    from . import caps
    out = []
    replace_all = bool(getattr(sc, "replace_profile_rules", False))
    for i, r in enumerate(sc.syscalls):
        where = f"{origin}syscalls[{i}]"
        if r.if_caps and caps.mask(r.if_caps) & ~kept:
            skipped.append(f"{where}: the target does not keep {', '.join(r.if_caps)}")
            continue
        if r.unless_caps and caps.mask(r.unless_caps) & kept:
            skipped.append(f"{where}: the target keeps one of {', '.join(r.unless_caps)}")
            continue
        replace = replace_all or bool(getattr(r, "replace_profile_rules", False))
        for j, n in enumerate(r.names):
            for s in expand(n, f"{where}.names[{j}]"):
                for args in kernel_width(s, r.args, f"{where}.args"):
                    out.append(_Entry(s, r.action, args, f"{where}.names[{j}]", replace))
    return out


# --------------------------------------------------------- 32-bit argument rules
# The filter sees six 64-bit registers, but the kernel reads many arguments as a 32-bit
# int and ignores the upper half: socket((1 << 32) | AF_VSOCK, ...) makes an AF_VSOCK
# socket, yet passes a 64-bit "arg0 != AF_VSOCK".  For the arguments below (their
# SYSCALL_DEFINE types are int, unsigned int, pid_t, uid_t, umode_t), every condition
# is compared on the low 32 bits, as the kernel reads them: eq and masked_eq with the
# mask cut to 32 bits, and ne, lt, le, gt, ge as the masked_eq blocks covering the
# same 32-bit values (so one rule may become several; any of them matching is the
# rule matching).  Other arguments are compared on the whole register.
INT_ARGS = {
    "socket": (0, 1, 2), "socketpair": (0, 1, 2), "setsockopt": (0, 1, 2),
    "getsockopt": (0, 1, 2), "personality": (0,), "ioctl": (0, 1), "fcntl": (0, 1),
    "prctl": (0,), "setns": (0, 1), "kill": (0, 1), "tkill": (0, 1), "tgkill": (0, 1, 2),
    "open": (1, 2), "openat": (0, 2, 3), "creat": (1,), "chmod": (1,), "fchmod": (0, 1),
    "fchmodat": (0, 2), "fchmodat2": (0, 2, 3), "mknod": (1, 2), "mknodat": (0, 2, 3),
    "setuid": (0,), "setgid": (0,), "setreuid": (0, 1), "setregid": (0, 1),
    "setresuid": (0, 1, 2), "setresgid": (0, 1, 2), "setfsuid": (0,), "setfsgid": (0,),
    "bpf": (0,), "keyctl": (0,), "madvise": (2,), "quotactl": (0,), "umount2": (1,),
    "seccomp": (0, 1), "sched_setscheduler": (0, 1), "fsconfig": (0, 1),
    "perf_event_open": (1, 2, 3), "kcmp": (0, 1, 2), "dup2": (0, 1), "dup3": (0, 1, 2),
    "close": (0,), "flock": (0, 1), "mprotect": (), "clone": (), "unshare": (),
    "execveat": (0, 4), "fchownat": (0, 2, 3, 4), "faccessat": (0, 2), "faccessat2": (0, 2, 3),
    "memfd_create": (1,), "pidfd_open": (0, 1), "pidfd_send_signal": (0, 1, 3),
    "pidfd_getfd": (0, 1, 2), "linkat": (0, 2, 4), "renameat2": (0, 2, 4),
    "unlinkat": (0, 2), "mkdirat": (0, 2), "symlinkat": (1,), "readlinkat": (0,),
    "fchown": (0, 1, 2), "chown": (1, 2), "lchown": (1, 2), "dup": (0,),
    "eventfd2": (1,), "signalfd4": (0, 3), "timerfd_create": (0, 1), "inotify_init1": (0,),
    "epoll_create1": (0,), "accept4": (0, 3), "listen": (0, 1), "shutdown": (0, 1),
    "bind": (0, 2), "connect": (0, 2), "sendmsg": (0, 2), "recvmsg": (0, 2),
    "ioprio_set": (0, 1, 2), "sched_setattr": (0, 2), "setpriority": (0, 1, 2),
    "rt_sigqueueinfo": (0, 1), "rt_tgsigqueueinfo": (0, 1, 2), "capset": (),
}
_ALL32 = 0xFFFFFFFF
_MAX_FORMS = 64


def kernel_width(name: str, args: tuple, where: str) -> "list[tuple]":
    """A rule's conditions as the kernel reads the arguments (see INT_ARGS): one or
    more alternative condition tuples, each all-must-hold."""
    ints = INT_ARGS.get(name, ())
    if not any(a.index in ints for a in args):
        return [args]
    from .spec import SeccompArg
    forms: "list[tuple]" = [()]
    for i, a in enumerate(args):
        if a.index not in ints:
            alts = [a]
        else:
            alts = [SeccompArg(a.index, "masked_eq", m, v)
                    for m, v in _blocks32(a, f"{where}[{i}]")]
        forms = [f + (alt,) for f in forms for alt in alts]
        if len(forms) > _MAX_FORMS:
            raise SpecError(f"the conditions on {name!r} make more than {_MAX_FORMS} "
                            "rules once compared on 32 bits (see INT_ARGS); split them or "
                            "use eq/masked_eq", where)
    return forms


def _blocks32(a, where: str) -> "list[tuple[int, int]]":
    """(mask, value) masked_eq blocks over the low 32 bits matching what condition `a`
    matches there."""
    if a.op == "eq":
        return [(_ALL32, a.value & _ALL32)]
    if a.op == "masked_eq":
        if a.value_two & ~a.value:      # never matches, and stays so (dropped later)
            return [(a.value & _ALL32, a.value_two)]
        return [(a.value & _ALL32, a.value_two & _ALL32)]
    if a.value > _ALL32:
        raise SpecError(f"arg{a.index} is a 32-bit value in the kernel: {a.op} "
                        f"{a.value:#x} is out of its range", where)
    if a.op == "ne":
        return _complement({a.value}, _ALL32)
    lo, hi = {"lt": (0, a.value - 1), "le": (0, a.value),
              "gt": (a.value + 1, _ALL32), "ge": (a.value, _ALL32)}[a.op]
    return _range_blocks(lo, hi)


def _range_blocks(lo: int, hi: int) -> "list[tuple[int, int]]":
    """The fewest aligned power-of-two blocks covering [lo, hi] within 32 bits, as
    (mask, value) pairs."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 32
        while size > hi - lo + 1:
            size >>= 1
        out.append((_ALL32 & ~(size - 1), lo))
        lo += size
    return out


# How restrictive an action is, as the kernel ranks the actions of stacked filters.
_RANK = {"kill_process": 0, "kill_thread": 1, "trap": 2, "errno": 3, "log": 5, "allow": 6}


def _stricter(a: str, b: str) -> str:
    """The more restrictive action; a on a tie (the profile's, passed first)."""
    return b if _RANK[b.partition(":")[0]] < _RANK[a.partition(":")[0]] else a


def _looser(action: str, than: str) -> bool:
    """Whether action lets more through than `than` (kill > trap > errno > log > allow)."""
    return _RANK[action.partition(":")[0]] > _RANK[than.partition(":")[0]]


def _describe(e: _Entry) -> str:
    conds = " and ".join(f"arg{a.index} {a.op} {a.value:#x}" +
                         (f" == {a.value_two:#x}" if a.op == "masked_eq" else "")
                         for a in e.args)
    return f"{e.where} ({e.name}: {e.action}{' if ' + conds if conds else ''})"


def _layer(entries: "list[_Entry]", base: str) -> "tuple[str, dict]":
    """The in-order verdict of entries whose conditions are all one eq/masked_eq on one
    (argument, mask): (the action elsewhere, {masked value: action})."""
    points: dict = {}
    for e in entries:
        if not e.args:
            base, points = e.action, {}
        else:
            p = _point(e.args[0])
            points[p] = e.action if p not in points else _stricter(points[p], e.action)
    return base, points


def _merge_layers(prof: "list[_Entry]", own: "list[_Entry]", default: str,
                  prof_default: "str | None" = None):
    """(entries, replaced): the profile's and the spec's rules as one list whose in-order
    verdict (see _plan_syscall) is, for every call, the stricter of what the profile
    alone gives it and what the spec's rules after the profile's give it.  A syscall
    only the profile names keeps its rules; one only the spec names keeps the spec's,
    which must not be looser than what the profile gave it -- its default action,
    prof_default (an allow-list profile denies what it does not name) -- unless the rule
    has `replace`.  A spec rule with `replace` drops the profile's for its syscall
    (listed in `replaced`).  Raises SpecError where the
    two layers' conditions cannot be combined (different arguments or operators)."""
    from .spec import SeccompArg
    mine: "dict[str, list[_Entry]]" = {}
    for e in own:
        mine.setdefault(e.name, []).append(e)
    theirs: "dict[str, list[_Entry]]" = {}
    for e in prof:
        theirs.setdefault(e.name, []).append(e)
    out = [e for e in prof if e.name not in mine]
    replaced = []
    for name, ents in mine.items():
        p = theirs.get(name)
        if not p:
            loose = [e for e in ents if prof_default is not None and
                     _looser(e.action, prof_default)]
            for e in loose:
                if not e.replace:
                    raise SpecError(f"{e.action} for {name!r} is looser than the seccomp "
                                    f"profile's default for it ({prof_default}); give "
                                    "replace_profile_rules: true to loosen the profile",
                                    e.where)
                replaced.append(f"the profile's default ({prof_default}) for {name}: "
                                f"by {e.where}")
            out += ents
            continue
        if any(e.replace for e in ents):
            by = next(e.where for e in ents if e.replace)
            replaced += [f"{_describe(e)}: by {by}" for e in p]
            out += ents
            continue
        # Conditions that never match (masked_eq with bits outside the mask) are dropped
        # here as _plan_syscall drops them.
        live = [e for e in p + ents if not any(
            a.op == "masked_eq" and a.value_two & ~a.value for a in e.args)]
        conds = [e for e in live if e.args]
        shapes = {(e.args[0].index, _mask(e.args[0])) if len(e.args) == 1 else None
                  for e in conds}
        pconds = [e for e in p if e.args]
        if not pconds:
            # The profile gives one action to every call: the spec's rules, each action
            # made at least that strict.
            c, _ = _layer(p, default)
            out += [_Entry(e.name, _stricter(c, e.action), e.args, e.where) for e in p]
            out += [_Entry(e.name, _stricter(c, e.action), e.args, e.where) for e in ents]
            continue
        if len(shapes) != 1 or any(s is None or s[1] is None for s in shapes):
            raise SpecError(f"the rules for {name!r} cannot be combined with the seccomp "
                            "profile's (conditions on different arguments or operators); "
                            "give replace_profile_rules: true to replace the profile's",
                            ents[0].where)
        index, mask = _one_shape(shapes)
        pb, pp = _layer([e for e in live if e in p], default)
        mb, mp = _layer(live, default)
        base = _stricter(pb, mb)
        where = ents[0].where
        if action_value(base) != action_value(default):
            out.append(_Entry(name, base, (), where))
        for v in sorted(set(pp) | set(mp)):
            a = _stricter(pp.get(v, pb), mp.get(v, mb))
            if action_value(a) != action_value(base):
                arg = SeccompArg(index, "eq", v) if mask == _ALL64 else \
                    SeccompArg(index, "masked_eq", mask, v)
                out.append(_Entry(name, a, (arg,), where))
    return out, tuple(replaced)


def _one_shape(shapes: set) -> "tuple[int, int]":
    """The single (argument index, mask) that every condition shares (checked by the
    caller)."""
    (index, mask), = shapes
    return index, mask


def _mask(arg) -> int | None:
    """The bits an eq/masked_eq condition compares (eq: all 64), else None."""
    if arg.op == "eq":
        return _ALL64
    if arg.op == "masked_eq" and arg.value:
        return arg.value
    return None


def _point(arg) -> int:
    return arg.value if arg.op == "eq" else arg.value_two & arg.value


def _complement(points: "set[int]", mask: int) -> "list[tuple[int, int]]":
    """(mask, value) pairs -- masked_eq prefix blocks over the set bits of `mask`, high
    to low -- that together match every value v with v & mask not in `points`.  At most
    len(points) * popcount(mask) blocks."""
    bits = [1 << i for i in range(63, -1, -1) if mask >> i & 1]
    out = []

    def walk(prefix: int, depth: int, pts: "list[int]") -> None:
        if not pts:
            out.append((sum(bits[:depth]), prefix))
            return
        if depth == len(bits):
            return                      # exactly one of the points: excluded
        bit = bits[depth]
        walk(prefix, depth + 1, [p for p in pts if not p & bit])
        walk(prefix | bit, depth + 1, [p for p in pts if p & bit])

    walk(0, 0, sorted(points))
    return out


def _plan_syscall(entries: "list[_Entry]", default: str):
    """One syscall's entries -> [(action, args)] to hand to libseccomp."""
    base: str = default
    base_entry: "_Entry | None" = None
    conds: "list[_Entry]" = []
    for e in entries:
        if not e.args:
            base, base_entry, conds = e.action, e, []   # replaces every earlier rule
        else:
            conds.append(e)
    conds = [e for e in conds if action_value(e.action) != action_value(base)
             and not any(a.op == "masked_eq" and a.value_two & ~a.value for a in e.args)]
    if action_value(base) == action_value(default):
        return [(e.action, e.args, e.where) for e in conds]
    # A base action other than the default comes from an entry without args.
    assert base_entry is not None
    if not conds:
        return [(base, (), base_entry.where)]
    # A base action other than the default, with exceptions: libseccomp would let the
    # unconditional rule swallow the conditional ones, so the base action is given to
    # the complement of the exceptions instead.  Supported when every exception is one
    # eq or masked_eq with the same mask on the same argument -- the shape of "ioctl
    # except TIOCSTI", "clone without CLONE_NEWUSER", "personality only these values".
    shapes = {(e.args[0].index, _mask(e.args[0])) for e in conds if len(e.args) == 1}
    if len(shapes) != 1 or any(len(e.args) != 1 for e in conds) or \
            next(iter(shapes))[1] is None:
        raise SpecError(f"syscall {entries[0].name!r}: exceptions to a rule without args "
                        "must each be one 'eq' or 'masked_eq' condition, with the same mask "
                        "on the same argument", conds[0].where)
    index, mask = _one_shape(shapes)
    from .spec import SeccompArg
    out = [(e.action, e.args, e.where) for e in conds
           if action_value(e.action) != action_value(default)]
    for bmask, value in _complement({_point(e.args[0]) for e in conds}, mask):
        if bmask == 0:                  # cannot happen with points; never "match all"
            continue
        out.append((base, (SeccompArg(index, "masked_eq", bmask, value),), base_entry.where))
    return out


def _kept_caps(caps_prepared) -> int:
    if caps_prepared is not None:
        return caps_prepared.permitted
    return _libc.capget()[1]


def prepare(sc, caps_prepared=None, disk_cache: bool = False) -> Prepared:
    """Compile spec.Seccomp `sc` for a target holding caps_prepared.permitted (None: the
    caller's own permitted set).  No side effects beyond a memfd to export into -- and,
    with disk_cache (wrapperd's CLI only), an entry in its root-only cache
    (sandbox.bpfcache)."""
    kept = _kept_caps(caps_prepared)
    # The same spec again in this process (a library spawning a service repeatedly):
    # keyed on the spec's seccomp field, the caps the target keeps and the profile
    # files' identity, so an edited profile is read again.
    early: "tuple | None"
    try:
        early = (sc, kept, _profile_signature(sc.profile))
        done = _SPEC_MEMO.get(early)
    except TypeError:                   # an unhashable field: no shortcut
        early = done = None
    if done is not None:
        return done
    done = _prepare(sc, kept, disk_cache)
    if early is not None:
        if len(_SPEC_MEMO) >= 64:
            _SPEC_MEMO.clear()
        _SPEC_MEMO[early] = done
    return done


_SPEC_MEMO: dict = {}


def _profile_signature(name) -> tuple:
    if name is None:
        return ()
    out: "list[tuple[int, int, int, int] | None]" = []
    for d in _dirs():
        try:
            st = os.stat(os.path.join(d, "seccomp", f"{name}.toml"))
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        except (OSError, ValueError):
            out.append(None)
    return tuple(out)


def _prepare(sc, kept: int, disk_cache: bool) -> Prepared:
    skipped: "list[str]" = []
    entries: "list[_Entry]" = []
    default = sc.default_action
    prof_default = None
    loosened: "list[str]" = []
    if sc.profile is not None:
        prof = load_profile(sc.profile)
        entries = _rules(prof, kept, f"seccomp profile {sc.profile!r}: ", skipped)
        prof_default = prof.default_action
        if default is not None and _looser(default, prof_default):
            # For an allow-list profile its default IS the deny rule.
            if not getattr(sc, "replace_profile_rules", False):
                raise SpecError(f"{default} is looser than the default of seccomp profile "
                                f"{sc.profile!r} ({prof_default}); give "
                                "replace_profile_rules: true to loosen the profile",
                                "seccomp.default_action")
            loosened.append(f"seccomp profile {sc.profile!r}'s default_action "
                            f"({prof_default}): by seccomp.default_action ({default})")
        default = default or prof_default
    unknown = _unknown_action(sc, prof if sc.profile is not None else None, default)
    own = _rules(sc, kept, "seccomp.", skipped)
    entries, replaced = _merge_layers(entries, own, default, prof_default)
    replaced = tuple(loosened) + tuple(replaced)
    arches = []
    for i, a in enumerate(sc.architectures):
        c = resolve_arch(a, f"seccomp.architectures[{i}]")
        if c not in arches:
            arches.append(c)
    if native_arch() not in arches:
        raise SpecError(f"must include the native ABI ({native_arch()}): the target's every "
                        "syscall would kill it", "seccomp.architectures")
    arches.sort(key=lambda a: a != native_arch())         # native first

    # Compiled before with the same rules?  In this process (a library spawning the
    # same spec again), or in the root-only on-disk cache (a repeated wrapperd start).
    from . import bpfcache
    k = bpfcache.key(default, arches, entries, unknown)
    hit = _MEMO.get(k)
    dirfd = None
    where = bpfcache.cache_dir() if disk_cache else None
    if where:
        dirfd = bpfcache.open_dir(where)
    try:
        if hit is None and dirfd is not None:
            hit = bpfcache.load(dirfd, k, BPF_MAXINSNS)
        if hit is None:
            hit = _compile(default, arches, entries, unknown)
            if dirfd is not None:
                bpfcache.store(dirfd, k, *hit)
    finally:
        if dirfd is not None:
            os.close(dirfd)
    if len(_MEMO) >= 64:
        _MEMO.clear()
    _MEMO[k] = hit
    program, count = hit
    return Prepared(program=program, default_action=default, architectures=tuple(arches),
                    syscalls=count, skipped=tuple(skipped), replaced=replaced,
                    unknown_syscalls_action=unknown)


def _unknown_action(sc, prof, default: str) -> "str | None":
    """The action for syscalls numbered above every one libseccomp can name on their
    ABI, or None where they get the default action: the spec's choice, else the
    profile's, else errno:ENOSYS (as runc and systemd: a program whose libc tries a
    syscall newer than the filter falls back on ENOSYS, but not on EPERM).  Only where
    the default denies: under an allowing default a newer syscall is allowed anyway."""
    mine = sc.unknown_syscalls_action
    theirs = prof.unknown_syscalls_action if prof is not None else None
    if mine is not None and theirs is not None and not sc.replace_profile_rules and \
            _looser(default if mine == "default_action" else mine,
                    default if theirs == "default_action" else theirs):
        raise SpecError(f"{mine} is looser than the seccomp profile's "
                        f"unknown_syscalls_action ({theirs}); give replace_profile_rules: "
                        "true to loosen the profile", "seccomp.unknown_syscalls_action")
    action = mine or theirs or "errno:ENOSYS"
    if action == "default_action" or _RANK[default.partition(":")[0]] >= _RANK["log"] or \
            action_value(action) == action_value(default):
        return None
    return action


_MEMO: dict = {}        # cache key -> (program, syscalls): see sandbox.bpfcache

# execve's number on each native ABI the shim may run on (<asm/unistd.h>).
_NR_EXECVE = {"x86_64": 59, "aarch64": 221, "riscv64": 221, "x86": 11, "arm": 11,
              "ppc64le": 11, "ppc64": 11, "s390x": 11, "s390": 11}
_FATAL = ("kill_process", "kill_thread", "trap")


# Programs check_execve() passed: a repeated prepare() of one spec (spawn() in a loop)
# does not interpret the same program again.  Bounded: cleared when it grows large.
_EXECVE_OK: set = set()


def check_execve(program: bytes) -> None:
    """Refuse a filter that kills (or traps) the shim's own execve: wrapperd.shim's
    prepare() calls this (prepare() here also compiles filters nobody execs under).
    The filter is loaded just before execve, and a shim killed by SIGSYS writes no
    status record: its caller would read the EOF as "exec'd" although the target never
    ran.  An errno action is fine (execve fails, the shim reports it: exit 126).  The
    arguments are pointers, unknown here: a few representative values are tried."""
    if program in _EXECVE_OK:
        return
    arch = native_arch()
    nr = _NR_EXECVE.get(arch)
    if nr is None:
        return
    for a in (0, 0x7FFF_FFFF_F000, 0x5555_5555_0000, _ALL64):
        got = action_name(evaluate(program, nr, ARCHES[arch], (a, a, a)))
        if got in _FATAL:
            raise SpecError(f"the filter's action for execve is {got}, but wrapperd "
                            "itself calls execve, under the filter, to start the target "
                            "(an errno action is fine)", "seccomp")
    if len(_EXECVE_OK) >= 64:
        _EXECVE_OK.clear()
    _EXECVE_OK.add(program)


_NR_GETPID = {"x86_64": 39, "aarch64": 172, "riscv64": 172, "x86": 20, "arm": 20,
              "ppc64le": 20, "ppc64": 20, "s390x": 20, "s390": 20}


def check_getpid(program: bytes) -> None:
    """Refuse a filter that does not allow getpid: with socket activation (`listen`)
    the shim's exec step reads its own pid for LISTEN_PID under the filter -- and
    sd_listen_fds(3) in the target compares it with getpid() too."""
    arch = native_arch()
    nr = _NR_GETPID.get(arch)
    if nr is None:
        return
    got = action_name(evaluate(program, nr, ARCHES[arch]))
    if got not in ("allow", "log"):
        raise SpecError(f"the filter's action for getpid is {got}, but with `listen` "
                        "wrapperd reads its pid for LISTEN_PID under the filter (and "
                        "sd_listen_fds() in the target calls getpid)", "seccomp")


def _compile(default: str, arches, entries, unknown: "str | None" = None
             ) -> "tuple[bytes, int]":
    """Have libseccomp build the filter; (raw BPF program, syscalls with rules).
    unknown: the action for syscalls above the highest libseccomp knows (_unknown)."""
    import pyseccomp  # heavy: runs ldconfig; only when a filter is asked
    native = pyseccomp.system_arch()
    by_name: "dict[str, list[_Entry]]" = {}
    for e in entries:
        # (pyseccomp encodes the name strictly: a lone surrogate would raise there)
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, e.name) \
            if e.name.isascii() else -1
        if nr == -1:                      # __NR_SCMP_ERROR: no ABI knows this name
            raise SpecError(f"unknown syscall {e.name!r}", e.where)
        by_name.setdefault(e.name, []).append(e)

    try:
        flt = pyseccomp.SyscallFilter(action_value(default))
        flt.set_attr(pyseccomp.Attr.ACT_BADARCH, _RET["kill_process"])
        try:
            flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)    # binary tree: O(log n) lookup
        except OSError:
            pass                          # older libseccomp: a linear list still works
        for a in arches:
            if ARCHES[a] != native:
                flt.add_arch(ARCHES[a])
    except OSError as e:
        raise SpecError(f"libseccomp refused the filter setup: {e.strerror}",
                        "seccomp.architectures") from None

    count = 0
    for name, ents in by_name.items():
        plan = _plan_syscall(ents, default)
        count += bool(plan)
        for action, args, where in plan:
            cmp = [pyseccomp.Arg(a.index, _OPS[a.op],
                                 a.value, a.value_two if a.op == "masked_eq" else 0)
                   for a in args]
            try:
                flt.add_rule(action_value(action), name, *cmp)
            except OSError as e:
                raise SpecError(f"libseccomp refused the rule for {name!r} ({action}): "
                                f"{e.strerror}", where) from None
    program = _export(flt)
    if unknown is not None:
        program = _unknown(pyseccomp, arches, action_value(unknown)) + program
    if len(program) // 8 > BPF_MAXINSNS:
        raise SpecError(f"the filter compiles to {len(program) // 8} BPF instructions; the "
                        f"kernel accepts at most {BPF_MAXINSNS}", "seccomp")
    return program, count


# A syscall above the highest number libseccomp knows on its ABI: a program's libc
# trying a syscall newer than the filter (statmount, mseal, ...) should see ENOSYS, what
# a kernel without it says, and fall back -- not the default action's EPERM, which it
# takes for a real refusal.  libseccomp cannot name such a number, so (as runc's
# patchbpf) a few instructions go before its program:
#     ld [arch]; for each ABI: jeq ABI? -> ld [nr]; nr > highest && nr < limit: ret unknown
# and everything else goes on to libseccomp's program, which starts by loading the arch
# again.  On x86_64 the numbers from 0x40000000 up are x32's (same arch value): those
# are left to libseccomp (killed, unless x32 is allowed -- x32 gets no such range).
# (and on arm its private calls -- cacheflush, set_tls, ... from 0xf0000 -- which a
# filter may name, are left to libseccomp too)
_LIMIT = {"x86_64": 0x40000000, "arm": 0xF0000}


def highest_known(pyseccomp, arch: str) -> int:
    """The highest syscall number libseccomp can name on this ABI."""
    for nr in range(1023, -1, -1):
        try:
            pyseccomp.resolve_syscall(ARCHES[arch], nr)
        except ValueError:              # no name for this number
            continue
        return nr
    return -1


def _unknown(pyseccomp, arches, ret: int) -> bytes:
    import struct
    # Each ABI's block, its jumps as labels: "next" (the next ABI's test), "pass"
    # (libseccomp's program), "" (the next instruction).
    blocks: "list[list[tuple[int, str, str, int]]]" = []     # (code, jt, jf, k)
    for a in arches:
        top = highest_known(pyseccomp, a) if a != "x32" else -1
        if top < 0:
            continue
        b = [(0x15, "", "next", ARCHES[a]),                 # jeq #ABI
             (0x20, "", "", 0),                             # ld [nr]
             (0x25, "", "pass", top)]                       # jgt #highest
        limit = _LIMIT.get(a)
        if limit is not None:
            b.append((0x35, "pass", "", limit))             # jge #limit
        b.append((0x06, "", "", ret))                       # ret #unknown
        blocks.append(b)
    if not blocks:
        return b""
    out = [struct.pack("<HBBI", 0x20, 0, 0, 4)]             # ld [arch]
    end = 1 + sum(len(b) for b in blocks)
    at = 1
    for b in blocks:
        nxt = at + len(b)
        for code, jt, jf, k in b:
            to = {"": at + 1, "next": nxt, "pass": end}
            out.append(struct.pack("<HBBI", code, to[jt] - at - 1, to[jf] - at - 1, k))
            at += 1
    return b"".join(out)


def _export(flt) -> bytes:
    fd = os.memfd_create("wrapperd-seccomp", os.MFD_CLOEXEC)
    try:
        class _Fd:
            def fileno(self):
                return fd
        flt.export_bpf(_Fd())
        os.lseek(fd, 0, os.SEEK_SET)
        return read_all(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------ restrict_suid_sgid
# A dynamic user's id is handed to another sandbox once released; a setuid or setgid
# file it left behind would then run as that other sandbox (no_new_privs only protects
# the sandbox itself, not whoever runs the file later).  As systemd's DynamicUser=
# implies RestrictSUIDSGID=, a dynamic user gets a filter of its own, loaded besides the
# spec's (the kernel applies the stricter result of every filter), that refuses to make
# such a file: chmod and friends with S_ISUID or S_ISGID, and creating a file with
# either bit.  openat2 (its mode is inside a struct no filter can read) is ENOSYS, what
# libc falls back from; io_uring (whose opens no filter sees) is EPERM.  A mode the
# kernel sets itself reaches no filter either -- an overlay's copy-up of a setuid file
# a FUSE or tmpfs lower layer claims -- so a new user namespace (where the target could
# mount those) and the mount API are refused too: clone/unshare with CLONE_NEWUSER
# EPERM, clone3 (flags inside a struct) ENOSYS, mount and its new API EPERM.  The
# shim makes the namespaces and mounts the spec asks for before this filter is loaded.
# And the per-uid kernel keyring, which outlives every process of the id, is refused
# (the next holder of the id would find it).

_S_ISUID, _S_ISGID = 0o4000, 0o2000
_CLONE_NEWUSER = 0x10000000
# (syscall, index of the mode argument, index of the flags argument or None)
_SUID_CALLS = (("chmod", 1, None), ("fchmod", 1, None), ("fchmodat", 2, None),
               ("fchmodat2", 2, None), ("creat", 1, None), ("mknod", 1, None),
               ("mknodat", 2, None), ("open", 2, 1), ("openat", 3, 2))


def suid_sgid_entries() -> "list[_Entry]":
    from .spec import SeccompArg
    where = "user.dynamic (restrict_suid_sgid)"
    out = []
    for name, mode_i, flags_i in _SUID_CALLS:
        for bit in (_S_ISUID, _S_ISGID):
            mode = SeccompArg(mode_i, "masked_eq", bit, bit)
            if flags_i is None:
                out.append(_Entry(name, "errno:EPERM", (mode,), where))
                continue
            # A mode only counts when the call creates: O_CREAT, or O_TMPFILE.
            for creates in (os.O_CREAT, getattr(os, "O_TMPFILE", 0o20200000)):
                flags = SeccompArg(flags_i, "masked_eq", creates, creates)
                out.append(_Entry(name, "errno:EPERM", (flags, mode), where))
    out.append(_Entry("openat2", "errno:ENOSYS", (), where))
    out += [_Entry(n, "errno:EPERM", (), where)
            for n in ("io_uring_setup", "io_uring_enter", "io_uring_register")]
    newuser = SeccompArg(0, "masked_eq", _CLONE_NEWUSER, _CLONE_NEWUSER)
    out += [_Entry(n, "errno:EPERM", (newuser,), where) for n in ("clone", "unshare")]
    out.append(_Entry("clone3", "errno:ENOSYS", (), where))
    out += [_Entry(n, "errno:EPERM", (), where)
            for n in ("mount", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
                      "open_tree", "mount_setattr", "add_key", "request_key", "keyctl")]
    return out


def restrict_suid_sgid(architectures=("native",)) -> bytes:
    """The program (see above), for the ABIs the spec's own filter lets through (any
    other ABI is killed, as by every filter here)."""
    arches = tuple(resolve_arch(a) for a in architectures)
    key = ("restrict_suid_sgid", arches)
    hit = _MEMO.get(key)
    if hit is None:
        hit = _compile("allow", arches, suid_sgid_entries())
        _MEMO[key] = hit
    return hit[0]


# ------------------------------------------------------------------ restrictions
# What the spec restricts besides its own seccomp section, as one more filter loaded
# beside the spec's (the kernel applies the stricter result of every filter), for the
# ABIs the spec's filter lets through, so it needs no `seccomp` section:
#
# address_families, systemd's RestrictAddressFamilies=: socket(2) and socketpair(2)
# with a family not listed fail with EAFNOSUPPORT (what a kernel without that family
# says).  The family is an int to the kernel, so it is compared on 32 bits (see
# INT_ARGS): (1 << 32) | AF_VSOCK is AF_VSOCK.  Two ways around an argument rule are
# closed too: i386's socketcall, whose arguments are behind a pointer no filter can
# read, is ENOSYS (what libc falls back from; where the i386 ABI is not allowed it is
# killed anyway), and io_uring, whose IORING_OP_SOCKET makes sockets no filter sees,
# is EPERM.
#
# denied: the syscalls sandbox.filesystem's settings take away (private_devices:
# @raw-io; protect_kernel_modules: @module; protect_kernel_logs: syslog), EPERM.

# <linux/socket.h>
ADDRESS_FAMILIES = {
    "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_AX25": 3, "AF_IPX": 4,
    "AF_APPLETALK": 5, "AF_NETROM": 6, "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9,
    "AF_INET6": 10, "AF_ROSE": 11, "AF_DECnet": 12, "AF_NETBEUI": 13, "AF_SECURITY": 14,
    "AF_KEY": 15, "AF_NETLINK": 16, "AF_PACKET": 17, "AF_ASH": 18, "AF_ECONET": 19,
    "AF_ATMSVC": 20, "AF_RDS": 21, "AF_SNA": 22, "AF_IRDA": 23, "AF_PPPOX": 24,
    "AF_WANPIPE": 25, "AF_LLC": 26, "AF_IB": 27, "AF_MPLS": 28, "AF_CAN": 29,
    "AF_TIPC": 30, "AF_BLUETOOTH": 31, "AF_IUCV": 32, "AF_RXRPC": 33, "AF_ISDN": 34,
    "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37, "AF_ALG": 38, "AF_NFC": 39,
    "AF_VSOCK": 40, "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_XDP": 44,
    "AF_MCTP": 45,
}


def restriction_entries(families, denied=()) -> "list[_Entry]":
    from .spec import SeccompArg
    out = []
    if families is not None:
        where = "address_families"
        numbers = sorted({ADDRESS_FAMILIES[f] for f in families})
        for name in ("socket", "socketpair"):
            out.append(_Entry(name, "errno:EAFNOSUPPORT", (), where))
            out += [_Entry(name, "allow", (SeccompArg(0, "masked_eq", _ALL32, n),), where)
                    for n in numbers]
        out.append(_Entry("socketcall", "errno:ENOSYS", (), where))
        out += [_Entry(n, "errno:EPERM", (), where)
                for n in ("io_uring_setup", "io_uring_enter", "io_uring_register")]
    for name in denied:
        out += [_Entry(s, "errno:EPERM", (), "filesystem") for s in expand(name, "filesystem")]
    return out


def prepare_restrictions(families, denied=(), architectures=("native",)) -> Restrictions:
    """The filter for spec.address_families (None: no restriction) and the syscalls
    `denied` (see above), for the ABIs the spec's own filter lets through (any other
    ABI is killed, as by every filter here)."""
    arches = tuple(resolve_arch(a) for a in architectures)
    fams = None if families is None else tuple(families)
    key = ("restrictions", fams, tuple(denied), arches)
    hit = _MEMO.get(key)
    if hit is None:
        hit = _compile("allow", arches, restriction_entries(fams, denied))
        _MEMO[key] = hit
    return Restrictions(families=fams, denied=tuple(denied), program=hit[0])


# --------------------------------------------------------------------------- inspect

def evaluate(program: bytes, nr: int, arch: "int | str", args=(), ip: int = 0) -> int:
    """Run a seccomp classic-BPF program on one syscall, as the kernel would, and return
    the SECCOMP_RET_* value.  For tests and `explain`: no filter needs to be loaded."""
    import struct  # here: the shim loads filters, never runs them
    if isinstance(arch, str):
        arch = ARCHES[resolve_arch(arch)]
    a6 = list(args) + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, arch, ip, *[x & _ALL64 for x in a6])
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    acc = x = 0
    mem = [0] * 16
    pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if code == 0x20:                      # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x00:                    # ld #k
            acc = k
        elif code == 0x60:                    # ld M[k]
            acc = mem[k]
        elif code == 0x61:                    # ldx M[k]
            x = mem[k]
        elif code == 0x02:                    # st M[k]
            mem[k] = acc
        elif code == 0x03:                    # stx M[k]
            mem[k] = x
        elif code == 0x07:                    # tax
            x = acc
        elif code == 0x87:                    # txa
            acc = x
        elif code == 0x54:                    # and #k
            acc &= k
        elif code == 0x05:                    # ja
            pc += k
        elif cls == 0x05:                     # conditional jumps, #k or x
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x10:
                cond = acc == operand
            elif op == 0x20:
                cond = acc > operand
            elif op == 0x30:
                cond = acc >= operand
            elif op == 0x40:
                cond = bool(acc & operand)
            else:
                raise ValueError(f"unsupported BPF jump {code:#x} at {pc - 1}")
            pc += jt if cond else jf
        elif code == 0x06:                    # ret #k
            return k
        elif code == 0x16:                    # ret a
            return acc
        else:
            raise ValueError(f"unsupported BPF instruction {code:#x} at {pc - 1}")
    raise ValueError("BPF program fell off its end")
