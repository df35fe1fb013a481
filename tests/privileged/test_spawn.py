"""sandbox.spawn()/run() and Process: the handshake, setup failures, lifecycle.

What the kernel reports is the judge: /proc/<pid> of the target and of ourselves (fds,
zombie children), cgroup directories, the probe's own report.
"""

import errno
import json
import os
import resource
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import sandbox
from sandbox import ExecError, SetupError, SpecError, cgroups, dynamicuser, procfs
from sandbox.spawning import DEVNULL, PIPE, build_spec
from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, nspid, probe_spec, skip_or_fail

SH = "/bin/sh"


def gone(pid: int) -> bool:
    """Not running and not a zombie: reaped (pids are not reused within a test)."""
    return not os.path.exists(f"/proc/{pid}")


def zombie_children() -> list:
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = procfs.stat(d)              # bytes-safe: a comm need not be UTF-8
        except OSError:
            continue
        if int(f[3]) == me and f[2] == "Z":
            out.append(int(d))
    return out


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def leaf_dirs(root: str) -> list:
    """Every cgroup directory below root in every hierarchy (root itself excluded)."""
    out = []
    for h in cgroups.hierarchies():
        top = h.mountpoint + root
        for dirpath, _dirs, _files in os.walk(top):
            if dirpath != top:
                out.append(dirpath)
    return out


# --------------------------------------------------------------------------- handshake

def test_spawn_returns_after_the_target_was_execd(probe):
    spec = probe_spec(probe, "sleep:30", profile="service")
    with sandbox.spawn(spec, stdout=PIPE) as p:
        # Already the target when spawn() returns: the shim's argv is gone.
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[:3] == [SYSTEM_PYTHON.encode(), b"-I", probe.encode()]
        report = json.loads(p.stdout.readline())
        assert report["pid"] == p.pid
        uids = report["status"]["Uid"].split()                 # service: a dynamic user
        lo, hi = dynamicuser.DYNAMIC_RANGE
        assert len(set(uids)) == 1 and lo <= int(uids[0]) <= hi
        assert sorted(int(fd) for fd in report["fds"]) == [0, 1, 2]   # no spec/status fd
        assert p.returncode is None
        p.terminate()           # (leaving `with` waits for it, as subprocess's)
    assert p.returncode == -signal.SIGTERM
    assert gone(p.pid)


def test_keyword_form(probe, cgroup_root):
    path = cgroup_root + "/kw"
    with sandbox.spawn([SYSTEM_PYTHON, "-I", probe], profile="service", user="nobody",
                       cgroup=path, env=TARGET_ENV, stdout=PIPE) as p:
        report = json.loads(p.stdout.read())
        assert p.wait(10) == 0
    assert report["status"]["Uid"].split() == ["65534"] * 4
    assert any(line.endswith(":" + path) for line in report["cgroup"])
    assert p.spec.user.uid == "nobody" and p.spec.user.umask == "0027"   # service
    assert leaf_dirs(cgroup_root) == []          # close() removed the cgroup it created


def test_build_spec_shorthands_and_resolve_is_idempotent():
    s = build_spec(["/bin/true"], profile="network-service", user=1000,
                   cgroup="/x/y", capabilities=["CAP_NET_BIND_SERVICE"])
    assert s.user.uid == 1000 and s.user.umask == "0027"          # the profile's umask
    assert s.cgroup.full_path == "/x/y"
    assert s.capabilities.keep == ("CAP_NET_BIND_SERVICE",)
    assert s.rlimits["CORE"].hard == 0
    assert build_spec(s) == s                                       # resolving again
    raw = sandbox.Spec.from_dict({"argv": ["/bin/true"], "profile": "service"})
    assert raw.user is None and build_spec(raw).user.dynamic
    with pytest.raises(TypeError):
        build_spec("/bin/true")


# --------------------------------------------------------------------------- failures

def _rlimit_hard():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


