"""The fast spawn path: a fork server, so a spawn costs a fork, not an interpreter.

Like multiprocessing's forkserver: the server is started once with a clean exec
(`python -I -S`, never forked from the possibly multithreaded caller), imports every
module a step can use, and then serves requests on a unix socket, single-threaded.
Per request it forks; the child runs wrapperd.shim's STEPS -- the one order, the same
code as the shim -- on the plan the caller prepared (sandbox.plan), and execs.

A request is one SOCK_SEQPACKET message: a short header and, by SCM_RIGHTS, a socket
for the reply, a memfd holding the plan, the status pipe's write end, the target's
stdio and its pass_fds (the caller's own fds: the target gets the caller's, not the
server's, stdio).  The server forks, opens a pidfd for the child while it is still its
unreaped child, sends the pid and that pidfd back, and closes its copies before the
next request (so no child ever holds another request's fds).  When the child exits
(its pidfd polls readable) the server reaps it and sends the wait status.  The caller
reads the status pipe to EOF exactly as spawn() does: EOF with nothing written means
the target was exec'd; otherwise one JSON record names the failed step.

What differs from the plain path: the shim's parent is the server, not the caller --
which matters to `pdeathsig` (it fires when the server exits; the server exits as soon
as the caller closes the socket or dies) and to the cgroup and other process state a
target inherits when the spec does not set it (the server's, inherited from the caller
when the server started).  A spec that needs the caller's *current* such state should
use the plain path.
"""

from __future__ import annotations

import os

from . import errors
from .errors import EXIT_FAILURE, SandboxError, SetupError, SpecError

# For type checkers only (mypy knows the name): the server imports lazily, and importing
# typing for this would cost every fork-server start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import subprocess
    from typing import Unpack

    from .spawning import SpawnFields

__all__ = ["ForkServer", "default", "shutdown_default"]

MAX_FDS = 250                  # SCM_MAX_FD is 253
_SHIM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The server's interpreter runs this (`python -I -S -c SERVER_BOOT PATHS FD`; PATHS as
# for wrapperd.planned.LEAN_BOOT).
SERVER_BOOT = """\
import sys
sys.path += sys.argv[1].split(":")
from sandbox.forkserver import serve
serve(int(sys.argv[2]))
"""


# =========================================================================== server

def _preload() -> None:
    """Everything a child may import, imported once here: a forked child then needs no
    file access for code (see wrapperd/shim.py) and pays nothing for imports."""
    from wrapperd import shim
    for name in ("_json", "_signal", "fcntl", "grp", "resource", "sandbox._libc",
                 "sandbox.plan", "wrapperd.planned",
                 *(module for module, _needed in shim.STEP_MODULES)):
        __import__(name)
    # ctypes resolves (dlsym) and caches a libc function on first use: once here, not
    # in every child.
    import sys
    libc = sys.modules["sandbox._libc"]._libc
    for fn in ("capget", "capset", "unshare", "setns", "syscall", "mount", "umount2"):
        getattr(libc, fn, None)
    sys.modules["sandbox.caps"].last_cap()      # read once, inherited by every child


# Decoded plans by their encoded bytes, most recent last (see _plan_for).  A child
# forked after a plan was decoded here finds it in its copy of this dict.
_PLANS: dict = {}
_MAX_PLANS = 16
# The server's own pid namespace, to return to after making one for a spare.
_OWN_PIDNS = -1


