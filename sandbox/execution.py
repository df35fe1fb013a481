"""The target: the executable, found before any step runs, and the argv and environment
execve(2) gives it.  prepare() looks the name up as execvpe would, so "not found" is
exit 127 before any step; apply() is the shim's last step."""

from __future__ import annotations

import errno
import os

from ._record import field_types, frozen
from .errors import ExecError

__all__ = ["Prepared", "prepare", "apply", "find_executable", "DEFAULT_PATH"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@frozen
class Prepared:
    executable: str     # the path execve opens: argv[0] found in PATH
    argv: tuple         # the spec's, argv[0] as given
    env: dict           # the whole environment: nothing of the caller's is added

    __record_types__ = field_types(executable=str, argv=tuple[str, ...], env=dict[str, str])

    def __record_check__(self) -> "str | None":
        return None if self.argv else "argv: empty"


def prepare(spec) -> Prepared:
    """spec.check_runnable() has passed: argv names a program."""
    return Prepared(find_executable(spec.argv[0], spec.env.get("PATH", DEFAULT_PATH)),
                    tuple(spec.argv), dict(spec.env))


def find_executable(name: str, path: str) -> str:
    """execvpe's lookup, done up front so 'not found' is known before any step runs."""
    if "/" in name:
        if not os.path.exists(name):
            raise ExecError(errno.ENOENT, f"{name}: not found")
        return name
    denied = False
    for d in path.split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand):
            if os.access(cand, os.X_OK):
                return cand
            denied = True
    if denied:
        raise ExecError(errno.EACCES, f"{name}: found in PATH but not executable")
    raise ExecError(errno.ENOENT, f"{name}: not found in PATH {path!r}")


def apply(p: Prepared):                 # never returns
    try:
        os.execve(p.executable, list(p.argv), dict(p.env))
    except OSError as e:
        raise ExecError(e.errno, f"execve {p.executable}") from None