FAILURES = {
    # name: (spec fields, exception, step, errno, shim exit status)
    "bad uid name": (dict(user={"uid": "no-such-user-wrapperd"}), SpecError, "spec", 0, 125),
    "rlimit EPERM": (None, SetupError, "rlimits", errno.EPERM, 125),
    "cwd missing": (dict(cwd="/nonexistent-wrapperd"), SetupError, "cwd", errno.ENOENT, 125),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_setup_failure_names_the_step_and_leaves_nothing(probe, scratch, kind):
    fields, exc, step, err, status = FAILURES[kind]
    if fields is None:
        hard = _rlimit_hard()
        if hard == resource.RLIM_INFINITY:
            skip_or_fail("hard NOFILE is unlimited here")
        fields = dict(rlimits={"NOFILE": [hard + 1, hard + 1]})
    marker = scratch / "ran"
    before = open_fds()
    with pytest.raises(exc) as e:
        sandbox.spawn(probe_spec(probe, f"touch:{marker}", **fields), stderr=DEVNULL)
    if fields.get("rlimits") and e.value.step != "rlimits":
        pytest.fail(f"expected the rlimits step: {e.value}")
    assert e.value.step == step
    assert e.value.errno == err
    assert e.value.exit_status == status
    if kind == "bad uid name":
        assert "user.uid" in e.value.message
    assert not marker.exists()                   # the target never ran
    assert gone(e.value.pid)                     # the shim was reaped: no zombie
    assert open_fds() == before


def test_rlimit_control_a_reachable_limit_runs(probe, scratch):
    # Control for the EPERM case: the same request within the hard limit runs.
    marker = scratch / "ran"
    hard = _rlimit_hard()
    sandbox.run(probe_spec(probe, f"touch:{marker}", rlimits={"NOFILE": [hard, hard]}),
                stdout=DEVNULL, check=True)
    assert marker.exists()


def test_not_found_is_127_and_not_executable_126(scratch):
    noexec = scratch / "script"
    noexec.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(noexec, 0o644)
    for argv, num, status in (([str(scratch / "missing")], errno.ENOENT, 127),
                              (["no-such-program-wrapperd"], errno.ENOENT, 127),
                              ([str(noexec)], errno.EACCES, 126)):
        with pytest.raises(ExecError) as e:
            sandbox.spawn(argv, env=TARGET_ENV, stderr=DEVNULL)
        assert (e.value.step, e.value.errno, e.value.exit_status) == ("exec", num, status)
        assert gone(e.value.pid)
    # Control: once executable, the same file runs.
    os.chmod(noexec, 0o755)
    assert sandbox.run([str(noexec)], env=TARGET_ENV).returncode == 0


@pytest.mark.parametrize("fast", [False, True])
def test_what_cannot_be_prepared_starts_nothing_and_creates_no_file(scratch, capfd, fast):
    # spawn() raises a prepare error at once, as the fork server does: no shim is
    # started (nothing on stderr), no stdio file is created for what cannot run.
    out = scratch / f"out-{fast}.log"
    children = zombie_children()
    with pytest.raises(ExecError) as e:
        sandbox.spawn([str(scratch / "missing")], env=TARGET_ENV, stdout=str(out),
                      fast=fast)
    assert (e.value.exit_status, e.value.pid) == (127, None)
    assert not out.exists()
    assert capfd.readouterr().err == ""
    assert zombie_children() == children


def test_bad_spec_raises_before_anything_runs():
    with pytest.raises(SpecError) as e:
        sandbox.spawn({"argv": ["/bin/true"], "capabilities": {"drop": ["CAP_FOO"]}})
    assert "capabilities.drop[0]" in str(e.value)
    with pytest.raises(SpecError):
        sandbox.spawn({"argv": []})
    assert zombie_children() == []


def test_failed_setup_removes_the_cgroup_it_created(probe, cgroup_root, scratch):
    # cwd fails after the cgroup step created and joined the cgroup.
    path = cgroup_root + "/failed"
    with pytest.raises(SetupError) as e:
        sandbox.spawn(probe_spec(probe, cgroup={"path": path}, cwd="/nonexistent-x"),
                      stderr=DEVNULL)
    assert e.value.step == "cwd"
    assert leaf_dirs(cgroup_root) == []
    # Control: the same spec with a good cwd leaves the cgroup while it runs.
    with sandbox.spawn(probe_spec(probe, "sleep:30", cgroup={"path": path}),
                       stdout=DEVNULL) as p:
        assert any(d.endswith(path) for d in leaf_dirs(cgroup_root))
        assert p.pid in p._cgroup_pids()
        p.kill()                # (leaving `with` waits for it, as subprocess's)
    assert leaf_dirs(cgroup_root) == []


# --------------------------------------------------------------------------- threads

def test_50_spawns_from_8_threads(cgroup_root):
    before_fds = open_fds()
    threads_before = threading.active_count()

    def one(i):
        return i, sandbox.spawn([SH, "-c", f"exit {i}"], env=TARGET_ENV,
                                cgroup=f"{cgroup_root}/s{i}", stdin=DEVNULL, stdout=DEVNULL)

    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(one, range(50)))
    assert len({p.pid for _i, p in handles}) == 50
    try:
        for i, p in handles:
            assert p.wait(30) == i          # each handle got its own target's status
            assert p.returncode == i
    finally:
        for _i, p in handles:
            p.close(grace=1)
    assert zombie_children() == []
    assert all(gone(p.pid) for _i, p in handles)
    assert leaf_dirs(cgroup_root) == []
    assert open_fds() == before_fds
    assert threading.active_count() == threads_before