def serve(ctl_fd: int) -> None:
    import select
    import socket
    global _OWN_PIDNS
    _preload()
    # The server stays alive beside its targets, and every reaper it forks is one's
    # pid 1: none keeps an environment to show (see procattr.erase_environment).
    from . import procattr
    # What the steps read from the environment -- where the caller moved the BPF cache
    # or the dynamic-user registry (spawning._shim_env) -- is wrapperd's own setting, not
    # the caller's: put back into os.environ, on the heap, which /proc/PID/environ (the
    # first stack's strings) does not show.
    settings = {k: v for k, v in os.environ.items() if k.startswith("WRAPPERD_")}
    procattr.erase_environment("spawn")
    os.environ.update(settings)
    try:
        _OWN_PIDNS = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        _OWN_PIDNS = -1                # no premade pid namespaces, then
    # Every object now in memory stays out of the collector's reach (gc.freeze), and no
    # collection runs in the server or its children: a collection walks every object,
    # and in a forked child each page it writes to is copied (copy-on-write).
    import gc
    gc.collect()
    gc.freeze()
    gc.disable()
    ctl = socket.socket(fileno=ctl_fd)
    ctl.setblocking(True)
    ctl.send(b"ready")
    children: dict = {}                # pidfd -> (pid, reply socket)
    poller = select.poll()
    poller.register(ctl_fd, select.POLLIN)
    while True:
        for fd, _ev in poller.poll():
            if fd == ctl_fd:
                if not _serve_one(ctl, children, poller):
                    return             # the caller closed the socket (or died): stop
            else:
                pid, reply = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                try:
                    reply.send(b"exit %d" % status)
                except OSError:
                    pass               # the caller is gone
                reply.close()


def _serve_one(ctl, children: dict, poller) -> bool:
    import select
    import socket
    try:
        msg, anc, flags, _ = ctl.recvmsg(4096, socket.CMSG_SPACE(4 * MAX_FDS),
                                         socket.MSG_CMSG_CLOEXEC)
    except ConnectionError:
        return False
    fds = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(data) - len(data) % 4
            fds += list(memoryview(data)[:n].cast("i"))
    if not msg:
        for fd in fds:
            os.close(fd)
        return False
    try:
        layout = _parse_request(msg, len(fds))
        if flags & socket.MSG_CTRUNC:
            raise ValueError("fds truncated")
    except ValueError:
        for fd in fds:
            os.close(fd)               # the caller sees EOF on its reply socket
        return True
    reply = socket.socket(fileno=fds[0])
    kind = _premade_kind(_plan_for(fds[1]))
    try:
        pid, pidfd = _start(msg, fds, layout, kind)
    except OSError:                    # fork failed (EAGAIN, ENOMEM): refuse this one;
        reply.close()                  # the caller sees no pid and raises
        return True
    finally:
        for fd in fds[1:]:
            os.close(fd)
    try:
        reply.sendmsg([b"pid %d" % pid],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, memoryview(
                          bytearray(pidfd.to_bytes(4, "little", signed=True))))])
    except OSError:
        pass                           # the caller is gone; the child still gets reaped
    children[pidfd] = (pid, reply)
    poller.register(pidfd, select.POLLIN)
    if kind not in _SPARES:
        try:
            _SPARES[kind] = _prefork(kind)     # for the next request, now this one runs
        except OSError:
            pass                       # the next request forks for itself
    return True


def _read_plan(fd: int) -> bytes:
    from . import plan as plan_mod
    size = os.fstat(fd).st_size
    return os.pread(fd, min(size, plan_mod.MAX_PLAN_BYTES + 1), 0)


def _plan_for(plan_fd: int):
    """The request's plan, decoded once per distinct plan and kept (_PLANS): a child
    forked after that -- the next spare -- has it decoded already.  None when it does
    not decode (the child then decodes it again and reports why, as the shim would)."""
    try:
        data = _read_plan(plan_fd)
    except OSError:
        return None
    plan = _PLANS.pop(data, None)
    if plan is None:
        from . import plan as plan_mod
        try:
            plan = plan_mod.decode(data)
        except Exception:              # noqa: BLE001 -- the child reports it
            return None
        while len(_PLANS) >= _MAX_PLANS:
            del _PLANS[next(iter(_PLANS))]
    _PLANS[data] = plan                # most recent last
    return plan


