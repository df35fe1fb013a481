"""reap(): what an init calls instead of os.waitpid(-1), so that every sandbox keeps its
true exit status.

An init (pid 1 of a namespace, or a PR_SET_CHILD_SUBREAPER) must reap the orphans the
kernel hands it.  os.waitpid(-1) would reap a sandbox's own process too, and the
status would be lost: subprocess then reports 0, as if it had succeeded.  reap() looks
at each exited child first (waitid with WNOWAIT): one a Process owns is reaped through
that Process, which keeps its status for wait(); any other is reaped here, its status
returned.  It never blocks, and may be called from a SIGCHLD handler, a loop or an
asyncio callback (reentrant: a handler that interrupts it calls it again safely).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["reap", "register"]

# pid -> the Process that owns it (our direct child).  Weak: a Process dropped without
# being waited for is no longer anyone's, and reap() then reaps its child like any.
_OWNED: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_LOCK = threading.RLock()


def register(proc) -> None:
    """A new Process (sandbox.process): its pid is its own until it is reaped."""
    _OWNED[proc.pid] = proc


def reap() -> "list[tuple[int, int]]":
    """Reap every exited child of this process.  Those a sandbox.Process owns keep
    their status (its wait() and returncode give it); for the others -- orphans an init
    inherited, children it started itself -- the list of (pid, returncode) reaped,
    returncode as subprocess's (-N: killed by signal N).  [] when there is nothing to
    reap, also with no children at all."""
    out = []
    with _LOCK:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break                           # no children at all
            except InterruptedError:
                continue
            if info is None or info.si_pid == 0:
                break                           # none has exited
            pid = info.si_pid
            proc = _OWNED.get(pid)
            if proc is not None:
                if not proc._reap():            # its own waitpid keeps the status
                    # Its wait() is under way (we interrupted it, in a SIGCHLD
                    # handler): it reaps it once we return.  The next zombie waitid
                    # would show is this one again: the rest wait for the next call.
                    break
                _OWNED.pop(pid, None)
                continue
            try:
                _, status = os.waitpid(pid, 0)  # a zombie: does not block
            except ChildProcessError:
                continue                        # reaped meanwhile by its own waiter
            out.append((pid, os.waitstatus_to_exitcode(status)))
    return out
