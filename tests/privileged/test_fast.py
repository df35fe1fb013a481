"""The prepared path (sandbox.spawn -> lean shim) and the fast path (ForkServer) give the
target exactly the state the plain shim gives it; failures, exit statuses, threads,
the seccomp cache's trust checks and the server's lifecycle.

The probe's own report of /proc is the judge.  No timing is asserted anywhere.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import sandbox
from sandbox import ExecError, SetupError, SpecError, bpfcache, cgroups, procfs
from sandbox.forkserver import ForkServer
from sandbox.spawning import DEVNULL, PIPE
from tests.conftest import (
    ROOTLESS,
    SYSTEM_PYTHON,
    TARGET_ENV,
    nspid,
    probe_spec,
    run_report,
    run_wrapperd,
    skip_or_fail,
    until,
    wrapperd_cmd,
)


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs
    assert fs.pid is None


def _full_spec(probe, cgroup_path: str) -> dict:
    """Every facility the bench uses, and more: ids, caps, nnp, seccomp, namespaces,
    cgroup with limits, rlimits, oom score, nice, umask, cwd."""
    cg = {"path": cgroup_path}
    if cgroups.mode() in ("hybrid", "legacy") and not ROOTLESS:
        # (limits here live in cgroup v1, which the rootless run cannot write)
        cg.update(memory_max=256 << 20, pids_max=64)
    return probe_spec(
        probe, "cglimits",
        user={"uid": 65534, "gid": 65534, "groups": [65534], "umask": "0027"},
        capabilities={"keep": ["CAP_NET_BIND_SERVICE"]}, no_new_privs=True,
        seccomp={"profile": "default"},
        namespaces={"pid": True, "ipc": True, "uts": True}, hostname="fast",
        cgroup=cg, rlimits={"NOFILE": [512, 1024], "CORE": [0, 0]},
        oom_score_adj=300, nice=5, cwd="/tmp")


STATUS_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
               "NoNewPrivs", "Seccomp", "Seccomp_filters", "SigIgn", "SigBlk", "Umask")


def _state(report: dict, cgroup_path: str) -> dict:
    """What must be equal whichever way the target was started."""
    mine = {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}
    fds = {}
    for fd, target in report["fds"].items():
        fds[fd] = re.sub(r"\[\d+\]", "[]", target)
    return {
        "status": {k: report["status"].get(k) for k in STATUS_KEYS},
        "ns_new": {n: v != mine.get(n) for n, v in report["ns"].items()},
        "pid": report["pid"],
        "cgroup": sorted(line.replace(cgroup_path, "<CG>") for line in report["cgroup"]),
        "cglimits": report["cglimits"],
        "limits": report["limits"],
        "oom_score_adj": report["oom_score_adj"], "nice": report["nice"],
        "cwd": report["cwd"], "hostname": report["hostname"], "env": report["env"],
        "fds": {k: v for k, v in fds.items() if k != "0"},
        "dumpable": report["dumpable"], "securebits": report["securebits"],
        "pdeathsig": report["pdeathsig"], "exe": report["exe"],
    }


def test_prepared_and_fast_paths_give_the_same_target_state(probe, server, cgroup_root):
    states = {}
    for i, mode in enumerate(("wrapperd --spec", "spawn (prepared)", "fast")):
        path = f"{cgroup_root}/svc{i}"
        states[mode] = _state(run_report(mode, _full_spec(probe, path), server), path)
    plain = states.pop("wrapperd --spec")
    # The spec really was applied (so equality is not equality of nothing).
    assert plain["status"]["Uid"].split() == ["65534"] * 4
    assert plain["status"]["NoNewPrivs"] == "1" and plain["status"]["Seccomp"] == "2"
    assert int(plain["status"]["CapAmb"], 16) == 1 << 10       # CAP_NET_BIND_SERVICE
    assert plain["ns_new"]["pid"] and plain["ns_new"]["uts"] and not plain["ns_new"]["net"]
    assert plain["pid"] == 2 and plain["hostname"] == "fast" and plain["nice"] == 5
    placed = [line for line in plain["cgroup"] if "name=" not in line]
    if ROOTLESS:        # only the delegated v2 subtree is ours to join
        placed = [line for line in placed if line.startswith("0::")]
    assert placed and all("<CG>" in line for line in placed)
    for mode, st in states.items():
        for key in plain:
            assert st[key] == plain[key], (mode, key)


def test_control_a_different_spec_gives_a_different_state(probe, server, cgroup_root):
    # The comparison above can fail: one field changed shows up.
    path = f"{cgroup_root}/ctl"
    spec = _full_spec(probe, path)
    a = _state(run_report("fast", spec, server), path)
    spec["user"]["umask"] = "0077"
    b = _state(run_report("fast", spec, server), path)
    assert a["status"]["Umask"] != b["status"]["Umask"]


# ------------------------------------------------------------- premade pid namespaces
# Without a cgroup, oom_score_adj or user namespace in the spec, the server makes the
# pid namespace ahead of the request (sandbox.forkserver.server.Server.prefork): its reaper and the
# worker are forked while no caller waits.  The target must not tell the difference.

def _premade_spec(probe, **fields) -> dict:
    return probe_spec(
        probe, "cglimits",
        user={"uid": 65534, "gid": 65534, "groups": [65534], "umask": "0027"},
        capabilities={"keep": ["CAP_NET_BIND_SERVICE"]}, no_new_privs=True,
        seccomp={"profile": "default"}, namespaces={"pid": True, "ipc": True, "uts": True},
        hostname="premade", rlimits={"NOFILE": [512, 1024]}, nice=3, cwd="/tmp", **fields)


def test_a_premade_pid_namespace_gives_the_same_target_state(probe, server):
    states = {}
    for mode in ("wrapperd --spec", "fast", "fast again"):
        states[mode] = _state(run_report(mode.replace(" again", ""), _premade_spec(probe), server),
                              "-")
    plain = states.pop("wrapperd --spec")
    assert plain["pid"] == 2 and plain["ns_new"]["pid"] and plain["hostname"] == "premade"
    assert plain["status"]["Seccomp"] == "2" and plain["nice"] == 3
    for mode, st in states.items():
        for key in plain:
            assert st[key] == plain[key], (mode, key)


@pytest.mark.parametrize("as_pid_1", [False, True])
def test_every_spawn_gets_a_new_pid_namespace_of_its_own(server, as_pid_1):
    mine = os.readlink("/proc/self/ns/pid")
    spec = {"argv": ["/bin/sleep", "60"], "env": TARGET_ENV,
            "namespaces": {"pid": True, "as_pid_1": as_pid_1}}
    procs = [server.spawn(spec) for _ in range(4)]
    try:
        seen = set()
        for p in procs:
            target = p.target_pid
            ns = os.readlink(f"/proc/{target}/ns/pid")
            assert ns != mine and ns not in seen
            seen.add(ns)
            assert nspid(target)[-1] == (1 if as_pid_1 else 2)
            if not as_pid_1:                   # its parent is the namespace's reaper
                assert nspid(p.pid)[-1] == 1
                assert os.readlink(f"/proc/{p.pid}/ns/pid") == ns
        # The server went back to its own namespace for every later child: a spawn
        # without a pid namespace is in ours (control for the assertions above).
        flat = server.spawn(["/bin/sleep", "60"], env=TARGET_ENV)
        assert os.readlink(f"/proc/{flat.target_pid}/ns/pid") == mine
        assert len(nspid(flat.target_pid)) == len(nspid(os.getpid()))
        flat.kill()
        flat.wait()
        assert os.readlink(f"/proc/{server.pid}/ns/pid_for_children") == mine
    finally:
        for p in procs:
            p.kill()
    for p in procs:
        assert p.wait() in (-signal.SIGKILL, 128 + signal.SIGKILL)


def _oom(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


@pytest.mark.parametrize("via", ["fork server", "wrapperd --spec"])
def test_the_reaper_shares_the_targets_cgroup_and_oom_score(server, cgroup_root, via):
    # The shim's reaper is forked after the oom and cgroup steps; a premade one before,
    # so the worker applies those two to it as well: the same tree either way.
    spec = {"argv": ["/bin/sleep", "60"], "env": TARGET_ENV, "oom_score_adj": 321,
            "cgroup": {"path": f"{cgroup_root}/svc"}, "namespaces": {"pid": True}}
    if via == "fork server":
        p = server.spawn(spec)
        reaper, target = p.pid, p.target_pid
    else:
        p = subprocess.Popen(wrapperd_cmd("--spec", "-"),
                             stdin=subprocess.PIPE)
        p.stdin.write(json.dumps(spec).encode())
        p.stdin.close()
        deadline = time.monotonic() + 30
        reaper = None
        while reaper is None and time.monotonic() < deadline:
            kids = _kids(p.pid)                # supervisor -> reaper -> target
            if kids and _kids(kids[0]):
                reaper = kids[0]
            time.sleep(0.01)
        assert reaper is not None
        target = _kids(reaper)[0]
    try:
        assert nspid(target)[-1] == 2 and nspid(reaper)[-1] == 1
        assert _oom(reaper) == _oom(target) == 321
        assert cgroups.cgroup_of(reaper) == cgroups.cgroup_of(target)
        assert any(path.endswith("/svc") for path in cgroups.cgroup_of(target).values())
        # Control: the server (the reaper's parent for the fork server) has neither.
        assert _oom(server.pid) != 321
        assert cgroups.cgroup_of(server.pid) != cgroups.cgroup_of(target)
    finally:
        p.kill()
        p.wait()


def test_alternating_specs_each_get_their_own_plan(probe, server):
    # The server keeps decoded plans and a spare child per kind: neither may mix specs.
    for i in range(6):
        ns = {"pid": True, "uts": True} if i % 2 else {"uts": True}
        spec = probe_spec(probe, namespaces=ns, hostname=f"h{i}")
        p = server.spawn(spec, stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        report = json.loads(out)
        assert report["hostname"] == f"h{i}"
        assert (report["pid"] == 2) == bool(i % 2)


def test_a_spare_forked_before_its_plan_was_seen_imports_what_it_needs():
    # The server preloads only what every plan uses: the spare made after the first
    # spawn gets a plan needing the rlimits step, which the server decodes only now --
    # the worker imports sandbox.rlimits as it decodes, before any step.
    with ForkServer() as fs:
        first = fs.spawn(["/bin/true"], env=TARGET_ENV, namespaces={"pid": True})
        assert first.wait(timeout=60) == 0
        p = fs.spawn(["/bin/sh", "-c", "ulimit -n"], env=TARGET_ENV,
                     namespaces={"pid": True}, rlimits={"nofile": [123, 123]},
                     stdout=PIPE)
        out, _ = p.communicate(timeout=60)
        assert (p.returncode, out.strip()) == (0, b"123")


# --------------------------------------------------------------------------- failures

def _rlimit_hard() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


FAILURES = {
    "cwd missing": (dict(cwd="/nonexistent-wrapperd"), SetupError, "cwd", errno.ENOENT, 125),
    "rlimit EPERM": ("rlimit", SetupError, "rlimits", errno.EPERM, 125),
    "unknown user": (dict(user={"uid": "no-such-user-wrapperd"}), SpecError, "spec", 0, 125),
    "not found": (dict(argv=["/nonexistent-wrapperd"]), ExecError, "exec", errno.ENOENT, 127),
}


def _server_zombies(server) -> list:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = procfs.stat(d)          # bytes-safe: a comm need not be UTF-8
            except OSError:
                continue
            if int(f[3]) == server.pid and f[2] == "Z":
                out.append(int(d))
    return out


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_fast_path_setup_failure_names_the_step(probe, scratch, server, kind):
    fields, exc, step, err, status = FAILURES[kind]
    if fields == "rlimit":
        hard = _rlimit_hard()
        if hard == resource.RLIM_INFINITY:
            skip_or_fail("hard NOFILE is unlimited here")
        fields = dict(rlimits={"NOFILE": [hard + 1, hard + 1]})
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", **fields)
    with pytest.raises(exc) as e:
        server.spawn(spec, stderr=DEVNULL)
    assert (e.value.step, e.value.errno, e.value.exit_status) == (step, err, status)
    assert not marker.exists()                         # the target never ran
    assert _server_zombies(server) == []
    # Control: the same spec without the fault runs.
    server.spawn(probe_spec(probe, f"touch:{marker}"), stdout=DEVNULL).wait()
    assert marker.exists()


def test_a_failure_after_the_fork_reports_the_step_and_pid(probe, scratch, server):
    # cwd fails in the server's child (not in the caller's prepare): pid and status.
    marker = scratch / "ran"
    with pytest.raises(SetupError) as e:
        server.spawn(probe_spec(probe, f"touch:{marker}", cwd=str(scratch / "gone")),
                     stderr=DEVNULL)
    assert e.value.pid and e.value.exit_status == 125 and e.value.step == "cwd"
    assert not os.path.exists(f"/proc/{e.value.pid}")  # reaped by the server
    assert not marker.exists()


# --------------------------------------------------------------------------- status

def test_exit_status_signals_and_terminate(server):
    assert server.spawn(["/bin/sh", "-c", "exit 7"], env=TARGET_ENV).wait() == 7
    p = server.spawn(["/bin/sleep", "60"], env=TARGET_ENV)
    assert p.poll() is None
    p.kill()
    assert p.wait() == -signal.SIGKILL
    p = server.spawn(["/bin/sleep", "60"], env=TARGET_ENV)
    assert p.stop(5).wait() == -signal.SIGTERM
    p = server.spawn(["/bin/sleep", "60"], env=TARGET_ENV)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(0.05)
    p.kill()
    assert p.wait() == -signal.SIGKILL


def test_terminate_in_a_pid_namespace_matches_the_plain_path(server):
    spec = {"argv": ["/bin/sleep", "60"], "env": TARGET_ENV, "namespaces": {"pid": True}}
    codes = []
    for start in (sandbox.spawn, server.spawn):
        p = start(spec)
        codes.append(p.stop(5).wait())
    assert codes[0] == codes[1] == 128 + signal.SIGTERM    # the supervisor's exit code


def test_pipes_and_communicate(server):
    p = server.spawn(["/bin/sh", "-c", "cat; echo err >&2; exit 3"], env=TARGET_ENV,
                     stdin=PIPE, stdout=PIPE, stderr=PIPE)
    out, err = p.communicate(b"hello " * 50000, timeout=30)
    assert (out, err, p.returncode) == (b"hello " * 50000, b"err\n", 3)


def test_50_spawns_from_8_threads_each_get_their_status(server, probe, scratch):
    def one(i):
        if i % 10 == 9:                  # setup failures interleaved
            try:
                server.spawn(["/bin/true"], env=TARGET_ENV, cwd=f"/nonexistent-{i}",
                             stderr=DEVNULL)
            except SetupError as e:
                return ("cwd", e.message)
            return ("ran", None)
        return ("exit", server.spawn(["/bin/sh", "-c", f"exit {i}"], env=TARGET_ENV,
                                     namespaces={"pid": i % 2 == 0}).wait())

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(50)))
    for i, r in enumerate(results):
        if i % 10 == 9:
            assert r == ("cwd", f"chdir /nonexistent-{i} as the target")
        else:
            assert r == ("exit", i)
    assert _server_zombies(server) == []


# --------------------------------------------------------------------------- lifecycle

def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_server_stops_cleanly():
    fs = ForkServer().start()
    pid = fs.pid
    assert fs.spawn(["/bin/true"]).wait() == 0
    fs.close()
    assert _gone(pid)
    fs.close()                           # idempotent
    # spawn(fast=True): the process-wide server, stopped by shutdown_default (atexit).
    from sandbox import forkserver
    assert sandbox.run(["/bin/true"], fast=True).returncode == 0
    pid = forkserver.default().pid
    assert pid and not _gone(pid)
    forkserver.shutdown_default()
    assert _gone(pid)


def _kids(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_spares_of_every_kind_end_with_the_server():
    fs = ForkServer().start()
    for ns in ({}, {"pid": True}, {"pid": True, "as_pid_1": True}):
        assert fs.spawn(["/bin/true"], env=TARGET_ENV, namespaces=ns).wait() == 0
    spares = _kids(fs.pid)
    assert len(spares) == 3                      # one child ahead per kind in use
    every = spares + [k for s in spares for k in _kids(s)]
    assert len(every) == 4                       # and the premade reaper's worker
    fs.close()
    until(lambda: all(_ended(p) for p in every), 30, "every spare to end")


@pytest.mark.parametrize("as_pid_1", [False, True])
def test_a_failure_in_a_premade_pid_namespace_reports_the_step(probe, scratch, server,
                                                                as_pid_1):
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", cwd=str(scratch / "gone"),
                      namespaces={"pid": True, "as_pid_1": as_pid_1})
    for _ in range(2):                           # a fresh child, then a spare
        with pytest.raises(SetupError) as e:
            server.spawn(spec, stderr=DEVNULL)
        assert (e.value.step, e.value.errno, e.value.exit_status) == \
            ("cwd", errno.ENOENT, 125)
    assert not marker.exists()
    assert _server_zombies(server) == []


def test_a_dead_server_is_restarted_and_a_lost_status_is_an_error():
    with ForkServer() as fs:
        p = fs.spawn(["/bin/sleep", "60"], env=TARGET_ENV)
        first = fs.pid
        os.kill(first, signal.SIGKILL)      # the server dies; the target lives on
        fs._proc.wait()
        assert fs.spawn(["/bin/true"]).wait() == 0
        assert fs.pid != first
        p.kill()                             # through its pidfd: still exactly it
        with pytest.raises(SetupError) as e:
            p.wait(30)
        assert "exit status is lost" in str(e.value)


def test_server_exits_when_its_caller_dies(tmp_path):
    code = ("import sys, os; sys.path.insert(0, os.getcwd()); "
            "from sandbox.forkserver import ForkServer; fs = ForkServer().start(); "
            "print(fs.pid, flush=True); os._exit(0)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=root,
                       timeout=60)
    pid = int(r.stdout)

    until(lambda: _ended(pid), 30, f"pid {pid} to end")


# --------------------------------------------------------------------------- cache

_EXECVE = {"x86_64": 59, "aarch64": 221}.get(os.uname().machine, 59)
# A program that refuses execve (EPERM) and allows everything else: loaded, it makes
# wrapperd exit 126 -- proof that a planted cache entry was used.
DENY_EXEC = b"".join(struct.pack("<HBBI", *insn) for insn in (
    (0x20, 0, 0, 0),                    # ld [0]: the syscall number
    (0x15, 0, 1, _EXECVE),              # jeq #execve
    (0x06, 0, 0, 0x00050001),           # ret ERRNO|EPERM
    (0x06, 0, 0, 0x7FFF0000)))          # ret ALLOW


def _cache_run(cache: str) -> subprocess.CompletedProcess:
    spec = {"argv": ["/bin/true"], "env": TARGET_ENV, "no_new_privs": True,
            "seccomp": {"profile": "default"}}
    return run_wrapperd(spec, env={"PATH": TARGET_ENV["PATH"], bpfcache.ENV: cache})


def _plant(cache: str, program: bytes) -> None:
    """Replace the one entry's program by `program`, with a header that matches it."""
    if os.uname().machine not in ("x86_64", "aarch64"):
        skip_or_fail("DENY_EXEC knows execve's number on x86_64 and aarch64 only")
    (entry,) = [f for f in os.listdir(cache) if f.endswith(".bpf")]
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(entry, dir_fd=fd)
        bpfcache.store(fd, entry[:-4], program, 1)
    finally:
        os.close(fd)


