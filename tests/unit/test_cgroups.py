"""sandbox.cgroups without privileges: mountinfo parsing, what prepare() plans to write
for v1 and v2, conversions, spec validation, and Group's readers on a fake tree."""

import errno
import os
import subprocess
import sys

import pytest

from sandbox import cgroups
from sandbox.cgroups import Group, Hierarchy
from sandbox.cgroups.v1 import _write_v1, cpu_weight_to_shares, io_weight_to_blkio
from sandbox.errors import SpecError
from sandbox.spec import Cgroup

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu\\040acct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:32 /sub /mnt/memsub rw,relatime - cgroup cgroup rw,memory
"""


def test_hierarchies_from_mountinfo(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    hs = cgroups.hierarchies(str(mi))
    assert Hierarchy(1, "/sys/fs/cgroup/cpu", ("cpu",)) in hs
    assert Hierarchy(1, "/sys/fs/cgroup/cpu acct", ("cpuacct",)) in hs    # \040 unescaped
    assert Hierarchy(2, "/sys/fs/cgroup/unified", ()) in hs
    assert not any("systemd" in h.mountpoint for h in hs)     # named: not a controller
    assert not any(h.mountpoint == "/mnt/memsub" for h in hs)  # a bind of a sub-cgroup
    assert cgroups.mode(hs) == "hybrid"
    assert cgroups.mode([h for h in hs if h.version == 1]) == "legacy"
    assert cgroups.mode([h for h in hs if h.version == 2]) == "unified"
    assert cgroups.mode([]) == "none"


def test_named_hierarchies_only_when_asked(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    hs = cgroups.hierarchies(str(mi), named=True)
    assert Hierarchy(1, "/sys/fs/cgroup/systemd", ("name=systemd",)) in hs
    assert cgroups.mode([h for h in hs if h.version == 2 or "name=systemd"
                         in h.controllers]) == "unified"     # a named one is no controller
    v1 = [h for h in hs if h.version == 1]
    p = cgroups.prepare(cg(version=1, named=["systemd"]), hs)
    assert ("name=systemd",) in [t.hierarchy.controllers for t in p.targets]
    p = cgroups.prepare(cg(version=1), hs)
    assert ("name=systemd",) not in [t.hierarchy.controllers for t in p.targets]
    with pytest.raises(SpecError, match=r"cgroup\.named\[0\]: no cgroup hierarchy name=x"):
        cgroups.prepare(cg(version=1, named=["x"]), v1)
    with pytest.raises(SpecError, match=r"cgroup\.named: named hierarchies are cgroup v1"):
        cgroups.prepare(cg(version=2, named=["systemd"]), hs)
    g = Group.from_spec(cg(version=1, named=["name=systemd"]), hs)
    assert ("name=systemd",) in [h.controllers for h in g.hierarchies]


def cg(**kw):
    return Cgroup.load({"path": "svc", **kw}, "cgroup")


@pytest.fixture
def v2mount(tmp_path):
    m = tmp_path / "unified"
    m.mkdir()
    (m / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    return [Hierarchy(2, str(m), ())]


def test_prepare_v2_plain_files_and_controllers_to_enable(v2mount):
    p = cgroups.prepare(cg(memory_max=1 << 30, memory_high=1 << 29, memory_swap_max=0,
                           pids_max=100, cpu_max="max 100000", cpu_weight=200,
                           io_weight=50, cpuset_cpus="0-1", cpuset_mems="0"), v2mount)
    assert p.path == "/wrapperd/svc" and p.create
    (t,) = p.targets
    assert dict(t.writes) == {
        "memory.max": str(1 << 30), "memory.high": str(1 << 29), "memory.swap.max": "0",
        "pids.max": "100", "cpu.max": "max 100000", "cpu.weight": "200", "io.weight": "50",
        "cpuset.cpus": "0-1", "cpuset.mems": "0"}
    assert set(t.enable) == {"memory", "pids", "cpu", "io", "cpuset"}


def test_prepare_v2_refuses_a_controller_that_is_not_there(v2mount):
    with open(os.path.join(v2mount[0].mountpoint, "cgroup.controllers"), "w") as f:
        f.write("pids\n")
    assert cgroups.prepare(cg(pids_max=5), v2mount).targets[0].writes == (("pids.max", "5"),)
    with pytest.raises(SpecError, match=r"cgroup\.memory_max: the memory controller"):
        cgroups.prepare(cg(memory_max=1 << 20), v2mount)


@pytest.fixture
def v1mounts(tmp_path):
    hs = []
    for ctrls in (("cpu",), ("memory",), ("pids",), ("cpuset",), ("blkio",), ("freezer",)):
        m = tmp_path / ctrls[0]
        m.mkdir()
        (m / "cgroup.procs").touch()     # writable by us: 'auto' may pick v1
        hs.append(Hierarchy(1, str(m), ctrls))
    return hs


def test_auto_in_hybrid_mode_picks_v2_when_v1_is_not_ours(v1mounts, v2mount, monkeypatch):
    # (root may write any file, so "not ours" is simulated; the rootless run is the
    # end-to-end case)
    monkeypatch.setattr(cgroups, "_may_write_v1", lambda hs: False)
    p = cgroups.prepare(cg(), v1mounts + v2mount)
    assert [t.hierarchy.version for t in p.targets] == [2]


def test_prepare_v1_writes_per_hierarchy_in_kernel_order(v1mounts):
    # the weight file blkio offers (BFQ's here) is the one written
    open(os.path.join(v1mounts[4].mountpoint, "blkio.bfq.weight"), "w").close()
    p = cgroups.prepare(cg(version=1, memory_max=64 << 20, memory_swap_max=16 << 20,
                           pids_max=32, cpu_max=[50000, 100000], cpu_weight=100,
                           io_weight=100, cpuset_cpus="0"), v1mounts)
    by = {t.hierarchy.controllers[0]: t.writes for t in p.targets}
    assert by["memory"] == (("memory.limit_in_bytes", str(64 << 20)),
                            ("memory.memsw.limit_in_bytes", str(80 << 20)))
    assert by["cpu"] == (("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000"),
                         ("cpu.shares", "1024"))
    assert by["pids"] == (("pids.max", "32"),)
    assert by["blkio"] == (("blkio.bfq.weight", "500"),)
    assert by["cpuset"] == (("cpuset.cpus", "0"),)
    assert by["freezer"] == ()          # joined, nothing written
    assert len(p.targets) == len(v1mounts)


def test_prepare_v1_hybrid_also_joins_v2(v1mounts, v2mount):
    p = cgroups.prepare(cg(version=1, pids_max=4), v1mounts + v2mount)
    assert [t.hierarchy.version for t in p.targets].count(2) == 1
    # auto means v1 when v1 controllers are there, v2 on a pure v2 machine
    assert cgroups.prepare(cg(), v1mounts + v2mount).targets[0].hierarchy.version == 1
    assert [t.hierarchy.version for t in cgroups.prepare(cg(), v2mount).targets] == [2]


@pytest.mark.parametrize("fields, where", [
    ({"memory_high": 1 << 20}, "cgroup.memory_high"),
    ({"memory_swap_max": 0}, "cgroup.memory_swap_max"),        # needs memory_max in v1
    ({"io_weight": 100}, "cgroup.io_weight"),                  # no blkio weight file
])
def test_prepare_v1_refusals_name_the_field(v1mounts, fields, where):
    with pytest.raises(SpecError) as e:
        cgroups.prepare(cg(version=1, **fields), v1mounts)
    assert e.value.message.startswith(where + ":")


def test_prepare_v1_missing_controller(v1mounts):
    with pytest.raises(SpecError, match=r"cgroup\.pids_max: the pids controller"):
        cgroups.prepare(cg(version=1, pids_max=3), [h for h in v1mounts
                                                    if "pids" not in h.controllers])


def test_prepare_no_cgroupfs():
    with pytest.raises(SpecError, match="no cgroup filesystem"):
        cgroups.prepare(cg(), [])


def test_weight_conversions():
    assert cpu_weight_to_shares(100) == 1024       # default onto default
    assert cpu_weight_to_shares(1) == 10
    assert cpu_weight_to_shares(10000) == 102400
    assert io_weight_to_blkio(100) == 500
    assert io_weight_to_blkio(1) == 10
    assert io_weight_to_blkio(10000) == 1000


@pytest.mark.parametrize("value, expect", [
    ("50000 100000", "50000 100000"), ("max 100000", "max 100000"),
    ([20000, 50000], "20000 50000"), (["max", 100000], "max 100000")])
def test_spec_cpu_max_forms(value, expect):
    assert cg(cpu_max=value).cpu_max == expect
    assert Cgroup.load(cg(cpu_max=value).dump(), "cgroup") == cg(cpu_max=value)


@pytest.mark.parametrize("field, value, where", [
    ("cpu_max", "50000", "cgroup.cpu_max"),
    ("cpu_max", [1, 2, 3], "cgroup.cpu_max"),
    ("cpu_max", [500, 100000], "cgroup.cpu_max[0]"),
    ("cpu_max", [50000, 2000000], "cgroup.cpu_max[1]"),
    ("cpu_max", [True, 100000], "cgroup.cpu_max[0]"),
    ("cpu_weight", 0, "cgroup.cpu_weight"),
    ("cpu_weight", 10001, "cgroup.cpu_weight"),
    ("io_weight", 1.5, "cgroup.io_weight"),
    ("cpuset_cpus", "0-a", "cgroup.cpuset_cpus"),
    ("cpuset_cpus", "3-1", "cgroup.cpuset_cpus"),
    ("cpuset_mems", "", "cgroup.cpuset_mems"),
    ("memory_high", 0, "cgroup.memory_high"),
    ("memory_swap_max", -1, "cgroup.memory_swap_max"),
    ("path", "../../", "cgroup.path"),
    ("named", "systemd", "cgroup.named"),
    ("named", ["a/b"], "cgroup.named[0]"),
    ("named", ["x", "name=x"], "cgroup.named[1]"),
    ("path", "a/./b", "cgroup.path"),
])
def test_spec_refusals_name_the_field(field, value, where):
    with pytest.raises(SpecError) as e:
        Cgroup.load({"path": "svc", field: value}, "cgroup")
    assert e.value.message.startswith(where + ":"), e.value.message


def test_group_paths():
    assert Group("svc", []).path == "/wrapperd/svc"
    assert Group("/a//b/", []).path == "/a/b"
    for bad in ("../x", "/a/../b", "/", "a/."):
        with pytest.raises(SpecError):
            Group(bad, [])
    g = Group.from_spec(cg(path="/x/y", version=2),
                        [Hierarchy(1, "/m", ("memory",)), Hierarchy(2, "/u", ())])
    assert g.path == "/x/y" and [h.version for h in g.hierarchies] == [2]


def test_group_readers_on_a_fake_tree(v2mount, v1mounts):
    """procs() walks the whole subtree of every hierarchy; events/stats parse the files."""
    u = v2mount[0].mountpoint
    os.makedirs(f"{u}/g/a/b")
    for d, pids in (("g", "10\n"), ("g/a", "11\n12\n"), ("g/a/b", "")):
        with open(f"{u}/{d}/cgroup.procs", "w") as f:
            f.write(pids)
    with open(f"{u}/g/memory.events", "w") as f:
        f.write("low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n")
    with open(f"{u}/g/pids.events", "w") as f:
        f.write("max 9\n")
    with open(f"{u}/g/memory.current", "w") as f:
        f.write("4096\n")
    with open(f"{u}/g/cpu.stat", "w") as f:
        f.write("usage_usec 1234\nuser_usec 1000\n")
    with open(f"{u}/g/pids.current", "w") as f:
        f.write("3\n")
    pids = [h for h in v1mounts if "pids" in h.controllers][0].mountpoint
    os.makedirs(f"{pids}/g")
    with open(f"{pids}/g/cgroup.procs", "w") as f:
        f.write("13\n")
    g = Group("/g", v2mount + v1mounts)
    assert g.exists()
    assert g.procs() == {10, 11, 12, 13}
    assert g.events() == {"oom_kill": 1, "oom": 2, "memory_max": 7, "pids_max": 9}
    st = g.stats()
    assert st["memory_current"] == 4096 and st["cpu_usage_usec"] == 1234
    assert st["pids_current"] == 3 and st["memory_peak"] is None
    assert not Group("/nope", v2mount + v1mounts).exists()
    assert Group("/nope", v2mount + v1mounts).procs() == set()


def test_group_v1_events(v1mounts):
    mem = [h for h in v1mounts if "memory" in h.controllers][0].mountpoint
    os.makedirs(f"{mem}/g")
    with open(f"{mem}/g/memory.oom_control", "w") as f:
        f.write("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    with open(f"{mem}/g/memory.failcnt", "w") as f:
        f.write("2\n")
    assert Group("/g", v1mounts).events() == {"oom_kill": 4, "oom": 0, "memory_max": 2,
                                              "pids_max": 0}


def test_v1_writes_go_through_cgroupspy_at_the_opened_directory(tmp_path):
    d = tmp_path / "cg"
    d.mkdir()
    for name in ("cpu.shares", "cpuset.cpus", "pids.max"):
        (d / name).write_text("")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _write_v1(fd, "cpu.shares", "512")
        _write_v1(fd, "cpuset.cpus", "0-2,5")
        _write_v1(fd, "pids.max", "32")      # plain file: cgroupspy has no pids
    finally:
        os.close(fd)
    assert (d / "cpu.shares").read_text() == "512"
    assert (d / "cpuset.cpus").read_text() == "0-2,5"
    assert (d / "pids.max").read_text() == "32"


def test_open_path_refuses_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), tmp_path / "evil")
    fd = cgroups.open_path(str(tmp_path), "/real")
    os.close(fd)
    with pytest.raises(OSError) as e:
        cgroups.open_path(str(tmp_path), "/evil/x", create=True)
    assert e.value.errno == errno.ELOOP
    assert not (tmp_path / "real" / "x").exists()


def test_the_module_stays_lean():
    code = ("import sys, sandbox.cgroups; "
            "bad = [m for m in ('cgroupspy', 'attrs', 'psutil', 'sandbox.cgroups.group') "
            "if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