def _premade_kind(plan) -> "str | None":
    """The kind of spare child for this plan: None (a plain fork) or a pid namespace
    made ahead of time (sandbox.namespaces.premade_kind).  The worker moves its reaper
    into the spec's cgroup and gives it the oom score too, as the shim's own reaper,
    forked after those steps, would have them (wrapperd.shim._premade_reaper)."""
    if plan is None or _OWN_PIDNS < 0:
        return None
    from . import namespaces
    return namespaces.premade_kind(plan.namespaces)


# Children forked ahead of time, one of each kind in use (None: plain; "pid", "pid1":
# born in a new pid namespace), idle until a request is handed to one: the forks (and
# the copy-on-write faults right after them) then happen while the previous target
# runs, not while a caller waits.  Each holds nothing but its end of a socketpair.
_SPARES: dict = {}


def _prefork(kind: "str | None") -> "tuple[int, int, object]":
    """Fork a spare child of this kind: (pid, pidfd, our end of its channel).

    For a pid namespace: unshare(CLONE_NEWPID) moves only the children made after it
    into the new namespace, so this server forks the spare there and then returns to
    its own namespace for every later child (setns).  For "pid" the spare, pid 1, is
    the namespace's reaper and forks the worker (pid 2) that takes the request."""
    import socket

    from . import _libc, namespaces
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if kind is not None:
            try:
                _libc.unshare(namespaces.CLONE_FLAGS["pid"])
            except OSError:
                _no_premade()              # not allowed here: plain children from now on
                raise
        try:
            pid = os.fork()
        except BaseException:
            if kind is not None:
                _own_pidns()
            raise
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid and kind is not None:
        _own_pidns()
    if pid == 0:
        if kind == "pid":
            _reaper_spare(theirs.fileno())     # never returns
        _spare(theirs.fileno(), kind)          # never returns
    theirs.close()
    return pid, os.pidfd_open(pid), ours


def _no_premade() -> None:
    global _OWN_PIDNS
    if _OWN_PIDNS >= 0:
        os.close(_OWN_PIDNS)
        _OWN_PIDNS = -1


def _own_pidns() -> None:
    """Back to the server's own pid namespace for its later children."""
    from . import _libc, namespaces
    try:
        _libc.setns(_OWN_PIDNS, namespaces.CLONE_FLAGS["pid"])
    except OSError:
        # Every later child would be born in that namespace: stop rather than serve
        # anything from here (the caller's next spawn starts a new server).
        os._exit(70)


def _reaper_spare(chan: int) -> None:
    """Pid 1 of a premade namespace: fork the worker (pid 2) that takes the request,
    join the namespaces the worker's steps make, then reap and forward signals as the
    shim's reaper does (supervisor.supervise)."""
    import _signal as signal
    import socket

    from . import namespaces, procattr, supervisor
    try:
        # As the shim's own reaper is (the dumpable step comes first): not ptraceable,
        # its /proc/PID/mem and exe not reachable, by a target without CAP_SYS_PTRACE.
        procattr.set_dumpable(False)
        # The worker asks on this once it has made the target's other namespaces
        # (shim.Context.reaper_channel): a reaper left in the server's would show a
        # target the host's network and mounts through /proc/1.
        ours, theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX,
                                                              socket.SOCK_SEQPACKET))
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, supervisor.FORWARDED_SIGNALS)
        worker = os.fork()
        if worker == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ours)
            _spare(chan, "pid", theirs)        # never returns
        # Nothing of the server's from here on (its channel to the worker): only ours.
        os.closerange(0, ours)
        os.closerange(ours + 1, 1 << 20)
        # Forwarded signals stay blocked (queued) until _supervise handles them.
        namespaces.join_for_worker(ours)
        supervisor.supervise(worker, old_mask, pid_1=True)    # never returns
    except BaseException:              # noqa: B036 -- the child must never return
        pass
    finally:
        os._exit(EXIT_FAILURE)


