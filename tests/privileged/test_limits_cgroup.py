"""oom_score_adj, rlimits, nice, cgroup placement, env and fds -- seen by the target."""

import json
import os
import subprocess

import pytest

from sandbox import cgroups
from tests.conftest import (
    SYSTEM_PYTHON,
    TARGET_ENV,
    needs_host_root,
    probe_spec,
    run_probe,
    run_wrapperd,
    skip_or_fail,
    wrapperd_cmd,
)


def limits(r):
    out = {}
    for line in r["limits"].splitlines()[1:]:
        parts = line.split()
        if line.startswith("Max open files"):
            out["NOFILE"] = parts[3:5]
        if line.startswith("Max core file size"):
            out["CORE"] = parts[4:6]
        if line.startswith("Max file size"):
            out["FSIZE"] = parts[3:5]
    return out


def test_oom_score_rlimits_nice(probe):
    r = run_probe(probe_spec(probe, oom_score_adj=345, nice=7,
                             rlimits={"NOFILE": [123, 456], "CORE": [0, 0],
                                      "FSIZE": ["unlimited", "unlimited"]}))
    assert r["oom_score_adj"] == 345
    assert r["nice"] == 7
    lim = limits(r)
    assert lim["NOFILE"] == ["123", "456"]
    assert lim["CORE"] == ["0", "0"]
    assert lim["FSIZE"] == ["unlimited", "unlimited"]


def test_rlimit_above_what_wrapperd_may_raise_fails_closed(probe, scratch):
    marker = scratch / "ran"
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # Whether the kernel lets us raise it is asked of the kernel, in a child of our own
    # -- never read off wrapperd's outcome, which would turn its failure into a skip.
    raise_it = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, "
                f"({hard + 1}, {hard + 1}))")
    if subprocess.run([SYSTEM_PYTHON, "-I", "-c", raise_it], capture_output=True,
                      timeout=30).returncode == 0:
        skip_or_fail("this process may raise NOFILE here (holds CAP_SYS_RESOURCE)")
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}",
                                rlimits={"NOFILE": [hard + 1, hard + 1]}))
    assert p.returncode == 125, p.stderr
    assert p.stderr.decode().startswith("wrapperd: rlimits: setrlimit NOFILE")
    assert not marker.exists()


def test_environment_is_exactly_the_specs(probe):
    os.environ["LD_PRELOAD_TEST_SECRET"] = "leak"
    try:
        r = run_probe(probe_spec(probe, env={"ONLY": "this", **TARGET_ENV}))
    finally:
        del os.environ["LD_PRELOAD_TEST_SECRET"]
    assert r["env"] == {"ONLY": "this", **TARGET_ENV}


def test_only_stdio_and_pass_fds_reach_the_target(probe):
    r_fd, w_fd = os.pipe()
    leak_r, leak_w = os.pipe()
    try:
        os.set_inheritable(leak_r, True)
        r = run_probe(probe_spec(probe, pass_fds=[r_fd]), "--status-fd", str(w_fd),
                      pass_fds=(r_fd, w_fd, leak_r))
    finally:
        for fd in (r_fd, w_fd, leak_r, leak_w):
            os.close(fd)
    assert sorted(int(fd) for fd in r["fds"]) == sorted([0, 1, 2, r_fd])


@pytest.mark.parametrize("pidns", [False, True], ids=["plain", "pid namespace"])
def test_a_pass_fd_that_is_not_open_is_refused(pidns):
    # wrapperd started by an init with only stdio open: whatever fd the shim itself
    # opens on the way (with a pid namespace: the pipe its reaper says it is ready on,
    # held until the reaper step) must not stand in for a pass_fd the caller did not
    # have open.  Every low number in turn.
    for fd in range(3, 9):
        spec = {"argv": ["/bin/true"], "env": TARGET_ENV, "pass_fds": [fd],
                "namespaces": {"pid": pidns}}
        r = subprocess.run(wrapperd_cmd("--spec", "-"), input=json.dumps(spec).encode(),
                           capture_output=True, timeout=60)
        assert r.returncode == 125, (fd, r.stderr)
        assert f"pass_fds: fd {fd} is not open".encode() in r.stderr, (fd, r.stderr)


def test_cwd(probe):
    assert run_probe(probe_spec(probe, cwd="/tmp"))["cwd"] == "/tmp"


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_is_joined_before_exec(probe, cgroup_root, version):
    hs = cgroups.hierarchies()
    if version == 1:
        needs_host_root("cgroup v1 hierarchies belong to the host's root")
    if not any(h.version == version for h in hs):
        skip_or_fail(f"no cgroup v{version} here")
    path = cgroup_root + "/svc"
    r = run_probe(probe_spec(probe, cgroup={"path": path, "version": version}))
    seen = {}
    for line in r["cgroup"]:
        _hid, ctrls, p = line.split(":", 2)
        seen[ctrls] = p
    if version == 2:
        assert seen[""] == path
    else:
        for h in hs:
            if h.version == 1:
                assert seen[",".join(h.controllers)] == path, h


def test_cgroup_v1_limits_are_written(probe, cgroup_root):
    needs_host_root("cgroup v1 hierarchies belong to the host's root")
    if cgroups.mode() not in ("hybrid", "legacy"):
        skip_or_fail("no cgroup v1 controllers here")
    path = cgroup_root + "/lim"
    r = run_probe(probe_spec(probe, "sleep:0", cgroup={"path": path, "version": 1,
                                                        "memory_max": 64 << 20,
                                                        "pids_max": 32}))
    assert any(line.endswith(":" + path) and "memory" in line for line in r["cgroup"])
    with open(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes") as f:
        assert int(f.read()) == 64 << 20
    with open(f"/sys/fs/cgroup/pids{path}/pids.max") as f:
        assert f.read().strip() == "32"


def test_cgroup_path_attack_is_refused(probe, scratch):
    marker = scratch / "ran"
    for bad in ("../../etc", "/a/../../b"):
        p = run_wrapperd(probe_spec(probe, f"touch:{marker}", cgroup={"path": bad}))
        assert p.returncode == 125 and b"cgroup.path" in p.stderr
    assert not marker.exists()


def test_cgroup_symlink_in_the_tree_is_not_followed(probe, cgroup_root, scratch, tmp_path):
    # cgroupfs cannot hold symlinks, so plant one where a v1 tree is a plain directory:
    # open_path walks with O_NOFOLLOW from the mount root.
    base = tmp_path / "fakemount"
    (base / "real").mkdir(parents=True)
    os.symlink("/etc", base / "evil")
    with pytest.raises(OSError) as e:
        cgroups.open_path(str(base), "/evil/x", create=True)
    assert e.value.errno in (20, 40)   # ENOTDIR / ELOOP
    assert not os.path.exists("/etc/x")
