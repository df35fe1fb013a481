"""Cgroups against the real kernel: limits that hold (OOM kill, fork bomb), placement in
every controller, whole-tree kill, freeze/thaw, path attacks, rootless delegation.

Each test works under its own /wrapperd-test-<uuid> subtree, killed and removed in every
hierarchy even when the test fails.  Targets are small python/sh programs run by the
system python (the work tree may not be readable by every uid).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from sandbox import cgroups
from sandbox.cgroups.v1 import cpu_weight_to_shares
from sandbox.spec import Cgroup
from tests.conftest import (
    SYSTEM_PYTHON,
    TARGET_ENV,
    needs_host_root,
    probe_spec,
    run_probe,
    run_wrapperd,
    skip_or_fail,
    until,
    wrapperd_cmd,
)

HS = cgroups.hierarchies()
V1 = [h for h in HS if h.version == 1]
V2 = next((h for h in HS if h.version == 2), None)


def need_v1(*ctrls):
    needs_host_root("cgroup v1 hierarchies belong to the host's root")
    have = {c for h in V1 for c in h.controllers}
    missing = [c for c in ctrls if c not in have]
    if missing:
        skip_or_fail(f"cgroup v1 controllers not mounted: {missing}")


def need_v2():
    if V2 is None:
        skip_or_fail("no cgroup v2 hierarchy here")


def v1_file_exists(ctrl, name):
    h = next(h for h in V1 if ctrl in h.controllers)
    return os.path.exists(os.path.join(h.mountpoint, name))


@pytest.fixture
def top(cgroup_root):
    """Our own unique subtree; everything in it is killed and removed afterwards."""
    return cgroup_root


def spawn(spec):
    """Start wrapperd with spec in the background; the caller reaps it."""
    p = subprocess.Popen(wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(json.dumps(spec).encode())
    p.stdin.close()
    return p


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read(h, path, name):
    with open(f"{h.mountpoint}{path}/{name}") as f:
        return f.read().strip()


def py(code, **cg):
    return {"argv": [SYSTEM_PYTHON, "-I", "-c", code], "env": dict(TARGET_ENV),
            "cgroup": cg}


# --------------------------------------------------------------------------- v1 limits

def _mem_cg(path, limit):
    cg = {"path": path, "version": 1, "memory_max": limit}
    if v1_file_exists("memory", "memory.memsw.limit_in_bytes"):
        cg["memory_swap_max"] = 0     # else the allocation could go to swap, not OOM
    return cg


def test_v1_memory_max_oom_kills_and_reports(top):
    need_v1("memory")
    alloc = "x = b'x' * ({} << 20); print('survived', len(x))"
    # control: 16 MiB fits under 64 MiB, no OOM is reported
    cg = _mem_cg(top + "/small", 64 << 20)
    p = run_wrapperd(py(alloc.format(16), **cg))
    assert p.returncode == 0 and b"survived" in p.stdout, p.stderr
    g = cgroups.Group.from_spec(Cgroup.load(cg, "cgroup"))
    assert g.events()["oom_kill"] == 0
    # 256 MiB under 64 MiB: the OOM killer kills the target, and the group says so
    cg = _mem_cg(top + "/big", 64 << 20)
    p = run_wrapperd(py(alloc.format(256), **cg), timeout=60)
    assert p.returncode == -9, (p.returncode, p.stderr)
    assert b"survived" not in p.stdout
    g = cgroups.Group.from_spec(Cgroup.load(cg, "cgroup"))
    ev = g.events()
    assert ev["oom_kill"] >= 1, ev
    # (memory_max, v1 memory.failcnt, stays 0 on recent kernels' v1: not asserted)
    st = g.stats()
    assert st["memory_peak"] is not None and st["memory_peak"] <= (64 << 20) + (1 << 20), st
    h = next(h for h in V1 if "memory" in h.controllers)
    assert int(read(h, top + "/big", "memory.limit_in_bytes")) == 64 << 20


BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.05)   # refused by pids.max: back off, keep the shared machine usable
"""


