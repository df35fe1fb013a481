"""The OCI bridge, checked side by side against runc: the same config.json runs the probe
through `runc run` and through wrapperd (imported with sandbox.oci), and what each probe
saw must agree.  A difference fails unless the comparison names the field and why.

Compared (`view`): the five capability sets, NoNewPrivs, Seccomp mode and filter count,
uids/gids/groups, every rlimit, oom_score_adj, which namespaces are new, whether the
probe is pid 1, hostname, the network interfaces it sees, the result of its actions
(a file create a seccomp rule refuses), and v1 memory/pids limits.

Named differences, not compared: the rootfs (runc pivots into the bundle's `rootfs`,
wrapperd keeps the host's root, so the bundle's `mounts` -- which only build that rootfs
-- are left out of wrapperd's run).  Nothing else.

crun: it refuses a hybrid cgroup hierarchy whose v2 half holds any controller (here:
hugetlb), before it runs anything.  There the crun test asserts exactly that refusal;
on a unified or plain-v1 host it runs the same comparisons as runc.
"""

import copy
import json
import os
import shutil
import subprocess
import uuid

import pytest

from sandbox import caps, cgroups
from sandbox.oci import export_spec, import_config
from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, needs_host_root, run_probe, skip_or_fail

RUNC = shutil.which("runc")
CRUN = shutil.which("crun")
HOST_DIRS = [d for d in ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
             if os.path.isdir(d) and not os.path.islink(d)]


@pytest.fixture(scope="module")
def bundle(shared_dir):
    needs_host_root("runc runs here as the host's root (rootless runc is another setup)")
    if RUNC is None:
        skip_or_fail("runc is not installed (scripts/install-deps installs it)")
    root = os.path.join(shared_dir, "rootfs")
    os.makedirs(root, exist_ok=True)
    for d in HOST_DIRS + [shared_dir, "/tmp", "/sys/fs/cgroup"]:
        os.makedirs(root + d, exist_ok=True)
    for link in ("/lib", "/lib64", "/bin", "/sbin"):
        if os.path.islink(link) and not os.path.lexists(root + link):
            os.symlink(os.readlink(link), root + link)
    return shared_dir


def base_config(probe, shared_dir, cg) -> dict:
    binds = [{"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}
             for d in HOST_DIRS + [shared_dir]]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0},
            "args": [SYSTEM_PYTHON, "-I", probe],
            "env": [f"{k}={v}" for k, v in TARGET_ENV.items()], "cwd": "/",
            "capabilities": {s: ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                             for s in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        # /dev a tmpfs, as `runc spec` has it: runc's device nodes land there, not in
        # the bundle's directory (where a later user-namespace run could not bind them).
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}] + binds,
        "linux": {"namespaces": [{"type": "mount"}], "cgroupsPath": cg},
    }


def run_runtime(runtime, bundle_dir, config) -> subprocess.CompletedProcess:
    cid = f"wrapperd-test-{uuid.uuid4().hex[:8]}"
    with open(os.path.join(bundle_dir, "config.json"), "w") as f:
        json.dump(config, f)
    try:
        return subprocess.run([runtime, "run", "--bundle", bundle_dir, cid],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=60)
    finally:
        subprocess.run([runtime, "delete", "--force", cid], capture_output=True)


def run_runc(bundle_dir, config) -> dict:
    p = run_runtime(RUNC, bundle_dir, config)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def run_ours(config) -> "tuple[dict, list]":
    spec, lost = import_config(config)
    d = spec.to_dict()
    # The bundle's mounts build runc's rootfs; wrapperd keeps the host's root instead.
    # The mount namespace stays (a new pid namespace gets its fresh /proc in it).
    d["mounts"] = []
    return run_probe(d), lost


def host_ns() -> dict:
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}


def view(report) -> dict:
    st = report["status"]
    own = host_ns()
    run = report.get("run")
    return {
        **{k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                              "Seccomp", "Seccomp_filters", "Uid", "Gid", "Groups")},
        "limits": report["limits"],
        "oom_score_adj": report["oom_score_adj"],
        "new_ns": sorted(n for n, v in report["ns"].items() if v != own.get(n)),
        "pid_is_1": report["pid"] == 1,
        "hostname": report["hostname"],
        "cglimits": report.get("cglimits"),
        "actions": report["actions"],
        # run:/bin/cat,/proc/net/dev -> the interfaces of its network namespace
        "ifaces": None if run is None else
        [ln.split(":")[0].strip() for ln in run["stdout"].splitlines()[2:]],
    }


