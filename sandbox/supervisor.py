"""The processes that stay beside a target: the outside supervisor and the pid-1 reaper.

wrapperd execs the target, so nothing of it stays -- except where it must fork: into a
new pid namespace (the target is pid 2 under a reaper, unless it is pid 1 itself), or
out of the caller's process group for a new session.  Then the process left behind
forwards the signals an init sends (FORWARDED_SIGNALS), reaps (as pid 1, every orphan
too), exits with the target's status (128+N when killed by signal N), holds no fd and
nothing of the caller's environment, is non-dumpable, and names itself
(wrapperd-reaper, wrapperd-super) so that `sandbox inspect` and ps can tell.  The fork
server's premade reaper is the same (sandbox.forkserver).

What stays is not a Python interpreter (~4-6 MB of memory each) but the small static
helper, sandbox/helper.c (`wrapperd-helper` beside this package, built by `python3 -I
-m sandbox.launchers`), which the process staying behind execs (become()): the same
guarantees in ~10-50 KB.  Its binary is opened before anything can change what its path
names (open_helper(): before a mount namespace is joined or changed) and exec'd
through that fd.  The process going on waits until the helper says it is ready
(await_ready(): non-dumpable, every fd closed, its handlers in place) before it runs
anything of the target's.  Without the binary (a source tree nobody built it in, or an
exec that fails: a noexec mount) supervise() does the same in Python: the same
guarantees, with an interpreter's memory.
"""

from __future__ import annotations

import _signal as signal
import os

from . import _libc
from .errors import EXIT_FAILURE, SetupError

__all__ = ["FORWARDED_SIGNALS", "HELPER", "REAPER_COMM", "SUPERVISOR_COMM", "await_ready",
           "become", "close_all_but", "exit_code", "fork", "fork_supervised", "helper_path",
           "is_helper", "open_helper", "supervise"]

# What a supervisor or reaper passes on to the target (SIGKILL and SIGSTOP cannot be).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                     signal.SIGUSR2)

# What a helper that stays beside a target calls itself (/proc/PID/comm, and argv[0]
# of the static helper).
REAPER_COMM = "wrapperd-reaper"
SUPERVISOR_COMM = "wrapperd-super"

# The static helper's file name, in this package's directory: found where the code
# that runs it was imported from -- never through PATH, the working directory or
# anything else of the caller's.  Whoever can replace it could replace this module
# too, so it is trusted exactly as much as the package.  Not in the venv's bin: the
# package directory is where an installed wheel's code is, whichever venv runs it.
HELPER = "wrapperd-helper"


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N when killed."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def helper_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), HELPER)