@pytest.mark.parametrize("killer", ["cgroup.kill", "v1-freezer"])
def test_v1_fork_bomb_is_contained_and_killed(top, killer):
    need_v1("pids", "cpu", "freezer")
    # cpu_max: half a CPU for the whole bomb, so a 2-core machine stays responsive
    cg = {"path": top + "/bomb", "version": 1, "pids_max": 32, "cpu_max": "50000 100000"}
    g = cgroups.Group.from_spec(Cgroup.load(cg, "cgroup"))
    if killer == "v1-freezer":
        g = cgroups.Group(cg["path"], V1)     # no v2: freeze, SIGKILL each task, thaw
    elif V2 is None:
        skip_or_fail("no cgroup v2 hierarchy (cgroup.kill) here")
    p = spawn(py(BOMB, **cg))
    try:
        until(lambda: g.events()["pids_max"] > 0, 20, "the bomb to hit pids.max")
        # the node stays responsive while the bomb runs: a fork and exec outside the
        # group still succeed (bounded by the timeout, not by a wall-clock figure that a
        # loaded 2-core machine would miss now and then)
        subprocess.run(["/bin/true"], check=True, timeout=10)
        n = len(g.procs())
        assert 1 < n <= 32, n
        assert g.stats()["pids_current"] <= 32
        h = next(h for h in V1 if "pids" in h.controllers)
        assert read(h, cg["path"], "pids.max") == "32"
        assert read(next(h for h in V1 if "cpu" in h.controllers), cg["path"],
                    "cpu.cfs_quota_us") == "50000"
        # every task, whoever its parent, dies
        assert g.kill(timeout=10)
        assert g.procs() == set()
        assert p.wait(timeout=10) == -9
    finally:
        g.kill(timeout=10)
        p.kill()
        p.wait()
    assert g.events()["pids_max"] > 0


def test_v1_every_named_controller_has_the_target(probe, top):
    need_v1("memory", "pids", "cpu", "cpuset")
    path = top + "/placed"
    cg = {"path": path, "version": 1, "memory_max": 128 << 20, "pids_max": 64,
          "cpu_max": [20000, 100000], "cpu_weight": 50, "cpuset_cpus": "0"}
    if v1_file_exists("memory", "memory.memsw.limit_in_bytes"):
        cg["memory_swap_max"] = 16 << 20
    r = run_probe(probe_spec(probe, cgroup=cg))
    seen = {}
    for line in r["cgroup"]:
        _hid, ctrls, p = line.split(":", 2)
        seen[ctrls] = p
    mine = cgroups.cgroup_of("self")
    for h in V1:
        key = ",".join(h.controllers)
        assert seen[key] == path, (h, seen)
        assert mine[h.controllers] != path          # control: the test itself is not there
    if V2 is not None:
        assert seen[""] == path                     # hybrid: the v2 placement too

    def v1(ctrl, name):
        return read(next(h for h in V1 if ctrl in h.controllers), path, name)
    assert v1("memory", "memory.limit_in_bytes") == str(128 << 20)
    if "memory_swap_max" in cg:
        assert v1("memory", "memory.memsw.limit_in_bytes") == str((128 + 16) << 20)
    assert v1("pids", "pids.max") == "64"
    assert v1("cpu", "cpu.cfs_quota_us") == "20000"
    assert v1("cpu", "cpu.cfs_period_us") == "100000"
    assert v1("cpu", "cpu.shares") == str(cpu_weight_to_shares(50)) == "512"
    assert v1("cpuset", "cpuset.cpus") == "0"
    assert r["status"]["Cpus_allowed_list"] == "0"  # the kernel applied it to the target


def test_v1_named_hierarchy_is_joined_when_asked(probe, top):
    needs_host_root("cgroup v1 hierarchies belong to the host's root")
    named = [h for h in cgroups.hierarchies(named=True)
             if h.version == 1 and h.controllers[0].startswith("name=")]
    if not named:
        skip_or_fail("no named cgroup v1 hierarchy (name=X) is mounted here")
    name = named[0].controllers[0]
    path = top + "/named"
    r = run_probe(probe_spec(probe, cgroup={"path": path, "version": 1,
                                            "named": [name[5:]]}))
    seen = {ctrls: p for _hid, ctrls, p in (ln.split(":", 2) for ln in r["cgroup"])}
    assert seen[name] == path
    assert cgroups.cgroup_of("self")[(name,)] != path          # control
    # and without asking, the named hierarchy is left alone
    r = run_probe(probe_spec(probe, cgroup={"path": top + "/plain", "version": 1}))
    seen = {ctrls: p for _hid, ctrls, p in (ln.split(":", 2) for ln in r["cgroup"])}
    assert seen[name] != top + "/plain"
    assert not os.path.exists(f"{named[0].mountpoint}{top}/plain")


