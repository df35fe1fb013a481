"""The fork server's client: ForkServer (start, spawn, close) and the process-wide
default one spawn(fast=True) uses.  A spawn prepares the spec here, in the caller
(wrapperd.shim.prepare: errors are raised before anything is sent), sends the plan and
the target's fds to the server (protocol.py) and reads the status pipe as spawn()
does; the Process it returns gets its exit status from the server.
"""

from __future__ import annotations

import os

from .. import errors
from ..errors import SandboxError, SetupError, SpecError
from . import protocol

# For type checkers only (mypy knows the name): importing typing would cost every
# spawn's first call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import subprocess
    from typing import Unpack

    from ..spawning import SpawnFields

__all__ = ["ForkServer", "default", "shutdown_default"]


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
                code = protocol.parse_exit_reply(self._reply.recv(64))
                self._reply.close()
                if code is not None:
                    self.returncode = code
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

        from ..spawning import _shim_env, lean_path, package_root
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
                self.args = [sys.executable, "-I", "-S", "-c", protocol.SERVER_BOOT, root,
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
            if ready != protocol.READY:
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

        from .. import plan as plan_mod
        from ..process import Process
        from ..spawning import (
            _missing_cgroup_dirs,
            _read_status,
            build_spec,
            check_library_spec,
        )
        spec = build_spec(target, **fields)
        check_library_spec(spec)
        try:
            payload = plan_mod.encode(shim.prepare(spec))
        except SandboxError as e:
            # Refused before anything ran; the exit status the shim would have given.
            e.exit_status = errors.exit_code(e)
            e.pid = None
            raise
        most = protocol.MAX_FDS - protocol.REQUEST_FDS
        if len(spec.pass_fds) > most:
            raise SpecError(f"at most {most} pass_fds through the fork server", "pass_fds")
        self.start()
        sock = self._sock
        if sock is None:
            raise SetupError("spawn", _errno.ESHUTDOWN, "the fork server is closed")
        setup_timeout = self.setup_timeout if setup_timeout is None else setup_timeout
        cg_dirs = _missing_cgroup_dirs(spec)

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
            stdio_fds = [slots[i] for i in sorted(slots)]
            for fd in spec.pass_fds:
                os.fstat(fd)           # not open: refused here, as Popen does
            header = protocol.request(sorted(slots), spec.pass_fds)
            send = [mine[1], memfd, status_w, *stdio_fds, *spec.pass_fds]
            try:
                sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         protocol.fd_array(send))])
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
        from ..stdio import open_path
        fd = open_path(v, i == 0, ("stdin", "stdout", "stderr")[i])
        mine.append(fd)
        return fd
    raise TypeError(f"{('stdin', 'stdout', 'stderr')[i]}: expected None, PIPE, DEVNULL, "
                    "an fd, a file or a path")


def _recv_pid(reply, deadline) -> "tuple[int, int]":
    import errno
    import select
    import time
    p = select.poll()
    p.register(reply.fileno(), select.POLLIN)
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not p.poll(None if left is None else left * 1000):
        raise SetupError("spawn", errno.ETIMEDOUT, "no answer from the fork server")
    msg, fds, _truncated = protocol.recv_with_fds(reply, 1)
    pid = protocol.parse_pid_reply(msg)
    if pid is None or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise SetupError("spawn", 0, "the fork server refused the request")
    return pid, fds[0]


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

