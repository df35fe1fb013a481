"""The fast spawn path: a fork server, so a spawn costs a fork, not an interpreter.

Like multiprocessing's forkserver: the server is started once with a clean exec
(`python -I -S`, never forked from the possibly multithreaded caller), imports every
module a step can use, and then serves requests on a unix socket, single-threaded.
Per request it forks; the child runs wrapperd.shim.start() -- the one start, the same
steps as the shim -- on the plan the caller prepared (sandbox.plan), and execs.

  client.py    ForkServer and the process-wide default one (what callers use)
  protocol.py  what the two say to each other: the request, the replies, the fds
  server.py    the server process: spares, pid namespaces made ahead, the workers

What differs from the plain path: the shim's parent is the server, not the caller --
which matters to `pdeathsig` (it fires when the server exits; the server exits as soon
as the caller closes the socket or dies) and to the cgroup and other process state a
target inherits when the spec does not set it (the server's, inherited from the caller
when the server started).  A spec that needs the caller's *current* such state should
use the plain path.

This package imports nothing until a name is used: the server imports only its own
module (server.py), never the client's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .client import ForkServer, default, shutdown_default

__all__ = ["ForkServer", "default", "shutdown_default"]


def __getattr__(name: str):
    if name in __all__:
        from . import client
        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
