"""Readiness notification: systemd's sd_notify protocol, with the library as the manager.

A spec with `"notify": true` gives the target NOTIFY_SOCKET, the path of a datagram
(AF_UNIX, SOCK_DGRAM) socket, to which it sends sd_notify(3) messages: newline-separated
KEY=VALUE lines (READY=1, STATUS=..., MAINPID=..., STOPPING=1, ERRNO=..., WATCHDOG=1).

Who owns the socket:
  * sandbox.spawn() and the fork server's spawn make one per process (Listener): the
    directory BASE/TOKEN (BASE: /run/wrapperd-notify, or WRAPPERD_NOTIFY_DIR; the
    library's euid's, mode 0700, not a symlink; TOKEN random, mode 0755) holding the
    socket `notify` (mode 0666).  With a mount namespace, BASE/TOKEN is bound onto BASE
    as the mounts step's last act: the target finds its socket at BASE/notify, through
    directories anyone may pass, and sees no other sandbox's.  That bind also keeps it
    reachable under a read-only root (protect_system strict): sending to a socket
    needs write permission on the socket, not a writable filesystem.  Without a mount
    namespace the target gets the host path, which only the library's own uid can reach
    (BASE is 0700): a target of another uid, a dynamic user or a user namespace is then
    refused at prepare (SpecError: exit 125, nothing ran).  The socket has SO_PASSCRED:
    each message carries its sender's pid (SCM_CREDENTIALS, as the kernel saw it), and
    only messages from the target's pid -- or, with a cgroup, a process in it -- count;
    any other is dropped and counted.  Process.close() closes the socket and removes
    its file and directory (BASE too, once empty).
  * wrapperd alone has no library to own a socket: `notify: true` passes on the
    caller's own NOTIFY_SOCKET (an init's, systemd's), which then checks the senders.
    A path is bound onto itself in a mount namespace (so a spec mount covering its
    directory does not hide it); an abstract name (`@...`) is passed on as it is, and
    refused when the target leaves the caller's network namespace.  No NOTIFY_SOCKET
    is exit 125 (SpecError), as is a relative path or one that is not a socket.
"""

from __future__ import annotations

import os
import stat

from ._record import field_types, frozen
from .errors import SandboxError, SetupError, SpecError

__all__ = ["BASE", "ENV", "SOCKET_NAME", "Prepared", "prepare", "base_dir", "placeholder",
           "Listener", "NotifyError"]

BASE = "/run/wrapperd-notify"
ENV = "WRAPPERD_NOTIFY_DIR"          # moves BASE (a test run's own, the rootless run)
SOCKET_NAME = "notify"
FIELD = "notify"
# sd_notify's messages are at most PIPE_BUF bytes (systemd's NOTIFY_BUFFER_MAX); a longer
# one arrives truncated and is dropped, as systemd drops it.
MAX_MESSAGE = 4096
MAX_FDS = 768                        # SCM_MAX_FD is 253; BARRIER=1 and FDSTORE=1 bring fds
_SUN_PATH_MAX = 107                  # sizeof(sun_path) - 1


def base_dir() -> str:
    return os.environ.get(ENV) or BASE


@frozen
class Prepared:
    env: str                         # NOTIFY_SOCKET as the target sees it
    source: "str | None"             # bound into the mount namespace: from here ...
    destination: "str | None"        # ... onto here (None: nothing to bind)

    __record_types__ = field_types(env=str, source=str | None, destination=str | None)

    def binds(self) -> tuple:
        """The mounts step's last bind (mounts.Prepared.late), or none."""
        if self.source is None or self.destination is None:
            return ()
        from .mounts import Mount
        return (Mount("bind", self.destination, self.source, ("rw",), None, None),)


def placeholder() -> str:
    """A socket path of the library's layout that names no socket: for checking a spec
    as sandbox.spawn() would run it (`sandbox check`), with nothing made."""
    return f"{base_dir()}/{'0' * 16}/{SOCKET_NAME}"


def _ours(socket: str) -> "tuple[str, str] | None":
    """(BASE/TOKEN, BASE) when socket is one of the library's (BASE/TOKEN/notify)."""
    base = base_dir().rstrip("/") or "/"
    directory, name = os.path.split(socket)
    if name == SOCKET_NAME and os.path.dirname(directory) == base and \
            os.path.basename(directory) not in ("", ".", ".."):
        return directory, base
    return None


