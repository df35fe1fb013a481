"""examples/init.py end to end: it starts its three services (redis ready by its own
sd_notify, systemd-socket-proxyd on a socket the init binds, a worker asking redis
through the proxy), restarts the one we kill, and on SIGTERM stops them all and leaves
nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from tests.conftest import skip_or_fail, until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INIT = os.path.join(REPO, "examples", "init.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events(logdir) -> list:
    try:
        with open(os.path.join(logdir, "events.jsonl")) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def started(logdir, name) -> list:
    return [e["pid"] for e in events(logdir) if e["event"] == "started" and
            e["service"] == name]


@pytest.fixture
def prefix():
    """The services' names (dynamic users, state directories), removed after."""
    p = f"wdt-init-{uuid.uuid4().hex[:6]}"
    yield p
    for base in ("/var/lib", "/var/lib/private"):
        shutil.rmtree(f"{base}/{p}-cache", ignore_errors=True)


def test_the_example_init_starts_restarts_and_stops_its_services(tmp_path, cgroup_root,
                                                                 prefix):
    for binary in ("/usr/bin/redis-server", "/lib/systemd/systemd-socket-proxyd"):
        if not os.access(binary, os.X_OK):
            skip_or_fail(f"{binary} is not installed (sh scripts/install-deps)")
    logdir = str(tmp_path / "logs")
    init = subprocess.Popen([sys.executable, INIT, logdir, "--port", str(free_port()),
                             "--cache-port", str(free_port()), "--cgroup", cgroup_root,
                             "--prefix", prefix], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            assert init.poll() is None, init.communicate()[1].decode()
            seen = {(e["event"], e["service"]) for e in events(logdir)}
            return {("ready", "cache"), ("started", "proxy"), ("started", "worker")} <= seen
        until(up, 60, "the three services to be up")

        def answered() -> bool:           # worker -> proxy (fd 3) -> redis, for real
            try:
                with open(os.path.join(logdir, "worker.log")) as f:
                    return "PONG" in f.read()
            except FileNotFoundError:
                return False
        until(answered, 60, "the worker to get PONG through the proxy")

        # One service dies: the init sees why and starts it again.
        first = started(logdir, "worker")[0]
        os.kill(first, signal.SIGKILL)
        until(lambda: len(started(logdir, "worker")) >= 2, 60, "the worker's restart")
        exited = [e for e in events(logdir) if e["event"] == "exited"]
        assert exited[0]["service"] == "worker" and exited[0]["reason"] == "killed(SIGKILL)"
        assert started(logdir, "worker")[1] != first

        # SIGTERM: every service stopped at once, the init exits 0.
        init.send_signal(signal.SIGTERM)
        out, err = init.communicate(timeout=60)
        assert init.returncode == 0, err.decode()
        ev = events(logdir)
        assert ev[-1]["event"] == "down"
        assert {e["service"] for e in ev if e["event"] == "stopped"} == \
            {"cache", "proxy", "worker"}
        pids = [e["pid"] for e in ev if e["event"] == "started"]
        assert not [p for p in pids if os.path.exists(f"/proc/{p}")], "left running"
        # Its services' cgroups are gone (cgroup_root, their parent, stays if a service
        # that did not make it was the last to go: each spawn() removes what it made).
        from sandbox import cgroups
        assert not [h.mountpoint + cgroup_root + "/" + name
                    for h in cgroups.hierarchies() for name in ("cache", "proxy", "worker")
                    if os.path.exists(h.mountpoint + cgroup_root + "/" + name)]
    finally:
        if init.poll() is None:
            init.kill()
            init.wait()
