"""The processes that stay alive beside a target in a new pid namespace -- the
namespace's pid 1 (the reaper), the supervisor outside it, the fork server -- as the
kernel shows them, on every path that makes one: `wrapperd` (the shim forks the reaper),
`sandbox.spawn()` (the shim is started as pid 1) and the fork server (a reaper forked
ahead of the request).

* pid 1 is in every namespace the target is in: else a target would read the host's
  interfaces, routes and sockets (/proc/1/net/*) and mount table (/proc/1/mountinfo)
  through it.
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
from tests.conftest import nspid, probe_spec, wrapperd_cmd

ALL_BUT_USER = {"pid": True, "net": True, "mount": True, "ipc": True, "uts": True,
                "cgroup": True}
# As root, keeping CAP_SYS_PTRACE: the strongest reader of another process's /proc.
ROOT_WITH_PTRACE = {"no_new_privs": True, "capabilities": {"drop": ["CAP_SYS_MODULE"]}}
INSIDE = ("/proc/1/net/dev", "/proc/1/mountinfo", "/proc/self/mountinfo",
          "/proc/1/environ", "/proc/1/auxv")
VIAS = ["wrapperd", "spawn", "fork server"]
SECRET_NAME = "WRAPPERD_TEST_HELPER_SECRET"


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


def _launch(via: str, probe: str, secret: str, monkeypatch) -> Launched:
    """Start the probe under ALL_BUT_USER as root keeping CAP_SYS_PTRACE, with `secret`
    in the caller's environment (never in the spec's)."""
    spec = probe_spec(probe, *(f"read:{p}" for p in INSIDE), "sleep:60",
                      namespaces=ALL_BUT_USER, **ROOT_WITH_PTRACE)
    assert secret not in json.dumps(spec)
    if via == "wrapperd":
        r, w = os.pipe()
        os.write(w, json.dumps(spec).encode())
        os.close(w)
        try:
            p = subprocess.Popen(wrapperd_cmd("--spec-fd", str(r)), pass_fds=(r,),
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=dict(os.environ, **{SECRET_NAME: secret}))
        finally:
            os.close(r)

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
