"""The OCI bridge, checked side by side against runc: the same config.json runs the probe
through `runc run` and through wrapperd (imported with sandbox.oci), and what each probe
saw must agree.  A difference fails unless the comparison names the field and why."""

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
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}] + binds,
        "linux": {"namespaces": [{"type": "mount"}], "cgroupsPath": cg},
    }


def run_runc(bundle_dir, config) -> dict:
    cid = f"wrapperd-test-{uuid.uuid4().hex[:8]}"
    with open(os.path.join(bundle_dir, "config.json"), "w") as f:
        json.dump(config, f)
    p = subprocess.run([RUNC, "run", "--bundle", bundle_dir, cid], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
    subprocess.run([RUNC, "delete", "--force", cid], capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def run_ours(config) -> "tuple[dict, list]":
    spec, lost = import_config(config)
    d = spec.to_dict()
    # runc needs these to build its rootfs; wrapperd keeps the host's root instead.
    d["mounts"] = []
    if d.get("namespaces"):
        d["namespaces"]["mount"] = False
    return run_probe(d), lost


def host_ns() -> dict:
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}


def view(report) -> dict:
    st = report["status"]
    own = host_ns()
    return {
        **{k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                              "Seccomp", "Uid", "Gid", "Groups")},
        "limits": report["limits"],
        "oom_score_adj": report["oom_score_adj"],
        "new_ns": sorted(n for n, v in report["ns"].items() if v != own.get(n)
                         and n not in ("mnt",)),   # runc always needs a mount ns
        "hostname": report["hostname"],
        "cglimits": report.get("cglimits"),
    }


@pytest.fixture
def cg():
    needs_host_root("the comparison uses cgroup v1 paths owned by the host's root")
    name = f"/wrapperd-test-oci-{uuid.uuid4().hex[:8]}"
    yield name
    for h in cgroups.hierarchies():
        for dirpath, _d, _f in sorted(os.walk(h.mountpoint + name), key=lambda t: -len(t[0])):
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


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_runc_and_wrapperd_agree(bundle, probe, cg, name):
    theirs, ours, _lost = both(bundle, probe, cg, CONFIGS[name])
    assert ours == theirs


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