def prepare(spec, socket: "str | None", creds=None, namespaces=None) -> "Prepared | None":
    """None without `notify`.  socket: the NOTIFY_SOCKET to give the target (the
    library's own Listener.path, or wrapperd's caller's); None: there is none, which is
    a SpecError.  creds, namespaces: the plan's records (who the target will be), for
    whether it can reach a socket it is not bound in.  No side effects."""
    if not getattr(spec, "notify", False):
        return None
    if not socket:
        raise SpecError("no socket to give the target: wrapperd passes on its caller's "
                        "NOTIFY_SOCKET, and none is set (sandbox.spawn() and the fork "
                        "server make a socket of their own)", FIELD)
    families = getattr(spec, "address_families", None)
    if families is not None and "AF_UNIX" not in families:
        raise SpecError("the target sends to an AF_UNIX socket, which address_families "
                        "does not allow it to make: add AF_UNIX", FIELD)
    ns = spec.namespaces
    if socket.startswith("@"):
        net = getattr(ns, "net", False) if ns is not None else False
        if net:
            raise SpecError(f"NOTIFY_SOCKET {socket!r} is an abstract socket of the "
                            "caller's network namespace, which the target leaves "
                            "(namespaces.net)", FIELD)
        return Prepared(socket, None, None)
    if not socket.startswith("/") or "\0" in socket:
        raise SpecError(f"NOTIFY_SOCKET {socket!r} is neither an absolute path nor an "
                        "abstract name ('@...'): nothing to pass on", FIELD)
    if len(os.fsencode(socket)) > _SUN_PATH_MAX:
        raise SpecError(f"NOTIFY_SOCKET {socket!r} is longer than a socket address holds",
                        FIELD)
    mount_ns = ns is not None and ns.mount is True
    ours = _ours(socket)
    if ours is not None:
        directory, base = ours
        if mount_ns:
            inside = base.rstrip("/") + "/" + SOCKET_NAME
            return Prepared(inside, directory, base)
        if not _same_uid(spec, creds, namespaces):
            raise SpecError(f"the socket lives under {base} (mode 0700, uid {os.geteuid()}'s):"
                            " a target of another uid, a dynamic user or one in a user "
                            "namespace reaches it only bound into its own mount namespace "
                            "(namespaces.mount: true)", FIELD)
        return Prepared(socket, None, None)
    try:
        st = os.stat(socket)
    except OSError as e:
        raise SpecError(f"NOTIFY_SOCKET {socket}: {e.strerror}", FIELD) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise SpecError(f"NOTIFY_SOCKET {socket} is not a socket", FIELD)
    if mount_ns:
        return Prepared(socket, socket, socket)
    return Prepared(socket, None, None)


def _same_uid(spec, creds, namespaces) -> bool:
    """Will the target run, on the host, as this process's euid (the owner of BASE)?"""
    if namespaces is not None and ("user" in namespaces.new or
                                   any(k == "user" for k, _ in namespaces.join)):
        return False
    if spec.user is not None and spec.user.dynamic:
        return False
    return creds is None or creds.uid == os.geteuid()


# --------------------------------------------------------------------------- the library's

class NotifyError(SandboxError):
    """The target exited before it said READY=1 (`.returncode`), or the Process has no
    notification socket."""

    def __init__(self, message: str, returncode: "int | None" = None):
        super().__init__(message)
        self.returncode = returncode


def _fail(what: str, e: OSError) -> SetupError:
    return SetupError("spawn", e.errno or 0, f"notify: {what}")


def _open_base(base: str) -> int:
    """BASE, made if missing: a real directory of this euid's, mode 0700."""
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise _fail(f"make {base}", e) from None
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _fail(f"open {base} (a symlink there is refused)", e) from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise SetupError("spawn", 0, f"notify: {base} belongs to uid {st.st_uid}, not to "
                         f"this process's ({os.geteuid()}): refused")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)
    return fd


def _cleanup(sock, path: str, directory: str, base: str, owner: "int | None" = None
             ) -> None:
    """Close the socket, remove its file, its directory and BASE once empty.  owner:
    the pid that made them -- a child forked since (multiprocessing) that exits
    through the interpreter's shutdown must not remove its parent's socket."""
    if owner is not None and os.getpid() != owner:
        return
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    for fn, p in ((os.unlink, path), (os.rmdir, directory), (os.rmdir, base)):
        try:
            fn(p)
        except OSError:
            pass


