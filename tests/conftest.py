"""Shared test helpers: the probe, running wrapperd, root and must-run handling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_PYTHON = "/usr/bin/python3"
# Set by .ci/run: a test that would skip fails instead, so CI cannot pass by skipping.
MUST_RUN = os.environ.get("WRAPPERD_MUST_RUN") == "1"
TARGET_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


# Set by tests/rootless/run: we are "root" only inside a rootless container (a user
# namespace with several ids mapped through newuidmap), not on the host.
ROOTLESS = os.environ.get("WRAPPERD_ROOTLESS") == "1"


def mark_every_test_under(conftest_file: str, items, marker) -> None:
    """Give marker to every collected test in the directory of conftest_file (a
    directory's conftest.py calls it from its pytest_collection_modifyitems)."""
    here = os.path.dirname(os.path.abspath(conftest_file))
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(marker)


def skip_or_fail(reason: str):
    if MUST_RUN:
        pytest.fail(f"must run, but: {reason}")
    pytest.skip(reason)


def cgroup_test_path(prefix: str = "wrapperd-test") -> str:
    """A fresh cgroup path of our own: "/<prefix>-<uuid>", or, in the rootless run, the
    same under the v2 subtree tests/rootless/run delegated to the user."""
    import uuid
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    if ROOTLESS:
        return os.environ["WRAPPERD_CGROUP_V2_ROOT"].rstrip("/") + "/" + name
    return "/" + name


@pytest.fixture
def cgroup_root():
    """A unique cgroup subtree of our own (cgroup_test_path), with every process in it
    killed and every directory of it removed afterwards, in every hierarchy -- even when
    the test fails."""
    from sandbox import cgroups
    path = cgroup_test_path()
    yield path
    g = cgroups.Group(path)
    try:
        assert g.kill(timeout=10), f"could not empty {path}: {g.procs()}"
    finally:
        g.remove()


def free_low_port(free) -> int:
    """A loopback port below ip_unprivileged_port_start for which free(port) holds,
    tried in a random order from the 400 below it (never 53 or 80 unless free, and a
    parallel run or the host's own server does not make a test fail)."""
    import random
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    if start <= 1:
        skip_or_fail("every port is unprivileged here (ip_unprivileged_port_start)")
    candidates = list(range(max(1, start - 400), start))
    random.shuffle(candidates)
    for port in candidates:
        if free(port):
            return port
    skip_or_fail("no free port below ip_unprivileged_port_start")
    raise AssertionError("unreachable")


def until(cond, timeout: float, what: str):
    """Poll cond() until it is true (returned) or timeout seconds pass (the test fails
    naming `what`): a bounded wait, never a timing assertion."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def nspid(pid: int) -> list:
    """/proc/PID/status's NSpid: the pid in each pid namespace, outermost first."""
    with open(f"/proc/{pid}/status") as f:
        return [int(x) for x in next(x for x in f if x.startswith("NSpid:")).split()[1:]]


def needs_host_root(reason: str):
    """Skip in the rootless run (the only skip the must-run switch allows); else go on."""
    if ROOTLESS:
        pytest.skip(f"needs host root: {reason}")


@pytest.fixture(scope="session", autouse=True)
def _own_bpf_cache():
    """Keep the wrapperd CLI's seccomp and plan caches in a directory of the test run's
    own, not in the machine's /var/cache/wrapperd.  A test that starts wrapperd with an
    environment of its own (no WRAPPERD_CACHE_DIR) reaches the machine's: what such
    tests wrote there is removed at the end, so nothing is left behind."""
    from sandbox import bpfcache
    default = bpfcache.DEFAULT_DIR
    existed = os.path.isdir(default)
    try:
        before = set(os.listdir(default)) if existed else set()
    except PermissionError:     # root's (the rootless run): nothing of ours goes there
        before = None
    if "WRAPPERD_CACHE_DIR" in os.environ:
        yield
    else:
        d = tempfile.mkdtemp(prefix="wrapperd-cache-")      # mode 0700, ours
        os.environ["WRAPPERD_CACHE_DIR"] = d
        yield
        del os.environ["WRAPPERD_CACHE_DIR"]
        shutil.rmtree(d, ignore_errors=True)
    if before is not None and os.path.isdir(default) and not os.path.islink(default):
        for name in set(os.listdir(default)) - before:
            try:
                os.unlink(os.path.join(default, name))
            except OSError:
                pass
        if not existed:
            try:
                os.rmdir(default)
            except OSError:
                pass


@pytest.fixture(scope="session", autouse=True)
def _own_dynamic_user_registry():
    """Keep the dynamic-user registry (sandbox.dynamicuser) in a directory of the test
    run's own, not in the machine's /run/wrapperd: nothing is left behind in /run.  The
    wrapperd CLI inherits it; spawn() and the fork server pass it on to the shim."""
    from sandbox import dynamicuser
    if dynamicuser.ENV in os.environ:
        yield os.environ[dynamicuser.ENV]
        return
    d = tempfile.mkdtemp(prefix="wrapperd-dynamic-users-")   # mode 0700, ours
    os.environ[dynamicuser.ENV] = d
    yield d
    del os.environ[dynamicuser.ENV]
    shutil.rmtree(d, ignore_errors=True)


def host_dir_root() -> str:
    """Where tests make directories that sandboxes must see on the host: not /tmp,
    /var/tmp or /dev/shm, which `service` and up make private.  /var/lib, or in the
    rootless run a directory tests/rootless/run made for the user
    (WRAPPERD_TEST_HOST_DIR)."""
    return os.environ.get("WRAPPERD_TEST_HOST_DIR") or "/var/lib"


@pytest.fixture(scope="session")
def shared_dir():
    """A directory every uid can read and traverse (the work tree may be under /root),
    where the probe is (see host_dir_root)."""
    d = tempfile.mkdtemp(prefix="wrapperd-test-", dir=host_dir_root())
    os.chmod(d, 0o755)
    shutil.copy(os.path.join(HERE, "probe.py"), os.path.join(d, "probe.py"))
    os.chmod(os.path.join(d, "probe.py"), 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def probe(shared_dir):
    return os.path.join(shared_dir, "probe.py")


@pytest.fixture
def scratch(tmp_path):
    """A per-test directory any uid may write to (for marker files)."""
    os.chmod(tmp_path, 0o1777)
    for p in tmp_path.parents:
        if str(p) in ("/", "/tmp"):
            break
        mode = os.stat(p).st_mode
        if mode & 0o011 != 0o011:
            os.chmod(p, mode | 0o011)
    return tmp_path


def imported_in_lean_python(code: str, modules, stdin: bytes = b"") -> "list[str]":
    """Which of modules a fresh `python -I -S` (as the lean shim, the fork server and the
    launcher start it) has imported after running code, with this package on sys.path."""
    from sandbox.spawning import package_root
    probe = (f"import sys; sys.path.append(sys.argv[1])\n{code}\n"
             f"print('\\0'.join(sorted(m for m in {tuple(modules)!r} if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", probe, package_root()],
                       input=stdin, capture_output=True, check=True)
    return [m for m in r.stdout.decode().strip().split("\0") if m]


def wrapperd_cmd(*args: str) -> list:
    return [sys.executable, "-I", "-m", "wrapperd", *args]


def run_wrapperd(spec: "dict | None", *args: str, timeout: float = 30, pass_fds=(),
                 stdin_text: "str | None" = None, env=None) -> subprocess.CompletedProcess:
    """Run wrapperd with spec on stdin (--spec -) and return the completed process."""
    cmd = wrapperd_cmd(*(("--spec", "-") if spec is not None else ()), *args)
    text = json.dumps(spec) if spec is not None else (stdin_text or "")
    return subprocess.run(cmd, input=text.encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, pass_fds=pass_fds,
                          env=env)


def run_with_status_fd(cmd: "list[str]", **kw) -> "tuple[subprocess.CompletedProcess, bytes]":
    """Run cmd with a status pipe; "{status_fd}" in cmd is replaced by its write end.
    (the completed process, what was written on the status fd)."""
    r_fd, w_fd = os.pipe()
    try:
        cmd = [a.replace("{status_fd}", str(w_fd)) for a in cmd]
        p = subprocess.run(cmd, capture_output=True, pass_fds=(w_fd,),
                           timeout=kw.pop("timeout", 60), **kw)
        os.close(w_fd)
        w_fd = -1
        return p, os.read(r_fd, 65536)
    finally:
        os.close(r_fd)
        if w_fd >= 0:
            os.close(w_fd)


def run_report(mode: str, spec: dict, server=None) -> dict:
    """Run spec to its end through the wrapperd command line (a mode starting with
    "wrapperd"), sandbox.spawn() ("spawn") or the fork server ("fast": `server`); the
    target's stdout as JSON.  The test fails unless the target exited 0."""
    if mode.startswith("wrapperd"):
        p = run_wrapperd(spec, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    import sandbox
    from sandbox.spawning import DEVNULL, PIPE
    kw = dict(stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
    proc = server.spawn(spec, **kw) if mode == "fast" else sandbox.spawn(spec, **kw)
    with proc:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def probe_spec(probe_path: str, *actions: str, **fields) -> dict:
    spec = {"argv": [SYSTEM_PYTHON, "-I", probe_path, *actions], "env": dict(TARGET_ENV)}
    spec.update(fields)
    return spec


def run_probe(spec: dict, *args: str, **kw) -> dict:
    """Run the probe under spec; fail the test with wrapperd's stderr if it did not run."""
    p = run_wrapperd(spec, *args, **kw)
    if p.returncode != 0:
        pytest.fail(f"wrapperd exited {p.returncode}: {p.stderr.decode().strip()}")
    return json.loads(p.stdout)


def ids(report: dict, key: str) -> list:
    return [int(x) for x in report["status"][key].split()]


def capmask(report: dict, key: str) -> int:
    return int(report["status"][key], 16)