def test_v1_limit_the_kernel_refuses_fails_closed(probe, top, scratch):
    need_v1("cpuset")
    marker = scratch / "ran"
    bad_cpu = str(os.cpu_count() + 64)
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}",
                                cgroup={"path": top + "/x", "version": 1,
                                        "cpuset_cpus": bad_cpu}))
    assert p.returncode == 125, p.stderr
    err = p.stderr.decode()
    assert err.startswith("wrapperd: cgroup: write") and "cpuset.cpus" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_v1_limits_of_an_existing_cgroup_can_be_raised(top):
    need_v1("memory")
    if not v1_file_exists("memory", "memory.memsw.limit_in_bytes"):
        skip_or_fail("no swap accounting (memory.memsw.*) here")
    path = top + "/grow"
    h = next(h for h in V1 if "memory" in h.controllers)
    for mem, swap in ((32 << 20, 0), (128 << 20, 16 << 20)):
        # the second run must raise memsw before limit_in_bytes (limit <= memsw always)
        p = run_wrapperd(py("pass", path=path, version=1, memory_max=mem,
                            memory_swap_max=swap))
        assert p.returncode == 0, p.stderr
        assert int(read(h, path, "memory.limit_in_bytes")) == mem
        assert int(read(h, path, "memory.memsw.limit_in_bytes")) == mem + swap


def test_create_false_needs_an_existing_cgroup(probe, top, scratch):
    marker = scratch / "ran"
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}",
                                cgroup={"path": top + "/absent", "create": False}))
    assert p.returncode == 125
    err = p.stderr.decode()
    assert err.startswith("wrapperd: cgroup: open ") and "No such file" in err, err
    assert not marker.exists()
    assert not cgroups.Group(top).exists()


# --------------------------------------------------------------------------- kill, freeze

TREE = """
import os, sys, time
pids = []
def detach():                        # as a real daemon does: let go of the caller's pipes
    fd = os.open("/dev/null", os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
def daemon():                        # the classic double fork: setsid, fork, parent exits
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            detach(); time.sleep(300); os._exit(0)
        os.write(w, str(pid).encode()); os._exit(0)
    os.close(w); pid = int(os.read(r, 32)); os.wait(); return pid
def orphan():                        # child forks a grandchild, then exits
    r, w = os.pipe()
    if os.fork() == 0:
        pid = os.fork()
        if pid == 0:
            detach(); time.sleep(300); os._exit(0)
        os.write(w, str(pid).encode()); os._exit(0)
    os.close(w); pid = int(os.read(r, 32)); os.wait(); return pid
pids += [daemon(), daemon(), orphan()]
c = os.fork()
if c == 0:
    detach(); time.sleep(300); os._exit(0)
pids.append(c)                       # left behind when the target exits
print(" ".join(map(str, pids)), flush=True)
"""


@pytest.mark.parametrize("backend", ["v2", "v1-freezer"])
def test_kill_leaves_nothing_behind(top, backend):
    if backend == "v2":
        need_v2()
        cg = {"path": top + "/tree", "version": 2}
        g = cgroups.Group.from_spec(Cgroup.load(cg, "cgroup"))
    else:
        need_v1("freezer")
        cg = {"path": top + "/tree", "version": 1}
        # only the v1 hierarchies: kill must take the freeze + SIGKILL + thaw path
        g = cgroups.Group(cg["path"], V1)
    p = run_wrapperd(py(TREE, **cg))
    assert p.returncode == 0, p.stderr
    pids = [int(x) for x in p.stdout.split()]
    assert len(pids) == 4
    # control: the target exited, but its orphans and daemons live on in the group
    assert all(alive(pid) for pid in pids)
    assert set(pids) <= g.procs()
    assert g.kill(timeout=10)
    assert g.procs() == set()
    until(lambda: not any(alive(pid) for pid in pids), 5, "the tree to die")
    if V2 is not None and backend == "v2":
        assert "populated 0" in read(V2, cg["path"], "cgroup.events")
    g.remove()                   # rmdir succeeds only on an empty cgroup
    assert not g.exists()


