"""The exception tree, the exit codes and the status record.

Every error the library raises derives from SandboxError.  A shim that fails says so
three ways, all made here: its exit code (exit_code), one JSON line on the status fd
(status_record, the write side) and one stderr line (the shim's reporter).  The library
turns what it read back into the same exception (error_from_record, the read side), as
CPython's subprocess does with its child's error pipe.

The status record is `{"step": S, "errno": N, "message": M}` followed by a newline;
readers ignore members they do not understand (bubblewrap's rule for --json-status-fd),
so the record can grow.  EOF with nothing written means the exec happened: the fd is
close-on-exec.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = ["SandboxError", "SpecError", "SetupError", "ExecError", "EXIT_FAILURE",
           "EXIT_CANNOT_EXEC", "EXIT_NOT_FOUND", "exit_code", "status_record",
           "error_from_record"]

EXIT_FAILURE = 125          # wrapperd failed: bad input, or a setup step
EXIT_CANNOT_EXEC = 126      # the target was found but could not be executed
EXIT_NOT_FOUND = 127        # the target was not found (execve: ENOENT)


class SandboxError(Exception):
    """Base class of every error raised by sandbox and wrapperd."""

    # Set by the library on an error a shim reported (sandbox.spawning): the shim's exit
    # status (125, 126 or 127) and its pid, already reaped.  None otherwise.
    exit_status: "int | None" = None
    pid: "int | None" = None


class SpecError(SandboxError, ValueError):
    """The spec is bad: nothing has run yet.  The message names the field by path."""

    step = "spec"
    errno = 0

    def __init__(self, message: str, path: str = ""):
        self.path = path
        self.message = f"{path}: {message}" if path else message
        super().__init__(self.message)


class SetupError(SandboxError, OSError):
    """A setup step failed in the shim: the target was never executed."""

    def __init__(self, step: str, errno: "int | None", message: str):
        # errno: from an OSError (whose errno may be None), or 0 when no call failed.
        errno = errno or 0
        self.step = step
        self.message = message
        OSError.__init__(self, errno, message)
        self.errno = errno

    def __str__(self) -> str:
        if self.errno:
            return f"{self.step}: {self.message}: {os.strerror(self.errno)}"
        return f"{self.step}: {self.message}"

    @property
    def exit_reason(self):
        """setup_failed(step), as sandbox.process.ExitReason: the target never ran."""
        from .process import ExitReason
        return ExitReason("setup_failed", step=self.step)



class ExecError(SetupError):
    """execve of the target failed (exit 127: not found, 126: found but not runnable)."""

    def __init__(self, errno: "int | None", message: str):
        super().__init__("exec", errno, message)


def exit_code(err: BaseException) -> int:
    """The shim's exit code for err: 127/126 for execve, else 125."""
    if isinstance(err, ExecError):
        return EXIT_NOT_FOUND if err.errno == _errno.ENOENT else EXIT_CANNOT_EXEC
    return EXIT_FAILURE


def status_record(err: BaseException) -> bytes:
    """The status fd's line for err (ASCII JSON).  Imports nothing but the builtin _json
    accelerator: after the identity step the shim may be unable to read the Python
    installation, so the reporter must not need a module it has not loaded."""
    import _json
    if not isinstance(err, SandboxError):
        err = SetupError("internal", 0, f"{type(err).__name__}: {err}")
    step = getattr(err, "step", "spec")
    errno = getattr(err, "errno", 0) or 0
    message = getattr(err, "message", str(err))
    q = _json.encode_basestring_ascii
    return (f'{{"step": {q(step)}, "errno": {int(errno)}, "message": {q(message)}}}\n'
            ).encode()


def error_from_record(raw: bytes, status: "int | None", pid: "int | None") -> SandboxError:
    """What a shim wrote on its status fd (raw) and its exit status, as the exception
    it stands for; `exit_status` and `pid` set.  Unknown members are ignored; of several
    records the last wins."""
    import json
    rec = None
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            cand = json.loads(line)
        except ValueError:
            continue
        if isinstance(cand, dict) and "step" in cand:
            rec = cand
    err: SandboxError
    if rec is None:
        err = SetupError("spawn", 0, f"wrapperd wrote an unreadable status record "
                                     f"{raw[:200]!r} (exit status {status})")
    else:
        step = str(rec.get("step") or "internal")
        num = rec.get("errno") if isinstance(rec.get("errno"), int) else 0
        msg = str(rec.get("message") or "")
        if step == "spec":
            err = SpecError(msg)
        elif step == "exec":
            err = ExecError(num, msg)
        else:
            err = SetupError(step, num, msg)
    err.exit_status = status     # the shim's: 125 setup, 126/127 exec
    err.pid = pid                 # the shim's pid, already reaped
    return err