# --------------------------------------------------------------------------- lifecycle

def test_terminate_escalates_to_sigkill_for_a_target_ignoring_sigterm(cgroup_root):
    script = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    p = sandbox.spawn([SH, "-c", script], env=TARGET_ENV, cgroup=cgroup_root + "/t",
                      stdout=PIPE)
    with p:
        assert p.stdout.readline() == b"ready\n"
        members = p._cgroup_pids()
        t0 = time.monotonic()
        assert p.stop(0.5).wait() == -signal.SIGKILL
        assert time.monotonic() - t0 >= 0.5
    assert all(gone(pid) for pid in members)     # the sleeps in its cgroup died too
    assert leaf_dirs(cgroup_root) == []


def test_terminate_control_sigterm_suffices_for_a_normal_target():
    p = sandbox.spawn([SH, "-c", "echo ready; exec sleep 30"], env=TARGET_ENV, stdout=PIPE)
    with p:
        assert p.stdout.readline() == b"ready\n"
        # A long grace, so "returned well before it ran out" holds on a loaded machine.
        t0 = time.monotonic()
        assert p.stop(60).wait() == -signal.SIGTERM
        assert time.monotonic() - t0 < 30


def test_kill_takes_the_whole_cgroup(cgroup_root):
    # The target double-forks a daemon that leaves its process tree.
    script = "(sleep 300 &); sleep 300 & echo ready; wait"
    with sandbox.spawn([SH, "-c", script], env=TARGET_ENV, cgroup=cgroup_root + "/k",
                       stdout=PIPE) as p:
        assert p.stdout.readline() == b"ready\n"
        members = p._cgroup_pids()
        assert len(members) >= 3                  # sh, the orphaned sleep, sleep
        orphans = [m for m in members if m != p.pid]
        assert not all(gone(m) for m in orphans)  # control: they do run
        p.kill()
        assert p.wait(5) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while not all(gone(m) for m in orphans) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(gone(m) for m in orphans)


def test_wait_timeout_pidfd_and_stats(probe):
    with sandbox.spawn(probe_spec(probe, "sleep:30"), stdout=PIPE) as p:
        assert p.pidfd is not None
        assert os.readlink(f"/proc/self/fd/{p.pidfd}") == "anon_inode:[pidfd]"
        json.loads(p.stdout.readline())
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(0.1)
        st = p.stats()
        assert st["running"] and st["pids"] == 1 and st["rss"] > 0
        pidfd = p.pidfd
        p.kill()                # (leaving `with` waits for it, as subprocess's)
    assert p.pidfd is None
    try:
        link = os.readlink(f"/proc/self/fd/{pidfd}")
    except FileNotFoundError:
        link = None
    assert link != "anon_inode:[pidfd]"            # closed with the handle
    assert not p.stats()["running"]


