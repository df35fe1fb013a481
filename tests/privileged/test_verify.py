"""sandbox.verify(): what the kernel shows equals what the spec implies.

For every shipped profile a real target runs under it; verify() reads its /proc state
and must find nothing to report.  The controls tamper with the expectation (one field
at a time) and must be reported, naming the field.
"""

import json

import attrs
import pytest

import sandbox
from sandbox import cgroups, profile
from sandbox.spawning import DEVNULL, PIPE, build_spec
from sandbox.spec import Capabilities, IdMap, Rlimit, User
from sandbox.verification import expected
from tests.conftest import ROOTLESS, TARGET_ENV, capmask, needs_host_root, probe_spec


def shipped_profiles() -> list:
    # Profiles carry a description; other TOML data in profiles/ (syscall groups) not.
    return [n for n in profile.names() if "description" in profile.load(n)]


EXTRAS = dict(oom_score_adj=300, nice=4, rlimits={"NOFILE": [512, 1024], "CORE": [0, 0]},
              env={**TARGET_ENV, "SERVICE": "x"})


@pytest.mark.parametrize("name", shipped_profiles())
def test_verify_is_empty_for_each_shipped_profile(name, cgroup_root):
    cg = {"path": f"{cgroup_root}/{name}"}
    if not ROOTLESS or cgroups.mode() == "unified":
        cg["pids_max"] = 16     # (in hybrid mode limits live in v1: not the rootless run's)
    if "cgroup" in profile.resolve(name) and ROOTLESS and cgroups.mode() != "unified":
        needs_host_root("the profile's cgroup limits live in cgroup v1 here")
    fields = dict(EXTRAS, cgroup=cg)
    with sandbox.spawn(["/bin/sleep", "30"], profile=name, stdout=DEVNULL,
                       **fields) as p:
        diffs = sandbox.verify(p, seccomp=True, namespaces=True)
        assert diffs == [], "\n".join(map(str, diffs))
        # Controls: each tampered expectation is reported, by field.
        spec = p.spec
        tampered = {
            "oom_score_adj": attrs.evolve(spec, oom_score_adj=301),
            "nice": attrs.evolve(spec, nice=5),
            "rlimits.NOFILE": attrs.evolve(spec, rlimits={**spec.rlimits,
                                                          "NOFILE": Rlimit(512, 1023)}),
            "env_keys": attrs.evolve(spec, env={**spec.env, "OTHER": "1"}),
            "no_new_privs": attrs.evolve(spec, no_new_privs=not spec.no_new_privs),
            "uids.real": build_spec(spec, user={"uid": 4242, "gid": 4242})
            if not isinstance(getattr(spec.namespaces, "user", None), dict) else
            # in its own user namespace (untrusted) only the map can move the host's
            # uid -- once the spec names a uid, not a dynamic one
            attrs.evolve(spec, user=User(uid=0, gid=0), namespaces=attrs.evolve(
                spec.namespaces, user={**spec.namespaces.user,
                                       "uid_map": (IdMap(0, 4242, 1),)})),
            "capabilities.bounding": attrs.evolve(spec, capabilities=Capabilities(
                drop=("CAP_SYS_BOOT", "CAP_SYS_MODULE", "CAP_CHOWN"))),
            "cgroup": build_spec(spec, cgroup={"path": f"{cgroup_root}/elsewhere",
                                               "create": False}),
            # (no filter at all: neither the spec's, nor those address_families, the
            # filesystem presets and a dynamic user bring)
            "seccomp": build_spec(spec, seccomp={"default_action": "errno:EPERM"})
            if spec.seccomp is None else attrs.evolve(
                spec, seccomp=None, address_families=None, filesystem=None,
                user=User(uid=0, gid=0) if spec.user is not None and spec.user.dynamic
                else spec.user),
        }
        for field, t in tampered.items():
            if field == "no_new_privs" and not spec.no_new_privs and _own_nnp():
                continue
            found = [str(d) for d in sandbox.verify(p, t, seccomp=True)]
            assert any(d.startswith(field) for d in found), (field, found)
        p.kill()                # (leaving `with` waits for it, as subprocess's)


def _own_nnp() -> bool:
    from sandbox import procfs
    return procfs.status("self")["NoNewPrivs"] == "1"


@pytest.mark.parametrize("name", shipped_profiles())
def test_expected_capability_sets_match_what_the_probe_reports(probe, name,
                                                              cgroup_root):
    # The probe reads its own /proc/self/status: an independent reader of the same sets.
    extra = {}
    if "cgroup" in profile.resolve(name):
        needs_host_root("the profile's cgroup limits need the host's cgroup tree")
        extra["cgroup"] = {"root": cgroup_root}      # at cgroup_root/probe, removed after
    spec = build_spec(probe_spec(probe, profile=name, name="probe", **extra))
    want = expected(spec)["capabilities"]
    with sandbox.spawn(spec, stdout=PIPE) as p:
        report = json.loads(p.stdout.read())
        assert p.wait(10) == 0
    from sandbox import caps
    for key, s in (("CapBnd", "bounding"), ("CapInh", "inheritable"), ("CapAmb", "ambient"),
                   ("CapPrm", "permitted"), ("CapEff", "effective")):
        assert caps.names(capmask(report, key)) == want[s], s


