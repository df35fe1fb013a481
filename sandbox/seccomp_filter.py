"""The seccomp step: the filters a plan carries, and loading them.

What the shim's seccomp step needs, and nothing of the compiler (sandbox.seccomp,
which re-exports these): a plan decoded by the lean shim or a fork server's worker
imports this module only.  Loading is one seccomp(SECCOMP_SET_MODE_FILTER) per program
(sandbox._libc), which needs no_new_privs or CAP_SYS_ADMIN: the shim sets
no_new_privs first.
"""

from __future__ import annotations

from . import _libc
from ._record import field, field_types, frozen
from .errors import SetupError

__all__ = ["Prepared", "Restrictions", "apply", "load_program"]


@frozen
class Prepared:
    program: bytes = field(repr=lambda b: f"<{len(b) // 8} BPF instructions>")
    default_action: str
    architectures: tuple           # canonical names, native first
    syscalls: int                  # syscalls with at least one rule
    skipped: tuple                 # "where: why" for rules not applied (capabilities)
    replaced: tuple = ()           # "where (syscall: action): by where": profile rules a
                                   # spec rule replaced (replace_profile_rules)
    unknown_syscalls_action: "str | None" = None   # above the highest known
                                   # (sandbox.seccomp._unknown)

    __record_types__ = field_types(program=bytes, default_action=str,
                                   architectures=tuple[str, ...], syscalls=int,
                                   skipped=tuple[str, ...], replaced=tuple[str, ...],
                                   unknown_syscalls_action=str | None)

    @property
    def instructions(self) -> int:
        return len(self.program) // 8


@frozen
class Restrictions:
    """sandbox.seccomp.prepare_restrictions: address_families and denied syscalls."""

    families: "tuple | None"       # address_families as the spec lists them, or None
    denied: tuple                  # syscalls and @groups denied with EPERM
    program: bytes = field(repr=lambda b: f"<{len(b) // 8} BPF instructions>")

    __record_types__ = field_types(families=tuple[str, ...] | None, denied=tuple[str, ...],
                                   program=bytes)


def load_program(program: bytes, what: str) -> None:
    """Load one more filter (sandbox.seccomp.restrict_suid_sgid, prepare_restrictions)."""
    try:
        _libc.seccomp_load_bpf(program)
    except OSError as e:
        raise SetupError("seccomp", e.errno or 0,
                         f"load the {what} filter ({len(program) // 8} instructions)") from None


def apply(p: Prepared) -> None:
    """Load the program.  Needs no_new_privs (or CAP_SYS_ADMIN): the shim sets it first."""
    try:
        _libc.seccomp_load_bpf(p.program)
    except OSError as e:
        raise SetupError("seccomp", e.errno or 0,
                         f"load the filter ({p.instructions} instructions)") from None
