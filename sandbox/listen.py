"""Socket activation: systemd's ListenStream=, ListenDatagram=, ListenSequentialPacket=
and the sd_listen_fds(3) protocol.

The caller's side makes the sockets: the `listen` step (after the service directories,
before the namespaces) creates, binds and -- stream and seqpacket -- listens on each,
while the shim is still privileged and still in the caller's network and mount
namespaces.  So a target without any capability serves on port 80, a target in a new
network namespace (only `lo`) serves on the host's addresses, and a unix socket is made
where the host sees its path.  The fds step then puts them at 3, 4, ... in the spec's
order (SD_LISTEN_FDS_START), close-on-exec cleared, O_NONBLOCK not set; pass_fds come
after them (prepare refuses a pass_fds entry in that range).  The target gets
LISTEN_FDS (how many), LISTEN_FDNAMES (their names, `:`-separated; "unknown" where the
spec gives none, as systemd) and, set by the exec step just before execve -- only then
is the pid final (a new pid namespace, a new session may fork) -- LISTEN_PID, the
target's own pid as it sees it.

Addresses: "127.0.0.1:80" (IPv4), "[::1]:80" (IPv6), "/run/x.sock" (a unix socket file),
"@name" (the abstract unix namespace, of the caller's network namespace).  Inet sockets
get SO_REUSEADDR, as systemd sets it.  A unix socket file is made by the shim with its
ids (the caller's: root), mode 0666 (systemd's SocketMode= default): who may connect is
decided by the directories above it.  Its directory must exist (`directories.runtime`
makes one).  A socket file already at the path is removed first when it is stale --
nothing accepts on it (connect(2) is refused) -- as systemd removes one; a live socket
is "in use", and anything else (a file, a directory, a symlink, which is never followed)
is never removed: both are exit 125 at the listen step.  The file stays when the
service ends (systemd's RemoveOnStop=no); the next start replaces it.  If binding any
address fails, the socket files made so far are removed and every socket closed.
"""

from __future__ import annotations

import os

from ._record import field_types, frozen
from .errors import SetupError, SpecError

__all__ = ["Socket", "Prepared", "prepare", "apply", "parse_address", "environment",
           "pid_env", "describe", "check_name", "FIRST_FD", "TYPES", "DEFAULT_NAME",
           "STEP"]

STEP = "listen"
FIRST_FD = 3                    # SD_LISTEN_FDS_START
TYPES = ("stream", "datagram", "seqpacket")
FAMILIES = ("inet", "inet6", "unix")
DEFAULT_NAME = "unknown"        # systemd's, for a socket without FileDescriptorName=
MAX_NAME = 255                  # systemd's FDNAME_MAX
# listen(2) backlog when the spec gives none: the kernel caps it at net.core.somaxconn,
# so this is "as many as the host allows" (systemd's default is as large).
DEFAULT_BACKLOG = 2**31 - 1
_SUN_PATH = 108                 # sizeof(sockaddr_un.sun_path), the NUL included


@frozen
class Socket:
    type: str           # stream, datagram, seqpacket
    family: str         # inet, inet6, unix
    host: str           # the IP address; the path; "\0" + name for an abstract socket
    port: int           # 0 for a unix socket
    address: str        # as the spec gives it, for messages
    name: str           # its LISTEN_FDNAMES entry
    backlog: int        # listen(2)'s; 0 for a datagram socket (no listen)

    __record_types__ = field_types(type=str, family=str, host=str, port=int, address=str,
                                   name=str, backlog=int)

    def __record_check__(self) -> "str | None":
        if self.type not in TYPES or self.family not in FAMILIES:
            return f"listen: unknown socket {self.type} {self.family}"
        return check_name(self.name)


@frozen
class Prepared:
    sockets: tuple      # Socket, in the spec's order: fd 3, 4, ...

    __record_types__ = field_types(sockets=tuple[Socket, ...])


# --------------------------------------------------------------------------- prepare