@pytest.fixture
def cg():
    needs_host_root("the comparison uses cgroup v1 paths owned by the host's root")
    name = f"/wrapperd-test-oci-{uuid.uuid4().hex[:8]}"
    yield name
    # Every mounted hierarchy, named ones included: runc also creates its cgroup in
    # name=systemd, which sandbox.cgroups leaves alone.
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if " - cgroup" in line]
    for mnt in mounts:
        for dirpath, _d, _f in sorted(os.walk(mnt + name), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def both(bundle, probe, cg, mutate):
    config = base_config(probe, bundle, cg + "/c")
    mutate(config)
    ours, lost = run_ours(copy.deepcopy(config))
    theirs = run_runc(bundle, config)
    return view(theirs), view(ours), lost


CONFIGS = {
    "caps-only": lambda c: None,
    "non-root-ambient": lambda c: c["process"].update(
        user={"uid": 65534, "gid": 65534, "additionalGids": [4242]},
        capabilities={s: ["CAP_NET_BIND_SERVICE"] for s in
                      ("bounding", "effective", "permitted", "inheritable", "ambient")}),
    "rlimits-oom": lambda c: c["process"].update(
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024},
                 {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}], oomScoreAdj=321),
    "no-caps-no-nnp": lambda c: (c["process"].pop("capabilities"),
                                 c["process"].update(noNewPrivileges=False)),
}


def seccomp_config(c):
    # A deny-list in OCI form: creating files (open/openat with O_CREAT, arg 1/2, masked)
    # is EACCES, unshare/setns EPERM; every other call allowed; the x86 ABIs listed as
    # Docker does.  The probe's touch: shows the rule acting (EACCES), not just loaded.
    o_creat = os.O_CREAT
    c["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["openat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 2, "value": o_creat, "valueTwo": o_creat,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": o_creat, "valueTwo": o_creat,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["unshare", "setns"], "action": "SCMP_ACT_ERRNO"}]}
    c["process"]["args"].append(f"touch:/tmp/{TOUCHED}")


def full_namespaces(c):
    c["linux"]["namespaces"] = [{"type": t} for t in
                                ("pid", "ipc", "uts", "network", "mount", "cgroup")]
    c["hostname"] = "oci-full"
    c["process"]["args"].append("run:/bin/cat,/proc/net/dev")


def user_namespace(c):
    # Root inside, 100000 outside; runc needs a pid namespace to mount /proc in it.
    c["linux"]["namespaces"] = [{"type": t} for t in ("user", "pid", "mount")]
    c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]


TOUCHED = f"wrapperd-oci-{uuid.uuid4().hex[:8]}"
CONFIGS["seccomp"] = seccomp_config
CONFIGS["full-namespaces"] = full_namespaces
CONFIGS["user-namespace"] = user_namespace
# runc's own `runc spec` lists ambient caps without inheritable ones: the kernel refuses
# to raise them and runc ignores that; the import leaves them out (and says so).
CONFIGS["ambient-not-inheritable"] = lambda c: c["process"]["capabilities"].update(
    ambient=["CAP_KILL"])


@pytest.fixture
def touched(bundle):
    yield
    for p in (f"/tmp/{TOUCHED}", os.path.join(bundle, "rootfs", "tmp", TOUCHED)):
        if os.path.exists(p):
            os.unlink(p)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_runc_and_wrapperd_agree(bundle, probe, cg, touched, name):
    theirs, ours, lost = both(bundle, probe, cg, CONFIGS[name])
    assert ours == theirs
    # The import honoured everything but the rootfs (named above) -- and, for the one
    # config about it, the ambient caps the kernel refuses to runc too.
    rest = [x for x in lost if not x.startswith("root.path:")]
    assert rest == ([] if name != "ambient-not-inheritable" else
                    [x for x in rest if x.startswith("process.capabilities.ambient:")])
    assert len(rest) == (name == "ambient-not-inheritable")
    # Each config shows what it is about in what both probes saw (so the comparison
    # could have failed on it).
    if name == "seccomp":
        assert ours["Seccomp"] == "2" and ours["actions"] == {f"touch:/tmp/{TOUCHED}":
                                                              "EACCES"}
    if name == "full-namespaces":
        assert {"cgroup", "ipc", "mnt", "net", "pid", "uts"} <= set(ours["new_ns"])
        assert ours["hostname"] == "oci-full" and ours["ifaces"] == ["lo"]
        assert ours["pid_is_1"]
    if name == "user-namespace":
        assert "user" in ours["new_ns"] and ours["Uid"].split() == ["0"] * 4
    if name == "non-root-ambient":
        assert int(ours["CapAmb"], 16) == caps.mask(["CAP_NET_BIND_SERVICE"])


