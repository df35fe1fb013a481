"""The processes that stay alive beside a target in a new pid namespace -- the
namespace's pid 1 (the reaper), the supervisor outside it, the fork server -- as the
kernel shows them, on every path that makes one: `wrapperd` (the shim forks the reaper),
`sandbox.spawn()` (the shim is started as pid 1) and the fork server (a reaper forked
ahead of the request).

* pid 1 is in every namespace the target is in: else a target would read the host's
  interfaces, routes and sockets (/proc/1/net/*) and mount table (/proc/1/mountinfo)
  through it.
* None keeps anything of the caller's environment (a secret in it, here) or an
  auxiliary vector for /proc/PID/environ and /proc/PID/auxv to show -- not even to a
  root target keeping CAP_SYS_PTRACE, which passes the kernel's ptrace read check
  whatever the helper's dumpable flag says.
  The session step's supervisor too (no pid namespace; the target's parent).
* None holds an fd beyond the one the supervisor outside needs (the write end of the
  pipe whose EOF tells the reaper it is gone).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

import sandbox
from sandbox.forkserver import ForkServer
from sandbox.spawning import DEVNULL, PIPE
from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, nspid, probe_spec, until, wrapperd_cmd

ALL_BUT_USER = {"pid": True, "net": True, "mount": True, "ipc": True, "uts": True,
                "cgroup": True}
# As root, keeping CAP_SYS_PTRACE: the strongest reader of another process's /proc.
ROOT_WITH_PTRACE = {"no_new_privs": True, "capabilities": {"drop": ["CAP_SYS_MODULE"]}}
INSIDE = ("/proc/1/net/dev", "/proc/1/mountinfo", "/proc/self/mountinfo",
          "/proc/1/environ", "/proc/1/auxv")
VIAS = ["wrapperd", "spawn", "fork server"]
SECRET_NAME = "WRAPPERD_TEST_HELPER_SECRET"
READY_THEN_SLEEP = "import time; print('ready', flush=True); time.sleep(60)"


def _children(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Launched:
    """A probe running in a new pid namespace (it sleeps after its report), and the
    helpers beside it, by pid as the host sees them."""

    def __init__(self, report: dict, target: int, pid_1: int, others: dict, stop):
        self.report, self.target, self.pid_1, self.others = report, target, pid_1, others
        self._stop = stop

    def helpers(self) -> dict:
        return dict(self.others, reaper=self.pid_1)

    def stop(self) -> None:
        self._stop()


def _wrapperd_with_secret(spec: dict, secret: str, **popen) -> subprocess.Popen:
    """wrapperd reading spec from a pipe, with `secret` in its environment only."""
    r, w = os.pipe()
    os.write(w, json.dumps(spec).encode())
    os.close(w)
    try:
        return subprocess.Popen(wrapperd_cmd("--spec-fd", str(r)), pass_fds=(r,),
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **{SECRET_NAME: secret}), **popen)
    finally:
        os.close(r)


def _launch(via: str, probe: str, secret: str, monkeypatch) -> Launched:
    """Start the probe under ALL_BUT_USER as root keeping CAP_SYS_PTRACE, with `secret`
    in the caller's environment (never in the spec's)."""
    spec = probe_spec(probe, *(f"read:{p}" for p in INSIDE), "sleep:60",
                      namespaces=ALL_BUT_USER, **ROOT_WITH_PTRACE)
    assert secret not in json.dumps(spec)
    if via == "wrapperd":
        p = _wrapperd_with_secret(spec, secret)

        def stop():
            p.kill()                   # the supervisor: the reaper gets PDEATHSIG
            p.wait()
            p.stdout.close()
        try:
            report = json.loads(p.stdout.readline())
            # The report is out: the target was exec'd, under the reaper the shim
            # forked (supervisor -> reaper -> target).
            (reaper,) = _children(p.pid)
            (target,) = _children(reaper)
        except BaseException:
            stop()
            raise
        return Launched(report, target, reaper, {"supervisor": p.pid}, stop)
    monkeypatch.setenv(SECRET_NAME, secret)
    server = ForkServer() if via == "fork server" else None
    if server is not None:
        server.start()                 # after the secret is in our environment
    try:
        start = sandbox.spawn if server is None else server.spawn
        p = start(spec, stdin=DEVNULL, stdout=PIPE)
    except BaseException:
        if server is not None:
            server.close()
        raise

    def stop():
        p.kill()
        p.wait()
        p.close()
        if server is not None:
            server.close()
    try:
        report = json.loads(p.stdout.readline())
        target = p.target_pid
    except BaseException:
        stop()
        raise
    others = {"fork server": server.pid} if server is not None else {}
    # spawn(): our child is the shim born as pid 1; the fork server's: the reaper
    # it forked ahead.  Either way p.pid, the target's parent.
    return Launched(report, target, p.pid, others, stop)


@pytest.fixture
def secret() -> str:
    return f"wrapperd-secret-{uuid.uuid4().hex}"


@pytest.mark.parametrize("via", VIAS)
def test_pid_1_is_in_every_namespace_of_the_target(probe, secret, monkeypatch, via):
    run = _launch(via, probe, secret, monkeypatch)
    try:
        # The namespace's init, found from the host: pid 1 inside, the target's parent.
        assert nspid(run.pid_1)[-1] == 1 and nspid(run.target)[-1] == 2
        names = sorted(os.listdir(f"/proc/{run.target}/ns"))
        theirs = {n: os.readlink(f"/proc/{run.target}/ns/{n}") for n in names}
        init = {n: os.readlink(f"/proc/{run.pid_1}/ns/{n}") for n in names}
        mine = {n: os.readlink(f"/proc/self/ns/{n}") for n in names}
        assert init == theirs
        # Control: these are new namespaces, not ours that every process shares.
        for n in ("pid", "net", "mnt", "ipc", "uts", "cgroup"):
            assert theirs[n] != mine[n], n
        inside = run.report["read"]
        # From inside: /proc/1/net/dev lists loopback only, and /proc/1/mountinfo is
        # the target's own mount table.
        dev = inside["/proc/1/net/dev"]["data"].splitlines()[2:]
        assert [line.split(":")[0].strip() for line in dev] == ["lo"]
        assert inside["/proc/1/mountinfo"] == inside["/proc/self/mountinfo"]
    finally:
        run.stop()


@pytest.mark.parametrize("via", VIAS)
def test_helpers_keep_nothing_of_the_callers_environment(probe, secret, monkeypatch, via):
    run = _launch(via, probe, secret, monkeypatch)
    try:
        helpers = run.helpers()
        for name, pid in helpers.items():
            # From the host (root, every capability): empty, and no auxiliary vector
            # but its terminator.
            assert _read(f"/proc/{pid}/environ") == b"", name
            assert _read(f"/proc/{pid}/auxv").strip(b"\0") == b"", name
            # and no fd but the supervisor's end of the is-the-shim-alive pipe.
            fds = sorted(os.readlink(f"/proc/{pid}/fd/{fd}")
                         for fd in os.listdir(f"/proc/{pid}/fd"))
            if name == "supervisor":
                assert len(fds) == 1 and fds[0].startswith("pipe:"), fds
            elif name == "reaper":
                assert fds == [], fds
        # From inside, as root keeping CAP_SYS_PTRACE: read, and empty.
        inside = run.report["read"]
        assert inside["/proc/1/environ"] == {"data": ""}
        assert inside["/proc/1/auxv"]["data"].strip("\0") == ""
        assert secret not in json.dumps(run.report)
        # The target's own environment is the spec's, as always.
        assert run.report["env"] == TARGET_ENV
    finally:
        run.stop()


def test_control_a_process_started_with_the_secret_shows_it(secret):
    # The reads above can see an environment: an ordinary child of ours, started with
    # the secret, shows it in the same file.
    p = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", READY_THEN_SLEEP],
                         env={SECRET_NAME: secret},
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"          # running: past its execve
        assert secret.encode() in _read(f"/proc/{p.pid}/environ")
        assert _read(f"/proc/{p.pid}/auxv").strip(b"\0") != b""
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_the_session_forks_supervisor_keeps_nothing_of_the_callers_environment(
        probe, secret):
    # wrapperd leading its process group forks once for setsid and supervises: in the
    # host's pid namespace, a target's parent.
    p = _wrapperd_with_secret(probe_spec(probe, "sleep:60", **ROOT_WITH_PTRACE), secret,
                              process_group=0)
    try:
        report = json.loads(p.stdout.readline())
        assert report["stat"]["ppid"] == p.pid           # the supervisor is its parent
        assert _read(f"/proc/{p.pid}/environ") == b""
        assert _read(f"/proc/{p.pid}/auxv").strip(b"\0") == b""
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_sandbox_inspect_names_a_helper_and_its_target():
    # spawn()'s shim is pid 1 of the namespace it asked for: the reaper; the target is
    # its child.  `sandbox inspect` says which one it was given and where the target is.
    import sys as _sys
    spec = {"argv": ["/bin/sleep", "30"], "env": {"PATH": "/usr/bin:/bin"},
            "namespaces": {"pid": True}}
    with sandbox.spawn(spec) as p:
        target = until(lambda: p.target_pid if p.target_pid != p.pid else None, 30,
                       "the target to be forked")
        with open(f"/proc/{p.pid}/comm") as f:
            assert f.read().strip() == "wrapperd-reaper"
        r = subprocess.run([_sys.executable, "-I", "-c",
                            "from sandbox.cli import entry; entry()", "inspect",
                            str(p.pid)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        line = r.stdout.splitlines()[1]
        assert "wrapperd's reaper" in line and f"pid {target}" in line
        r = subprocess.run([_sys.executable, "-I", "-c",
                            "from sandbox.cli import entry; entry()", "inspect",
                            str(target)], capture_output=True, text=True, timeout=60)
        assert "wrapperd's" not in r.stdout
        p.kill()