def check_name(name: str) -> "str | None":
    """What is wrong with a LISTEN_FDNAMES entry (systemd's fdname_is_valid, but never
    empty), or None."""
    if not name:
        return "a name must not be empty"
    if len(name) > MAX_NAME:
        return f"a name is at most {MAX_NAME} characters"
    if ":" in name:
        return "a name must not contain ':' (LISTEN_FDNAMES separates names with it)"
    if not all(" " <= c <= "~" for c in name):
        return "a name is printable ASCII"
    return None


def _port(text: str, address: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise SpecError(f"{address!r}: the port must be a number from 1 to 65535")
    return int(text)


def parse_address(address: str) -> "tuple[str, str, int]":
    """(family, host, port) of a spec's address: "ADDR:PORT" (IPv4), "[ADDR]:PORT"
    (IPv6), an absolute path, or "@NAME" (abstract: host "\\0NAME").  Numeric addresses
    only (no name is looked up).  SpecError (without a path: the caller adds it)."""
    import _socket
    forms = ("expected IPV4:PORT, [IPV6]:PORT, an absolute unix socket path or "
             "@ABSTRACT")
    if address.startswith("/"):
        parts = address[1:].split("/")
        if any(c in ("", ".", "..") for c in parts):
            raise SpecError(f"{address!r} is not a normal absolute path (no '.' or '..' "
                            "component, no '//' or trailing '/')")
        if len(os.fsencode(address)) >= _SUN_PATH:
            raise SpecError(f"{address!r}: a unix socket path is at most "
                            f"{_SUN_PATH - 1} bytes")
        return "unix", address, 0
    if address.startswith("@"):
        if len(address) == 1:
            raise SpecError(f"{address!r}: an abstract socket needs a name after '@'")
        if len(os.fsencode(address)) >= _SUN_PATH:
            raise SpecError(f"{address!r}: an abstract name is at most {_SUN_PATH - 2} "
                            "bytes")
        return "unix", "\0" + address[1:], 0
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        family, af = "inet6", _socket.AF_INET6
    else:
        host, sep, port = address.rpartition(":")
        family, af = "inet", _socket.AF_INET
    if not sep or not host:
        raise SpecError(f"{address!r}: {forms}")
    try:
        packed = _socket.inet_pton(af, host)
    except (OSError, ValueError):
        raise SpecError(f"{address!r}: {host!r} is not a numeric "
                        f"{'IPv6' if family == 'inet6' else 'IPv4'} address; "
                        f"{forms}") from None
    # The kernel's form ("::1" for "0:0::1"): duplicates compare equal.
    return family, _socket.inet_ntop(af, packed), _port(port, address)


def prepare(spec) -> "Prepared | None":
    """None without listen.  The spec model has checked every entry (sandbox.spec
    Listen): this only lays them out.  No side effects."""
    if not spec.listen:
        return None
    out = []
    for e in spec.listen:
        family, host, port = parse_address(e.address)
        backlog = 0 if e.type == "datagram" else \
            DEFAULT_BACKLOG if e.backlog is None else e.backlog
        out.append(Socket(e.type, family, host, port, e.address,
                          e.name if e.name is not None else DEFAULT_NAME, backlog))
    return Prepared(tuple(out))


def environment(p: "Prepared | None") -> dict:
    """LISTEN_FDS and LISTEN_FDNAMES (LISTEN_PID is the exec step's: see pid_env)."""
    if p is None:
        return {}
    return {"LISTEN_FDS": str(len(p.sockets)),
            "LISTEN_FDNAMES": ":".join(s.name for s in p.sockets)}


def pid_env(env: dict) -> dict:
    """env with LISTEN_PID: this process's pid as it sees it -- the target's, once
    execve(2) replaces it, in whatever pid namespace it is (the exec step calls this:
    nothing forks after)."""
    return {**env, "LISTEN_PID": str(os.getpid())}


def describe(p: Prepared) -> "list[str]":
    """What --dry-run says of each socket: the fd it gets, its name, what it is."""
    return [f"fd {FIRST_FD + i} ({s.name}): {s.type} {s.address}"
            + (f", backlog {s.backlog}" if s.backlog not in (0, DEFAULT_BACKLOG) else "")
            for i, s in enumerate(p.sockets)]


# --------------------------------------------------------------------------- apply

def _kind(t: str) -> int:
    import _socket
    return {"stream": _socket.SOCK_STREAM, "datagram": _socket.SOCK_DGRAM,
            "seqpacket": _socket.SOCK_SEQPACKET}[t]


def _open(s: Socket):
    import _socket
    af = {"inet": _socket.AF_INET, "inet6": _socket.AF_INET6,
          "unix": _socket.AF_UNIX}[s.family]
    # _socket, not socket: the socket module imports enum (milliseconds of a shim start).
    # Close-on-exec until the fds step puts it in place (PEP 446: Python's default).
    return _socket.socket(af, _kind(s.type), 0)


def _stale(s: Socket) -> bool:
    """Is the socket file at s.host (a unix path) one nothing accepts on?  connect(2) is
    refused then; a live one accepts (or would, its backlog full), and one of another
    type answers EPROTOTYPE."""
    import _socket
    probe = _socket.socket(_socket.AF_UNIX, _kind(s.type) | _socket.SOCK_NONBLOCK, 0)
    try:
        probe.connect(s.host)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _bind_path(sock, s: Socket) -> None:
    """bind(2) a unix socket file, mode 0666, replacing a stale socket file (only)."""
    import errno
    import stat
    old = os.umask(0o111)           # the file's mode: 0777 & ~umask (unix(7))
    try:
        try:
            sock.bind(s.host)
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
        try:
            st = os.lstat(s.host)   # never follows a symlink
        except FileNotFoundError:
            pass                    # gone meanwhile: bind again
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise SetupError(STEP, errno.EEXIST, f"{s.address}: exists and is not a "
                                 "socket (never removed)")
            if not _stale(s):
                raise SetupError(STEP, errno.EADDRINUSE, f"{s.address}: a socket "
                                 "something accepts on is there")
            # The very socket file judged stale, still (in a directory others may
            # write to, the name could be another's by now): else refused, not removed.
            again = os.lstat(s.host)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) or \
                    not stat.S_ISSOCK(again.st_mode):
                raise SetupError(STEP, errno.EEXIST, f"{s.address}: changed while it "
                                 "was checked (not removed)")
            os.unlink(s.host)       # a small window remains: unlink takes no inode
        sock.bind(s.host)
    finally:
        os.umask(old)


