"""File descriptors: exactly 0, 1, 2, the listening sockets and pass_fds reach the
target.

The listening sockets the listen step made (sandbox.listen) go to 3, 4, ... in the
spec's order, as systemd passes them (SD_LISTEN_FDS_START); pass_fds keep their numbers,
which the spec model keeps out of that range.  Every other fd is closed before exec --
including the spec fd, any cgroup directory fd and whatever the caller leaked to us
(runc CVE-2024-21626 was a leaked cgroup dir fd).  The status fd stays open but
close-on-exec, so its EOF tells the caller exec happened; where it sat on a listening
socket's number it moves above them (place_listening: its new number is the one a
failure is reported on, shim.Context.status_fd).
"""

from __future__ import annotations

import os

from ._record import field_types, frozen
from .errors import SetupError

__all__ = ["Prepared", "prepare", "check_pass_fds", "close_others", "place_listening",
           "read_all", "FIRST_LISTEN_FD"]

FIRST_LISTEN_FD = 3     # SD_LISTEN_FDS_START


@frozen
class Prepared:
    pass_fds: tuple     # the fds besides 0-2 that reach the target

    __record_types__ = field_types(pass_fds=tuple[int, ...])

    def __record_check__(self) -> "str | None":
        return None if all(fd >= 0 for fd in self.pass_fds) else \
            "pass_fds: non-negative integers expected"


def prepare(spec) -> Prepared:
    return Prepared(tuple(spec.pass_fds))


def read_all(fd: int, limit: "int | None" = None) -> bytes:
    """Read fd to EOF -- or to just past `limit` bytes, so the caller can tell the input
    was too large without reading all of it."""
    chunks, size = [], 0
    while limit is None or size <= limit:
        b = os.read(fd, 65536)
        if not b:
            break
        chunks.append(b)
        size += len(b)
    return b"".join(chunks)


def check_pass_fds(pass_fds) -> None:
    for fd in pass_fds:
        try:
            os.fstat(fd)
        except OSError as e:
            raise SetupError("fds", e.errno or 0, f"pass_fds: fd {fd} is not open") from None


def close_others(pass_fds, cloexec_keep=()) -> None:
    keep = sorted({0, 1, 2, *pass_fds, *cloexec_keep})
    lo = 0
    for fd in keep:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)   # close_range(2) underneath: cheap whatever the bound
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    for fd in cloexec_keep:
        os.set_inheritable(fd, False)
    for fd in (0, 1, 2):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass   # a closed stdio fd stays closed, as the caller left it


def place_listening(sockets, movable) -> tuple:
    """Put the listening sockets' fds at 3, 4, ... in order, close-on-exec cleared (the
    copies they were closed); every fd of movable (the status fd, a reaper channel:
    None or -1 for none) that sits in that range moves above it, close-on-exec.
    movable's numbers afterwards, in its order."""
    import fcntl
    end = FIRST_LISTEN_FD + len(sockets)

    def lift(fd: int) -> int:
        # Above every number in play: a socket may sit on another's place, or on a
        # closed stdio slot (0-2), which must stay closed.
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, end)
        os.close(fd)
        return new

    moved = tuple(lift(fd) if fd is not None and FIRST_LISTEN_FD <= fd < end else fd
                  for fd in movable)
    high = [lift(fd) for fd in sockets]
    for i, fd in enumerate(high):
        os.dup2(fd, FIRST_LISTEN_FD + i, inheritable=True)
        os.close(fd)
    return moved
