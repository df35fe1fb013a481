"""Landlock (landlock(7)): the target's filesystem, TCP ports and scopes restricted by
the kernel, unprivileged, as a rule set it cannot leave.

The spec's `landlock` lists what stays allowed: paths with their access rights, TCP
ports to bind and to connect to, and scopes.  Everything else is denied for every kind
of access the running kernel's Landlock ABI handles -- filesystem rights when `fs` is
given (all the ABI knows), TCP bind and connect when `net` is given, the scopes listed.

The ABI model is the kernel's, with the Rust `landlock` crate's and go-landlock's
compatibility levels: each right, `net` and `scope` need an ABI version (ABI_OF,
NET_ABI, SCOPE_ABI).  The ABI is detected once, in prepare (landlock_create_ruleset
with LANDLOCK_CREATE_RULESET_VERSION).  With `compatibility: "hard_requirement"` (the
default) a rule the running ABI cannot enforce is exit 125 naming it and the ABI it
needs; with `"best_effort"` it is dropped and the drop is reported (Prepared.dropped:
wrapperd's stderr, `--dry-run`, the library's SetupWarning list, `sandbox landlock
abi`) -- never silently.  A friendly group (`read`, `write`, ...) is the rights of it
the running ABI has: `write` is write_file and, from ABI 3, truncate (below ABI 3
truncation is not restricted at all, so nothing is lost); a kernel name (`truncate`) is
exactly that right and needs its ABI.

prepare() has no side effects: it checks the spec against the ABI and, when the target
sees the host's mounts (no mount namespace), that each path exists and that a file is
given no directory-only right by name.  The `landlock` step -- after identity,
capabilities and no_new_privs, before seccomp -- opens each path (O_PATH, O_NOFOLLOW
unless `follow`) in the target's own view (after the mounts step, with the target's
ids), builds the rule set and restricts this process; the target inherits it across
execve.  A path missing there is exit 125 at that step.

WRAPPERD_LANDLOCK_ABI=N (a test hook, like WRAPPERD_FAULT) makes prepare take the ABI
as at most N: it can only lower what the kernel offers, so a hard requirement fails
and a best-effort drop is reported, never a silent loss.
"""

from __future__ import annotations

import os
import stat
import sys

from . import _libc
from ._record import field_types, frozen
from .errors import SetupError, SpecError

__all__ = ["STEP", "FS_RIGHTS", "GROUPS", "SCOPES", "Rule", "Prepared", "abi",
           "fs_known", "prepare", "apply", "describe", "abi_report", "ENV_ABI"]

STEP = "landlock"
ENV_ABI = "WRAPPERD_LANDLOCK_ABI"

# <linux/landlock.h> LANDLOCK_ACCESS_FS_*: name -> (bit, the ABI that added it)
FS_RIGHTS = {
    "execute": (1 << 0, 1),
    "write_file": (1 << 1, 1),
    "read_file": (1 << 2, 1),
    "read_dir": (1 << 3, 1),
    "remove_dir": (1 << 4, 1),
    "remove_file": (1 << 5, 1),
    "make_char": (1 << 6, 1),
    "make_dir": (1 << 7, 1),
    "make_reg": (1 << 8, 1),
    "make_sock": (1 << 9, 1),
    "make_fifo": (1 << 10, 1),
    "make_block": (1 << 11, 1),
    "make_sym": (1 << 12, 1),
    "refer": (1 << 13, 2),
    "truncate": (1 << 14, 3),
    "ioctl_dev": (1 << 15, 5),
}
# The rights a regular file (anything not a directory) can be given: the kernel
# refuses the others on it (EINVAL).
FILE_RIGHTS = sum(FS_RIGHTS[n][0] for n in ("execute", "write_file", "read_file",
                                             "truncate", "ioctl_dev"))
# Friendly groups: each the rights of it the running ABI knows.
GROUPS = {
    "read": ("read_file", "read_dir"),
    "write": ("write_file", "truncate"),
    "create": ("make_reg", "make_dir", "make_sym", "make_sock", "make_fifo"),
    "remove": ("remove_file", "remove_dir"),
}
# LANDLOCK_ACCESS_NET_*, LANDLOCK_SCOPE_*
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
NET_ABI = 4
SCOPES = {"abstract_unix_socket": 1 << 0, "signal": 1 << 1}
SCOPE_ABI = 6
LATEST_ABI = 7                     # what this module knows (7: audit flags, unused)
COMPATIBILITY = ("hard_requirement", "best_effort")

RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2
CREATE_RULESET_VERSION = 1 << 0


def fs_known(abi: int) -> int:
    """Every filesystem right ABI `abi` handles."""
    return sum(bit for bit, need in FS_RIGHTS.values() if need <= abi)


def names(mask: int) -> "list[str]":
    return [n for n, (bit, _) in FS_RIGHTS.items() if mask & bit]


def kernel_abi() -> int:
    """The running kernel's Landlock ABI version; 0 without Landlock (not built, or
    disabled at boot: EOPNOTSUPP; ENOSYS)."""
    try:
        return _libc.landlock_create_ruleset(None, CREATE_RULESET_VERSION)
    except OSError:
        return 0


def abi(environ=None) -> int:
    """The ABI prepare works with: the kernel's, lowered by WRAPPERD_LANDLOCK_ABI."""
    v = kernel_abi()
    cap = (os.environ if environ is None else environ).get(ENV_ABI)
    if cap is not None and cap.strip().isdigit():
        v = min(v, int(cap))
    return v


# --------------------------------------------------------------------------- records

@frozen
class Rule:
    path: str
    access: int                 # the rights allowed beneath it (masked to the ABI)
    named: int                  # of those, the ones named by their kernel name
    follow: bool                # open through a final symlink

    __record_types__ = field_types(path=str, access=int, named=int, follow=bool)


@frozen
class Prepared:
    abi: int                    # the ABI it was prepared for (0: nothing is applied)
    handled_fs: int
    handled_net: int
    scoped: int
    rules: tuple                # Rule
    bind: tuple                 # TCP ports (int)
    connect: tuple
    dropped: tuple = ()         # best_effort: what the ABI could not enforce, in words

    __record_types__ = field_types(abi=int, handled_fs=int, handled_net=int, scoped=int,
                                   rules=tuple[Rule, ...], bind=tuple[int, ...],
                                   connect=tuple[int, ...], dropped=tuple[str, ...])

    def __record_check__(self):
        if self.abi < 0 or self.abi > 255:
            return f"abi {self.abi} is not an ABI version"
        if self.handled_fs & ~fs_known(LATEST_ABI) or self.handled_net & ~3 or \
                self.scoped & ~3:
            return "an unknown Landlock right"
        if any(not 0 <= p <= 65535 for p in self.bind + self.connect):
            return "a port outside 0-65535"
        return None

    @property
    def enforced(self) -> bool:
        return self.abi > 0 and bool(self.handled_fs or self.handled_net or self.scoped)


# --------------------------------------------------------------------------- prepare

def rights(access: tuple, abi: int, where: str) -> "tuple[int, int, list]":
    """(mask, named mask, [(kernel name, its ABI) the ABI lacks]) of a rule's `access` list: groups
    give what of them `abi` knows; kernel names are kept and, above the ABI, listed."""
    mask = named = 0
    missing = []
    for a in access:
        if a in GROUPS:
            mask |= sum(FS_RIGHTS[n][0] for n in GROUPS[a] if FS_RIGHTS[n][1] <= abi)
        elif a in FS_RIGHTS:
            bit, need = FS_RIGHTS[a]
            if need > abi:
                missing.append((a, need))
                continue
            mask |= bit
            named |= bit
        else:           # (the spec model refuses it: a plan made elsewhere)
            raise SpecError(f"unknown access {a!r}", where)
    return mask, named, missing