def open_helper() -> int:
    """An fd (close-on-exec) on the static helper, to exec later through it whatever
    its path names by then; -1 when there is none (the Python fallback, supervise())."""
    try:
        return os.open(helper_path(), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return -1


def is_helper(cmdline: bytes) -> bool:
    """Is this /proc/PID/cmdline the static helper's (become())?"""
    name, _, rest = cmdline.partition(b"\0")
    return (name, rest.partition(b"\0")[0]) in (
        (REAPER_COMM.encode(), b"reaper"), (REAPER_COMM.encode(), b"join-reaper"),
        (SUPERVISOR_COMM.encode(), b"supervise"))


def fork_supervised(step: str, what: str, helper: "int | None" = None) -> None:
    """Fork once, the parent staying behind as supervise() does for a pid namespace:
    signals forwarded, the child's exit status passed on (128+N when killed by signal
    N), no fd held.  Returns only in the child.  For other steps that need a fork (the
    session step, when the shim leads its process group): one supervisor, not two."""
    fork(reaper=False, step=step, what=what, helper=helper)


def fork(reaper: bool, step: str = "namespaces",
         what: str = "pid: fork into the pid namespace",
         outside: bool = True, helper: "int | None" = None) -> int:
    """Fork into the pid namespace.  Returns only in the process that becomes the target:
    with reaper, the fd its reaper says it is ready on, which the caller awaits
    (await_ready) before anything of the target's runs -- the shim's reaper step, so
    that the reaper's exec of the helper runs beside the steps in between -- else -1.
    outside=False: this process already is pid 1 of the new namespace, and only the
    reaper's part is left (fork the target, supervise it).  helper: open_helper()'s fd,
    opened before anything changed what its path names (None: open it now).

    Forwarded signals are blocked across each fork so none is lost (a blocked signal is
    queued even for a namespace's pid 1, and the mask and what is pending survive
    execve), and each parent installs its forwarding handlers before unblocking them;
    each child restores the caller's dispositions and mask, since both survive execve.
    The supervisor's child waits until it is ready (await_ready) before it goes on.
    """
    opened_here = helper is None
    if helper is None:
        helper = open_helper()
    saved = {s: signal.getsignal(s) for s in FORWARDED_SIGNALS}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    # The reaper arms PDEATHSIG and then checks that the shim outside did not already
    # die (its getppid() says nothing: 0, the parent is outside its namespace): it
    # writes to `armed`, whose read end only the shim holds -- EPIPE if it is gone --
    # and the shim waits for that before it execs the helper, which holds no fd.
    # (Pipes are close-on-exec: become() passes on only the one it is given.)
    armed_r, armed_w = os.pipe() if reaper and outside else (-1, -1)
    ready_r, ready_w = os.pipe() if outside else (-1, -1)
    try:
        child = os.fork() if outside else 0
    except OSError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for fd in (armed_r, armed_w, ready_r, ready_w):
            if fd >= 0:
                os.close(fd)
        raise SetupError(step, e.errno or 0, what) from None
    if child:
        os.close(ready_r)
        if armed_r >= 0:
            os.close(armed_w)
            try:
                os.read(armed_r, 1)          # b"": it died; its status is reported
            except OSError:
                pass
            os.close(armed_r)
        become(helper, child, pid_1=False, sync=ready_w)       # never returns
    if outside:
        os.close(ready_w)
    if armed_w >= 0:
        os.close(armed_r)
        try:
            _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.write(armed_w, b"A")
        except OSError:
            os._exit(EXIT_FAILURE)   # the shim outside is gone: nobody to report to
        finally:
            os.close(armed_w)
    if ready_r >= 0:
        await_ready(ready_r, step, "the supervisor")
    reaper_ready = -1
    if reaper:
        ready_r, ready_w = os.pipe()
        try:
            target = os.fork()
        except OSError as e:
            raise SetupError("namespaces", e.errno or 0,
                             "pid: fork the target inside the pid namespace") from None
        if target:
            os.close(ready_r)
            become(helper, target, pid_1=True, sync=ready_w)    # never returns
        os.close(ready_w)
        reaper_ready = ready_r
    if opened_here and helper >= 0:
        os.close(helper)                     # the caller's own fd, it closes itself
    for s, h in saved.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return reaper_ready


def await_ready(fd: int, step: str, who: str) -> None:
    """Wait for the byte a helper writes on fd once it is ready (non-dumpable, no fd
    held), then close fd.  EOF first: it died before that, so nothing may go on."""
    try:
        got = os.read(fd, 1)              # (retried on EINTR: PEP 475)
    except OSError as e:
        raise SetupError(step, e.errno or 0, f"wait for {who} to be ready") from None
    finally:
        os.close(fd)
    if not got:
        raise SetupError(step, 0, f"{who} exited before it was ready")


def become(helper: int, child: int, pid_1: bool, sync: int = -1,
           join: bool = False) -> None:
    """Stay beside child as its reaper (pid_1) or supervisor: exec the static helper
    through its fd (open_helper()), else, if there is none or the exec fails,
    supervise() in Python.  sync: the fd to tell the other side on that we are ready
    (await_ready; -1: none).  join: a fork server's reaper, first joins on sync the
    namespaces its worker child makes (namespaces.join_for_worker; the helper does it
    in C).  Never returns."""
    # Nothing of ours from here on but sync (and the helper's binary, close-on-exec):
    # the helper closes everything else itself first thing, but nothing need be there
    # to close; the Python fallback holds nothing either while it joins.
    close_all_but(helper, sync)
    if helper >= 0:
        try:
            for fd in sorted({helper, sync} - {-1}):
                os.set_inheritable(fd, fd == sync)
            name = REAPER_COMM if pid_1 else SUPERVISOR_COMM
            mode = "join-reaper" if join else "reaper" if pid_1 else "supervise"
            if pid_1 and not join:
                _keep_kill()
            os.execve(helper, [name, mode, str(child), str(sync)], {})
        except OSError:
            pass             # a noexec mount, say: the Python supervisor then
    if join:
        from . import namespaces
        namespaces.join_for_worker(sync)
    supervise(child, pid_1, sync)


_CAP_KILL = 5


def _keep_kill() -> None:
    """A reaper in a user namespace that does not map its id (`untrusted`: root inside
    is the target's dynamic id, wrapperd's host root is mapped to nothing) holds every
    capability of that namespace until its exec, and none after: a process whose uid
    is not 0 there loses them at execve.  It could then not signal a target of another
    uid, and a SIGTERM forwarded to it would never arrive.  CAP_KILL raised in the
    ambient set survives the exec, and acts only over that namespace's processes.
    Where this process is uid 0 (a mapped root, or no user namespace) exec keeps its
    capabilities anyway: nothing to do."""
    if os.getuid() == 0:
        return
    try:
        eff, prm, inh = _libc.capget()
        bit = 1 << _CAP_KILL
        if prm & bit:
            _libc.capset(eff, prm, inh | bit)
            _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_RAISE, _CAP_KILL)
    except OSError:
        pass             # then the signals reach only targets of its own uid


def close_all_but(*keep: int) -> None:
    """Close every fd but keep (-1 in it: nothing)."""
    lo = 0
    for fd in sorted(set(keep) - {-1}):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def _set_comm(name: str) -> None:
    try:
        _libc.set_name(name.encode())
    except OSError:
        pass                    # a name is a courtesy: never a reason to fail


def supervise(child: int, pid_1: bool, sync: int = -1) -> "None":
    """The Python fallback of the static helper (helper.c), with its guarantees: wait
    for child, forward signals to it, exit with its status.  As pid 1 of the namespace,
    also reap every orphan reparented to us.  sync: as become()'s.  Called with the
    forwarded signals blocked (fork()); never returns."""
    code = EXIT_FAILURE
    try:
        # Named for what it is (`sandbox inspect`, ps): the comm, 15 bytes at most.
        _set_comm(REAPER_COMM if pid_1 else SUPERVISOR_COMM)
        # Hold nothing the target should not have: an open pipe end here would keep the
        # caller from seeing EOF (on the status fd, on the target's stdout).
        close_all_but(sync)
        # Nothing of the caller's environment, no auxiliary vector: the helper gets
        # none by its exec; this interpreter still has both (a fork server's reaper
        # had them erased when the server started: nothing left to do there).
        from . import procattr
        procattr.erase_environment("namespaces" if pid_1 else "session")

        def forward(sig, _frame):
            try:
                os.kill(child, sig)
            except OSError:
                pass

        for s in FORWARDED_SIGNALS:
            signal.signal(s, forward)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)     # an inherited SIG_IGN reaps
        if sync >= 0:
            try:
                os.write(sync, b"R")
            except OSError:
                pass
            os.close(sync)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
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