def test_cache_is_written_then_used(tmp_path):
    cache = str(tmp_path / "cache")
    assert _cache_run(cache).returncode == 0
    st = os.stat(cache)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    (entry,) = os.listdir(cache)
    assert os.stat(os.path.join(cache, entry)).st_mode & 0o777 == 0o600
    # Control for the refusal tests: a sound directory's entry is what gets loaded --
    # here one that refuses execve, so wrapperd exits 126.
    _plant(cache, DENY_EXEC)
    assert _cache_run(cache).returncode == 126


@pytest.mark.parametrize("how", ["mode 0755", "mode 0710", "owner nobody", "symlink"])
def test_cache_directory_with_the_wrong_owner_or_mode_is_refused(tmp_path, how):
    cache = str(tmp_path / "cache")
    assert _cache_run(cache).returncode == 0
    _plant(cache, DENY_EXEC)
    if how.startswith("mode"):
        os.chmod(cache, int(how.split()[1], 8))
    elif how == "owner nobody":
        os.chown(cache, 65534, 65534)
    else:
        os.rename(cache, cache + ".real")
        os.symlink(cache + ".real", cache)
    # The planted program is not used: the real filter is compiled and /bin/true runs.
    r = _cache_run(cache)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "wrong key", "group-readable"])
def test_corrupt_cache_entry_means_recompile(tmp_path, how):
    cache = str(tmp_path / "cache")
    assert _cache_run(cache).returncode == 0
    _plant(cache, DENY_EXEC)
    (entry,) = [f for f in os.listdir(cache) if f.endswith(".bpf")]
    path = os.path.join(cache, entry)
    data = open(path, "rb").read()
    if how == "flipped byte":
        data = data[:-1] + bytes([data[-1] ^ 1])
    elif how == "truncated":
        data = data[:-4]
    elif how == "wrong key":
        data = data.replace(entry[:-4].encode(), b"0" * 64)
    if how == "group-readable":
        os.chmod(path, 0o640)
    else:
        with open(path, "wb") as f:
            f.write(data)
    assert _cache_run(cache).returncode == 0
    # ... and the entry was rewritten with the real program.
    assert not open(path, "rb").read().endswith(DENY_EXEC)


