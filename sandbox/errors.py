"""The exception tree.  Every error the library raises derives from SandboxError."""

from __future__ import annotations

import os

__all__ = ["SandboxError", "SpecError", "SetupError", "ExecError"]


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

    def to_record(self) -> dict:
        return {"step": self.step, "errno": self.errno, "message": self.message}


class ExecError(SetupError):
    """execve of the target failed (exit 127: not found, 126: found but not runnable)."""

    def __init__(self, errno: "int | None", message: str):
        super().__init__("exec", errno, message)
