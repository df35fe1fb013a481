"""Socket activation (`listen`), seen from both sides: the target takes its sockets as
sd_listen_fds(3) hands them over (fds 3, 4, ..., LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID
its own pid, in a new pid namespace too), and a real client on the host is served
through them -- over TCP, UDP, unix stream, seqpacket and datagram sockets, the abstract
namespace, a port below ip_unprivileged_port_start for a target without any
capability, and Debian's systemd-socket-proxyd.  Every launch path: the wrapperd
command line, spawn() and the fork server.  Bad input and an address that cannot be
bound are exit 125 with nothing run and no socket file left.

Ports are free ones of loopback (bound to port 0 and released); socket files live in
the test's own directories; abstract names are unique to the test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid

import pytest

import sandbox
from sandbox.forkserver import ForkServer
from sandbox.spawning import DEVNULL, PIPE
from tests.conftest import (
    SYSTEM_PYTHON,
    TARGET_ENV,
    needs_host_root,
    run_wrapperd,
    wrapperd_cmd,
)

MODES = ("wrapperd", "spawn", "fast")
NOBODY = 65534
PROXYD = "/lib/systemd/systemd-socket-proxyd"

# The target: serves each of its sockets once, in order, replying with what it saw of
# itself and of that fd.  Plain Python: socket.socket(fileno=N), as a daemon would.
TARGET = r"""
import fcntl, json, os, socket, sys
n = int(os.environ["LISTEN_FDS"])
status = dict(l.rstrip("\n").split(":\t", 1) for l in open("/proc/self/status")
              if l.startswith(("CapEff", "CapPrm", "NSpid", "Uid")))
seen = {"pid": os.getpid(), "listen_pid": os.environ.get("LISTEN_PID"), "listen_fds": n,
        "names": os.environ.get("LISTEN_FDNAMES"), "uid": os.getuid(), "status": status,
        "argv": sys.argv[1:]}
for fd in range(3, 3 + n):
    s = socket.socket(fileno=fd)
    reply = dict(seen, fd=fd, type=int(s.type), family=int(s.family),
                 cloexec=bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                 nonblock=bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK))
    for extra in sys.argv[1:]:         # pass_fds: open, and not a socket of ours
        reply["extra_" + extra] = os.path.exists(f"/proc/self/fd/{extra}")
    data = json.dumps(reply).encode()
    if s.type == socket.SOCK_DGRAM:
        _ping, peer = s.recvfrom(100)
        s.sendto(data, peer)
    else:
        c, _ = s.accept()
        c.recv(100)
        c.sendall(data)
        c.close()
    s.detach()
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def target(shared_dir):
    path = os.path.join(shared_dir, "listen_target.py")
    with open(path, "w") as f:
        f.write(TARGET)
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs


@pytest.fixture
def sockdir(shared_dir):
    """A directory of the test's own for socket files, any uid may traverse."""
    d = os.path.join(shared_dir, f"sock-{uuid.uuid4().hex[:8]}")
    os.mkdir(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def free_port(kind=socket.SOCK_STREAM, host="127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spec_of(target: str, listen: list, *args: str, **fields) -> dict:
    return {"argv": [SYSTEM_PYTHON, "-I", target, *args], "env": dict(TARGET_ENV),
            "listen": listen, **fields}


def popen(cmd: "list[str]", spec: dict, **kw) -> subprocess.Popen:
    """cmd started with the spec on its stdin (--spec -), which is then closed."""
    proc = subprocess.Popen(cmd, stdin=PIPE, stdout=PIPE, stderr=PIPE, **kw)
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    proc.stdin = None                   # (communicate() would flush it)
    return proc


class Running:
    """A target started through one launch path, its output collected at the end."""

    def __init__(self, mode: str, spec: dict, server=None):
        self.mode = mode
        if mode == "wrapperd":
            self.proc = popen(wrapperd_cmd("--spec", "-"), spec)
        else:
            kw = dict(stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
            self.proc = server.spawn(spec, **kw) if mode == "fast" else \
                sandbox.spawn(spec, **kw)

    def result(self) -> dict:
        if self.mode == "wrapperd":
            out, err = self.proc.communicate(timeout=60)
        else:
            with self.proc:
                out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out)

    def stop(self) -> None:
        if self.proc.returncode is None:
            if self.mode == "wrapperd":
                self.proc.kill()
                self.proc.wait(10)
            else:
                self.proc.close(grace=0)


def connected(family: int, kind: int, address, timeout: float = 20) -> socket.socket:
    """A socket connected to address.  The wrapperd command line may still be running
    the steps: until the listen step has bound the address nobody is there (and a
    refused socket cannot connect again: a new one each time)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(family, kind)
        s.settimeout(20)
        try:
            s.connect(address)
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def ask(family: int, kind: int, address) -> dict:
    """One request to the target on address; its reply."""
    if kind == socket.SOCK_DGRAM:
        with socket.socket(family, kind) as s:
            if family == socket.AF_UNIX:
                s.bind("")                  # autobind: an address to reply to
            deadline = time.monotonic() + 20
            s.settimeout(0.2)
            while True:                     # until the socket is there to receive it
                try:
                    s.sendto(b"ping", address)
                    return json.loads(s.recv(65536))
                except (TimeoutError, ConnectionRefusedError, FileNotFoundError):
                    if time.monotonic() > deadline:
                        raise
    with connected(family, kind, address) as s:
        s.sendall(b"ping")
        if kind == socket.SOCK_SEQPACKET:
            return json.loads(s.recv(65536))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return json.loads(data)


def sd_listen_fds_ok(reply: dict, fd: int) -> None:
    """What sd_listen_fds() checks, and what it expects of the fds."""
    assert reply["listen_pid"] == str(reply["pid"])
    assert reply["fd"] == fd and not reply["cloexec"] and not reply["nonblock"]


# ---------------------------------------------------------------- the protocol


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pidns", [False, True], ids=["host-pidns", "new-pidns"])
def test_a_target_accepts_on_fd_3_and_listen_pid_is_its_own(mode, pidns, target, server):
    port = free_port()
    fields = {"namespaces": {"pid": True}} if pidns else {}
    run = Running(mode, spec_of(target, [{"address": f"127.0.0.1:{port}", "name": "http"}],
                                **fields), server)
    try:
        reply = ask(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
        seen = run.result()
    finally:
        run.stop()
    sd_listen_fds_ok(reply, 3)
    assert reply["type"] == socket.SOCK_STREAM and reply["family"] == socket.AF_INET
    assert reply["listen_fds"] == 1 and reply["names"] == "http"
    if pidns:
        # Its own pid as it sees it: 2 under the reaper, never the host's.
        assert reply["pid"] == 2 and len(reply["status"]["NSpid"].split()) >= 2
    else:
        assert len(reply["status"]["NSpid"].split()) == 1
    assert seen["pid"] == reply["pid"]


@pytest.mark.parametrize("mode", MODES)
def test_datagram_unix_abstract_and_seqpacket_with_their_names(mode, target, server,
                                                                sockdir):
    udp = free_port(socket.SOCK_DGRAM)
    tcp6 = free_port(host="::1")
    path = os.path.join(sockdir, "s.sock")
    dgram = os.path.join(sockdir, "d.sock")
    abstract = f"wrapperd-test-{uuid.uuid4().hex[:10]}"
    listen = [
        {"type": "datagram", "address": f"127.0.0.1:{udp}", "name": "dns"},
        {"type": "stream", "address": path, "name": "admin", "backlog": 4},
        {"type": "stream", "address": f"@{abstract}"},
        {"type": "seqpacket", "address": f"{sockdir}/q.sock", "name": "q"},
        {"type": "datagram", "address": dgram, "name": "log"},
        {"address": f"[::1]:{tcp6}", "name": "v6"},
    ]
    run = Running(mode, spec_of(target, listen), server)
    try:
        replies = [
            ask(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", udp)),
            ask(socket.AF_UNIX, socket.SOCK_STREAM, path),
            ask(socket.AF_UNIX, socket.SOCK_STREAM, "\0" + abstract),
            ask(socket.AF_UNIX, socket.SOCK_SEQPACKET, f"{sockdir}/q.sock"),
            ask(socket.AF_UNIX, socket.SOCK_DGRAM, dgram),
            ask(socket.AF_INET6, socket.SOCK_STREAM, ("::1", tcp6)),
        ]
        run.result()
    finally:
        run.stop()
    kinds = [socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_STREAM,
             socket.SOCK_SEQPACKET, socket.SOCK_DGRAM, socket.SOCK_STREAM]
    families = [socket.AF_INET] + [socket.AF_UNIX] * 4 + [socket.AF_INET6]
    for i, reply in enumerate(replies):
        sd_listen_fds_ok(reply, 3 + i)
        assert (reply["type"], reply["family"]) == (kinds[i], families[i]), i
        assert reply["listen_fds"] == 6
        assert reply["names"] == "dns:admin:unknown:q:log:v6"
    # The socket files: wrapperd's (root's), mode 0666, left for the next start.
    for p in (path, dgram):
        st = os.lstat(p)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_pass_fds_come_after_the_listening_sockets(target):
    port = free_port()
    r, w = os.pipe()
    extra = max(w, 5)
    os.dup2(w, extra)
    try:
        spec = spec_of(target, [{"address": f"127.0.0.1:{port}"},
                                {"address": f"@wrapperd-test-{uuid.uuid4().hex[:10]}"}],
                       str(extra), pass_fds=[extra])
        proc = popen(wrapperd_cmd("--spec", "-"), spec, pass_fds=(extra,))
        try:
            reply = ask(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    finally:
        for fd in {r, w, extra}:
            os.close(fd)
    sd_listen_fds_ok(reply, 3)
    assert reply[f"extra_{extra}"] is True and reply["listen_fds"] == 2


def test_a_status_fd_on_3_moves_out_of_the_sockets_way(target, tmp_path):
    """wrapperd --status-fd 3: fd 3 is the first socket's, and the status record of a
    later failure still reaches the caller; on success, EOF (the target has only the
    sockets there)."""
    port = free_port()
    status = tmp_path / "status"
    base = spec_of(target, [{"address": f"127.0.0.1:{port}"}, {"address": "@" + (
        f"wrapperd-test-{uuid.uuid4().hex[:10]}")}])
    cmd = "exec " + " ".join(wrapperd_cmd("--spec", "-", "--status-fd", "3")) + f" 3>{status}"
    failing = dict(base, cwd="/nonexistent-wrapperd-test")
    p = subprocess.run(["sh", "-c", cmd], input=json.dumps(failing).encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 125, p.stderr
    record = json.loads(status.read_text())
    assert record["step"] == "cwd" and "nonexistent" in record["message"]
    proc = popen(["sh", "-c", cmd], base)
    try:
        reply = ask(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    sd_listen_fds_ok(reply, 3)
    assert reply["type"] == socket.SOCK_STREAM and status.read_text() == ""


# ---------------------------------------------------------------- privileges


def test_a_target_without_capabilities_serves_a_privileged_port(target, low_port, server):
    needs_host_root("binding a port below ip_unprivileged_port_start needs "
                    "CAP_NET_BIND_SERVICE over the host's network namespace")
    # The control: the same target, told to bind it itself, cannot.
    probe = subprocess.run(
        wrapperd_cmd("--uid", str(NOBODY), "--", SYSTEM_PYTHON, "-I", "-c",
                     f"import socket; socket.socket().bind(('127.0.0.1', {low_port}))"),
        capture_output=True, timeout=60)
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr
    for mode in MODES:
        run = Running(mode, spec_of(target, [{"address": f"127.0.0.1:{low_port}",
                                              "name": "low"}],
                                    user={"uid": NOBODY}, capabilities={"keep": []}),
                      server)
        try:
            reply = ask(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", low_port))
            run.result()
        finally:
            run.stop()
        sd_listen_fds_ok(reply, 3)
        assert reply["uid"] == NOBODY, mode
        assert int(reply["status"]["CapEff"], 16) == 0, mode
        assert int(reply["status"]["CapPrm"], 16) == 0, mode


# ---------------------------------------------------------------- a real consumer


class Backend:
    """A small TCP server on a free loopback port: answers each connection with one
    HTTP response carrying a token, then closes it."""

    def __init__(self):
        self.token = uuid.uuid4().hex
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.recv(65536)
                body = f"hello {self.token}\n".encode()
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


def fetch(address, family=socket.AF_INET) -> bytes:
    with connected(family, socket.SOCK_STREAM, address) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize("pidns", [False, True], ids=["host-pidns", "new-pidns"])
def test_systemd_socket_proxyd_is_activated_and_proxies(pidns, sockdir):
    """Debian's systemd-socket-proxyd takes its sockets with sd_listen_fds() (which
    checks LISTEN_PID against getpid(): in a new pid namespace too), as nobody with no
    capability, and forwards each connection to a backend the test runs."""
    if not os.access(PROXYD, os.X_OK):
        pytest.skip(f"{PROXYD} is not installed (Debian's systemd package)")
    backend = Backend()
    port = free_port()
    path = os.path.join(sockdir, "proxy.sock")
    spec = {"argv": [PROXYD, f"127.0.0.1:{backend.port}"], "env": dict(TARGET_ENV),
            "user": {"uid": NOBODY}, "capabilities": {"keep": []},
            "listen": [{"address": f"127.0.0.1:{port}", "name": "tcp"},
                       {"address": path, "name": "unix"}]}
    if pidns:
        spec["namespaces"] = {"pid": True}
    proc = popen(wrapperd_cmd("--spec", "-"), spec)
    try:
        for _ in range(2):              # the proxy serves on, connection after connection
            assert fetch(("127.0.0.1", port)).endswith(
                f"hello {backend.token}\n".encode())
        # (proxyd exits "Didn't get any sockets passed in" unless sd_listen_fds() took
        # LISTEN_PID for its own pid: being served is the proof.)
        assert fetch(path, socket.AF_UNIX).endswith(f"hello {backend.token}\n".encode())
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.communicate(timeout=20)
        backend.close()


# ---------------------------------------------------------------- failing closed


@pytest.mark.parametrize("entry, match", [
    ({"address": "127.0.0.1:70000"}, "listen[1].address: '127.0.0.1:70000': the port"),
    ({"address": "localhost:80"}, "is not a numeric IPv4 address"),
    ({"address": "[::1]"}, "listen[1].address: '[::1]': expected"),
    ({"address": "relative.sock"}, "listen[1].address: 'relative.sock': expected"),
    ({"type": "datagram", "address": "127.0.0.1:53", "backlog": 1},
     "listen[1].backlog: a datagram socket does not listen"),
    ({"address": "@x", "name": "a:b"}, "listen[1].name: a name must not contain ':'"),
    ({"address": "@x", "name": "n" * 256}, "listen[1].name: a name is at most 255"),
    ({"type": "seqpacket", "address": "127.0.0.1:80"}, "listen[1].type: a seqpacket"),
    ({"type": "raw", "address": "@x"}, "listen[1].type: \"raw\" is not one of"),
    ({"address": "@x", "mode": "0600"}, "listen[1].mode: unknown key"),
])
def test_bad_input_is_one_line_and_nothing_is_made(entry, match, scratch):
    # The good entry before the bad one: nothing of it is made either.
    marker = scratch / "ran"
    sock = scratch / "x.sock"
    spec = {"argv": ["/bin/sh", "-c", f"touch {marker}"], "env": dict(TARGET_ENV),
            "listen": [{"address": str(sock)}, entry]}
    p = run_wrapperd(spec)
    err = p.stderr.decode()
    assert p.returncode == 125 and err.count("\n") == 1 and match in err, err
    assert err.startswith("wrapperd: spec: ")
    assert not marker.exists() and not os.path.lexists(sock)


def test_duplicates_and_pass_fds_in_the_listening_range_are_refused(scratch):
    marker = scratch / "ran"
    base = {"argv": ["/bin/sh", "-c", f"touch {marker}"], "env": dict(TARGET_ENV)}
    for fields, match in (
            ({"listen": [{"address": "127.0.0.1:8080"}, {"address": "127.0.0.1:8080"}]},
             "listen[1].address: '127.0.0.1:8080' is listed twice"),
            ({"listen": [{"address": "@a"}, {"address": "@b"}], "pass_fds": [4]},
             "pass_fds: fd 4 is where listen[1] goes")):
        p = run_wrapperd(dict(base, **fields))
        err = p.stderr.decode()
        assert p.returncode == 125 and err.count("\n") == 1 and match in err, err
    assert not marker.exists()


def _refused(scratch, listen: list, match: str) -> str:
    marker = scratch / "ran"
    spec = {"argv": ["/bin/sh", "-c", f"touch {marker}"], "env": dict(TARGET_ENV),
            "listen": listen}
    r, w = os.pipe()
    try:
        p = run_wrapperd(spec, "--status-fd", str(w), pass_fds=(w,))
        os.close(w)
        w = -1
        record = json.loads(os.read(r, 65536))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 125 and err.count("\n") == 1, err
    assert err.startswith("wrapperd: listen: ") and match in err, err
    assert record["step"] == "listen"
    assert not marker.exists()
    return err


@pytest.fixture
def taken_port():
    """A loopback TCP port some other socket listens on, for as long as the test runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_an_address_in_use_is_exit_125_naming_it_and_nothing_is_left(scratch, taken_port):
    port = taken_port
    first = scratch / "first.sock"
    err = _refused(scratch, [{"address": str(first)},
                             {"address": f"@wrapperd-test-{uuid.uuid4().hex[:10]}"},
                             {"address": f"127.0.0.1:{port}"}],
                   f"bind stream 127.0.0.1:{port}: Address already in use")
    # The socket file made before the failure is gone again.
    assert not os.path.lexists(first), err


def test_no_such_directory_is_exit_125(scratch):
    _refused(scratch, [{"address": str(scratch / "no" / "such.sock")}],
             "No such file or directory")


def test_a_file_or_symlink_at_the_path_is_never_removed(scratch):
    plain = scratch / "plain.sock"
    plain.write_text("mine")
    _refused(scratch, [{"address": str(plain)}], "exists and is not a socket")
    assert plain.read_text() == "mine"
    # A symlink to a stale socket: not followed, not removed.
    stale = scratch / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    link = scratch / "link.sock"
    os.symlink(stale, link)
    _refused(scratch, [{"address": str(link)}], "exists and is not a socket")
    assert os.path.islink(link) and stat.S_ISSOCK(os.lstat(stale).st_mode)


def test_a_live_socket_is_in_use_and_a_stale_one_is_replaced(scratch, target, sockdir):
    live = os.path.join(sockdir, "live.sock")
    with socket.socket(socket.AF_UNIX) as holder:
        holder.bind(live)
        holder.listen()
        _refused(scratch, [{"address": live}], "a socket something accepts on")
        assert os.path.exists(live)
    # Now nothing accepts there: a stale socket file, replaced as systemd replaces it.
    # (Being served through the path is the proof: the stale one refuses connections.
    # Not the inode number, which the filesystem may hand out again.)
    run = Running("wrapperd", spec_of(target, [{"address": live}]))
    try:
        reply = ask(socket.AF_UNIX, socket.SOCK_STREAM, live)
        run.result()
    finally:
        run.stop()
    sd_listen_fds_ok(reply, 3)


def test_spawn_raises_setup_error_naming_the_step(scratch, taken_port):
    port = taken_port
    marker = scratch / "ran"
    with pytest.raises(sandbox.SetupError) as e:
        sandbox.spawn(["/bin/sh", "-c", f"touch {marker}"], env=dict(TARGET_ENV),
                      listen=[{"address": f"127.0.0.1:{port}"}])
    assert e.value.step == "listen" and f"127.0.0.1:{port}" in e.value.message
    assert not marker.exists()
