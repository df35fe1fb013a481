"""Capabilities: names, and the five sets (bounding, inheritable, ambient, permitted, effective).

prepare() works out, without side effects, the exact masks the target must end up with;
apply() makes the shim's own sets match them, after the identity change (so the effective
set must first be raised again from permitted: setresuid with keep-caps empties it).

What the kernel does at execve (capabilities(7)) decides the masks:
  * a root target (uid 0 without SECBIT_NOROOT) gets permitted = effective = bounding;
  * any other target gets only its ambient set (no file capabilities are assumed), so
    every capability a non-root target must hold is raised in ambient, which in turn
    needs it in inheritable and permitted.
"""

from __future__ import annotations

import os

from . import _libc
from ._record import field_types, frozen
from .errors import SetupError, SpecError

__all__ = ["CAP_NAMES", "cap_number", "normalize", "mask", "names", "last_cap",
           "bounding_set", "Prepared", "prepare", "apply"]

# <uapi/linux/capability.h>, in number order.  Kept here instead of taken from
# python-prctl, whose table is fixed at build time and lacks the newest entries.
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_BY_NAME = {n: i for i, n in enumerate(CAP_NAMES)}
CAP_SETPCAP = _BY_NAME["CAP_SETPCAP"]


def normalize(name: str) -> str:
    """'CAP_SYS_ADMIN', 'cap_sys_admin' and 'sys_admin' all mean CAP_SYS_ADMIN."""
    upper = name.strip().upper()
    if not upper.startswith("CAP_"):
        upper = "CAP_" + upper
    if upper not in _BY_NAME:
        raise SpecError(f"unknown capability {name!r}")
    return upper


def cap_number(name: str) -> int:
    return _BY_NAME[normalize(name)]


def mask(names_: "tuple[str, ...] | list[str]") -> int:
    m = 0
    for n in names_:
        m |= 1 << cap_number(n)
    return m


def names(m: int) -> list[str]:
    out = [n for i, n in enumerate(CAP_NAMES) if m >> i & 1]
    # Numbers this table does not know yet still show, rather than vanish.
    out += [f"cap_{i}" for i in range(len(CAP_NAMES), 64) if m >> i & 1]
    return out


_LAST_CAP: "int | None" = None


def last_cap() -> int:
    """The highest capability number the running kernel knows (read once: it is fixed
    for the kernel's lifetime; the fork server's children inherit the value)."""
    global _LAST_CAP
    if _LAST_CAP is None:
        try:
            fd = os.open("/proc/sys/kernel/cap_last_cap", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _LAST_CAP = int(os.read(fd, 32))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return len(CAP_NAMES) - 1
    return _LAST_CAP


def _status_masks() -> "tuple[int, int] | None":
    """(bounding, ambient) as the kernel reports them in /proc/self/status: one read
    instead of a prctl per capability.  None where /proc is not there to read."""
    from . import procfs
    try:
        st = procfs.status("self", ("CapBnd", "CapAmb"))
        return int(st["CapBnd"], 16), int(st["CapAmb"], 16)
    except (OSError, KeyError, ValueError):
        return None


def bounding_set() -> int:
    masks = _status_masks()
    if masks is not None:
        return masks[0]
    m = 0
    for i in range(last_cap() + 1):
        if _libc.prctl(_libc.PR_CAPBSET_READ, i) == 1:
            m |= 1 << i
    return m


def ambient_set(last: int) -> int:
    masks = _status_masks()
    if masks is not None:
        return masks[1]
    return sum(1 << i for i in range(last + 1)
               if _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_IS_SET, i) == 1)


@frozen
class Prepared:
    bounding: int      # the target's bounding set; every other cap is dropped from it
    inheritable: int
    ambient: int
    permitted: int     # permitted == effective before exec
    last_cap: int

    __record_types__ = field_types(bounding=int, inheritable=int, ambient=int, permitted=int,
                                   last_cap=int)