def test_run_captures_feeds_checks_and_times_out(probe):
    r = sandbox.run(["/bin/cat"], input=b"hello", capture_output=True, env=TARGET_ENV)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hello", b"")
    with pytest.raises(subprocess.CalledProcessError) as e:
        sandbox.run([SH, "-c", "echo out; exit 3"], capture_output=True, check=True,
                    env=TARGET_ENV)
    assert e.value.returncode == 3 and e.value.stdout == b"out\n"
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        sandbox.run(["/bin/sleep", "30"], timeout=0.3, env=TARGET_ENV)
    assert time.monotonic() - t0 < 20                # well before sleep's 30 s
    assert zombie_children() == []


def test_stdio_to_a_path_and_devnull(scratch):
    out = scratch / "out.log"
    sandbox.run([SH, "-c", "echo one; echo two >&2"], stdout=str(out), stderr=DEVNULL,
                env=TARGET_ENV, check=True)
    sandbox.run([SH, "-c", "echo three"], stdout=out, env=TARGET_ENV, check=True)
    assert out.read_text() == "one\nthree\n"          # appended, stderr elsewhere
    inp = scratch / "in.txt"
    inp.write_text("from a file\n")
    r = sandbox.run(["/bin/cat"], stdin=str(inp), capture_output=True, env=TARGET_ENV)
    assert r.stdout == b"from a file\n"


def test_a_python_that_cannot_import_wrapperd_fails_closed(scratch):
    # Such a shim would exit 1 without a status record, which reads as "exec'd".  A copy
    # of the interpreter elsewhere is "another python" (spawn hands it the spec, not a
    # plan) and finds only the standard library.
    import shutil
    python = str(scratch / "python3")
    shutil.copy(os.path.realpath(SYSTEM_PYTHON), python)
    r = subprocess.run([python, "-I", "-c", "import wrapperd"], capture_output=True)
    assert r.returncode != 0, "the copied python can import wrapperd: no test"
    marker = scratch / "ran"
    with pytest.raises(SetupError) as e:
        sandbox.spawn([SH, "-c", f"touch {marker}"], python=python, env=TARGET_ENV)
    assert e.value.step == "spawn" and "cannot import wrapperd" in e.value.message
    assert not marker.exists()


@pytest.mark.parametrize("as_pid_1", [False, True])
def test_in_a_new_pid_namespace_the_handle_finds_and_stops_the_target(as_pid_1):
    p = sandbox.spawn(["/bin/sleep", "30"], profile="service", stdout=DEVNULL,
                      namespaces={"pid": True, "as_pid_1": as_pid_1})
    with p:
        target = p.target_pid
        # spawn() makes the namespace and starts the shim as its pid 1 (--in-new-pidns):
        # the shim stays as the reaper, or is the target itself with as_pid_1.
        assert nspid(target)[-1] == (1 if as_pid_1 else 2)
        assert (target == p.pid) == as_pid_1
        assert sandbox.inspect(target)["name"] == "sleep"
        assert not sandbox.inspect(target)["namespaces"]["pid"]["caller"]
        assert sandbox.verify(p, namespaces=True) == []
        # pid 1 of a namespace ignores SIGTERM without a handler: the grace runs out.
        p.stop(0.3).wait()
    deadline = time.monotonic() + 30
    while not gone(target) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(target)                              # nothing left running inside


def test_caller_side_errors_are_setup_errors_of_the_spawn_step():
    before = open_fds()
    with pytest.raises(SetupError) as e:
        sandbox.spawn(["/bin/true"], stdout="/nonexistent-dir-wrapperd/log")
    assert e.value.step == "spawn" and "/nonexistent-dir-wrapperd/log" in str(e.value)
    with pytest.raises(SetupError) as e:
        sandbox.spawn(["/bin/true"], pass_fds=[987])       # not open here
    assert e.value.step == "spawn" and e.value.errno == errno.EBADF
    assert open_fds() == before and zombie_children() == []


# ------------------------------------------------- the shim born as pid 1 (--in-new-pidns)