COUNTER = """
import sys, time
i = 0
while True:
    i += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(i))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.01)
"""


@pytest.mark.parametrize("backend", ["v2", "v1-freezer"])
def test_freeze_and_thaw(top, scratch, backend):
    if backend == "v2":
        need_v2()
        cg = {"path": top + "/frz", "version": 2}
        g = cgroups.Group.from_spec(Cgroup.load(cg, "cgroup"))
    else:
        need_v1("freezer")
        cg = {"path": top + "/frz", "version": 1}
        g = cgroups.Group(cg["path"], [h for h in V1 if "freezer" in h.controllers])
    counter = scratch / "counter"
    spec = py(COUNTER, **cg)
    spec["argv"].append(str(counter))
    p = spawn(spec)
    try:
        def value():
            try:
                return int(counter.read_text() or 0)
            except (FileNotFoundError, ValueError):
                return 0
        until(lambda: value() > 3, 10, "the counter to run")
        g.freeze()
        if backend == "v2":
            assert "frozen 1" in read(V2, cg["path"], "cgroup.events")
        else:
            fz = next(h for h in V1 if "freezer" in h.controllers)
            assert read(fz, cg["path"], "freezer.state") == "FROZEN"
        with open(f"/proc/{p.pid}/status") as f:
            state = next(ln for ln in f if ln.startswith("State:")).split()[1]
        assert state in ("S", "D"), state        # stopped in the freezer, not running
        v = value()
        time.sleep(0.3)
        assert value() == v                      # nothing ran while frozen
        g.thaw()
        if backend == "v2":
            assert "frozen 0" in read(V2, cg["path"], "cgroup.events")
        until(lambda: value() > v, 5, "the counter to run again after thaw")
    finally:
        g.kill(timeout=10)
        p.kill()
        p.wait()


def test_stats_and_procs(top):
    need_v2()
    cg = {"path": top + "/st", "version": "auto"}
    g = cgroups.Group.from_spec(Cgroup.load(cg, "cgroup"))
    assert not g.exists()
    p = spawn(py("import time; time.sleep(300)", **cg))
    try:
        until(lambda: g.procs() == {p.pid}, 10, "the target to be placed")
        assert g.exists()
        # The counters are flushed lazily: the shim's own start-up in the cgroup shows
        # up a moment after it joined.
        until(lambda: (g.stats()["cpu_usage_usec"] or 0) > 0, 10, "cpu usage to be counted")
        st = g.stats()
        if any("memory" in h.controllers for h in g.hierarchies) or cgroups.mode() == "unified":
            assert st["memory_current"] and st["memory_current"] > 0, st
    finally:
        g.kill(timeout=10)
        p.wait()
    g.remove()
    g.remove()                   # already gone is fine
    assert not g.exists()


# --------------------------------------------------------------------------- safe paths