def _warm() -> None:
    """In an idle spare: take now, not while a caller waits, the first copy-on-write
    faults the steps would take -- the ctypes calls and records they go through (a
    first call of each libc function in a fresh fork costs ~0.1 ms of page copies).
    Only reads: nothing here changes this process."""
    import _signal

    from . import _libc, caps
    try:
        _libc.prctl(_libc.PR_GET_DUMPABLE)
        _libc.prctl(_libc.PR_CAPBSET_READ, 0)
        _libc.prctl(_libc.PR_GET_NO_NEW_PRIVS)
        _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_IS_SET, 0)
        _libc.capget()
        caps._status_masks()
        _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
    except OSError:
        pass


def _spare(chan: int, kind: "str | None", reaper: int = -1) -> None:
    """reaper: with kind "pid", our end of the socket to the reaper above us."""
    code = EXIT_FAILURE
    try:
        import socket
        # Drop every fd of the server's (its socket, other requests' reply sockets and
        # pidfds): only the channel (and the reaper's) stays.
        lo = 0
        for fd in sorted({chan, reaper} - {-1}):
            os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 1 << 20)
        _warm()
        sock = socket.socket(fileno=chan)
        msg, anc, flags, _ = sock.recvmsg(4096, socket.CMSG_SPACE(4 * MAX_FDS),
                                          socket.MSG_CMSG_CLOEXEC)
        fds = [fd for level, kind_, data in anc
               if level == socket.SOL_SOCKET and kind_ == socket.SCM_RIGHTS
               for fd in memoryview(data)[:len(data) - len(data) % 4].cast("i")]
        if not msg or flags & socket.MSG_CTRUNC:
            code = 0                   # the server closed: nothing to do
        else:
            os.close(chan)
            _child(fds, _parse_request(msg, len(fds)), kind, reaper)     # never returns
    except BaseException:              # noqa: B036 -- the child must never return
        pass
    finally:
        os._exit(code)


def _start(msg: bytes, fds: list, layout, kind) -> "tuple[int, int]":
    """Hand the request to the spare child of its kind (or make one now); (pid, pidfd).
    A plain child forked here, when no premade pid namespace can be made, runs the
    shim's own namespaces step (supervisor, reaper) instead."""
    import socket
    spare = _SPARES.pop(kind, None)
    if spare is None and kind is not None:
        try:
            spare = _prefork(kind)     # made now: still no reaper forked after a request
        except OSError:
            spare = None               # a plain fork below: its steps make the namespace
    if spare is not None:
        pid, pidfd, chan = spare
        try:
            chan.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_array(fds))])
            return pid, pidfd
        except OSError:                # it died: reap it, fork instead
            try:
                import _signal
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            os.close(pidfd)
        finally:
            chan.close()
    pid = os.fork()
    if pid == 0:
        _child(fds, layout, None)      # never returns
    return pid, os.pidfd_open(pid)     # still our unreaped child: it is this process


def _parse_request(msg: bytes, nfds: int) -> "tuple[tuple, tuple]":
    """b"spawn IOMASK FD,FD,..." -> ((stdio targets given), (pass_fds targets))."""
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


