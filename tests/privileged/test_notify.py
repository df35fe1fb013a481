"""Readiness notification (sd_notify, the spec's `notify`): real notifiers -- Debian's
systemd-notify and a Python target sending raw datagrams -- under the `service` profile
(dynamic uid, read-only root, its own mount namespace) and plain specs, through
sandbox.spawn(), the fork server and the wrapperd command line; a forged message is
dropped; timeouts, an early exit, asyncio; nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import sandbox
from sandbox import notify
from sandbox.forkserver import ForkServer
from sandbox.notify import NotifyError
from sandbox.spawning import DEVNULL, PIPE
from tests.conftest import (
    ROOTLESS,
    TARGET_ENV,
    host_dir_root,
    needs_host_root,
    run_wrapperd,
    skip_or_fail,
    wrapperd_cmd,
)

# Sends what argv[1:] says, one datagram each ("-" waits for a line on stdin first),
# then waits for stdin's EOF.  Its first datagram reports what it sees of the sandbox.
SENDER = r"""
import json, os, socket, sys
path = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:                        # (made and removed at once: nothing left on the host)
    probe = "/var/lib/wrapperd-notify-rw-test-%d" % os.getpid()
    open(probe, "w").close()
    os.unlink(probe)
    root = "rw"
except OSError as e:
    root = e.strerror
s.sendto(("STATUS=" + json.dumps({"socket": path, "uid": os.getuid(), "root": root,
                                  "pid": os.getpid()})).encode(), path)
for m in sys.argv[1:]:
    if m == "-":
        sys.stdin.readline()
    else:
        s.sendto(m.replace("{pid}", str(os.getpid())).encode(), path)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def base(monkeypatch):
    """Where the sockets go: the default (/run/wrapperd-notify), removed once empty --
    and so gone after the test unless it was there before; in the rootless run, /run
    is the host's root's: a directory of the test's own (WRAPPERD_NOTIFY_DIR)."""
    if ROOTLESS:
        d = tempfile.mkdtemp(prefix="wrapperd-test-notify-", dir=host_dir_root())
        os.chmod(d, 0o755)
        monkeypatch.setenv(notify.ENV, f"{d}/notify")
        yield f"{d}/notify"
        shutil.rmtree(d)
        return
    existed = os.path.exists(notify.BASE)
    yield notify.BASE
    if not existed:
        assert not os.path.exists(notify.BASE), os.listdir(notify.BASE)


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs


def launch(mode, server, argv, **fields):
    fields.setdefault("env", dict(TARGET_ENV))
    kw = dict(stdin=PIPE, stdout=DEVNULL, notify=True, **fields)
    if mode == "fast":
        return server.spawn(argv, **kw)
    return sandbox.spawn(argv, **kw)


def sender(*messages):
    return ["/usr/bin/python3", "-I", "-c", SENDER, *messages]


def gone(proc):
    """The socket, its directory: removed with the Process."""
    return not os.path.exists(proc.notify_socket) and \
        not os.path.exists(os.path.dirname(proc.notify_socket))