@pytest.mark.parametrize("kinds", [("ipc", "uts"), ("net",), ("net", "ipc", "uts", "mount")])
def test_namespaces_made_ahead_by_the_reaper_are_the_targets(server, kinds):
    # net, ipc and uts are made by the premade reaper before it forks the worker; mount
    # is made by the worker and joined by the reaper.  Either way the target and its
    # pid 1 share them, and they are new; a new net namespace has its loopback up.
    code = ("import fcntl, socket, struct, sys; s = socket.socket(); "
            "flags = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, "     # SIOCGIFFLAGS
            "struct.pack('16sH', b'lo', 0)))[1]; print(flags & 1, flush=True); "
            "sys.stdin.read()")
    proc = server.spawn({"argv": [SYSTEM_PYTHON, "-I", "-c", code], "env": TARGET_ENV,
                         "namespaces": {k: True for k in ("pid", *kinds)}},
                        stdout=PIPE, stdin=PIPE)
    try:
        assert proc.stdout.readline() == b"1\n"         # lo is up
        reaper, target = proc.pid, proc.target_pid
        assert nspid(reaper)[-1] == 1 and nspid(target)[-1] == 2
        for k in kinds:
            name = {"mount": "mnt"}.get(k, k)
            theirs = os.readlink(f"/proc/{target}/ns/{name}")
            assert os.readlink(f"/proc/{reaper}/ns/{name}") == theirs, k
            assert theirs != os.readlink(f"/proc/self/ns/{name}"), k
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


