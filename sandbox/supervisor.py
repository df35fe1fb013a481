"""The processes that stay beside a target: the outside supervisor and the pid-1 reaper.

wrapperd execs the target, so nothing of it stays -- except where it must fork: into a
new pid namespace (the target is pid 2 under a reaper, unless it is pid 1 itself), or
out of the caller's process group for a new session.  Then the process left behind
forwards the signals an init sends (FORWARDED_SIGNALS), reaps (as pid 1, every orphan
too), exits with the target's status (128+N when killed by signal N), holds no fd and
nothing of the caller's environment, is non-dumpable, and names itself
(wrapperd-reaper, wrapperd-super) so that `sandbox inspect` and ps can tell.  The fork
server's premade reaper is the same supervise() (sandbox.forkserver).
"""

from __future__ import annotations

import _signal as signal
import os

from . import _libc
from .errors import EXIT_FAILURE, SetupError

__all__ = ["FORWARDED_SIGNALS", "REAPER_COMM", "SUPERVISOR_COMM", "exit_code", "fork",
           "fork_supervised", "supervise"]

# What a supervisor or reaper passes on to the target (SIGKILL and SIGSTOP cannot be).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                     signal.SIGUSR2)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N when killed."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def fork_supervised(step: str, what: str) -> None:
    """Fork once, the parent staying behind as supervise() does for a pid namespace:
    signals forwarded, the child's exit status passed on (128+N when killed by signal
    N), no fd held.  Returns only in the child.  For other steps that need a fork (the
    session step, when the shim leads its process group): one supervisor, not two."""
    fork(reaper=False, step=step, what=what)


def fork(reaper: bool, step: str = "namespaces",
         what: str = "pid: fork into the pid namespace",
         outside: bool = True) -> None:
    """Fork into the pid namespace.  Returns only in the process that becomes the target.
    outside=False: this process already is pid 1 of the new namespace, and only the
    reaper's part is left (fork the target, supervise it).

    Forwarded signals are blocked across each fork so none is lost (a blocked signal is
    queued even for a namespace's pid 1) and each parent installs its forwarding
    handlers before unblocking them; each child restores the caller's dispositions and
    mask, since both survive execve.
    """
    # Whatever stays behind is a helper beside the target: it keeps nothing of the
    # caller's environment (done before the fork, so there is no moment it has it).
    from . import procattr
    procattr.erase_environment(step)
    saved = {s: signal.getsignal(s) for s in FORWARDED_SIGNALS}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    # The reaper arms PDEATHSIG and then checks that the shim outside did not already
    # die (its getppid() says nothing: 0, the parent is outside its namespace).  The
    # shim holds this pipe's write end until it exits, so EOF on the read end means it
    # is gone.  (A pipe rather than poll() on a pidfd: select would cost an import.)
    alive_r, alive_w = os.pipe() if reaper and outside else (-1, -1)
    try:
        child = os.fork() if outside else 0
    except OSError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if alive_r >= 0:
            os.close(alive_r)
            os.close(alive_w)
        raise SetupError(step, e.errno or 0, what) from None
    if child:
        supervise(child, old_mask, pid_1=False, keep=alive_w)     # never returns
    if reaper and outside:
        os.close(alive_w)
        try:
            _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.set_blocking(alive_r, False)
            try:
                gone = os.read(alive_r, 1) == b""
            except BlockingIOError:
                gone = False
            if gone:
                os._exit(EXIT_FAILURE)   # the shim outside is gone: nobody to report to
        finally:
            os.close(alive_r)
    if reaper:
        try:
            target = os.fork()
        except OSError as e:
            raise SetupError("namespaces", e.errno or 0,
                             "pid: fork the target inside the pid namespace") from None
        if target:
            supervise(target, old_mask, pid_1=True)      # never returns
    for s, h in saved.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# What a helper that stays beside a target calls itself (/proc/PID/comm).
REAPER_COMM = "wrapperd-reaper"
SUPERVISOR_COMM = "wrapperd-super"


def _set_comm(name: str) -> None:
    try:
        _libc.set_name(name.encode())
    except OSError:
        pass                    # a name is a courtesy: never a reason to fail


def supervise(child: int, old_mask, pid_1: bool, keep: int = -1) -> "None":
    """Wait for child, forward signals to it, exit with its status.  As pid 1 of the
    namespace, also reap every orphan reparented to us.  keep: the one fd to hold (the
    write end of the reaper's is-the-shim-alive pipe, see fork())."""
    code = EXIT_FAILURE
    try:
        # Named for what it is (`sandbox inspect`, ps): the comm, 15 bytes at most.
        _set_comm(REAPER_COMM if pid_1 else SUPERVISOR_COMM)
        # Hold nothing the target should not have: an open pipe end here would keep the
        # caller from seeing EOF (on the status fd, on the target's stdout).
        if keep >= 0:
            os.closerange(0, keep)
            os.closerange(keep + 1, 1 << 20)
        else:
            os.closerange(0, 1 << 20)

        def forward(sig, _frame):
            try:
                os.kill(child, sig)
            except OSError:
                pass

        for s in FORWARDED_SIGNALS:
            signal.signal(s, forward)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        while True:
            try:
                pid, status = os.waitpid(-1 if pid_1 else child, 0)
            except ChildProcessError:
                break
            if pid == child:
                code = exit_code(status)
                break
    except BaseException:
        pass
    finally:
        os._exit(code)
