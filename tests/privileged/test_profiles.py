"""Every shipped profile, run for real: the probe runs under it, sandbox.verify() finds no
difference between /proc and what the resolved spec implies, and what the profile
promises is checked on what the kernel shows (with a control where it could fail)."""

import json
import os
import uuid

import pytest

import sandbox
from sandbox import caps, cgroups, dynamicuser, mounts, profile
from sandbox.spawning import PIPE
from tests.conftest import ROOTLESS, SYSTEM_PYTHON, TARGET_ENV, needs_host_root

SHIPPED = ("talos", "default", "service", "network-service", "strict", "untrusted")


@pytest.fixture
def cg_root(cgroup_root):
    """A cgroup root of our own (conftest's cgroup_root: in the rootless run, under the
    delegated v2 subtree); profiles' cgroups land at cg_root/NAME.  Removed after."""
    return cgroup_root


def _needs_v1_limits(name: str) -> None:
    """A profile whose cgroup sets limits: here they live in cgroup v1, which only the
    host's root can write."""
    if name == "untrusted" and cgroups.mode() != "unified":
        needs_host_root("the profile's cgroup limits live in cgroup v1 here")


def test_every_shipped_profile_is_there_and_documented():
    assert set(SHIPPED) <= set(profile.names())
    for name in SHIPPED:
        path = profile._find(name)
        with open(path) as f:
            head = f.read().split("\ndescription")[0]
        assert head.startswith(f"# {name}:") and "# For:" in head, name


def run_under(name, probe, cg_root, *actions, **fields):
    """Spawn the probe under profile `name`; (report, verify() differences)."""
    spec = {"name": "probe", "argv": [SYSTEM_PYTHON, "-I", probe, *actions, "sleep:20"],
            "env": dict(TARGET_ENV), "profile": name, "cgroup": {"root": cg_root}, **fields}
    with sandbox.spawn(spec, stdout=PIPE) as p:
        report = json.loads(p.stdout.readline())
        diffs = sandbox.verify(p, seccomp=True, namespaces=True)
        host = sandbox.inspect(p.target_pid)
        # The kernel's own words too, not only what sandbox.inspect() made of them.
        with open(f"/proc/{p.target_pid}/status") as f:
            host["proc_status"] = dict(ln.rstrip("\n").split(":\t", 1) for ln in f
                                       if ":\t" in ln)
        with open(f"/proc/{p.target_pid}/mountinfo") as f:
            host["mountinfo"] = [ln.split() for ln in f]
        cg = cgroups.cgroup_of(p.target_pid)
        cg["v1"] = any(k and v.endswith(cg_root + "/probe") for k, v in cg.items())
        cg["limits"] = {}
        for f in ("pids/pids.max", "memory/memory.limit_in_bytes"):
            try:
                with open(f"/sys/fs/cgroup/{f.replace('/', cg_root + '/probe/')}") as fh:
                    cg["limits"][f] = fh.read().strip()
            except OSError:
                pass
        p.kill()                # (leaving `with` waits for it, as subprocess's)
    return report, diffs, host, cg, p.spec


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_runs_the_probe_and_verify_finds_no_difference(name, probe, cg_root):
    _needs_v1_limits(name)
    report, diffs, host, cg, spec = run_under(name, probe, cg_root)
    assert diffs == [], "\n".join(map(str, diffs))
    # The target ran in cg_root/probe in every hierarchy joined (the name is the path).
    assert spec.cgroup.full_path == f"{cg_root}/probe"
    assert f"{cg_root}/probe" in cg.values()
    bnd = caps.names(int(report["status"]["CapBnd"], 16))
    if name == "talos":
        # Exactly Talos: two caps gone from the bounding set, nothing else changed.
        assert "CAP_SYS_BOOT" not in bnd and "CAP_SYS_MODULE" not in bnd
        held = caps.names(caps.bounding_set())
        assert set(held) - {"CAP_SYS_BOOT", "CAP_SYS_MODULE"} == set(bnd)
        assert host["uids"]["real"] == 0 and report["status"]["Seccomp"] == "0"
        assert all(v["caller"] for v in host["namespaces"].values())
    if name == "default":
        assert host["uids"]["real"] == 0 and host["no_new_privs"]
        assert "CAP_SYS_MODULE" not in bnd and "CAP_SYS_ADMIN" in bnd
    if name in ("service", "network-service", "strict", "untrusted"):
        lo, hi = dynamicuser.DYNAMIC_RANGE                      # a uid of its own
        assert lo <= host["uids"]["real"] <= hi and host["no_new_privs"]
        assert host["dynamic_user"] == {"uid": host["uids"]["real"], "name": "probe"}
        assert report["status"]["Seccomp"] == "2"
        assert not host["namespaces"]["mnt"]["caller"]        # the private /tmp
    if name in ("service", "strict", "untrusted"):
        assert report["status"]["CapEff"] == report["status"]["CapBnd"] == "0" * 16
    if name == "network-service":
        assert caps.names(int(report["status"]["CapAmb"], 16)) == ["CAP_NET_BIND_SERVICE"]
    if name in ("strict", "untrusted"):
        assert report["hostname"] == "sandbox"
        for ns in ("pid", "net", "ipc", "uts", "mnt", "cgroup"):
            assert not host["namespaces"][ns]["caller"], ns
        assert report["pid"] == 2                               # a reaper is pid 1
    if name == "untrusted":
        assert not host["namespaces"]["user"]["caller"]
        assert report["status"]["Uid"].split() == ["0"] * 4     # root inside...
        if cg["v1"]:
            assert cg["limits"] == {"pids/pids.max": "64",
                                    "memory/memory.limit_in_bytes": str(256 << 20)}
    elif cg["v1"]:
        # Control: no limits unless the profile sets them.
        assert cg["limits"]["pids/pids.max"] == "max"
    assert cg["v1"] != ROOTLESS or cgroups.mode() == "unified"   # v1 exactly as root