def _child(fds: list, layout, premade: "str | None", reaper: int = -1) -> None:
    """In the forked child: put the fds in place, decode the plan (unless the server
    had, before this child was forked), run the steps.  premade: the pid namespace this
    child was born in (see _prefork); reaper: then, the socket to its reaper."""
    status = None
    code = EXIT_FAILURE
    try:
        from wrapperd import shim

        from . import plan as plan_mod
        stdio, passed = layout
        _reply, plan_fd, status_src = fds[:3]
        sources = fds[3:]
        targets = dict(zip(stdio + passed, sources, strict=True))
        # Move everything above any fd number in play, then into place: a source may
        # sit on another's target number.  The status fd first, so that whatever fails
        # from here on is reported on it (EOF without a record would read "exec'd").
        high = max([*fds, *targets, 2, reaper]) + 1
        import fcntl
        status = fcntl.fcntl(status_src, fcntl.F_DUPFD_CLOEXEC, high)
        if reaper >= 0:                # out of the way of the targets too
            reaper = fcntl.fcntl(reaper, fcntl.F_DUPFD_CLOEXEC, high)
        data = _read_plan(plan_fd)
        moved = {t: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, high) for t, s in targets.items()}
        for t, s in moved.items():
            os.dup2(s, t)              # inheritable
        final = max([*targets, 2]) + 1
        if final != status:
            os.dup2(status, final, inheritable=False)
            status = final
        if reaper >= 0 and reaper != final + 1:    # just above the status fd
            os.dup2(reaper, final + 1, inheritable=False)
            reaper = final + 1
        keep = sorted({*targets, status} | ({reaper} if reaper >= 0 else set()))
        lo = 0
        for fd in keep:                # everything else goes now: the server's socket,
            if fd > lo:                # the plan memfd, every high copy
                os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 1 << 20)
        # The server's own stdio is not the caller's: a slot the caller did not give
        # (its own fd was closed) stays closed, as it would through the plain shim.
        plan = _PLANS.get(data)
        if plan is None:
            plan = plan_mod.decode(data)
        if premade is not None:
            from . import namespaces
            if namespaces.premade_kind(plan.namespaces) != premade:
                raise SetupError("namespaces", 0, f"this child was born in a {premade!r} "
                                 "pid namespace the plan does not ask for")
        # ppid: ours, not the server's that decoded the plan.
        shim.start(plan, shim.Context(status, os.getppid(), premade, reaper))
    except BaseException as e:         # noqa: B036 -- the child must never return
        try:
            from wrapperd import planned
            code = planned.report(e, status)
        except BaseException:          # noqa: B036
            code = EXIT_FAILURE
    finally:
        os._exit(code)


# =========================================================================== client

class _Child:
    """What sandbox.Process needs of its handle (subprocess.Popen's shape), for a
    target forked by the server: the wait status comes from the server."""

    def __init__(self, pid: int, reply, args: list, stdin, stdout, stderr, pidfd):
        import threading
        self.pid = pid
        self.args = args
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: "int | None" = None
        self._reply = reply
        self._pidfd = os.dup(pidfd)    # our own: Process closes its pidfd on close()
        self._lost = False             # the server exited before reporting
        self._lock = threading.Lock()

    def _read_status(self, timeout: "float | None", block: bool = True) -> bool:
        """Read the server's exit record if it arrives within timeout (None: wait)."""
        import select
        ms = None if timeout is None else max(0.0, timeout) * 1000
        if not self._lock.acquire(block, -1 if timeout is None or not block
                                  else max(0.0, timeout)):
            return self.returncode is not None     # another thread is reading it
        try:
            if self.returncode is not None:
                return True
            if not self._lost:
                p = select.poll()
                p.register(self._reply.fileno(), select.POLLIN)
                if not p.poll(ms):
                    return False
                msg = self._reply.recv(64)
                self._reply.close()
                if msg.startswith(b"exit "):
                    self.returncode = os.waitstatus_to_exitcode(int(msg[5:]))
                    self._close_pidfd()
                    return True
                self._lost = True
            # EOF: the server exited before the target did, and took its exit status
            # with it.  Wait until the target is gone all the same (its pidfd polls
            # readable), so wait() keeps its meaning, then say so.
            p = select.poll()
            p.register(self._pidfd, select.POLLIN)
            if not p.poll(ms):
                return False
            raise SetupError("spawn", 0, f"the fork server exited before pid {self.pid}: "
                             "its exit status is lost")
        finally:
            self._lock.release()

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        try:
            self._close_pidfd()
        except (AttributeError, OSError):
            pass

    def poll(self) -> "int | None":
        self._read_status(0, block=False)
        return self.returncode

    def wait(self, timeout: "float | None" = None) -> int:
        import subprocess
        if not self._read_status(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None      # _read_status said it is known
        return self.returncode

    def send_signal(self, sig: int) -> None:
        import signal
        if self.returncode is None and self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        import signal
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: "bytes | None" = None, timeout: "float | None" = None):
        """subprocess.Popen.communicate for the PIPE ends: feed input, read to EOF."""
        import select
        import subprocess
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        out: "dict[str, list[bytes]]" = {}
        fds: "dict[int, tuple[str, memoryview | None]]" = {}
        if self.stdin is not None:
            if input:
                fds[self.stdin.fileno()] = ("in", memoryview(input))
                os.set_blocking(self.stdin.fileno(), False)
            else:
                self.stdin.close()
        for name in ("stdout", "stderr"):
            f = getattr(self, name)
            if f is not None:
                fds[f.fileno()] = (name, None)
                out[name] = []
        p = select.poll()
        for fd, (name, _) in fds.items():
            p.register(fd, select.POLLOUT if name == "in" else select.POLLIN)
        while fds:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            for fd, _ev in p.poll(None if left is None else left * 1000):
                name, buf = fds[fd]
                if name == "in":
                    assert buf is not None
                    try:
                        n = os.write(fd, buf[:65536])
                    except BrokenPipeError:
                        n = len(buf)
                    except BlockingIOError:
                        continue
                    buf = buf[n:]
                    if buf:
                        fds[fd] = (name, buf)
                        continue
                    p.unregister(fd)
                    del fds[fd]
                    self.stdin.close()
                else:
                    b = os.read(fd, 65536)
                    if b:
                        out[name].append(b)
                        continue
                    p.unregister(fd)
                    del fds[fd]
        results: "list[bytes | None]" = []
        for name in ("stdout", "stderr"):
            f = getattr(self, name)
            if f is None:
                results.append(None)
            else:
                f.close()
                results.append(b"".join(out[name]))
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return tuple(results)