def test_seccomp_control_without_the_filter(bundle, probe, cg, touched):
    # Control for the seccomp config: the same touch succeeds under both without it.
    theirs, ours, _ = both(bundle, probe, cg, lambda c: c["process"]["args"].append(
        f"touch:/tmp/{TOUCHED}"))
    assert ours == theirs and ours["actions"] == {f"touch:/tmp/{TOUCHED}": "ok"}
    assert ours["Seccomp"] == "0"


def crun_refuses_here() -> bool:
    """crun (1.x) refuses a hybrid hierarchy whose v2 half has any controller."""
    if cgroups.mode() != "hybrid":
        return False
    for h in cgroups.hierarchies():
        if h.version == 2:
            with open(os.path.join(h.mountpoint, "cgroup.controllers")) as f:
                return bool(f.read().split())
    return False


def test_crun_refuses_hybrid_mode_or_agrees_with_wrapperd(bundle, probe, cg, touched):
    if CRUN is None:
        skip_or_fail("crun is not installed (scripts/install-deps installs it)")
    if crun_refuses_here():
        # Asserted, not skipped: crun says so and the probe never runs.
        p = run_runtime(CRUN, bundle, base_config(probe, bundle, cg + "/c"))
        assert p.returncode != 0 and p.stdout == b""
        assert b"hybrid mode not supported" in p.stderr, p.stderr
        return
    for name, mutate in sorted(CONFIGS.items()):
        config = base_config(probe, bundle, cg + "/c")
        mutate(config)
        ours, _lost = run_ours(copy.deepcopy(config))
        p = run_runtime(CRUN, bundle, config)
        assert p.returncode == 0, (name, p.stderr.decode())
        assert view(json.loads(p.stdout)) == view(ours), name


def test_cgroup_limits_agree(bundle, probe, cg):
    if cgroups.mode() not in ("hybrid", "legacy"):
        skip_or_fail("memory/pids limits are compared on cgroup v1 here")

    def mutate(c):
        c["linux"]["resources"] = {"memory": {"limit": 96 << 20}, "pids": {"limit": 48}}
        c["process"]["args"].append("cglimits")
        # the probe reads its own limits through the host's cgroup tree
        c["mounts"].append({"destination": "/sys/fs/cgroup", "type": "bind",
                            "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]})

    theirs, ours, lost = both(bundle, probe, cg, mutate)
    assert not [x for x in lost if "resources" in x]
    assert ours == theirs
    config = base_config(probe, bundle, cg + "/c")
    mutate(config)
    assert run_runc(bundle, config)["cglimits"] == {"memory": str(96 << 20), "pids": "48"}
    assert run_ours(config)[0]["cglimits"] == {"memory": str(96 << 20), "pids": "48"}


def test_import_lists_what_it_cannot_honour():
    config = {"process": {"args": ["/bin/true"], "terminal": True,
                          "apparmorProfile": "x"},
              "root": {"path": "rootfs"},
              "mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs"}],
              "linux": {"sysctl": {"net.ipv4.ip_forward": "1"},
                        "cgroupsPath": "system.slice:docker:abc"}}
    _spec, lost = import_config(config)
    text = "\n".join(lost)
    for field in ("process.terminal", "process.apparmorProfile", "root.path", "mounts[0]",
                  "linux.sysctl", "linux.cgroupsPath"):
        assert field in text


def test_export_round_trips_through_import(probe):
    spec, _ = import_config(base_config(probe, "/tmp", "/x/c"))
    again, _ = import_config(export_spec(spec))
    for k in ("argv", "env", "user", "capabilities", "no_new_privs", "rlimits", "cgroup"):
        assert getattr(again, k) == getattr(spec, k), k


def test_bounding_caps_match_masks(bundle, probe, cg):
    # Control: prove the comparison is sensitive -- different caps give different views.
    t1, o1, _ = both(bundle, probe, cg, CONFIGS["caps-only"])
    assert int(t1["CapBnd"], 16) == caps.mask(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
    t2, _o2, _ = both(bundle, probe, cg, CONFIGS["non-root-ambient"])
    assert t1 != t2