def wait_reading(proc, timeout=30.0):
    """Wait for the exit while reading the socket: systemd-notify (without --no-block)
    waits for its BARRIER=1 message to be read (sd_notify_barrier(3), up to 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.notify_dropped >= 0     # reading an attribute drains the socket
        try:
            return proc.wait(0.05)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                raise


# ---------------------------------------------------------------- systemd-notify

@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_systemd_notify_under_service(mode, server, base):
    needs_host_root("the service profile's dynamic user needs a root wrapperd")
    proc = launch(mode, server, ["systemd-notify", "--ready", "--status=serving"],
                  profile="service", name="wrapperd-test-notify")
    with proc:
        assert proc.wait_ready(30) is True
        assert proc.notify_status == "serving"
        assert proc.notify_dropped == 0
        assert wait_reading(proc) == 0      # its barrier was answered: the fd closed
    assert gone(proc)


def test_systemd_notify_plain_spec(base):
    # As root with CAP_SYS_ADMIN, systemd-notify first sends as its parent (here: the
    # caller, outside the sandbox), which is dropped; --pid=self makes it send as
    # itself (and say MAINPID=itself).  Not root: it cannot pretend, and sends as
    # itself anyway (the second case, in a mount namespace: the socket's directory
    # is root's).
    with sandbox.spawn(["systemd-notify", "--ready", "--status=plain", "--pid=self"],
                       notify=True, env=dict(TARGET_ENV)) as proc:
        assert proc.wait_ready(30) is True
        assert proc.notify_status == "plain"
        assert proc.main_pid == proc.target_pid
        assert wait_reading(proc) == 0
    assert gone(proc)
    with sandbox.spawn(["systemd-notify", "--ready", "--status=nobody"], notify=True,
                       env=dict(TARGET_ENV), user=65534,
                       namespaces={"mount": True}) as proc:
        assert proc.wait_ready(30) is True
        assert proc.notify_status == "nobody"
        assert wait_reading(proc) == 0
    assert gone(proc)


def test_systemd_notify_pretending_to_be_the_caller_is_dropped(base):
    with sandbox.spawn(["systemd-notify", "--ready", "--status=plain"], notify=True,
                       env=dict(TARGET_ENV)) as proc:
        with pytest.raises(NotifyError, match="exited .* before it said READY=1"):
            proc.wait_ready(30)
        assert proc.notify_status is None and proc.notify_dropped >= 1


# ---------------------------------------------------------------- raw datagrams

@pytest.mark.parametrize("mode", ["spawn", "fast"])
@pytest.mark.parametrize("profile", ["service", None])
def test_every_field(mode, profile, server, base):
    fields: dict = {}
    if profile is not None:
        needs_host_root("the service profile's dynamic user needs a root wrapperd")
        fields = {"profile": profile, "name": "wrapperd-test-notify"}
    proc = launch(mode, server, sender("MAINPID={pid}\nSTATUS=starting", "READY=1", "-",
                                       "WATCHDOG=1", "-", "STOPPING=1\nERRNO=5\nSTATUS=bye"),
                  **fields)
    with proc:
        assert proc.wait_ready(30) is True
        assert proc.notify_ready
        assert proc.notify_status == "starting"
        assert proc.main_pid == proc.target_pid        # no pid namespace here
        assert proc.watchdog_at is None and not proc.stopping
        before = time.monotonic()
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert until_set(lambda: proc.watchdog_at)
        assert before <= proc.watchdog_at <= time.monotonic()
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert until_set(lambda: proc.stopping)
        assert proc.notify_errno == 5 and proc.notify_status == "bye"
        assert proc.notify_dropped == 0
        proc.stdin.close()
        assert proc.wait(30) == 0
    assert gone(proc)


def until_set(get, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = get()
        if v:
            return v
        time.sleep(0.02)
    return None


@pytest.mark.parametrize("profile", ["service", "strict", "untrusted", None])
def test_the_socket_as_the_target_sees_it(profile, base):
    """With a mount namespace, BASE/notify inside (its own directory bound over BASE),
    reachable by a dynamic uid under a read-only root -- in a user namespace too, where
    the socket's owner is unmapped; without, the host path."""
    fields: dict = {}
    if profile is not None:
        needs_host_root("the profile's dynamic user needs a root wrapperd")
        fields = {"profile": profile, "name": "wrapperd-test-notify"}
    with launch("spawn", None, sender("READY=1"), **fields) as proc:
        assert proc.wait_ready(30)
        # The first datagram's STATUS, then READY: read both before asking.
        seen = json.loads(proc._notify.fields["STATUS"])
        if profile is None:
            assert seen["socket"] == proc.notify_socket
        else:
            assert seen["socket"] == f"{base}/notify"
            assert seen["root"] == "Read-only file system"
            assert seen["uid"] != 0 or profile == "untrusted"   # (root in its user ns)
        assert os.stat(os.path.dirname(proc.notify_socket)).st_mode & 0o777 == 0o755
        assert os.stat(base).st_mode & 0o777 == 0o700
        assert os.stat(base).st_uid == os.geteuid()
        assert sandbox.verify(proc) == []       # NOTIFY_SOCKET expected in its environment
    assert gone(proc)


# ---------------------------------------------------------------- who may send