class ForkServer:
    """A fork server for sandbox.spawn(): `with ForkServer() as fs: fs.spawn(...)`.

    start() (implicit on the first spawn) costs one interpreter start and the imports;
    each spawn after that is a fork in the server.  close() stops the server (also at
    interpreter exit for the default one).  Thread-safe: any number of threads may
    spawn at once; each request has its own reply socket and status pipe."""

    def __init__(self, setup_timeout: float = 60.0):
        # threading only here, in the caller: imported in the server, it would add
        # its after-fork hooks to every fork the server makes.
        import threading
        self._lock = threading.Lock()
        self._proc: "subprocess.Popen | None" = None
        self._sock: "socket.socket | None" = None
        self.args: list = []
        self.setup_timeout = setup_timeout

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ForkServer":
        import socket
        import subprocess
        import sys

        from .spawning import _shim_env, lean_path, package_root
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self
            if self._sock is not None:          # a server that died: start another
                self._sock.close()
                self._proc = self._sock = None
            root = package_root() and lean_path()
            if root is None:
                raise SetupError("spawn", 0, "the fork server needs the sandbox and "
                                 "wrapperd packages in one directory")
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self.args = [sys.executable, "-I", "-S", "-c", SERVER_BOOT, root,
                             str(theirs.fileno())]
                # Popen forks and execs at once (no Python code in between): safe from a
                # multithreaded caller.  The server's stdout is not the caller's.
                proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL,
                                        pass_fds=(theirs.fileno(),), close_fds=True,
                                        env=_shim_env())   # PATH, registry dir
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.settimeout(self.setup_timeout)
            try:
                ready = ours.recv(16)
            except OSError:
                ready = b""
            if ready != b"ready":
                ours.close()
                proc.kill()
                proc.wait()
                raise SetupError("spawn", 0, "the fork server did not start "
                                 f"(exit status {proc.returncode})")
            ours.settimeout(None)
            self._proc, self._sock = proc, ours
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server.  Targets still running keep running (as after a plain
        spawn when the caller exits), but their exit status can no longer be collected;
        those with `pdeathsig` get it.  Idempotent."""
        import subprocess
        with self._lock:
            proc, sock = self._proc, self._sock
            self._proc = self._sock = None
        if sock is not None:
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def pid(self) -> "int | None":
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "ForkServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ spawn
    def spawn(self, target=None, *, stdin=None, stdout=None, stderr=None,
              setup_timeout: "float | None" = None, **fields: Unpack[SpawnFields]):
        """As sandbox.spawn(), through the server: a Process once the target was
        exec'd; SpecError, SetupError (with .step) or ExecError otherwise."""
        import errno as _errno
        import socket
        import time

        from wrapperd import shim

        from . import plan as plan_mod
        from .process import Process
        from .spawning import _cgroup_dirs, _read_status, build_spec, check_library_spec
        spec = build_spec(target, **fields)
        check_library_spec(spec)
        try:
            payload = plan_mod.encode(shim.prepare(spec))
        except SandboxError as e:
            # Refused before anything ran; the exit status the shim would have given.
            e.exit_status = errors.exit_code(e)
            e.pid = None
            raise
        if len(spec.pass_fds) > MAX_FDS - 6:
            raise SpecError(f"at most {MAX_FDS - 6} pass_fds through the fork server",
                            "pass_fds")
        self.start()
        sock = self._sock
        if sock is None:
            raise SetupError("spawn", _errno.ESHUTDOWN, "the fork server is closed")
        setup_timeout = self.setup_timeout if setup_timeout is None else setup_timeout
        cg_dirs = [d for d in _cgroup_dirs(spec) if not os.path.isdir(d)]

        mine: list = []                # fds to close here once sent
        parent_ends = [None, None, None]
        reply = None
        status_r = -1
        try:
            memfd = os.memfd_create("wrapperd-plan", os.MFD_CLOEXEC)
            mine.append(memfd)
            os.write(memfd, payload)
            reply, req = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            mine.append(req.detach())
            status_r, status_w = os.pipe()
            mine.append(status_w)
            slots: dict = {}
            for i, v in enumerate((stdin, stdout, stderr)):
                fd = _stdio_fd(v, i, mine, parent_ends, slots)
                if fd is not None:
                    slots[i] = fd
            mask = sum(1 << i for i in slots)
            stdio_fds = [slots[i] for i in sorted(slots)]
            for fd in spec.pass_fds:
                os.fstat(fd)           # not open: refused here, as Popen does
            header = b"spawn %d %s" % (mask, b",".join(b"%d" % fd for fd in spec.pass_fds))
            send = [mine[1], memfd, status_w, *stdio_fds, *spec.pass_fds]
            try:
                sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         _fd_array(send))])
            except OSError as e:
                raise SetupError("spawn", e.errno or 0, "the fork server is gone") from None
        except BaseException as e:
            for f in parent_ends:
                if f is not None:
                    f.close()
            if reply is not None:
                reply.close()
            if status_r >= 0:
                os.close(status_r)
            if isinstance(e, OSError) and not isinstance(e, SandboxError):
                raise SetupError("spawn", e.errno or 0,
                                 f"prepare the request: {e.strerror}") from None
            raise
        finally:
            for fd in mine:
                try:
                    os.close(fd)
                except OSError:
                    pass
        # Only the server (and then the child) hold the status pipe's write end now.
        # Its EOF comes first (exec'd, or a record), then the pid reply, which has long
        # arrived by then: one wait instead of two.  A request the server refused shows
        # as EOF on the status pipe *and* no pid: an error, never "exec'd".
        deadline = None if setup_timeout is None else time.monotonic() + setup_timeout
        interrupted = None
        try:
            raw = _read_status(status_r, deadline)
        except TimeoutError:
            raw = None
        except BaseException as e:     # e.g. KeyboardInterrupt: no half-started target
            raw, interrupted = None, e
        finally:
            os.close(status_r)
        try:
            pid, pidfd = _recv_pid(reply, time.monotonic() + 5.0 if raw is None
                                   else deadline)
        except BaseException:
            reply.close()
            for f in parent_ends:
                if f is not None:
                    f.close()
            if interrupted is not None:
                raise interrupted from None
            raise
        child = _Child(pid, reply, list(self.args), parent_ends[0], parent_ends[1],
                       parent_ends[2], pidfd)
        proc = Process(child, spec, created_cgroups=cg_dirs, pidfd=pidfd)
        if raw is None:
            proc._abandon()
            if interrupted is not None:
                raise interrupted
            raise SetupError("spawn", _errno.ETIMEDOUT,
                             f"the target was not exec'd within {setup_timeout}s")
        if raw:
            status = child.wait()
            proc._cleanup_failed_setup()
            raise errors.error_from_record(raw, status, pid)
        return proc