def prepare(caps, target_is_root: bool, securebits: int = 0,
            shim_holds: "int | None" = None) -> Prepared:
    """Work out the target's five sets from the spec's `capabilities` (or None), for a
    shim holding what this process holds -- or, with shim_holds, a mask it would hold
    in its bounding and permitted sets (exposure scores a spec as for a shim holding
    every capability, whoever scores it)."""
    last = last_cap()
    if shim_holds is None:
        bnd = bounding_set()
        _eff, held, _inh = _libc.capget()
    else:
        bnd = held = shim_holds
    for field in ("drop", "keep", "ambient"):
        for i, name in enumerate(getattr(caps, field, None) or ()):
            if cap_number(name) > last:
                raise SpecError(f"{name} is not known to the running kernel "
                                f"(cap_last_cap is {last})", f"capabilities.{field}[{i}]")
    if caps is not None and caps.keep is not None:
        keep = mask(caps.keep)
        missing = keep & ~bnd
        if missing:
            raise SpecError(f"cannot keep {', '.join(names(missing))}: not in wrapperd's own "
                            "bounding set", "capabilities.keep")
        target = keep
    else:
        target = bnd & ~mask(caps.drop or ()) if caps is not None else bnd

    if caps is not None and caps.ambient is not None:
        ambient = mask(caps.ambient)
        dropped = ambient & ~target
        if dropped:
            raise SpecError(f"{', '.join(names(dropped))} must also be kept (it is dropped "
                            "from the bounding set)", "capabilities.ambient")
    elif caps is not None and caps.keep is not None and not target_is_root:
        # A non-root target can only hold what is ambient: `keep` means "the target keeps".
        ambient = target
    else:
        ambient = 0
    if ambient & ~held:
        raise SpecError(f"cannot grant {', '.join(names(ambient & ~held))}: wrapperd does not "
                        "hold it in its permitted set", "capabilities.ambient")
    if ambient and securebits & SECBIT_NO_CAP_AMBIENT_RAISE:
        raise SpecError("securebits no_cap_ambient_raise forbids ambient capabilities",
                        "capabilities.ambient")
    permitted = (target & held) if target_is_root else ambient
    return Prepared(bounding=target, inheritable=ambient, ambient=ambient,
                    permitted=permitted, last_cap=last)


def raise_effective() -> None:
    """Make effective = permitted (setresuid with keep-caps left effective empty)."""
    _eff, prm, inh = _libc.capget()
    _libc.capset(prm, prm, inh)


def apply(p: Prepared) -> None:
    step = "capabilities"
    raise_effective()
    _eff, prm, inh = _libc.capget()
    # Bounding first, while CAP_SETPCAP is still effective.
    for i in range(p.last_cap + 1):
        if not p.bounding >> i & 1 and _libc.prctl(_libc.PR_CAPBSET_READ, i) == 1:
            try:
                _libc.prctl(_libc.PR_CAPBSET_DROP, i)
            except OSError as e:
                raise SetupError(step, e.errno, f"drop {CAP_NAMES[i]} from the bounding set")
    # Inheritable, then ambient (a cap can be ambient only while permitted and inheritable).
    try:
        _libc.capset(prm, prm, p.inheritable)
    except OSError as e:
        raise SetupError(step, e.errno, f"set inheritable to {names(p.inheritable)}")
    _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for i in range(p.last_cap + 1):
        if p.ambient >> i & 1:
            try:
                _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_RAISE, i)
            except OSError as e:
                raise SetupError(step, e.errno, f"raise {CAP_NAMES[i]} in the ambient set")
    # Permitted and effective last: from here on the shim holds only what the target will.
    try:
        _libc.capset(p.permitted, p.permitted, p.inheritable)
    except OSError as e:
        raise SetupError(step, e.errno, f"set permitted to {names(p.permitted)}")
    # Verify: never trust that a sequence of syscalls left the state we meant.
    eff, prm, inh = _libc.capget()
    masks = _status_masks()
    bnd, amb = masks if masks is not None else (bounding_set(), ambient_set(p.last_cap))
    if (eff, prm, inh, bnd, amb) != (p.permitted, p.permitted, p.inheritable, p.bounding,
                                     p.ambient):
        raise SetupError(step, 0, "the kernel reports capability sets other than requested")


# <linux/securebits.h>
SECUREBITS = {
    "noroot": 1 << 0, "noroot_locked": 1 << 1,
    "no_setuid_fixup": 1 << 2, "no_setuid_fixup_locked": 1 << 3,
    "keep_caps": 1 << 4, "keep_caps_locked": 1 << 5,
    "no_cap_ambient_raise": 1 << 6, "no_cap_ambient_raise_locked": 1 << 7,
}
SECBIT_NOROOT = SECUREBITS["noroot"]
SECBIT_KEEP_CAPS = SECUREBITS["keep_caps"]
SECBIT_NO_CAP_AMBIENT_RAISE = SECUREBITS["no_cap_ambient_raise"]
