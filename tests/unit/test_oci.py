"""The OCI bridge without running anything: what maps, what is listed, Spec.from_oci,
`sandbox oci import/export`, and export -> import round trips."""

import json

import pytest

from sandbox import Spec, cli, profile
from sandbox.errors import SpecError
from sandbox.oci import export_spec, import_config

# What `runc spec` (runc 1.1) writes, trimmed to the parts that matter here.
RUNC_SPEC = {
    "ociVersion": "1.0.2-dev",
    "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/",
                "capabilities": {c: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                                 for c in ("bounding", "effective", "permitted", "ambient")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True},
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount",
                                             "cgroup")],
        "maskedPaths": ["/proc/kcore", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]},
}


def lost_fields(lost):
    return sorted(line.split(":")[0] for line in lost)


def test_runc_spec_imports_and_lists_exactly_what_is_not_honoured():
    spec, lost = import_config(RUNC_SPEC)
    assert lost_fields(lost) == [
        "linux.resources.devices", "mounts[2] (/dev/pts)", "mounts[5] (/sys)",
        "mounts[6] (/sys/fs/cgroup)", "process.capabilities.ambient", "process.terminal",
        "root.path"]
    assert [x for x in lost if x.startswith("mounts[2]")] == [
        "mounts[2] (/dev/pts): option 'gid=5' is not supported"]
    assert spec.capabilities.keep == ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert spec.capabilities.ambient == ()           # not inheritable: the kernel refuses
    assert spec.readonly_root and spec.hostname == "runc"
    assert spec.namespaces.pid is True and spec.namespaces.as_pid_1
    assert spec.namespaces.net is True and spec.namespaces.user is False
    # /dev tmpfs is our `dev`; /dev/pts and /dev/shm go on top, with their options.
    assert [(m.type, m.destination) for m in spec.mounts] == [
        ("proc", "/proc"), ("dev", "/dev"), ("devpts", "/dev/pts"), ("tmpfs", "/dev/shm"),
        ("mqueue", "/dev/mqueue")]
    assert spec.masked_paths == ("/proc/kcore", "/sys/firmware")
    assert spec.readonly_paths == ("/proc/sys", "/proc/sysrq-trigger")
    assert spec.rlimits["NOFILE"].hard == 1024


def test_from_oci_refuses_naming_every_loss_and_takes_a_clean_config():
    with pytest.raises(SpecError) as e:
        Spec.from_oci(RUNC_SPEC)
    for field in ("root.path", "process.terminal", "linux.resources.devices", "mounts[5]"):
        assert field in str(e.value)
    clean = {"process": {"args": ["/bin/true"], "user": {"uid": 1000, "gid": 1000,
                                                         "additionalGids": [5],
                                                         "umask": 18}},
             "root": {"path": "/"},
             "linux": {"namespaces": [{"type": "user"}, {"type": "mount"}],
                       "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                       "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                       "cgroupsPath": "/svc",
                       "resources": {"memory": {"limit": 1 << 28, "swap": 1 << 29},
                                     "pids": {"limit": 10},
                                     "cpu": {"quota": 50000, "period": 100000,
                                             "shares": 1024, "cpus": "0"}}}}
    spec = Spec.from_oci(clean)
    assert spec.user.umask == "0022" and spec.user.groups == (5,)
    assert spec.capabilities.keep == ()                # no capabilities section: none
    assert spec.namespaces.user["uid_map"][0].outside == 1000
    cg = spec.cgroup
    assert (cg.path, cg.memory_max, cg.memory_swap_max, cg.pids_max, cg.cpu_max,
            cg.cpu_weight, cg.cpuset_cpus) == ("/svc", 1 << 28, 1 << 28, 10,
                                               "50000 100000", 100, "0")


def test_seccomp_goes_through_the_complete_importer():
    config = {"process": {"args": ["/bin/true"], "noNewPrivileges": True},
              "linux": {"seccomp": {
                  "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
                  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                  "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                  "syscalls": [{"names": ["read", "write", "exit_group", "nosuchcall"],
                                "action": "SCMP_ACT_ALLOW"},
                               {"names": ["ptrace"], "action": "SCMP_ACT_NOTIFY"}]}}}
    spec, lost = import_config(config)
    text = "\n".join(lost)
    assert "flags" in text and "nosuchcall" in text and "SCMP_ACT_NOTIFY" in text
    assert "allows the ABIs" not in text          # said, but honoured: not a loss
    assert spec.seccomp.default_action == "errno:38"
    assert spec.seccomp.syscalls[0].names == ("read", "write", "exit_group")