@pytest.mark.parametrize("bad", ["../../", "../", "a/../../..", "/x/./y", "/.."])
def test_path_attacks_exit_125(probe, scratch, bad):
    marker = scratch / "ran"
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}", cgroup={"path": bad}))
    assert p.returncode == 125
    err = p.stderr.decode()
    assert err.startswith("wrapperd: ") and "cgroup.path" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def _in_private_mount_ns(setup: str, spec: dict) -> subprocess.CompletedProcess:
    """Run `setup` (sh) then wrapperd in a private mount namespace: whatever setup mounts
    vanishes with it, the host's cgroup tree is never touched."""
    cmd = ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
           setup + ' && exec "$@"', "sh", *wrapperd_cmd("--spec", "-")]
    return subprocess.run(cmd, input=json.dumps(spec).encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


@pytest.mark.parametrize("plant, expect", [
    ("symlink", "symbolic link"),       # the attack: a symlink where a directory should be
    ("mount", "Invalid cross-device link"),   # a filesystem mounted inside the tree
    ("dir", "join"),                    # control: a plain directory is walked into
])
def test_planted_symlink_or_mount_in_the_cgroup_tree_is_refused(probe, scratch, tmp_path,
                                                               plant, expect):
    """cgroupfs cannot hold a symlink, so in a private mount namespace a tmpfs covers the
    v2 mount (mountinfo still lists cgroup2 there) and holds the planted path; a decoy
    'cgroup' elsewhere must never be written, and the target never runs."""
    need_v2()
    if not os.path.exists("/usr/bin/unshare"):
        skip_or_fail("unshare(1) is not installed")
    decoy = tmp_path / "decoy"
    (decoy / "svc").mkdir(parents=True)
    for d in (decoy, decoy / "svc"):
        (d / "cgroup.procs").write_text("untouched")
        (d / "cgroup.subtree_control").write_text("")
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", cgroup={"path": "/t/evil/svc", "version": 2})
    m = V2.mountpoint
    setup = f'mount -t tmpfs none "{m}" && mkdir "{m}/t" && '
    setup += {"symlink": f'ln -s "{decoy}" "{m}/t/evil"',
              "mount": f'mkdir "{m}/t/evil" && mount --bind "{decoy}" "{m}/t/evil"',
              "dir": f'mkdir "{m}/t/evil"'}[plant]
    p = _in_private_mount_ns(setup, spec)
    assert p.returncode == 125, (p.returncode, p.stderr)
    err = p.stderr.decode()
    assert err.startswith("wrapperd: cgroup: ") and expect in err, err
    assert len(err.strip().splitlines()) == 1
    if plant != "dir":
        assert err.startswith("wrapperd: cgroup: open ")   # refused while walking
    assert not marker.exists()
    for d in (decoy, decoy / "svc"):
        assert (d / "cgroup.procs").read_text() == "untouched"


# --------------------------------------------------------------------------- delegation

NOBODY = 65534


def test_rootless_shim_uses_a_delegated_v2_subtree(probe, top, scratch):
    """The kernel's delegation model: the user owns the subtree's directory, cgroup.procs
    and cgroup.subtree_control; the shim, running as that user from a cgroup inside the
    subtree, creates the service's cgroup and joins it."""
    need_v2()
    if not os.path.exists("/usr/bin/setpriv"):
        skip_or_fail("setpriv(1) is not installed")
    base = f"{V2.mountpoint}{top}"
    deleg = f"{base}/deleg"
    os.makedirs(f"{deleg}/launcher")
    os.mkdir(f"{base}/other")                    # not delegated
    for p in (deleg, f"{deleg}/cgroup.procs", f"{deleg}/cgroup.subtree_control",
              f"{deleg}/cgroup.threads", f"{deleg}/launcher",
              f"{deleg}/launcher/cgroup.procs"):
        os.chown(p, NOBODY, NOBODY)
    if not os.access(sys.executable, os.X_OK):
        skip_or_fail("the venv python is not usable")

    def run_as_nobody(path):
        marker = scratch / f"ran-{path.replace('/', '-')}"
        spec = probe_spec(probe, f"touch:{marker}", cgroup={"path": path, "version": 2})
        # enter the delegated subtree as root (the delegator's job), then drop to nobody
        cmd = ["/bin/sh", "-c", f'echo $$ > "{deleg}/launcher/cgroup.procs" && exec "$@"',
               "sh", "/usr/bin/setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
               "--clear-groups", *wrapperd_cmd("--spec", "-")]
        p = subprocess.run(cmd, input=json.dumps(spec).encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30, cwd="/")
        return p, marker

    p, marker = run_as_nobody(top + "/deleg/svc")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert f"0::{top}/deleg/svc" in r["cgroup"]
    assert r["status"]["Uid"].split()[0] == str(NOBODY)
    assert marker.exists()
    assert os.stat(f"{deleg}/svc").st_uid == NOBODY     # created by the unprivileged shim
    # control: the same user cannot create and join a cgroup outside its subtree
    p, marker = run_as_nobody(top + "/other/svc")
    assert p.returncode == 125
    assert p.stderr.decode().startswith("wrapperd: cgroup: ")
    assert not marker.exists()