def test_a_forged_message_is_dropped(base):
    with launch("spawn", None, sender()) as proc:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(b"READY=1\nSTATUS=forged", proc.notify_socket)
        finally:
            s.close()
        assert proc.wait_ready(1.0) is False
        assert proc.notify_dropped == 1
        assert proc.notify_status.startswith("{")      # the target's own, not forged


@pytest.mark.parametrize("with_cgroup", [True, False])
def test_a_process_in_the_cgroup_counts(with_cgroup, request):
    """A child of the target (not exec'd: the shell stays) counts when the spec has a
    cgroup it is in; without one only the target's pid does."""
    fields: dict = {}
    if with_cgroup:
        fields["cgroup"] = request.getfixturevalue("cgroup_root")
    child = "import os, socket, time; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)" \
        ".sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(60)"
    with launch("spawn", None, ["/bin/sh", "-c", f'/usr/bin/python3 -I -c "{child}"; :'],
                **fields) as proc:
        assert proc.wait_ready(5 if with_cgroup else 1.5) is with_cgroup
        assert proc.notify_dropped == (0 if with_cgroup else 1)
        proc.stop(1).wait()             # (its child sleeps on)


# ---------------------------------------------------------------- waiting

def test_wait_ready_times_out(base):
    with launch("spawn", None, sender()) as proc:
        t = time.monotonic()
        assert proc.wait_ready(0.3) is False
        assert time.monotonic() - t >= 0.3
        assert proc.returncode is None and not proc.notify_ready


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_exit_before_ready_is_an_error(mode, server, base):
    proc = launch(mode, server, ["/usr/bin/python3", "-I", "-c", "raise SystemExit(3)"])
    with proc:
        with pytest.raises(NotifyError) as e:
            proc.wait_ready(30)
        assert isinstance(e.value, sandbox.SandboxError)
        assert e.value.returncode == 3
        assert "returncode 3" in str(e.value)
    assert gone(proc)


def test_without_notify_wait_ready_says_so():
    with sandbox.spawn(["/bin/true"], env=dict(TARGET_ENV)) as proc:
        assert proc.notify_socket is None and proc.notify_status is None
        with pytest.raises(NotifyError, match='"notify": true'):
            proc.wait_ready(1)
        proc.wait(30)


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_asyncio_ready(mode, server, base):
    async def main():
        proc = launch(mode, server, sender("-", "READY=1\nSTATUS=async"))
        with proc:
            # Not ready yet: a timeout leaves the loop's readers removed.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(proc.ready(), 0.3)
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, lambda: (proc.stdin.write(b"\n"), proc.stdin.flush()))
            assert await asyncio.wait_for(proc.ready(), 30) is True
            assert proc.notify_status == "async"
            assert await proc.ready() is True           # once ready, at once
        early = launch(mode, server, ["/usr/bin/python3", "-I", "-c", "raise SystemExit(4)"])
        with early:
            with pytest.raises(NotifyError) as e:
                await asyncio.wait_for(early.ready(), 30)
            assert e.value.returncode == 4
        return proc, early
    proc, early = asyncio.run(main())
    assert gone(proc) and gone(early)


def test_aspawn_ready(base):
    async def main():
        p = await sandbox.aspawn(sender("READY=1\nSTATUS=aspawned"), notify=True,
                                 stdin=PIPE, env=dict(TARGET_ENV))
        async with p:
            assert await asyncio.wait_for(p.ready(), 30) is True
            assert p.process.notify_status == "aspawned"
            p.stdin.close()
        return p.process
    assert gone(asyncio.run(main()))


# ---------------------------------------------------------------- refused, cleaned up

def test_a_target_that_cannot_reach_the_socket_is_refused(base):
    existed = os.path.exists(base)
    with pytest.raises(sandbox.SpecError, match="namespaces.mount"):
        sandbox.spawn(["/bin/true"], notify=True, env=dict(TARGET_ENV), user=65534)
    assert os.path.exists(base) == existed


def test_a_failed_setup_leaves_nothing(base):
    existed = os.path.exists(base)
    with pytest.raises(sandbox.SetupError) as e:
        sandbox.spawn(["/bin/true"], notify=True, env=dict(TARGET_ENV),
                      cwd="/nonexistent-wrapperd-notify-test")
    assert e.value.step == "cwd"
    assert os.path.exists(base) == existed


