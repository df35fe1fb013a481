"""Per-process attributes: oom_score_adj, nice, session, umask, cwd, pdeathsig,
dumpable, no_new_privs, the environment a helper keeps.  prepare() takes the spec's
values; each attribute is then a small side-effect function, and the shim decides
when."""

from __future__ import annotations

import errno
import os

from . import _libc, procfs
from ._record import field_types, frozen
from .errors import SetupError

__all__ = ["Prepared", "prepare", "set_oom_score_adj", "set_nice", "new_session",
           "set_pdeathsig", "set_dumpable", "set_no_new_privs", "erase_environment"]


@frozen
class Prepared:
    """The spec's per-process attributes, for the shim's steps of the same names.
    None: left as the caller has it."""
    oom_score_adj: "int | None"
    nice: "int | None"
    umask: "int | None"
    cwd: "str | None"           # None: the caller's directory, no chdir
    pdeathsig: "int | None"
    no_new_privs: bool
    new_session: bool

    __record_types__ = field_types(oom_score_adj=int | None, nice=int | None, umask=int | None,
                                   cwd=str | None, pdeathsig=int | None, no_new_privs=bool,
                                   new_session=bool)


def prepare(spec) -> Prepared:
    umask = spec.user.umask if spec.user is not None else None
    return Prepared(oom_score_adj=spec.oom_score_adj, nice=spec.nice,
                    umask=None if umask is None else int(umask, 8), cwd=spec.cwd,
                    pdeathsig=spec.pdeathsig, no_new_privs=bool(spec.no_new_privs),
                    new_session=bool(spec.new_session))


def set_oom_score_adj(value: int, pid: "int | str" = "self") -> None:
    """pid: this process, or another (a fork server's premade reaper, see shim)."""
    # Lowering it below the current value needs CAP_SYS_RESOURCE: do it while privileged.
    try:
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise SetupError("oom_score_adj", e.errno, f"write {value}" +
                         ("" if pid == "self" else f" for pid {pid}")) from None


def set_nice(value: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as e:
        raise SetupError("nice", e.errno, f"setpriority {value}") from None


def new_session(helper: "int | None" = None) -> None:
    """setsid(2): a new session and process group, and no controlling terminal -- a
    target left on the caller's terminal could push input into it with TIOCSTI
    (bubblewrap CVE-2017-5226; dev.tty.legacy_tiocsti is 1 on many kernels).

    setsid() fails with EPERM in a process that already leads a process group: a shim
    exec'd by an interactive shell (job control makes each job a group) or by an init
    as a session leader.  Only a child, which leads nothing, can then start a session:
    fork once, the shim staying outside as the supervisor (sandbox.supervisor) does for a pid
    namespace (signals forwarded, exit status passed on, no fds held).  Returns only in
    the process that goes on to become the target.  helper: supervisor.open_helper()'s
    fd, opened before the mounts step could change what its path names (None: open it
    here, when nothing could have).
    """
    try:
        os.setsid()
        return
    except OSError as e:
        if e.errno != errno.EPERM:
            raise SetupError("session", e.errno, "setsid") from None
    # Already in sys.modules: prepare() (and plan.decode) import it for this step.
    from . import supervisor
    supervisor.fork_supervised("session", "fork to leave the caller's process group",
                               helper)
    try:
        os.setsid()
    except OSError as e:
        raise SetupError("session", e.errno, "setsid in the forked child") from None


def set_pdeathsig(sig: int, expected_ppid: int) -> None:
    # Cleared by the kernel whenever our credentials change: set it after the uid
    # change.  If the parent already died, the signal would never come: fail closed.
    try:
        _libc.prctl(_libc.PR_SET_PDEATHSIG, sig)
    except OSError as e:
        raise SetupError("pdeathsig", e.errno, f"PR_SET_PDEATHSIG {sig}") from None
    if os.getppid() != expected_ppid:
        raise SetupError("pdeathsig", 0, "the parent exited before pdeathsig was armed")


def set_dumpable(on: bool) -> None:
    try:
        _libc.prctl(_libc.PR_SET_DUMPABLE, 1 if on else 0)
    except OSError as e:
        raise SetupError("dumpable", e.errno, "PR_SET_DUMPABLE") from None


def set_no_new_privs() -> None:
    try:
        _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        raise SetupError("no_new_privs", e.errno, "PR_SET_NO_NEW_PRIVS") from None


def erase_environment(step: str) -> None:
    """Leave nothing of the caller's environment, and no auxiliary vector, for
    /proc/PID/environ and /proc/PID/auxv to show: for a process about to fork a helper
    that stays alive beside a target (a supervisor, a pid namespace's reaper) or that
    is one (the fork server).  The forked child inherits the result; the target's own
    environment is the spec's, given to execve.

    Being non-dumpable does not keep these files from a target: one that passes the
    kernel's ptrace read check (CAP_SYS_PTRACE) reads both -- and on the 6.18 kernel
    these tests run on, so does a root target without it -- so the data must go.
    /proc/PID/environ is read from the process's memory, between env_start and env_end
    of its first stack, where execve put the strings -- os.environ is a copy, and
    changing it changes nothing there.  So the strings are zeroed in place (this needs
    nothing but the addresses), then PR_SET_MM_MAP makes the range empty and replaces
    the kernel's copy of the auxiliary vector (the addresses of the stack's random
    bytes, of the vDSO and the program headers) by its terminator alone.  That prctl
    needs no capability, only CONFIG_CHECKPOINT_RESTORE; without it the range reads as
    NUL bytes and the vector stays.  Every other descriptor is passed back as it is
    (/proc/self/stat shows them to this process; the brk, which it does not, comes
    from sbrk(0)).  os.environ, the interpreter's copy, is emptied too."""
    try:
        fields = procfs.stat()
        # proc(5) numbers the fields from 1.
        stat = {n: int(fields[n - 1]) for n in (26, 27, 28, 45, 46, 47, 48, 49, 50, 51)}
    except (OSError, IndexError, ValueError) as e:
        raise SetupError(step, getattr(e, "errno", 0) or 0,
                         "read /proc/self/stat to erase the environment a supervising "
                         "process would keep") from None
    env_start, env_end = stat[50], stat[51]
    if not env_start:       # (shown to every process for itself: not to be seen here)
        raise SetupError(step, 0, "/proc/self/stat shows no environment to erase")
    os.environ.clear()
    if env_end > env_start:
        _libc.zero_memory(env_start, env_end - env_start)
    try:
        # auxv: its terminator alone; brk: sbrk(0), read last (see _libc.set_mm_map)
        _libc.set_mm_map(start_code=stat[26], end_code=stat[27], start_stack=stat[28],
                         start_data=stat[45], end_data=stat[46], start_brk=stat[47],
                         arg_start=stat[48], arg_end=stat[49], env_start=env_start,
                         env_end=env_start, exe_fd=2**32 - 1)
    except OSError:
        pass                # the zeroed strings stay: NUL bytes, nothing of the caller's
