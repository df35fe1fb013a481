"""Landlock, seen by the kernel: the target tries what its rule set allows and denies
(files, TCP bind and connect, signals and abstract unix sockets to the outside), and
the ABI is lowered (WRAPPERD_LANDLOCK_ABI) to see hard_requirement refuse and
best_effort run and report.  Runs as host root and in the rootless run (a user
namespace: Landlock needs no privilege, only no_new_privs)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

import sandbox
from sandbox import landlock
from tests.conftest import (
    SYSTEM_PYTHON,
    TARGET_ENV,
    host_dir_root,
    needs_host_root,
    run_wrapperd,
    skip_or_fail,
)

TRY = r"""
import errno, json, os, socket, subprocess, sys
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def write(path):
    with open(path, "w") as f:
        f.write("x")
def bind(port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
def connect(port):
    with socket.socket() as s:
        s.connect(("127.0.0.1", port))
def abstract(name):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect("\0" + name)
for a in sys.argv[1:]:
    what, _, arg = a.partition("=")
    if what == "read":
        attempt(a, lambda: open(arg).read())
    elif what == "write":
        attempt(a, lambda: write(arg))
    elif what == "run":
        attempt(a, lambda: subprocess.run([arg], check=True))
    elif what == "bind":
        attempt(a, lambda: bind(int(arg)))
    elif what == "connect":
        attempt(a, lambda: connect(int(arg)))
    elif what == "kill":
        attempt(a, lambda: os.kill(int(arg), 0))
    elif what == "abstract":
        attempt(a, lambda: abstract(arg))
print(json.dumps(out))
"""

PYTHON_READ = [{"path": "/usr", "access": ["read", "execute"]},
               {"path": "/etc/ld.so.cache", "access": ["read"]}]


@pytest.fixture(autouse=True)
def _has_landlock():
    if landlock.kernel_abi() < 6:
        skip_or_fail(f"Landlock ABI {landlock.kernel_abi()} here; these tests need 6")


@pytest.fixture
def place():
    """A directory of this test's own that the target may see (host_dir_root)."""
    d = tempfile.mkdtemp(prefix="wrapperd-landlock-", dir=host_dir_root())
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def spec_for(ll: dict, *actions: str, **fields) -> dict:
    spec = {"argv": [SYSTEM_PYTHON, "-I", "-S", "-c", TRY, *actions],
            "env": dict(TARGET_ENV), "landlock": ll}
    spec.update(fields)
    return spec


def tried(spec: dict, env=None) -> dict:
    p = run_wrapperd(spec, env=env)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_files_outside_the_rules_are_denied_and_the_rules_work(place):
    x = os.path.join(place, "x")
    os.mkdir(x)
    with open(os.path.join(x, "in"), "w") as f:
        f.write("readable")
    r = tried(spec_for({"fs": [*PYTHON_READ, {"path": x, "access": ["read"]}]},
                       "read=/etc/hostname", f"read={x}/in", f"write={x}/f",
                       "run=/usr/bin/true"))
    assert r == {"read=/etc/hostname": "EACCES", f"read={x}/in": "ok",
                 f"write={x}/f": "EACCES", "run=/usr/bin/true": "ok"}
    assert not os.path.exists(os.path.join(x, "f"))


def test_write_create_remove_beneath_a_directory(place):
    r = tried(spec_for({"fs": [*PYTHON_READ, {"path": place, "access": [
        "read", "write", "create", "remove"]}]}, f"write={place}/new"))
    assert r == {f"write={place}/new": "ok"}


def test_through_the_library_with_namespaces_mounts_and_seccomp(place):
    # The paths are opened in the target's view: a tmpfs the mounts step put over
    # `place` is what the rule names (empty, writable); seccomp loads after Landlock
    # and need not allow its syscalls.
    spec = spec_for({"fs": [*PYTHON_READ, {"path": place, "access": ["read", "write",
                                                                     "create"]}]},
                    f"write={place}/inside", "read=/etc/hostname",
                    namespaces={"mount": True},
                    mounts=[{"type": "tmpfs", "destination": place}],
                    seccomp={"default_action": "allow", "syscalls": [
                        {"names": ["landlock_create_ruleset", "landlock_add_rule",
                                   "landlock_restrict_self"], "action": "errno:EPERM"}]})
    p = sandbox.run(sandbox.Spec.from_dict(spec), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {f"write={place}/inside": "ok",
                                    "read=/etc/hostname": "EACCES"}
    assert os.listdir(place) == []          # it went to the tmpfs


def test_tcp_bind_and_connect_only_to_the_ports_listed():
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.listen()
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        port = free_port()
        other = free_port()
        r = tried(spec_for({"net": {"bind": [port], "connect": [pa]}},
                           f"bind={port}", f"bind={other}", f"connect={pa}",
                           f"connect={pb}"))
    assert r == {f"bind={port}": "ok", f"bind={other}": "EACCES", f"connect={pa}": "ok",
                 f"connect={pb}": "EACCES"}


def test_scope_signal_and_abstract_sockets_outside_are_out_of_reach():
    name = f"wrapperd-landlock-{uuid.uuid4().hex[:8]}"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with socket.socket(socket.AF_UNIX) as srv:
            srv.bind("\0" + name)
            srv.listen()
            actions = (f"kill={sleeper.pid}", f"abstract={name}")
            assert tried(spec_for({"net": {}}, *actions)) == dict.fromkeys(actions, "ok")
            r = tried(spec_for({"scope": ["abstract_unix_socket", "signal"]}, *actions))
            assert r == dict.fromkeys(actions, "EPERM")
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_hard_requirement_above_a_lowered_abi_is_exit_125():
    env = {**os.environ, landlock.ENV_ABI: "3"}
    p = run_wrapperd(spec_for({"net": {"bind": [1]}}), env=env)
    assert p.returncode == 125, p.stderr
    err = p.stderr.decode()
    assert "landlock.net" in err and "ABI 4" in err and "running ABI is 3" in err
    assert p.stdout == b""
    p = run_wrapperd(spec_for({"fs": [*PYTHON_READ, {"path": "/tmp", "access": [
        "ioctl_dev"]}]}), env=env)
    assert p.returncode == 125 and b"landlock.fs[2].access: ioctl_dev needs" in p.stderr


def test_best_effort_runs_and_reports_the_drop():
    env = {**os.environ, landlock.ENV_ABI: "3"}
    port = free_port()
    spec = spec_for({"net": {"bind": []}, "fs": PYTHON_READ,
                     "compatibility": "best_effort"}, f"bind={port}", "read=/etc/hostname")
    p = run_wrapperd(spec, env=env)
    assert p.returncode == 0, p.stderr
    # TCP is not restricted (ABI 3 has no net), the filesystem is.
    assert json.loads(p.stdout) == {f"bind={port}": "ok", "read=/etc/hostname": "EACCES"}
    assert b"wrapperd: landlock: warning: best_effort: landlock.net: TCP bind and " \
        b"connect needs Landlock ABI 4, the running ABI is 3" in p.stderr
    d = run_wrapperd(spec, "--dry-run", env=env)
    assert d.returncode == 0 and b"best_effort" in d.stderr and b"ABI 3" in d.stderr


def test_a_missing_path_is_exit_125_before_any_step(place):
    p = run_wrapperd(spec_for({"fs": [{"path": f"{place}/nope", "access": ["read"]}]}))
    assert p.returncode == 125
    assert b"wrapperd: spec: landlock.fs[0].path" in p.stderr


def test_without_no_new_privs_it_is_refused():
    p = run_wrapperd(spec_for({"fs": PYTHON_READ}, no_new_privs=False,
                              user={"uid": 65534, "gid": 65534}))
    assert p.returncode == 125 and b"no_new_privs" in p.stderr


def test_a_file_rule_takes_only_file_rights(place):
    f = os.path.join(place, "f")
    with open(f, "w") as fh:
        fh.write("x")
    r = tried(spec_for({"fs": [*PYTHON_READ, {"path": f, "access": ["read", "write"]}]},
                       f"read={f}", f"write={f}"))
    assert r == {f"read={f}": "ok", f"write={f}": "ok"}
    p = run_wrapperd(spec_for({"fs": [{"path": f, "access": ["read_dir"]}]}))
    assert p.returncode == 125 and b"read_dir apply to directories" in p.stderr


def test_the_target_is_landlocked_after_exec_too(place):
    # A child the target starts inherits the domain.
    code = "import subprocess,sys; sys.exit(subprocess.run(['cat', '/etc/hostname']).returncode)"
    spec = {"argv": [SYSTEM_PYTHON, "-I", "-S", "-c", code], "env": dict(TARGET_ENV),
            "landlock": {"fs": PYTHON_READ}}
    p = run_wrapperd(spec)
    assert p.returncode == 1 and b"Permission denied" in p.stderr


EXEC_A_COPY = r"""
import os, shutil, subprocess, sys
d = os.environ["STATE_DIRECTORY"]
shutil.copy("/usr/bin/true", d + "/mytrue")
os.chmod(d + "/mytrue", 0o755)
try:
    subprocess.run([d + "/mytrue"], check=True)
    print("ran")
except PermissionError as e:
    print(e.strerror)
try:
    open("/etc/wrapperd-landlock-probe", "w")
except OSError as e:
    print(e.strerror)
"""


def test_the_strict_profile_executes_only_from_usr_and_writes_only_its_places():
    # Its state directory is writable and executable as far as the mounts go: Landlock
    # (spec_paths) lets it write there, but not run what it wrote.
    needs_host_root("the strict profile's dynamic user, its directory in /var/lib")
    name = f"wrapperd-test-ll-{uuid.uuid4().hex[:8]}"
    spec = {"argv": [SYSTEM_PYTHON, "-I", "-c", EXEC_A_COPY], "env": dict(TARGET_ENV),
            "profile": "strict", "name": name, "directories": {"state": [name]}}
    try:
        r = sandbox.run(spec, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().split("\n")[:2] == ["Permission denied",
                                                     "Read-only file system"]
        # Control: execute allowed everywhere -- the copy runs (so it was Landlock).
        spec["landlock"] = {"fs": [{"path": "/", "access": ["read", "execute"]}],
                            "spec_paths": True}
        r = sandbox.run(spec, capture_output=True, timeout=60)
        assert r.stdout.decode().split("\n")[0] == "ran", r.stderr
    finally:
        for base in ("/var/lib", "/var/lib/private"):
            shutil.rmtree(f"{base}/{name}", ignore_errors=True)
