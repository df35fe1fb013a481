"""Resource limits (setrlimit), applied while the shim is still privileged: raising a
hard limit needs CAP_SYS_RESOURCE, which the identity step may take away."""

from __future__ import annotations

import resource

from .errors import SetupError

__all__ = ["prepare", "apply"]


def _num(v) -> int:
    if v == "unlimited":
        return resource.RLIM_INFINITY
    # setrlimit() here takes a C long long: a limit in the top half of rlim_t's range
    # (valid, just huge) passes as its two's complement, never as an OverflowError.
    return v - 2**64 if v >= 2**63 else v


def prepare(rlimits: dict) -> "tuple[tuple[str, int, int, int], ...]":
    return tuple((name, getattr(resource, "RLIMIT_" + name), _num(r.soft), _num(r.hard))
                 for name, r in rlimits.items())


def apply(prepared) -> None:
    for name, res, soft, hard in prepared:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as e:
            err = getattr(e, "errno", None) or 1
            shown = "/".join("unlimited" if v == resource.RLIM_INFINITY else str(v % 2**64)
                             for v in (soft, hard))
            raise SetupError("rlimits", err, f"setrlimit {name} {shown}") from None