class Listener:
    """The socket sandbox.spawn() makes for one process, and what it was told.

    Made before the shim starts (its path goes into the plan); the Process owns it and
    closes it.  drain() reads what is queued without blocking; the Process's
    wait_ready(), ready() and notify_* attributes call it.  Thread-safe."""

    def __init__(self, base: "str | None" = None):
        import secrets
        import socket
        import threading
        import weakref
        base = (base or base_dir()).rstrip("/") or "/"
        if not base.startswith("/"):
            raise SetupError("spawn", 0, f"notify: {ENV}={base!r} is not absolute")
        self._lock = threading.Lock()
        self.ready = False
        self.reloading = False
        self.stopping = False
        self.status: "str | None" = None
        self.main_pid: "int | None" = None
        self.errno: "int | None" = None
        self.watchdog_at: "float | None" = None
        self.fields: "dict[str, str]" = {}      # the last value of every key received
        self.accepted = 0
        self.dropped = 0
        self.group = None                       # a cgroups.Group whose members count
        sock = None
        for _attempt in range(8):
            bfd = _open_base(base)
            try:
                token = secrets.token_hex(8)
                try:
                    os.mkdir(token, 0o755, dir_fd=bfd)
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    continue        # another Process removed BASE, empty, meanwhile
                except OSError as e:
                    raise _fail(f"make a directory in {base}", e) from None
                directory = f"{base}/{token}"
                path = f"{directory}/{SOCKET_NAME}"
                if len(os.fsencode(path)) > _SUN_PATH_MAX:
                    os.rmdir(token, dir_fd=bfd)
                    raise SetupError("spawn", 0, f"notify: {path} is longer than a socket "
                                     f"address holds (move it with {ENV})")
                try:
                    tfd = os.open(token, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                                  os.O_CLOEXEC, dir_fd=bfd)
                    try:
                        os.fchmod(tfd, 0o755)           # whatever the umask
                    finally:
                        os.close(tfd)
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM |
                                         socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
                    # Before bind: no message may arrive without its sender's pid.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                    sock.bind(path)
                    os.chmod(path, 0o666)               # sendto needs write on it
                except OSError as e:
                    _cleanup(sock, path, directory, base)
                    raise _fail(f"make the socket {path}", e) from None
                break
            finally:
                os.close(bfd)
        if sock is None:
            raise SetupError("spawn", 0, f"notify: no directory could be made in {base}")
        self.sock = sock
        self.path, self.directory, self.base = path, directory, base
        self._finalizer = weakref.finalize(self, _cleanup, sock, path, directory, base,
                                           os.getpid())

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the socket and remove its file and directory (BASE too, when empty).
        Idempotent."""
        with self._lock:
            self._finalizer()

    # ------------------------------------------------------------------ reading
    def drain(self, pids=()) -> int:
        """Read every queued message without blocking; return how many counted.  pids:
        the senders that count (the target's pid) besides the members of `group`."""
        import array
        import socket
        import struct
        got = 0
        anc = socket.CMSG_SPACE(struct.calcsize("iII")) + \
            socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        with self._lock:
            if not self._finalizer.alive:
                return 0
            while True:
                try:
                    data, ancdata, flags, _ = self.sock.recvmsg(
                        MAX_MESSAGE, anc, socket.MSG_CMSG_CLOEXEC)
                except (BlockingIOError, InterruptedError):
                    return got
                pid = None
                for level, kind, payload in ancdata:
                    if level != socket.SOL_SOCKET:
                        continue
                    if kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                        pid = struct.unpack("iII", payload[:12])[0]
                    elif kind == socket.SCM_RIGHTS:
                        # FDSTORE=1 is not kept; BARRIER=1's fd is closed, which is the
                        # answer sd_notify_barrier(3) waits for.
                        fds = array.array("i")
                        fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                        for fd in fds:
                            try:
                                os.close(fd)
                            except OSError:
                                pass
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or pid is None or \
                        not self._counts(pid, pids):
                    self.dropped += 1
                    continue
                self._apply(data)
                got += 1

    def _counts(self, pid: int, pids) -> bool:
        if pid <= 0:
            return False
        if pid in pids:
            return True
        if self.group is not None:
            try:
                return pid in self.group.procs()
            except OSError:
                return False
        return False

    def _apply(self, data: bytes) -> None:
        import time
        self.accepted += 1
        for line in data.decode("utf-8", "replace").split("\n"):
            key, eq, value = line.partition("=")
            if not eq or not key:
                continue
            self.fields[key] = value
            if key == "READY" and value == "1":
                self.ready, self.reloading = True, False
            elif key == "RELOADING" and value == "1":
                self.reloading = True
            elif key == "STOPPING" and value == "1":
                self.stopping = True
            elif key == "STATUS":
                self.status = value
            elif key == "MAINPID":
                self.main_pid = _number(value)
            elif key == "ERRNO":
                self.errno = _number(value)
            elif key == "WATCHDOG" and value == "1":
                self.watchdog_at = time.monotonic()


def _number(value: str) -> "int | None":
    try:
        n = int(value.strip(), 10)
    except ValueError:
        return None
    return n if n >= 0 else None
