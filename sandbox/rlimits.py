"""Resource limits (setrlimit), applied while the shim is still privileged: raising a
hard limit needs CAP_SYS_RESOURCE, which the identity step may take away."""

from __future__ import annotations

import resource

from ._record import field_types, frozen
from .errors import SetupError

__all__ = ["Prepared", "prepare", "apply"]


def _num(v) -> int:
    if v == "unlimited":
        return resource.RLIM_INFINITY
    # setrlimit() here takes a C long long: a limit in the top half of rlim_t's range
    # (valid, just huge) passes as its two's complement, never as an OverflowError.
    return v - 2**64 if v >= 2**63 else v


@frozen
class Prepared:
    limits: tuple     # ((name, RLIMIT_ number, soft, hard), ...), in the spec's order

    __record_types__ = field_types(limits=tuple[tuple[str, int, int, int], ...])


def prepare(rlimits: dict) -> Prepared:
    return Prepared(tuple(
        (name, getattr(resource, "RLIMIT_" + name), _num(r.soft), _num(r.hard))
        for name, r in rlimits.items()))


def apply(prepared: Prepared) -> None:
    for name, res, soft, hard in prepared.limits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as e:
            err = getattr(e, "errno", None) or 1
            shown = "/".join("unlimited" if v == resource.RLIM_INFINITY else str(v % 2**64)
                             for v in (soft, hard))
            raise SetupError("rlimits", err, f"setrlimit {name} {shown}") from None


# Talos's wrapperd set RLIMIT_NOFILE to this, soft and hard, before dropping privileges.
TALOS_NOFILE = 1048576
_CAP_SYS_RESOURCE = 24




def _in_initial_user_namespace() -> bool:
    # Raising a hard limit needs CAP_SYS_RESOURCE in the initial user namespace.
    from . import procfs
    try:
        return procfs.in_initial_user_ns()
    except (OSError, ValueError):
        return False


def talos_nofile() -> "tuple[int, int, str | None]":
    """(soft, hard, warning) for flags mode's NOFILE, decided without side effects.

    1048576 soft and hard, as Talos's wrapperd set them, where the kernel allows it: at
    most fs.nr_open, and raising the hard limit needs CAP_SYS_RESOURCE (lowering it
    does not).  Elsewhere (no such capability, as in a container, or a lower nr_open)
    Talos's shim failed to start anything; here the soft limit goes up to the hard one,
    and the warning says so: never silently lower."""
    from . import _libc
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 0:
        hard = 2**63 - 1
    from . import procfs
    nr_open = procfs.read_int("/proc/sys/fs/nr_open")
    try:
        effective = _libc.capget()[0]
    except OSError:
        effective = 0
    may_raise = bool(effective >> _CAP_SYS_RESOURCE & 1) and _in_initial_user_namespace()
    if nr_open is not None and TALOS_NOFILE <= nr_open and (may_raise or hard >= TALOS_NOFILE):
        return TALOS_NOFILE, TALOS_NOFILE, None
    if nr_open is None:
        why = "/proc/sys/fs/nr_open is unreadable"
    elif nr_open < TALOS_NOFILE:
        why = f"fs.nr_open is {nr_open}"
    else:
        why = f"raising the hard limit {hard} needs CAP_SYS_RESOURCE"
    # A hard limit above nr_open (lowered since) could not be set again: cut to it.
    limit = hard if nr_open is None else min(hard, nr_open)
    return limit, limit, (f"warning: NOFILE {TALOS_NOFILE} (Talos's) is not allowed here "
                          f"({why}): soft and hard limit {limit} instead")