def test_verify_a_pid_needs_a_spec_and_sees_a_changed_process(probe):
    with sandbox.spawn(probe_spec(probe, "sleep:30", oom_score_adj=100),
                       stdout=PIPE) as p:
        json.loads(p.stdout.readline())
        with pytest.raises(TypeError):
            sandbox.verify(p.pid)
        assert sandbox.verify(p.pid, p.spec) == []
        # Control: change the live process behind verify's back.
        with open(f"/proc/{p.pid}/oom_score_adj", "w") as f:
            f.write("17")
        diffs = sandbox.verify(p)
        assert [d.field for d in diffs] == ["oom_score_adj"]
        p.kill()                # (leaving `with` waits for it, as subprocess's)
        assert diffs[0].actual == 17


MAPS = {"uid_map": [{"inside": 0, "outside": 100000, "count": 65536}],
        "gid_map": [{"inside": 0, "outside": 100000, "count": 65536}]}


@pytest.mark.parametrize("ns", [{"user": MAPS}, {"user": MAPS, "pid": True, "mount": True},
                                {"pid": True, "net": True, "ipc": True, "uts": True}])
def test_verify_in_new_namespaces(ns):
    if "user" in ns:
        needs_host_root("maps host ids 100000+, which a rootless container does not have")
    # With maps of its own, the spec names its uid (a dynamic user maps one id only).
    # Its host ids 100000+ leave wrapperd's own unmapped, which a minimal /dev needs, and
    # without a pid namespace of its own it cannot mount a fresh /proc: the host's stay.
    user = {"user": {"uid": 65534},
            "filesystem": {"private_devices": False, "protect_proc": "default"}} \
        if "user" in ns else {}
    p = sandbox.spawn(["/bin/sleep", "30"], profile="service", namespaces=ns,
                      stdout=DEVNULL, **user)
    with p:
        diffs = sandbox.verify(p, namespaces=True, seccomp=True)
        assert diffs == [], "\n".join(map(str, diffs))
        uids = sandbox.inspect(p.target_pid)["uids"]
        with open(f"/proc/{p.target_pid}/status") as f:       # the kernel's own view
            kernel_uids = next(ln for ln in f if ln.startswith("Uid:")).split()[1:]
        if "user" in ns:
            assert uids["real"] == 165534            # nobody inside, seen from the host
            assert kernel_uids == ["165534"] * 4
        else:
            assert len(set(kernel_uids)) == 1                   # the dynamic user's
            assert kernel_uids[0] == str(sandbox.inspect(p.target_pid)["dynamic_user"]["uid"])
        # Control: the same spec without the namespaces is told apart.
        plain = attrs.evolve(p.spec, namespaces=None)
        found = [d.field for d in sandbox.verify(p, plain, namespaces=True)]
        assert found and all(f.startswith(("namespaces.", "uids.", "gids.")) for f in found)
        p.kill()                # (leaving `with` waits for it, as subprocess's)


@pytest.mark.parametrize("fields", [
    {"address_families": ["AF_UNIX"]},                          # a filter, no `seccomp`
    {"filesystem": {"protect_kernel_logs": True, "private_tmp": True}},   # drops, denies
    {"user": {"uid": 65534}, "filesystem": {"protect_kernel_modules": True},
     "capabilities": {"keep": ["CAP_SYS_MODULE", "CAP_NET_BIND_SERVICE"]}},
])
def test_verify_knows_what_the_other_filters_and_the_presets_do(fields):
    # Without a seccomp section the target still has a filter, and the presets take
    # capabilities out: verify() expects both (a wrong expectation is a difference).
    p = sandbox.spawn(["/bin/sleep", "30"], stdout=DEVNULL, env=dict(TARGET_ENV), **fields)
    with p:
        assert sandbox.verify(p, seccomp=True) == []
        with open(f"/proc/{p.target_pid}/status") as f:
            st = dict(ln.rstrip("\n").split(":\t", 1) for ln in f if ":\t" in ln)
        assert st["Seccomp"] == "2"
        if "filesystem" in fields:                   # the kernel's view of the drops
            from sandbox import caps
            gone = caps.mask(["CAP_SYSLOG"] if "protect_kernel_logs" in fields["filesystem"]
                             else ["CAP_SYS_MODULE"])
            assert not int(st["CapBnd"], 16) & gone
            assert int(st["CapBnd"], 16) & caps.mask(["CAP_NET_BIND_SERVICE"])
        p.kill()                # (leaving `with` waits for it, as subprocess's)


def test_verify_expects_what_directories_and_listen_set_in_the_environment():
    needs_host_root("makes a runtime directory in the host's /run")
    import socket
    import uuid
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"wrapperd-test-verify-{uuid.uuid4().hex[:8]}"
    p = sandbox.spawn(["/bin/sleep", "30"], env=dict(TARGET_ENV), name=name, stdout=DEVNULL,
                      user={"uid": 65534, "gid": 65534}, directories={"runtime": [name]},
                      listen=[{"type": "stream", "address": f"127.0.0.1:{port}"}])
    with p:
        assert sandbox.verify(p) == []
        # Control: without them the environment it shows is a difference.
        bare = attrs.evolve(p.spec, directories=None, listen=())
        assert [d.field for d in sandbox.verify(p, bare)] == ["env_keys"]
        p.kill()