def test_other_losses_are_listed():
    config = {"process": {"args": ["/bin/true"], "apparmorProfile": "x",
                          "user": {"uid": 0, "gid": 0, "username": "root"}},
              "hooks": {"prestart": [{"path": "/bin/true"}]},
              "mounts": [{"destination": "/x", "type": "bind", "source": "/",
                          "options": ["rbind", "rslave", "nr_inodes=5"]}],
              "linux": {"namespaces": [{"type": "time"}, {"type": "mount"}],
                        "sysctl": {"net.ipv4.ip_forward": "1"},
                        "rootfsPropagation": "shared",
                        "resources": {"memory": {"limit": 1 << 20, "reservation": 5},
                                      "cpu": {"shares": 3}}}}
    _spec, lost = import_config(config)
    text = "\n".join(lost)
    for needle in ("process.apparmorProfile", "process.user.username", "hooks",
                   "'rslave'", "'nr_inodes=5'", "type 'time'", "linux.sysctl",
                   "rootfsPropagation", "memory.reservation", "cpu.shares",
                   "limits without linux.cgroupsPath"):
        assert needle in text, needle


@pytest.mark.parametrize("name", ["talos", "default", "service", "network-service",
                                  "strict", "untrusted"])
def test_export_then_import_round_trips_each_profile(name):
    spec = Spec.from_dict(profile.apply_profile(
        {"argv": ["/bin/true"], "name": "svc", "user": {"uid": 0 if name in (
            "talos", "default", "untrusted") else 65534, "gid": 0 if name in (
            "talos", "default", "untrusted") else 65534}}, name))
    notes: list = []
    config = export_spec(spec, notes)
    again, lost = import_config(json.loads(json.dumps(config)))
    # OCI has no `filesystem`: what comes back is what it expanded into.
    from sandbox import filesystem
    spec, _ = filesystem.expand(spec)
    for k in ("argv", "env", "user", "no_new_privs", "rlimits", "hostname",
              "masked_paths", "readonly_paths", "readonly_root", "oom_score_adj"):
        assert getattr(again, k) == getattr(spec, k), k
    assert [(m.type, m.destination) for m in again.mounts] == \
        [(m.type, m.destination) for m in spec.mounts]
    if spec.cgroup is not None:
        assert again.cgroup.full_path == spec.cgroup.full_path
        assert (again.cgroup.memory_max, again.cgroup.pids_max) == \
            (spec.cgroup.memory_max, spec.cgroup.pids_max)
    ns = spec.namespaces
    if ns is not None:
        for k in ("mount", "net", "ipc", "uts", "cgroup", "pid"):
            assert getattr(again.namespaces, k) == getattr(ns, k), k
        if isinstance(ns.user, dict):
            assert again.namespaces.user == ns.user
    if spec.seccomp is not None:
        assert again.seccomp.default_action is not None and again.seccomp.syscalls
    if ns is not None and ns.pid is True:
        assert any("pid 1" in n for n in notes)       # OCI has no reaper
    assert not [x for x in lost if x.startswith(("process.capabilities", "mounts",
                                                  "linux.namespaces"))]


