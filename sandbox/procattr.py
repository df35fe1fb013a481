"""Per-process attributes: oom_score_adj, nice, session, umask, cwd, pdeathsig,
dumpable, no_new_privs.  Each a small side-effect function; the shim decides when."""

from __future__ import annotations

import os

from . import _libc
from .errors import SetupError

__all__ = ["set_oom_score_adj", "set_nice", "new_session", "set_pdeathsig",
           "set_dumpable", "set_no_new_privs"]


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


def new_session() -> None:
    """setsid(2): a new session and process group, and no controlling terminal -- a
    target left on the caller's terminal could push input into it with TIOCSTI
    (bubblewrap CVE-2017-5226; dev.tty.legacy_tiocsti is 1 on many kernels).

    setsid() fails with EPERM in a process that already leads a process group: a shim
    exec'd by an interactive shell (job control makes each job a group) or by an init
    as a session leader.  Only a child, which leads nothing, can then start a session:
    fork once, the shim staying outside as the supervisor namespaces.py uses for a pid
    namespace (signals forwarded, exit status passed on, no fds held).  Returns only in
    the process that goes on to become the target.
    """
    try:
        os.setsid()
        return
    except OSError as e:
        if e.errno != 1:            # EPERM
            raise SetupError("session", e.errno, "setsid") from None
    # Already in sys.modules: prepare() (and plan.decode) import it for this step.
    from . import namespaces
    namespaces.fork_supervised("session", "fork to leave the caller's process group")
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