def apply(p: Prepared) -> tuple:
    """Create, bind and listen on every socket, in order; their fds (close-on-exec, the
    fds step moves them to 3, 4, ...).  On failure: SetupError naming the address, every
    socket closed and every socket file made here removed."""
    socks: list = []
    made: "list[tuple[str, int, int]]" = []     # socket files: path, st_dev, st_ino
    try:
        for s in p.sockets:
            try:
                sock = _open(s)
            except OSError as e:
                raise SetupError(STEP, e.errno or 0, f"socket for {s.type} "
                                 f"{s.address}") from None
            socks.append(sock)
            try:
                if s.family == "unix":
                    if s.host.startswith("\0"):
                        sock.bind(s.host)
                    else:
                        _bind_path(sock, s)
                        st = os.lstat(s.host)
                        made.append((s.host, st.st_dev, st.st_ino))
                else:
                    import _socket
                    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                    sock.bind((s.host, s.port) if s.family == "inet" else
                              (s.host, s.port, 0, 0))
                if s.type != "datagram":
                    sock.listen(s.backlog)
                sock.setblocking(True)  # no O_NONBLOCK (a default timeout would set it)
            except SetupError:
                raise
            except OSError as e:
                raise SetupError(STEP, e.errno or 0, f"bind {s.type} {s.address}") \
                    from None
    except BaseException:
        for sock in socks:
            sock.close()
        for path, dev, ino in made:
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except OSError:
                pass
        raise
    return tuple(sock.detach() for sock in socks)   # the fds are ours now