def test_cli_import_and_strict(tmp_path, capsys):
    f = tmp_path / "config.json"
    f.write_text(json.dumps(RUNC_SPEC))
    assert cli.main(["oci", "import", str(f)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["hostname"] == "runc"
    lines = err.strip().splitlines()
    assert len(lines) == 7 and all(x.startswith("sandbox: not honoured: ") for x in lines)
    assert cli.main(["oci", "import", "--strict", str(f)]) == 125
    clean = dict(RUNC_SPEC, mounts=[], root={"path": "/"},
                 process=dict(RUNC_SPEC["process"], terminal=False),
                 linux=dict(RUNC_SPEC["linux"], resources={}))
    clean["process"]["capabilities"] = dict(clean["process"]["capabilities"],
                                            inheritable=["CAP_KILL"], ambient=["CAP_KILL"])
    f.write_text(json.dumps(clean))
    capsys.readouterr()
    assert cli.main(["oci", "import", "--strict", str(f)]) == 0, capsys.readouterr().err
    s = tmp_path / "spec.json"
    s.write_text(json.dumps({"argv": ["/bin/true"], "name": "x", "profile": "strict"}))
    capsys.readouterr()
    assert cli.main(["oci", "export", str(s)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["root"]["readonly"] is True and "pid 1" in err


# Every OCI mount option, as (type, destination, option): what must be carried and how
# it shows in our spec.  Anything else must be listed naming the option.
CARRIED = [
    ("tmpfs", "/dev/shm", "noexec", lambda m: "noexec" in m.options),
    ("tmpfs", "/dev/shm", "nosuid", lambda m: "nosuid" in m.options),
    ("tmpfs", "/dev/shm", "nodev", lambda m: "nodev" in m.options),
    ("tmpfs", "/dev/shm", "size=65536k", lambda m: m.size == 65536 << 10),
    ("tmpfs", "/dev/shm", "mode=1777", lambda m: m.mode == "1777"),
    ("tmpfs", "/dev", "size=65536k", lambda m: m.type == "dev" and m.size == 65536 << 10),
    ("tmpfs", "/dev", "mode=700", lambda m: m.type == "dev" and m.mode == "700"),
    ("tmpfs", "/dev", "strictatime", lambda m: "strictatime" in m.options),
    ("tmpfs", "/tmp", "strictatime", lambda m: "strictatime" in m.options),
    ("devpts", "/dev/pts", "noexec", lambda m: "noexec" in m.options),
    ("devpts", "/dev/pts", "ro", lambda m: "ro" in m.options),
    ("mqueue", "/dev/mqueue", "nodev", lambda m: "nodev" in m.options),
    ("bind", "/mnt", "ro", lambda m: "ro" in m.options),
    ("bind", "/mnt", "rbind", lambda m: "recursive" in m.options),
    ("tmpfs", "/tmp", "exec", lambda m: "noexec" not in m.options),
    ("tmpfs", "/tmp", "relatime", lambda m: "strictatime" not in m.options),
]
NOT_CARRIED = [
    ("devpts", "/dev/pts", "gid=5"), ("devpts", "/dev/pts", "mode=0600"),
    ("devpts", "/dev/pts", "ptmxmode=000"), ("tmpfs", "/dev", "newinstance"),
    ("tmpfs", "/dev", "gid=5"), ("tmpfs", "/tmp", "uid=1000"),
    ("tmpfs", "/tmp", "nr_inodes=10"), ("bind", "/mnt", "strictatime"),
    ("bind", "/mnt", "rslave"), ("proc", "/proc", "hidepid=2"),
    ("mqueue", "/dev/mqueue", "size=1k"), ("proc", "/proc", "mode=700"),
    ("proc", "/proc", "exec"), ("devpts", "/dev/pts", "suid"), ("tmpfs", "/dev", "dev"),
    ("bind", "/mnt", "exec"), ("bind", "/mnt", "relatime"),
]


def _with_dev(t, dest, opt):
    m = {"destination": dest, "type": t, "source": "/" if t == "bind" else t,
         "options": [opt] + (["bind"] if t == "bind" else [])}
    mounts = [m]
    if dest.startswith("/dev/"):
        mounts.insert(0, {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"})
    return {"process": {"args": ["/bin/true"]}, "mounts": mounts,
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}}


@pytest.mark.parametrize("t,dest,opt,shows", CARRIED)
def test_a_carried_mount_option_reaches_the_spec(t, dest, opt, shows):
    spec, lost = import_config(_with_dev(t, dest, opt))
    assert lost == []
    mine = [m for m in spec.mounts if m.destination == dest]
    assert len(mine) == 1 and shows(mine[0]), mine


@pytest.mark.parametrize("t,dest,opt", NOT_CARRIED)
def test_a_mount_option_not_carried_is_listed_by_name(t, dest, opt, tmp_path, capsys):
    _spec, lost = import_config(_with_dev(t, dest, opt))
    assert any(repr(opt) in x and dest in x for x in lost), lost
    f = tmp_path / "config.json"
    f.write_text(json.dumps(_with_dev(t, dest, opt)))
    assert cli.main(["oci", "import", "--strict", str(f)]) == 125
    assert repr(opt) in capsys.readouterr().err


def test_strict_passes_a_runc_dev_shm_and_mqueue_only_when_carried(tmp_path, capsys):
    # runc's /dev, /dev/shm and /dev/mqueue: everything is carried, so --strict passes
    # and the spec says noexec and size for /dev/shm, size for /dev.
    config = dict(_with_dev("tmpfs", "/dev/shm", "noexec"),
                  mounts=[RUNC_SPEC["mounts"][i] for i in (1, 3, 4)])
    f = tmp_path / "config.json"
    f.write_text(json.dumps(config))
    assert cli.main(["oci", "import", "--strict", str(f)]) == 0, capsys.readouterr().err
    mounts = {m["destination"]: m for m in json.loads(capsys.readouterr().out)["mounts"]}
    assert mounts["/dev"]["size"] == 65536 << 10 and mounts["/dev"]["mode"] == "755"
    assert "strictatime" in mounts["/dev"]["options"]
    shm = mounts["/dev/shm"]
    assert {"noexec", "nosuid", "nodev"} <= set(shm["options"])
    assert (shm["size"], shm["mode"]) == (65536 << 10, "1777")


def test_export_resolves_user_and_group_names_as_prepare_would():
    """OCI holds numbers: names are resolved in this host's database (a user's primary
    group when no gid is given) and the resolution is listed."""
    import grp
    import pwd
    nobody = pwd.getpwnam("nobody")
    root_group = grp.getgrgid(0).gr_name
    notes: list = []
    config = export_spec(Spec.from_dict({"argv": ["/bin/true"], "user": {
        "uid": "nobody", "groups": [root_group]}}), notes)
    assert config["process"]["user"] == {"uid": nobody.pw_uid, "gid": nobody.pw_gid,
                                         "additionalGids": [0]}
    assert any(n.startswith("user: OCI holds numeric ids only") for n in notes)
    notes = []
    config = export_spec(Spec.from_dict({"argv": ["/bin/true"], "user": {
        "uid": 65534, "gid": 65534}}), notes)
    assert config["process"]["user"]["uid"] == 65534
    assert not any(n.startswith("user:") for n in notes)    # numbers: nothing resolved