def _stdio_fd(v, i: int, mine: list, parent_ends: list, given: dict):
    """The fd to send for stdio slot i (None: none -- the target's slot stays closed)."""
    import subprocess
    if v is None:                      # inherit: the caller's own fd, if open
        try:
            os.fstat(i)
        except OSError:
            return None
        return i
    if v == subprocess.PIPE:
        r, w = os.pipe()
        if i == 0:
            parent_ends[0] = open(w, "wb", buffering=0)
            mine.append(r)
            return r
        parent_ends[i] = open(r, "rb", buffering=0)
        mine.append(w)
        return w
    if v == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        mine.append(fd)
        return fd
    if v == subprocess.STDOUT:
        if i != 2:
            raise ValueError("STDOUT is only for stderr")
        return given.get(1)            # the target's stdout, whatever it is
    if isinstance(v, int) or hasattr(v, "fileno"):
        fd = v if isinstance(v, int) else v.fileno()
        os.fstat(fd)                   # not open: refused here (EBADF), as Popen does
        return fd
    if isinstance(v, (str, bytes, os.PathLike)):
        from .spawning import open_stdio_path
        fd = open_stdio_path(v, i == 0, ("stdin", "stdout", "stderr")[i])
        mine.append(fd)
        return fd
    raise TypeError(f"{('stdin', 'stdout', 'stderr')[i]}: expected None, PIPE, DEVNULL, "
                    "an fd, a file or a path")


