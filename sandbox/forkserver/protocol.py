"""What the fork server's client and server say to each other, in one place.

The server is started as `python -I -S -c SERVER_BOOT PATHS FD` (PATHS as for
wrapperd.planned.LEAN_BOOT; FD its end of a SOCK_SEQPACKET socketpair) and says
b"ready" on FD once it serves.

A request is one message on that socket: the header b"spawn IOMASK FD,FD,..." (IOMASK:
bit i set when stdio slot i is given; then the target fd numbers of pass_fds) and, by
SCM_RIGHTS, in this order: a socket for the reply, a memfd holding the plan
(sandbox.plan), the status pipe's write end, the given stdio fds in slot order, the
pass_fds.  An empty message (or EOF) stops the server.

On the reply socket the server sends b"pid N" with, by SCM_RIGHTS, a pidfd for the
child (opened while it is still the server's unreaped child, so it is that process),
and later b"exit S" with S the raw wait status.  A request the server refuses gets no
b"pid": the reply socket is closed.  The status pipe carries what it carries for the
plain shim (EOF alone: exec'd; else one record, sandbox.errors).
"""

from __future__ import annotations

import os

MAX_FDS = 250                  # SCM_MAX_FD is 253
# Fds a request sends besides pass_fds: reply socket, plan, status pipe, three stdio.
REQUEST_FDS = 6

SERVER_BOOT = """\
import sys
sys.path += sys.argv[1].split(":")
from sandbox.forkserver import server
server.serve(int(sys.argv[2]))
"""
READY = b"ready"


def request(stdio_slots, pass_fds) -> bytes:
    """The header for a request giving these stdio slots (0-2) and pass_fds."""
    mask = sum(1 << i for i in stdio_slots)
    return b"spawn %d %s" % (mask, b",".join(b"%d" % fd for fd in pass_fds))


def parse_request(msg: bytes, nfds: int) -> "tuple[tuple, tuple]":
    """request()'s header, with the number of fds that came with it -> ((stdio slots
    given), (pass_fds targets)).  ValueError for anything else."""
    parts = msg.split(b" ")
    if len(parts) != 3 or parts[0] != b"spawn":
        raise ValueError("bad request")
    mask = int(parts[1])
    stdio = tuple(i for i in range(3) if mask >> i & 1)
    passed = tuple(int(x) for x in parts[2].split(b",") if x)
    if nfds != 3 + len(stdio) + len(passed) or any(n < 3 for n in passed) or \
            len(set(passed)) != len(passed):
        raise ValueError("bad request")
    return stdio, passed


def fd_array(fds) -> bytes:
    """SCM_RIGHTS' data for these fds."""
    import array
    return array.array("i", fds).tobytes()


def received_fds(ancdata) -> "list[int]":
    """The fds a recvmsg's ancillary data carried (SCM_RIGHTS), in order."""
    import socket
    return [fd for level, kind, data in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in memoryview(data)[:len(data) - len(data) % 4].cast("i")]


def recv_with_fds(sock, nfds: int) -> "tuple[bytes, list[int], bool]":
    """One message and the fds that came with it (close-on-exec); truncated: the
    kernel dropped fds (more than nfds were sent) -- the caller refuses the message."""
    import socket
    msg, anc, flags, _ = sock.recvmsg(4096, socket.CMSG_SPACE(4 * nfds),
                                      socket.MSG_CMSG_CLOEXEC)
    return msg, received_fds(anc), bool(flags & socket.MSG_CTRUNC)


def pid_reply(pid: int) -> bytes:
    return b"pid %d" % pid


def parse_pid_reply(msg: bytes) -> "int | None":
    return int(msg[4:]) if msg.startswith(b"pid ") and msg[4:].isdigit() else None


def exit_reply(wait_status: int) -> bytes:
    return b"exit %d" % wait_status


def parse_exit_reply(msg: bytes) -> "int | None":
    """The target's exit code (os.waitstatus_to_exitcode), or None for anything else."""
    if msg.startswith(b"exit ") and msg[5:].lstrip(b"-").isdigit():
        return os.waitstatus_to_exitcode(int(msg[5:]))
    return None