def test_private_tmp_and_control(probe, cg_root, tmp_path):
    # A file the target makes in /tmp is not in the host's /tmp; without the profile
    # (control) it is.
    marker = f"/tmp/wrapperd-test-{uuid.uuid4().hex[:8]}"
    try:
        report, *_ = run_under("service", probe, cg_root, f"touch:{marker}")
        assert report["actions"][f"touch:{marker}"] == "ok" and not os.path.exists(marker)
        report, *_ = run_under("default", probe, cg_root, f"touch:{marker}")
        assert report["actions"][f"touch:{marker}"] == "ok" and os.path.exists(marker)
    finally:
        if os.path.exists(marker):
            os.unlink(marker)


def test_low_ports_only_with_network_service(probe, cg_root, low_port):
    needs_host_root("CAP_NET_BIND_SERVICE of a rootless container does not reach the "
                    "host's network namespace")
    bind = f"bind:{low_port}"
    assert run_under("network-service", probe, cg_root, bind)[0]["bind"] == "ok"
    assert run_under("service", probe, cg_root, bind)[0]["bind"] == "EACCES"


def test_strict_root_is_read_only_and_has_no_network(probe, cg_root, shared_dir):
    path = os.path.join(shared_dir, f"w-{uuid.uuid4().hex[:8]}")
    os.chmod(shared_dir, 0o1777)
    try:
        report, _d, host, *_ = run_under("strict", probe, cg_root, f"touch:{path}",
                                         "touch:/tmp/x", "run:/bin/cat,/proc/self/net/dev")
        assert report["actions"][f"touch:{path}"] == "EROFS"
        assert report["actions"]["touch:/tmp/x"] == "ok"              # private /tmp
        ifaces = [ln.split(":")[0].strip() for ln in report["run"]["stdout"].splitlines()[2:]]
        assert ifaces == ["lo"]                                       # no network
        # Control: under `service` with the path made writable, and the host's network.
        report, *_ = run_under("service", probe, cg_root, f"touch:{path}",
                               "run:/bin/cat,/proc/self/net/dev",
                               filesystem={"read_write_paths": [shared_dir]})
        assert report["actions"][f"touch:{path}"] == "ok"
        assert "lo:" in report["run"]["stdout"]       # the same reader works on the host's
        assert len(report["run"]["stdout"].splitlines()[2:]) == len(os.listdir(
            "/sys/class/net"))
    finally:
        os.chmod(shared_dir, 0o755)
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.parametrize("name", ["strict", "untrusted", "service", "default"])
def test_host_mounts_read_only_and_dev_shm_private(name, probe, cg_root, host_tmpfs,
                                                   host_shm):
    # A tmpfs of the host's and its /dev/shm are mounts below /: under `service` and up
    # (protect_system strict) the target (its dynamic id on the host) can write neither;
    # its /dev/shm is its own.  Both are mode 1777 and the /dev/shm file mode 0666, so only
    # the mount flags and the private /dev/shm stand in the way (the control shows it).
    _needs_v1_limits(name)
    victim, new = host_shm
    report, _d, host, *_ = run_under(name, probe, cg_root, f"touch:{host_tmpfs}/x",
                                     f"openw:{victim}", f"touch:{new}",
                                     # (the control has the host's /tmp: not written)
                                     *(["touch:/tmp/x"] if name != "default" else []))
    a = report["actions"]
    if name != "default":
        assert a["touch:/tmp/x"] == "ok"                        # its own /tmp, writable
    if name == "default":                   # the control: the host's mounts, writable
        assert a[f"touch:{host_tmpfs}/x"] == a[f"openw:{victim}"] == a[f"touch:{new}"] \
            == "ok"
        assert os.listdir(host_tmpfs) == ["x"] and os.path.exists(new)
        return
    assert a[f"touch:{host_tmpfs}/x"] == "EROFS"
    assert a[f"openw:{victim}"] == "ENOENT"             # not in the target's /dev/shm
    assert a[f"touch:{new}"] == "ok"                    # which takes its own files
    # Seen from the host: nothing written, nothing created.
    assert os.listdir(host_tmpfs) == [] and not os.path.lexists(new)
    with open(victim, "rb") as f:
        assert f.read() == b"host"
    # Every mount in the target's table is read-only but those the profile makes (and
    # a `dev` mount's device nodes, bound one by one: writing a device needs no rw mount).
    # (protect_proc's fresh /proc, private_tmp's /tmp and /var/tmp, private_devices'
    # minimal /dev -- but untrusted's: private_devices false, the host's read-only)
    own = {"/tmp", "/var/tmp", "/dev/shm", "/proc"}
    if name != "untrusted":
        own |= {"/dev", "/dev/pts"} | {f"/dev/{n}" for n in mounts.DEV_NODES}
    writable = {ln[4] for ln in host["mountinfo"] if "ro" not in ln[5].split(",")}
    assert writable == own
    # The /dev/shm on top (the last mounted there): a 64 MiB tmpfs, nosuid,nodev,noexec.
    shm = [ln for ln in host["mountinfo"] if ln[4] == "/dev/shm"][-1]
    sep = shm.index("-")
    assert shm[sep + 1] == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(shm[5].split(","))
    assert "size=65536k" in shm[sep + 3].split(",")