def _fd_array(fds) -> bytes:
    import array
    return array.array("i", fds).tobytes()


def _recv_pid(reply, deadline) -> "tuple[int, int]":
    import errno
    import select
    import socket
    import time
    p = select.poll()
    p.register(reply.fileno(), select.POLLIN)
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not p.poll(None if left is None else left * 1000):
        raise SetupError("spawn", errno.ETIMEDOUT, "no answer from the fork server")
    msg, anc, _flags, _ = reply.recvmsg(64, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
    fds = [int.from_bytes(data[i:i + 4], "little", signed=True)
           for level, kind, data in anc
           if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
           for i in range(0, len(data) - len(data) % 4, 4)]
    if not msg.startswith(b"pid ") or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise SetupError("spawn", 0, "the fork server refused the request")
    return int(msg[4:]), fds[0]


# =========================================================================== default

_default = None
_default_lock = None            # a threading.Lock, made on first use (see default())


def default() -> ForkServer:
    """The process-wide server spawn(fast=True) uses, started on first use and stopped
    at interpreter exit."""
    global _default, _default_lock
    if _default_lock is None:
        import threading
        _default_lock = threading.Lock()       # not at import: see ForkServer.__init__
    with _default_lock:
        if _default is None:
            import atexit
            _default = ForkServer()
            atexit.register(shutdown_default)
        return _default


def shutdown_default() -> None:
    global _default
    if _default_lock is None:
        return
    with _default_lock:
        server, _default = _default, None
    if server is not None:
        server.close()