def prepare(spec, running_abi: "int | None" = None) -> "Prepared | None":
    """None without `landlock`.  running_abi: the ABI to prepare for (default abi()).
    No side effects: reads the ABI, and stats the paths when the target sees the
    host's mounts."""
    ll = spec.landlock
    if ll is None:
        return None
    v = abi() if running_abi is None else running_abi
    hard = ll.compatibility == "hard_requirement"
    dropped: "list[str]" = []

    def lacks(what: str, need: int, where: str) -> None:
        msg = f"{what} needs Landlock ABI {need}, the running ABI is " + \
            (f"{v}" if v else "none (no Landlock)")
        if hard:
            raise SpecError(msg + ' (compatibility "best_effort" drops it)', where)
        dropped.append(f"{where}: {msg}: not enforced")

    if v == 0:
        lacks("landlock", 1, "landlock")
        return Prepared(0, 0, 0, 0, (), (), (), tuple(dropped))
    host_view = spec.namespaces is None or spec.namespaces.mount is not True
    rules = []
    for i, r in enumerate(ll.fs or ()):
        where = f"landlock.fs[{i}]"
        mask, named, missing = rights(r.access, v, f"{where}.access")
        for name, need in missing:
            lacks(name, need, f"{where}.access")
        if host_view:
            mask = _check_path(r.path, r.follow, mask, named, where)
        if mask:
            rules.append(Rule(r.path, mask, named, r.follow))
        else:
            dropped.append(f"{where}: {r.path}: no right this ABI knows is left: the "
                           "path gets nothing")
    bind: tuple = ()
    connect: tuple = ()
    handled_net = 0
    if ll.net is not None:
        if v < NET_ABI:
            lacks("TCP bind and connect", NET_ABI, "landlock.net")
        else:
            handled_net = NET_BIND_TCP | NET_CONNECT_TCP
            bind, connect = ll.net.bind, ll.net.connect
    scoped = 0
    if ll.scope:
        if v < SCOPE_ABI:
            lacks("scoping", SCOPE_ABI, "landlock.scope")
        else:
            scoped = sum(SCOPES[s] for s in ll.scope)
    if ll.spec_paths:
        rules += spec_path_rules(spec, v)
    handled_fs = fs_known(v) if ll.fs is not None else 0
    return Prepared(v, handled_fs, handled_net, scoped, tuple(rules), tuple(bind),
                    tuple(connect), tuple(dropped))


# landlock.spec_paths: what the spec itself makes a place for the target to write --
# its service directories, filesystem.read_write_paths, its writable mounts (a private
# /tmp, /dev/shm, ...) -- gets the rights to use it; /dev its nodes (write, ioctl), /proc
# its own files (/proc/self/...).  So a profile can give Landlock rules matching the
# view its mount namespace makes ("everything read-only but these") without knowing
# the spec.  Made by the steps before the landlock step: not checked in the host view.
_USE = ("read", "write", "create", "remove", "truncate")


def spec_path_rules(spec, v: int) -> "list[Rule]":
    from . import directories
    places: "dict[str, tuple[str, ...]]" = {}
    d = directories.prepare(spec) if spec.directories is not None else None
    for e in d.directories if d is not None else ():
        places[e.path] = ("read",) if e.kind == "configuration" else _USE
    fs = spec.filesystem
    for path in fs.read_write_paths if fs is not None else ():
        if not (path.startswith("-") and not os.path.lexists(path[1:])):
            places[path.lstrip("-")] = _USE
    for m in spec.mounts:
        if m.type in ("tmpfs", "bind") and "ro" not in m.options:
            places[m.destination] = _USE
    if spec.filesystem is not None and spec.filesystem.private_tmp:
        places.setdefault("/tmp", _USE)
        places.setdefault("/var/tmp", _USE)
    places["/dev"] = ("read", "write", "ioctl_dev")
    places["/proc"] = ("read", "write")
    out = []
    for path, access in places.items():
        mask, named, _missing = rights(access, v, "landlock.spec_paths")
        if mask:
            out.append(Rule(path, mask, named, False))
    return out