def test_untrusted_is_its_dynamic_id_seen_from_the_host(probe, cg_root):
    _needs_v1_limits("untrusted")
    r, diffs, host, *_ = run_under("untrusted", probe, cg_root)
    assert diffs == []
    uid = host["uids"]["real"]
    lo, hi = dynamicuser.DYNAMIC_RANGE
    assert lo <= uid <= hi
    assert host["uids"] == {k: uid for k in ("real", "effective", "saved", "fs")}
    assert host["gids"]["real"] == uid
    # What the host's /proc itself says, against the target's own view (root inside).
    assert host["proc_status"]["Uid"].split() == [str(uid)] * 4
    assert host["proc_status"]["Gid"].split()[0] == str(uid)
    assert r["status"]["Uid"].split() == ["0"] * 4


def test_spec_fields_beat_the_profile_for_real(probe, cg_root, low_port):
    needs_host_root("CAP_NET_BIND_SERVICE of a rootless container does not reach the "
                    "host's network namespace")
    # A spec on `service` that binds a low port itself: keep + its own uid.
    report, diffs, host, *_ = run_under(
        "service", probe, cg_root, f"bind:{low_port}", user={"uid": 4242},
        capabilities={"keep": ["CAP_NET_BIND_SERVICE"]})
    assert diffs == [] and report["bind"] == "ok" and host["uids"]["real"] == 4242