# ---------------------------------------------------------------- the command line

@pytest.fixture
def caller_socket():
    """A socket as an init keeps one (a 0755 directory, the socket 0666), receiving
    with SO_PASSCRED; removed after."""
    d = tempfile.mkdtemp(prefix="wrapperd-test-notify-", dir=host_dir_root())
    os.chmod(d, 0o755)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind(f"{d}/notify")
    os.chmod(f"{d}/notify", 0o666)
    try:
        yield s, f"{d}/notify"
    finally:
        s.close()
        shutil.rmtree(d)


def sandbox_cmd(*args):
    path = os.path.join(os.path.dirname(sys.executable), "sandbox")
    if not os.access(path, os.X_OK):
        skip_or_fail(f"no installed sandbox command at {path} (make venv writes it)")
    return [path, *args]


@pytest.mark.parametrize("command", ["wrapperd", "sandbox run"])
@pytest.mark.parametrize("profile", ["service", None])
def test_wrapperd_passes_on_the_callers_socket(profile, command, caller_socket, tmp_path):
    import struct
    sock, path = caller_socket
    spec = {"argv": sender("READY=1"), "env": dict(TARGET_ENV), "notify": True}
    if profile is not None:
        needs_host_root("the service profile's dynamic user needs a root wrapperd")
        spec.update(profile=profile, name="wrapperd-test-notify")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = wrapperd_cmd("--spec", str(tmp_path / "spec.json")) if command == "wrapperd" \
        else sandbox_cmd("run", str(tmp_path / "spec.json"))
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, NOTIFY_SOCKET=path))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    sock.settimeout(10)
    got = []
    for _ in range(2):
        data, anc, _flags, _ = sock.recvmsg(4096, 1024)
        pid = next(struct.unpack("iII", c[:12])[0] for lvl, kind, c in anc
                   if kind == socket.SCM_CREDENTIALS)
        got.append((data, pid))
    seen = json.loads(got[0][0].decode().partition("=")[2])
    assert seen["socket"] == path                       # bound onto itself inside
    assert got[1] == (b"READY=1", p.pid)                # wrapperd became the target


def test_sandbox_check_checks_notify_as_spawn_runs_it(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps(
        {"argv": ["/bin/true"], "notify": True, "namespaces": {"mount": True},
         "user": {"uid": 65534}}))
    (tmp_path / "bad.json").write_text(json.dumps(
        {"argv": ["/bin/true"], "notify": True, "user": {"uid": 65534}}))
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    r = subprocess.run(sandbox_cmd("check", str(tmp_path / "ok.json")), env=env,
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(sandbox_cmd("check", str(tmp_path / "bad.json")), env=env,
                       capture_output=True)
    assert r.returncode == 125 and b"namespaces.mount" in r.stderr


def test_wrapperd_without_a_socket_is_exit_125():
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    p = run_wrapperd({"argv": ["/bin/true"], "env": dict(TARGET_ENV), "notify": True},
                     env=env)
    assert p.returncode == 125
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrapperd: spec: notify: no socket"), \
        lines


@pytest.mark.parametrize("socket_value, why", [
    ("relative/notify", "neither an absolute path"),
    ("/etc/passwd", "not a socket"),
    ("/nonexistent-wrapperd-notify/notify", "No such file"),
])
def test_wrapperd_with_a_bad_socket_is_exit_125(socket_value, why):
    p = run_wrapperd({"argv": ["/bin/true"], "env": dict(TARGET_ENV), "notify": True},
                     env=dict(os.environ, NOTIFY_SOCKET=socket_value))
    assert p.returncode == 125
    assert why in p.stderr.decode() and p.stderr.decode().count("\n") == 1


def test_wrapperd_abstract_socket_and_a_new_net_namespace_is_exit_125():
    spec = {"argv": ["/bin/true"], "env": dict(TARGET_ENV), "notify": True,
            "namespaces": {"net": True}}
    p = run_wrapperd(spec, env=dict(os.environ, NOTIFY_SOCKET="@wrapperd-test-notify"))
    assert p.returncode == 125
    assert "abstract" in p.stderr.decode()