def test_a_uts_namespace_made_ahead_follows_a_renamed_host(tmp_path):
    # The premade reaper's uts namespace copies the host's names when the spare is
    # made; a spare made before the host was renamed is not used.  "The host" here is a
    # uts namespace of this test's own (unshare --uts), so nothing of the machine's
    # changes.
    script = tmp_path / "renamed.py"
    script.write_text(
        "import socket, subprocess, sys\n"
        f"sys.path.insert(0, {repr(os.path.dirname(os.path.dirname(sandbox.__file__)))})\n"
        "from sandbox.forkserver import ForkServer\n"
        "from sandbox.spawning import PIPE\n"
        "spec = {'argv': ['/bin/uname', '-n'], 'env': {'PATH': '/bin'},\n"
        "        'namespaces': {'pid': True, 'uts': True}}\n"
        "socket.sethostname('before-rename')\n"
        "with ForkServer() as fs:\n"
        "    for name in ('before-rename', 'after-rename'):\n"
        "        socket.sethostname(name)\n"
        "        p = fs.spawn(spec, stdout=PIPE)\n"
        "        out, _ = p.communicate(timeout=60)\n"
        "        print(out.decode().strip())\n")
    r = subprocess.run(["unshare", "--uts", sys.executable, "-I", str(script)],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["before-rename", "after-rename"]