def _check_path(path: str, follow: bool, mask: int, named: int, where: str) -> int:
    """In the host's view (the target's, without a mount namespace): the path exists,
    and a file is given no directory-only right by name.  The mask, what a file can
    have of it."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}", f"{where}.path") from None
    if stat.S_ISLNK(st.st_mode):
        raise SpecError(f"{path} is a symlink (\"follow\": true opens what it names)",
                        f"{where}.path")
    if stat.S_ISDIR(st.st_mode):
        return mask
    return _file_mask(path, mask, named, f"{where}.access", SpecError)


def _file_mask(path, mask, named, where, err):
    wrong = named & ~FILE_RIGHTS
    if wrong:
        msg = f"{path} is not a directory: {', '.join(names(wrong))} apply to directories"
        if err is SpecError:
            raise SpecError(msg, where)
        raise SetupError(STEP, 0, f"{where}: {msg}")
    return mask & FILE_RIGHTS


def describe(p: "Prepared | None") -> "list[str]":
    """What the target is restricted to, in words, and what was dropped (--dry-run)."""
    if p is None:
        return []
    out = [f"best_effort: dropped: {d}" for d in p.dropped]
    if not p.enforced:
        out.append("nothing is restricted")
        return out
    out.append(f"ABI {p.abi}; everything not allowed is denied for "
               + ", ".join(x for x in (
                   "filesystem access" if p.handled_fs else "",
                   "TCP bind and connect" if p.handled_net else "",
                   "scopes " + ", ".join(n for n, b in SCOPES.items() if p.scoped & b)
                   if p.scoped else "") if x))
    for r in p.rules:
        out.append(f"allow {r.path}: {', '.join(names(r.access))}")
    if p.handled_net:
        out.append(f"allow TCP bind {list(p.bind)}, connect {list(p.connect)}")
    return out


def abi_report(v: "int | None" = None) -> dict:
    """`sandbox landlock abi`: the ABI and what it supports."""
    v = abi() if v is None else v
    return {"abi": v, "kernel_abi": kernel_abi(),
            "fs": [n for n, (_, need) in FS_RIGHTS.items() if need <= v],
            "net": ["bind_tcp", "connect_tcp"] if v >= NET_ABI else [],
            "scope": [n for n in SCOPES] if v >= SCOPE_ABI else [],
            "missing": {n: need for n, (_, need) in FS_RIGHTS.items() if need > v} |
            ({"net": NET_ABI} if v < NET_ABI else {}) |
            ({"scope": SCOPE_ABI} if v < SCOPE_ABI else {})}


# --------------------------------------------------------------------------- apply

def _u64(*vals: int) -> bytes:
    return b"".join(x.to_bytes(8, "little") for x in vals)


def apply(p: Prepared) -> None:
    """Build the rule set in this process's view, as this process (the target's ids),
    and restrict this process to it.  Needs no_new_privs (or CAP_SYS_ADMIN)."""
    if not p.enforced:
        return
    if sys.byteorder != "little":              # (the packing below is little-endian)
        raise SetupError(STEP, 0, "Landlock attributes are packed little-endian only")
    # The struct's size says which fields this caller knows: an older kernel refuses
    # a larger one with non-zero fields it does not know (E2BIG).
    if p.scoped:
        attr = _u64(p.handled_fs, p.handled_net, p.scoped)
    elif p.handled_net:
        attr = _u64(p.handled_fs, p.handled_net)
    else:
        attr = _u64(p.handled_fs)
    try:
        rfd = _libc.landlock_create_ruleset(attr)
    except OSError as e:
        raise SetupError(STEP, e.errno or 0, "landlock_create_ruleset") from None
    try:
        for r in p.rules:
            flags = os.O_PATH | os.O_CLOEXEC | (0 if r.follow else os.O_NOFOLLOW)
            try:
                fd = os.open(r.path, flags)
            except OSError as e:
                raise SetupError(STEP, e.errno or 0, f"open {r.path} (as the target, in "
                                 "its view)") from None
            try:
                access = r.access
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    raise SetupError(STEP, 40, f"{r.path} is a symlink (\"follow\": "
                                     "true opens what it names)")
                if not stat.S_ISDIR(st.st_mode):
                    access = _file_mask(r.path, access, r.named, "landlock.fs", SetupError)
                if access:
                    _libc.landlock_add_rule(rfd, RULE_PATH_BENEATH,
                                            access.to_bytes(8, "little") +
                                            fd.to_bytes(4, "little", signed=True))
            except OSError as e:
                raise SetupError(STEP, e.errno or 0, f"landlock_add_rule {r.path}") from None
            finally:
                os.close(fd)
        for bit, ports in ((NET_BIND_TCP, p.bind), (NET_CONNECT_TCP, p.connect)):
            for port in ports:
                try:
                    _libc.landlock_add_rule(rfd, RULE_NET_PORT, _u64(bit, port))
                except OSError as e:
                    raise SetupError(STEP, e.errno or 0,
                                     f"landlock_add_rule TCP port {port}") from None
        try:
            _libc.landlock_restrict_self(rfd)
        except OSError as e:
            raise SetupError(STEP, e.errno or 0, "landlock_restrict_self") from None
    finally:
        os.close(rfd)
