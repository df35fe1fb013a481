"""The exposure score: bounds, bands, each check explained, monotonic in what it measures."""

import json

import pytest

from sandbox import Spec, cli, exposure, profile
from sandbox.spawning import build_spec


def spec(**fields) -> Spec:
    return build_spec({"argv": ["/usr/bin/svc"], **fields})


CONFINED = dict(
    user={"uid": 65534, "gid": 65534, "umask": "0077"}, capabilities={"keep": []},
    no_new_privs=True,
    seccomp={"default_action": "errno:EPERM", "architectures": ["native"]},
    namespaces={k: True for k in ("user", "mount", "pid", "net", "ipc", "uts", "cgroup")},
    cgroup={"path": "/svc", "memory_max": 1 << 28, "pids_max": 64},
    filesystem={"protect_system": "strict", "protect_home": True, "private_tmp": True,
                "private_devices": True, "protect_kernel_tunables": True,
                "protect_kernel_modules": True, "protect_kernel_logs": True,
                "protect_control_groups": True, "protect_proc": "invisible",
                "proc_subset": "pid"},
    address_families=[], rlimits={"RTPRIO": [0, 0]},
)


def test_an_unconfined_root_spec_is_near_10_and_a_confined_one_0():
    worst = exposure.score(spec(no_new_privs=False))
    assert worst.score == 10.0 and worst.band == "DANGEROUS"
    best = exposure.score(spec(**CONFINED))
    assert best.score == 0.0 and best.band == "PERFECT"
    assert all(c.exposure == 0 for c in best.checks)


@pytest.mark.parametrize("change", [
    dict(no_new_privs=False),
    dict(user={"uid": 0}),
    dict(capabilities={"keep": ["CAP_SYS_ADMIN"]}),
    dict(capabilities={"keep": ["CAP_NET_RAW"]}),
    dict(seccomp=None),
    dict(seccomp={"default_action": "errno:EPERM", "architectures": ["x86_64", "x86"]}),
    dict(namespaces={"net": True}),
    dict(cgroup={"path": "/svc", "memory_max": 1 << 28}),
    dict(cgroup=None),
    dict(user={"uid": 65534, "gid": 0, "umask": "0077"}),
    dict(user={"uid": 65534, "gid": 65534, "umask": "0022"}),
    dict(filesystem={"protect_system": "full"}),
    dict(filesystem={"protect_home": "read-only"}),
    dict(filesystem={"private_tmp": True}),
    dict(filesystem={"protect_proc": "noaccess", "proc_subset": "pid"}),
])
def test_each_loosening_raises_the_score(change):
    base = exposure.score(spec(**CONFINED)).score
    loose = {**CONFINED, **change}
    loose = {k: v for k, v in loose.items() if v is not None}
    if "filesystem" in change:   # one setting loosened, the rest as confined as before
        loose["filesystem"] = {**CONFINED["filesystem"], "protect_system": "strict",
                               "protect_home": True, "private_tmp": True,
                               "protect_proc": "invisible", "proc_subset": "pid"}
        for k in ("protect_system", "protect_home", "protect_proc", "proc_subset"):
            if k in change["filesystem"]:
                loose["filesystem"][k] = change["filesystem"][k]
        if "private_tmp" in change["filesystem"]:    # the tmpfs at /tmp, /var/tmp only
            loose["filesystem"]["private_tmp"] = False
    assert exposure.score(spec(**loose)).score > base, change


def test_benign_caps_do_not_count():
    r = exposure.score(spec(**{**CONFINED, "capabilities": {"keep": ["CAP_NET_BIND_SERVICE"]}}))
    assert r.score == 0.0


def test_every_check_explains_itself_in_one_line():
    for s in (spec(), spec(**CONFINED), spec(profile="service")):
        r = exposure.score(s)
        names = [c.name for c in r.checks]
        assert len(names) == len(set(names))
        for c in r.checks:
            # (weight 0: counted, not scored -- Landlock, which systemd does not score)
            assert (c.weight > 0 or c.name == "landlock") and 0.0 <= c.exposure <= 1.0
            assert c.explanation and "\n" not in c.explanation
        text = r.format()
        assert text.splitlines()[-1].endswith(f"{r.score:.1f} {r.band}")
        assert json.loads(json.dumps(r.to_dict()))["score"] == r.score


def test_shipped_profiles_are_ordered_by_confinement():
    # a name: profiles with cgroup limits take the cgroup path from it
    score = {n: exposure.score(spec(profile=n, name="svc")).score for n in profile.names()
             if "description" in profile.load(n)}
    assert score["talos"] > score["default"] > score["service"]
    assert score["service"] <= 5.0