def test_spawn_starts_the_shim_as_pid_1_of_the_new_namespace():
    mine = os.readlink("/proc/self/ns/pid")
    p = sandbox.spawn(["/bin/sleep", "30"], env=TARGET_ENV, namespaces={"pid": True})
    with p:
        target = p.target_pid
        # No supervisor outside: our child is the namespace's reaper, pid 1 inside.
        assert nspid(p.pid)[-1] == 1 and nspid(target)[-1] == 2
        assert os.readlink(f"/proc/{p.pid}/ns/pid") == os.readlink(f"/proc/{target}/ns/pid")
        assert os.readlink(f"/proc/{p.pid}/ns/pid") != mine
        assert sorted(os.listdir(f"/proc/{p.pid}/fd")) == []     # the reaper holds nothing
        assert p.stop(5).wait() == 128 + signal.SIGTERM      # forwarded, as before
    # Control: our own thread is back in our namespace -- a plain child is in it.
    out = subprocess.run(["readlink", "/proc/self/ns/pid"], capture_output=True, text=True)
    assert out.stdout.strip() == mine
    assert os.readlink("/proc/thread-self/ns/pid_for_children") == mine


def test_with_pdeathsig_the_shim_still_supervises_from_outside():
    # The shim born inside could not check that we are still there: the old way.
    p = sandbox.spawn(["/bin/sleep", "30"], env=TARGET_ENV, namespaces={"pid": True},
                      pdeathsig="SIGTERM")
    with p:
        assert len(nspid(p.pid)) == len(nspid(os.getpid()))   # outside, in ours
        assert nspid(p.target_pid)[-1] == 2
        p.kill()
        p.wait()


def test_in_new_pidns_is_checked_not_trusted(scratch):
    # The flag on a shim that is not pid 1 of a new namespace fails closed.
    from sandbox import plan
    from sandbox.spawning import lean_command, package_root
    from wrapperd import shim
    marker = scratch / "ran"
    spec = build_spec([SH, "-c", f"touch {marker}"], env=TARGET_ENV,
                      namespaces={"pid": True})
    data = plan.encode(shim.prepare(spec))
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    proc = subprocess.run(lean_command(package_root(), r, 2) + ["--in-new-pidns"],
                          pass_fds=(r,), capture_output=True)
    os.close(r)
    assert proc.returncode == 125
    assert b"namespaces" in proc.stderr and b"--in-new-pidns" in proc.stderr
    assert not marker.exists()


def test_a_thread_spawning_into_a_new_pid_namespace_leaves_other_threads_alone():
    # unshare(CLONE_NEWPID) is per thread: children of other threads, started while
    # spawns run, are all born in our namespace.
    mine = os.readlink("/proc/self/ns/pid")
    stop = threading.Event()
    seen = []

    def other():
        while not stop.is_set():
            out = subprocess.run(["readlink", "/proc/self/ns/pid"], capture_output=True,
                                 text=True)
            seen.append(out.stdout.strip())

    t = threading.Thread(target=other)
    t.start()
    try:
        for _ in range(20):
            assert sandbox.spawn(["/bin/true"], env=TARGET_ENV,
                                 namespaces={"pid": True}).wait() == 0
    finally:
        stop.set()
        t.join()
    assert seen and set(seen) == {mine}


@pytest.mark.parametrize("as_pid_1", [False, True])
def test_a_failure_in_the_shim_born_as_pid_1_reports_the_step(scratch, as_pid_1):
    marker = scratch / "ran"
    before = zombie_children()
    with pytest.raises(SetupError) as e:
        sandbox.spawn([SH, "-c", f"touch {marker}"], env=TARGET_ENV,
                      cwd=str(scratch / "gone"), stderr=DEVNULL,
                      namespaces={"pid": True, "as_pid_1": as_pid_1})
    assert (e.value.step, e.value.errno, e.value.exit_status) == ("cwd", errno.ENOENT, 125)
    assert gone(e.value.pid) and not marker.exists()
    assert zombie_children() == before


@pytest.mark.parametrize("fast", [False, True])
def test_cwd_inherit_is_the_command_lines_not_the_librarys(scratch, fast):
    # "inherit" keeps the caller's directory without checking it as the target's: the
    # flags mode of wrapperd (Talos's shim).  Through the library the directory would
    # be the caller's -- the fork server's, as it was when it started -- never checked.
    out = scratch / f"cwd-{fast}.log"
    with pytest.raises(SpecError, match="cwd: 'inherit' is wrapperd's flags mode"):
        sandbox.spawn({"argv": ["/bin/pwd"], "env": TARGET_ENV, "cwd": "inherit"},
                      stdout=str(out), fast=fast)
    assert not out.exists()
