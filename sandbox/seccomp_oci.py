"""Import an OCI runtime-spec `linux.seccomp` section, or a Docker seccomp profile, into
our spec's `seccomp` section -- and say plainly what could not be honoured.

What maps one to one:
  * defaultAction/action SCMP_ACT_* (+ defaultErrnoRet/errnoRet) -> our actions;
  * args {index, value, valueTwo, op SCMP_CMP_*} -> our args (masked_eq: value is the mask,
    valueTwo the expected result, the same in both);
  * Docker's includes.caps / excludes.caps -> if_caps / unless_caps, so they are resolved
    against the target's capabilities when the filter is compiled (Docker reads the
    bounding set; we read what the target keeps, its permitted set after exec);
  * architectures / Docker's archMap (the entry for this machine's ABI and its
    subArchitectures) -> architectures.
Resolved now, against this machine: includes/excludes.arches and minKernel.
Not honoured (listed in the notes): flags, listenerPath/listenerMetadata,
SCMP_ACT_NOTIFY and SCMP_ACT_TRACE (no supervisor or tracer: both become errno, as
runc does for TRACE without a tracer), syscall names libseccomp does not know.
Several conditions on the *same* argument in one rule cannot be one libseccomp rule;
as runc does, each becomes its own rule (so they are OR-ed, not AND-ed) -- also noted.
"""

from __future__ import annotations

import os
import re

from .errors import SpecError

__all__ = ["import_profile"]

_ACTIONS = {"SCMP_ACT_ALLOW": "allow", "SCMP_ACT_LOG": "log", "SCMP_ACT_TRAP": "trap",
            "SCMP_ACT_KILL": "kill_thread", "SCMP_ACT_KILL_THREAD": "kill_thread",
            "SCMP_ACT_KILL_PROCESS": "kill_process"}
_OPS = {"SCMP_CMP_NE": "ne", "SCMP_CMP_LT": "lt", "SCMP_CMP_LE": "le", "SCMP_CMP_EQ": "eq",
        "SCMP_CMP_GE": "ge", "SCMP_CMP_GT": "gt", "SCMP_CMP_MASKED_EQ": "masked_eq"}
_EPERM, _ENOSYS = 1, 38


def _action(name, errno_ret, where: str, notes: "list[str]") -> str:
    if name in _ACTIONS:
        return _ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        return f"errno:{_EPERM if errno_ret is None else int(errno_ret)}"
    if name == "SCMP_ACT_TRACE":
        notes.append(f"{where}: SCMP_ACT_TRACE has no tracer here: errno ENOSYS instead")
        return f"errno:{_ENOSYS}"
    if name == "SCMP_ACT_NOTIFY":
        notes.append(f"{where}: SCMP_ACT_NOTIFY has no supervisor here: errno EPERM instead")
        return f"errno:{_EPERM}"
    raise SpecError(f"unknown action {name!r}", where)


def _kernel_at_least(want: str) -> bool:
    def nums(s):
        return tuple(int(x) for x in re.findall(r"\d+", s)[:2])
    return nums(os.uname().release) >= nums(want)


def _arch(name) -> "str | None":
    """Our name for an ABI, or None for one this library does not model (mips, ...)."""
    from .seccomp import resolve_arch
    try:
        return resolve_arch(str(name))
    except SpecError:
        return None


def _arch_list(doc: dict, notes: "list[str]") -> "list[str]":
    from .seccomp import native_arch, resolve_arch
    native = native_arch()
    if doc.get("archMap"):                                    # Docker
        for m in doc["archMap"]:
            if _arch(m.get("architecture", "")) == native:
                subs = [_arch(a) for a in m.get("subArchitectures") or ()]
                arches = [native] + [a for a in subs if a is not None]
                break
        else:
            notes.append(f"archMap has no entry for {native}: only the native ABI is allowed")
            arches = [native]
    else:
        arches = []
        for i, a in enumerate(doc.get("architectures") or ()):
            try:
                arches.append(resolve_arch(a, f"architectures[{i}]"))
            except SpecError as e:
                notes.append(f"{e.message}: left out")
        if arches and native not in arches:
            notes.append(f"architectures do not include this machine's {native}: added "
                         "(without it the target's first syscall would kill it)")
        arches = [native] + arches
    extra = [a for a in arches if a != native]
    if extra:
        notes.append(f"allows the ABIs {', '.join(extra)} besides {native}, as the imported "
                     "profile says; drop them from 'architectures' to kill those instead")
    return ["native" if a == native else a for a in dict.fromkeys(arches)]