def test_bands():
    assert [exposure.band(x) for x in (0.0, 0.05, 0.5, 3.0, 6.0, 8.0, 9.5, 10.0)] == \
        ["PERFECT", "PERFECT", "SAFE", "OK", "MEDIUM", "EXPOSED", "UNSAFE", "DANGEROUS"]


def _info(uid=65534, caps=(), nnp=True, seccomp="filter", filters=1, host_ns=False):
    ns = {n: {"id": f"{n}:[1]", "host": host_ns, "caller": host_ns}
          for n in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")}
    return {"pid": 42, "name": "svc",
            "uids": dict.fromkeys(("real", "effective", "saved", "fs"), uid),
            "gids": dict.fromkeys(("real", "effective", "saved", "fs"), uid),
            "groups": [], "no_new_privs": nnp, "seccomp": seccomp,
            "seccomp_filters": filters, "namespaces": ns, "cgroup": [],
            "capabilities": {k: list(caps) for k in ("inheritable", "permitted",
                                                     "effective", "bounding", "ambient")}}


def test_live_process_facts():
    confined = exposure.score(_info())
    exposed = exposure.score(_info(uid=0, caps=["CAP_SYS_ADMIN"], nnp=False,
                                   seccomp="disabled", filters=0, host_ns=True))
    assert confined.score < 5.0 < exposed.score
    by = {c.name: c for c in confined.checks}
    # What /proc cannot show counts half, and says so: the mount table of a dict (not
    # read unless asked), what a loaded filter denies, the socket families it allows.
    for name in ("protect_system", "seccomp", "af_packet", "ns_create", "keyring"):
        assert by[name].exposure == 0.5 and "/proc" in by[name].explanation, name
    # No filter at all: known, every family and syscall group reachable.
    exp = {c.name: c.exposure for c in exposed.checks}
    assert exp["seccomp"] == exp["af_packet"] == exp["ns_create"] == 1.0
    # /proc cannot show the filter's architecture lock: half exposed, and it says so.
    assert by["seccomp_arch"].exposure == 0.5 and "/proc" in by["seccomp_arch"].explanation
    # pid 1 unreadable: "host" is None and the caller's namespaces decide.
    info = _info()
    for v in info["namespaces"].values():
        v["host"], v["caller"] = None, True
    assert {c.name: c.exposure for c in exposure.score(info).checks}["ns_net"] == 1.0


def test_cli_threshold_gates(tmp_path, capsys):
    assert cli.main(["exposure", "--profile", "talos", "--threshold", "5"]) == 1
    assert "above the threshold" in capsys.readouterr().err
    assert cli.main(["exposure", "--profile", "service", "--threshold", "5"]) == 0
    capsys.readouterr()
    f = tmp_path / "spec.json"
    f.write_text(json.dumps({"argv": ["/bin/x"], **CONFINED}))
    assert cli.main(["exposure", str(f), "--json", "--threshold", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == 0.0 and out["band"] == "PERFECT"
    assert cli.main(["exposure"]) == 125


def test_cli_inspect_shows_the_score_and_gates(capsys):
    import os
    assert cli.main(["inspect", str(os.getpid()), "--threshold", "10"]) == 0
    out = capsys.readouterr().out
    assert "exposure:" in out and "overall exposure of pid" in out
    assert cli.main(["inspect", str(os.getpid()), "--json", "--threshold", "-1"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert 0.0 <= info["exposure"]["score"] <= 10.0
    assert info["exposure"]["band"] == exposure.band(info["exposure"]["score"])


def test_a_user_namespace_scopes_caps_and_root_is_judged_outside():
    maps = {"uid_map": [{"inside": 0, "outside": 100000, "count": 65536}],
            "gid_map": [{"inside": 0, "outside": 100000, "count": 65536}]}
    host = exposure.score(spec())
    own = exposure.score(spec(namespaces={"user": True}))
    mapped = exposure.score(spec(namespaces={"user": maps}))
    assert host.score > own.score > mapped.score
    by = {c.name: c for c in mapped.checks}
    assert by["root"].exposure == 0.0 and "100000 outside" in by["root"].explanation
    assert 0 < by["cap_sys_admin"].exposure < 1
    assert "own user namespace" in by["cap_sys_admin"].explanation


def test_nobody_is_penalised_as_shared_and_a_dynamic_uid_is_not():
    # systemd-analyze's UserOrDynamicUser: User=nobody is shared with every other such
    # service (each can read, ptrace and kill the others); DynamicUser= is not.
    nobody = exposure.score(spec(profile="service", name="svc", user={"uid": 65534}))
    dynamic = exposure.score(spec(profile="service", name="svc"))
    other = exposure.score(spec(profile="service", name="svc", user={"uid": 4242}))
    # (a dynamic user's filter, restrict_suid_sgid, also refuses setuid files, user
    # namespaces and keyrings: a fixed uid of its own scores between the two)
    assert nobody.score > other.score >= dynamic.score
    by = {r: {c.name: c for c in x.checks} for r, x in
          (("nobody", nobody), ("dynamic", dynamic))}
    assert by["nobody"]["uid_shared"].exposure == 1.0
    assert "shared" in by["nobody"]["uid_shared"].explanation
    assert by["dynamic"]["uid_shared"].exposure == 0.0
    assert "dynamic" in by["dynamic"]["uid_shared"].explanation
    # In a user namespace, judged by the id the host sees: nobody outside is shared.
    maps = {k: [{"inside": 0, "outside": 65534, "count": 1}] for k in ("uid_map", "gid_map")}
    mapped = exposure.score(spec(user={"uid": 0}, namespaces={"user": maps}))
    assert {c.name: c.exposure for c in mapped.checks}["uid_shared"] == 1.0
    # Live: what /proc shows.
    live = {c.name: c.exposure for c in exposure.score(_info()).checks}
    assert live["uid_shared"] == 1.0
    info = dict(_info(uid=61200), dynamic_user={"uid": 61200, "name": "svc"})
    assert {c.name: c.exposure for c in exposure.score(info).checks}["uid_shared"] == 0.0
    assert exposure.score(info).score < exposure.score(_info()).score


@pytest.mark.parametrize("name", profile.names())
def test_every_profile_alone_can_be_scored(name, capsys):
    """`sandbox exposure --profile NAME` scores the profile as `profiles show` resolves
    it (named after itself), so a profile with cgroup limits has a cgroup path."""
    assert cli.main(["exposure", "--profile", name, "--json"]) == 0, \
        capsys.readouterr().err
    assert 0.0 <= json.loads(capsys.readouterr().out)["score"] <= 10.0


def test_filesystem_settings_and_address_families_are_modelled():
    """systemd's filesystem settings as sandbox.filesystem.expand() makes them, and
    RestrictAddressFamilies= as the compiled filter answers socket(2)."""
    base = {"profile": "service", "name": "svc"}
    by = {c.name: c for c in exposure.score(spec(**base)).checks}
    for name in ("protect_system", "protect_home", "private_tmp", "private_devices",
                 "protect_kernel_tunables", "protect_kernel_modules",
                 "protect_kernel_logs", "protect_control_groups", "protect_proc",
                 "af_packet", "af_netlink", "af_other"):
        assert by[name].exposure == 0.0, by[name]
    assert by["af_inet"].exposure == 1.0 and "AF_INET" in by["af_inet"].explanation
    assert by["proc_subset"].exposure == 1.0         # strict sets it, service does not
    plain = {c.name: c.exposure for c in exposure.score(spec(user={"uid": 4242})).checks}
    assert all(plain[n] == 1.0 for n in ("protect_system", "private_tmp", "af_packet",
                                         "protect_proc", "seccomp", "ns_create"))
    full = {c.name: c.exposure for c in exposure.score(spec(
        user={"uid": 4242}, filesystem={"protect_system": "full",
                                        "protect_home": "read-only"})).checks}
    assert full["protect_system"] == 0.3 and full["protect_home"] == 0.5
    wide = exposure.score(spec(**base, address_families=["AF_UNIX", "AF_INET", "AF_INET6",
                                                           "AF_PACKET"]))
    assert {c.name: c.exposure for c in wide.checks}["af_packet"] == 1.0
    assert wide.score > exposure.score(spec(**base)).score


def test_a_live_process_is_judged_by_its_mount_table():
    import os
    r = exposure.of_process(os.getpid())
    by = {c.name: c for c in r.checks}
    for name in exposure.FS_WEIGHTS:
        assert "cannot be read" not in by[name].explanation, by[name]
    # read_proc=False (a dict from elsewhere): the mount table is not read.
    from sandbox import inspect
    info = inspect(os.getpid())
    unread = {c.name: c for c in exposure.of_process(info).checks}
    assert unread["private_tmp"].exposure == 0.5


def test_scores_round_up_as_systemds():
    checks = (exposure.Check("a", 999, 0.0, "x"), exposure.Check("b", 1, 1.0, "y"))
    assert exposure.Report("s", checks).score == 0.1     # 0.01 rounds up, not down


def test_landlock_is_counted_not_scored():
    plain = exposure.score(spec(profile="service"))
    ll = exposure.score(spec(profile="service", landlock={
        "fs": [{"path": "/usr", "access": ["read", "execute"]}], "net": {"bind": [8080]},
        "scope": ["signal"]}))
    assert ll.score == plain.score
    c = {c.name: c for c in ll.checks}["landlock"]
    assert c.weight == 0 and "files: 1 rule" in c.explanation and "signal" in c.explanation
    assert {c.name: c for c in plain.checks}["landlock"].explanation == "no Landlock domain"