def _caps(names, where: str, notes: "list[str]") -> "tuple[list[str], list[str]]":
    from . import caps
    good, bad = [], []
    for n in names or ():
        try:
            good.append(caps.normalize(n))
        except SpecError:
            bad.append(n)
    if bad:
        notes.append(f"{where}: unknown capabilities {', '.join(bad)}")
    return good, bad


def import_profile(doc: dict) -> "tuple[dict, list[str]]":
    """(our `seccomp` section as a dict, notes on what could not be honoured)."""
    import pyseccomp

    from .seccomp import native_arch
    if not isinstance(doc, dict):
        raise SpecError("expected a JSON object")
    if isinstance(doc.get("linux"), dict):                    # a whole OCI config.json
        doc = doc["linux"].get("seccomp") or {}
    if "defaultAction" not in doc:
        raise SpecError("no 'defaultAction': not an OCI or Docker seccomp profile")
    notes: "list[str]" = []
    for k in ("flags", "listenerPath", "listenerMetadata"):
        if doc.get(k):
            notes.append(f"{k} {doc[k]!r} is not honoured")
    rules: "list[dict]" = []
    out = {"default_action": _action(doc["defaultAction"], doc.get("defaultErrnoRet"),
                                     "defaultAction", notes),
           "architectures": _arch_list(doc, notes), "syscalls": rules}
    native = native_arch()
    for i, call in enumerate(doc.get("syscalls") or ()):
        where = f"syscalls[{i}]"
        inc, exc = call.get("includes") or {}, call.get("excludes") or {}
        # Resolved here, for this machine, as Docker resolves them when it starts a container.
        if inc.get("arches") and native not in [_arch(a) for a in inc["arches"]]:
            continue
        if exc.get("arches") and native in [_arch(a) for a in exc["arches"]]:
            continue
        if inc.get("minKernel") and not _kernel_at_least(inc["minKernel"]):
            continue
        if exc.get("minKernel") and _kernel_at_least(exc["minKernel"]):
            continue
        if_caps, bad = _caps(inc.get("caps"), f"{where}.includes.caps", notes)
        if bad:
            notes.append(f"{where}: left out (it needs a capability this kernel lacks)")
            continue
        unless_caps, _ = _caps(exc.get("caps"), f"{where}.excludes.caps", notes)
        names = list(call.get("names") or ([call["name"]] if call.get("name") else []))
        # (pyseccomp encodes a name strictly: a lone surrogate would raise there)
        known = [n for n in names if isinstance(n, str) and n.isascii() and
                 pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) != -1]
        if len(known) < len(names):
            notes.append(f"{where}: syscalls unknown to libseccomp left out: "
                         f"{', '.join(repr(n) for n in names if n not in known)}")
        if not known:
            continue
        action = _action(call.get("action"), call.get("errnoRet"), f"{where}.action", notes)
        args = []
        for j, a in enumerate(call.get("args") or ()):
            op = _OPS.get(a.get("op"))
            if op is None:
                raise SpecError(f"unknown operator {a.get('op')!r}", f"{where}.args[{j}].op")
            args.append({"index": a["index"], "op": op, "value": a.get("value", 0),
                         "value_two": a.get("valueTwo", 0)})
        rule = {"names": known, "action": action}
        if if_caps:
            rule["if_caps"] = if_caps
        if unless_caps:
            rule["unless_caps"] = unless_caps
        indexes = [a["index"] for a in args]
        if len(set(indexes)) < len(indexes):
            notes.append(f"{where}: several conditions on one argument: one rule each "
                         "(OR-ed, as runc does)")
            rules += [dict(rule, args=[a]) for a in args]
        else:
            rules.append(dict(rule, args=args) if args else rule)
    return out, notes
