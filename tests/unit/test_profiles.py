"""Profiles compose: extends, the list rules, keep/drop, the spec on top, cgroup paths."""

import json
import subprocess

import pytest

from sandbox import Spec, cli, profile
from sandbox.errors import SpecError
from tests.conftest import run_wrapperd, wrapperd_cmd


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """Write profiles into a directory searched first; returns a writer."""
    orig = profile.search_path()
    monkeypatch.setattr(profile, "search_path", lambda: [str(tmp_path)] + orig)

    def write(name, text):
        (tmp_path / f"{name}.toml").write_text(text)
    return write


def test_every_shipped_profile_resolves_to_a_valid_spec():
    for name in ("talos", "default", "service", "network-service", "strict", "untrusted"):
        d = profile.apply_profile({"argv": ["/bin/true"], "name": "svc"}, name)
        spec = Spec.from_dict(d)
        assert spec.profile == name


def test_talos_is_exactly_two_dropped_caps():
    assert profile.resolve("talos") == {
        "no_new_privs": False, "capabilities": {"drop": ["CAP_SYS_BOOT", "CAP_SYS_MODULE"]}}


def test_chain_and_inherited_fields():
    assert profile.chain("untrusted") == ["service", "strict", "untrusted"]
    r = profile.resolve("untrusted")
    assert r["user"] == {"dynamic": True, "umask": "0027"}   # service's umask
    assert r["seccomp"] == {"profile": "strict"}                               # strict's
    assert r["rlimits"] == {"CORE": [0, 0], "NOFILE": [256, 256], "MEMLOCK": [65536, 65536],
                            "MSGQUEUE": [0, 0]}
    assert [m["destination"] for m in r["mounts"]] == ["/tmp", "/dev/shm"]  # merge: replace
    assert [m["destination"] for m in profile.resolve("strict")["mounts"]] == \
        ["/tmp", "/var/tmp", "/dev/shm"]          # (its /dev: filesystem.private_devices)
    n = profile.resolve("network-service")
    assert n["capabilities"] == {"keep": ["CAP_NET_BIND_SERVICE"],
                                 "ambient": ["CAP_NET_BIND_SERVICE"]}


def test_list_rules(layers):
    layers("base", 'description = "b"\nmasked_paths = ["/a"]\nsecurebits = ["noroot"]\n'
           'argv = ["/bin/a"]\n[capabilities]\ndrop = ["CAP_CHOWN"]\n'
           '[[mounts]]\ntype = "tmpfs"\ndestination = "/tmp"\n'
           '[[mounts]]\ntype = "tmpfs"\ndestination = "/run"\n')
    layers("top", 'description = "t"\nextends = "base"\nmasked_paths = ["/b", "/a"]\n'
           'argv = ["/bin/b"]\n[capabilities]\ndrop = ["cap_kill", "CAP_CHOWN"]\n'
           '[[mounts]]\ntype = "tmpfs"\ndestination = "/tmp"\nsize = 4096\n'
           '[[mounts]]\ntype = "dev"\ndestination = "/dev"\n')
    r = profile.resolve("top")
    assert r["masked_paths"] == ["/a", "/b"]                           # union
    assert r["argv"] == ["/bin/b"]                                     # replace
    assert r["capabilities"]["drop"] == ["CAP_CHOWN", "CAP_KILL"]      # union, normalized
    assert [(m["destination"], m.get("size")) for m in r["mounts"]] == [
        ("/tmp", 4096), ("/run", None), ("/dev", None)]                # keyed, in place
    layers("decl", 'description = "d"\nextends = "base"\nmasked_paths = ["/b"]\n'
           '[merge]\nmasked_paths = "replace"\n"capabilities.drop" = "replace"\n'
           'mounts = "append"\n[capabilities]\ndrop = ["CAP_KILL"]\n'
           '[[mounts]]\ntype = "tmpfs"\ndestination = "/tmp"\n')
    r = profile.resolve("decl")
    assert r["masked_paths"] == ["/b"] and r["capabilities"]["drop"] == ["CAP_KILL"]
    assert [m["destination"] for m in r["mounts"]] == ["/tmp", "/run", "/tmp"]


def test_declared_rules_are_checked(layers):
    layers("bad", 'description = "x"\n[merge]\nargv = "shuffle"\n')
    with pytest.raises(SpecError, match="unknown rule 'shuffle'"):
        profile.resolve("bad")
    layers("bad2", 'description = "x"\n[merge]\nargv = "keyed"\n')
    with pytest.raises(SpecError, match="'keyed' only applies to mounts"):
        profile.resolve("bad2")
    layers("loop1", 'extends = "loop2"\n')
    layers("loop2", 'extends = "loop1"\n')
    with pytest.raises(SpecError, match="extends itself"):
        profile.resolve("loop1")


def test_keep_and_drop_compose_never_looser():
    # A drop over a kept list removes from it; a keep replaces; ambient follows.
    d = profile.apply_profile({"capabilities": {"drop": ["CAP_NET_BIND_SERVICE"]}},
                              "network-service")
    assert d["capabilities"] == {"keep": [], "ambient": []}
    d = profile.apply_profile({"capabilities": {"keep": ["CAP_CHOWN"]}}, "default")
    assert d["capabilities"] == {"keep": ["CAP_CHOWN"]}
    d = profile.apply_profile({"capabilities": {"drop": ["CAP_SYS_ADMIN"]}}, "talos")
    assert d["capabilities"]["drop"] == ["CAP_SYS_BOOT", "CAP_SYS_MODULE", "CAP_SYS_ADMIN"]
    with pytest.raises(SpecError, match="either"):
        profile.apply_profile({"capabilities": {"drop": ["CAP_KILL"], "keep": []}}, "talos")


def test_spec_beats_the_profile_and_null_is_unset():
    d = profile.apply_profile({"no_new_privs": True, "hostname": "web", "seccomp": None,
                               "user": {"uid": 1000}, "readonly_root": False,
                               "filesystem": {"protect_system": True},
                               "mounts": [{"type": "bind", "source": "/srv",
                                           "destination": "/srv"}]}, "strict")
    assert d["no_new_privs"] is True and d["hostname"] == "web"
    assert d["readonly_root"] is False                   # a scalar the spec sets wins
    assert d["filesystem"]["protect_system"] is True     # ... also inside an object,
    assert d["filesystem"]["proc_subset"] == "pid"       # whose other keys stay
    assert d["seccomp"] == {"profile": "strict"}         # null: the profile's stays
    assert d["user"]["uid"] == 1000 and d["user"]["umask"] == "0027"
    assert [m["destination"] for m in d["mounts"]] == \
        ["/tmp", "/var/tmp", "/dev/shm", "/srv"]
    assert d["masked_paths"] == profile.resolve("strict")["masked_paths"]


def test_profile_cgroup_takes_its_path_from_the_name():
    d = profile.apply_profile({"name": "web", "cgroup": {"root": "/t"}}, "untrusted")
    spec = Spec.from_dict(d)
    assert spec.cgroup.full_path == "/t/web" and spec.cgroup.pids_max == 64
    d = profile.apply_profile({"cgroup": {"path": "/x/y"}}, "untrusted")
    assert d["cgroup"]["path"] == "/x/y" and d["cgroup"]["memory_max"] == 256 << 20
    with pytest.raises(SpecError) as e:
        profile.apply_profile({"argv": ["/bin/true"]}, "untrusted")
    assert e.value.field == "cgroup.path" if hasattr(e.value, "field") else True
    assert "cgroup.path" in str(e.value)


def test_dry_run_shows_the_resolved_spec():
    p = run_wrapperd({"argv": ["/bin/true"], "name": "job", "profile": "untrusted"},
                     "--dry-run", "--dropped-caps", "CAP_KILL")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["profile"] == "untrusted" and d["readonly_root"] is True
    assert d["namespaces"]["user"]["uid_map"] == [{"inside": 0, "outside": 65534, "count": 1}]
    assert d["cgroup"]["path"] == "job" and d["cgroup"]["pids_max"] == 64
    assert d["capabilities"]["keep"] == []                  # drop over keep: still none
    p = subprocess.run(wrapperd_cmd("--profile", "untrusted", "--dry-run", "--", "/bin/true"),
                       capture_output=True)
    assert p.returncode == 125 and b"cgroup.path" in p.stderr


def test_profiles_cli(capsys):
    assert cli.main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("talos", "default", "service", "network-service", "strict", "untrusted"):
        assert name in out
    assert "extends strict" in out
    assert cli.main(["profiles", "show", "untrusted"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["namespaces"]["net"] is True and shown["cgroup"]["pids_max"] == 64
    assert cli.main(["profiles", "show", "nope"]) == 125


def test_a_spec_object_keeps_what_it_was_given_for_its_profile():
    # to_dict() fills defaults (readonly_root false, namespaces false) that would beat
    # the profile; spec_layer() gives only what the spec was loaded with.
    import attrs
    s = Spec.from_dict({"argv": ["/bin/true"], "profile": "strict", "name": "x",
                        "namespaces": {"pid": True}})
    layer = profile.spec_layer(s)
    assert "readonly_root" not in layer and layer["namespaces"] == {"pid": True}
    r = Spec.from_dict(profile.apply_profile(layer))
    assert r.filesystem.protect_system == "strict" and r.namespaces.net is True and \
        r.namespaces.mount is True
    talos = Spec.from_dict({"argv": ["/bin/true"], "profile": "talos"})
    assert Spec.from_dict(profile.apply_profile(profile.spec_layer(talos))).no_new_privs \
        is False
    # Changed after loading: the source no longer describes it; to_dict() is used.
    e = attrs.evolve(s, hostname="other")
    assert profile.spec_layer(e)["hostname"] == "other"
    assert Spec.from_dict({"argv": ["/bin/true"]}).source is None
    assert s == Spec.from_dict(s.to_dict())               # source is not compared


def test_the_library_is_ordered_by_exposure():
    from sandbox import exposure
    from sandbox.spawning import build_spec
    score = {n: exposure.score(build_spec({"argv": ["/usr/bin/svc"], "profile": n,
                                           "name": "svc"})).score
             for n in ("talos", "default", "service", "strict", "untrusted")}
    assert score["talos"] > score["default"] > score["service"] > score["strict"] \
        > score["untrusted"]
    # OK, as systemd-analyze security rates the same unit (1.5): it counts the socket
    # families, @resources and namespace creation the kernel refuses without
    # CAP_SYS_ADMIN (tests/privileged/test_exposure_systemd.py).
    assert score["strict"] < 2.0


def test_a_spec_swapping_its_profiles_seccomp_profile_must_say_so():
    # `default` over `strict` would allow ~150 more syscalls: a loosening.
    spec = {"argv": ["/bin/true"], "profile": "strict", "seccomp": {"profile": "default"}}
    with pytest.raises(SpecError, match=r"seccomp.profile: 'default' replaces the "
                                        r"seccomp profile 'strict' of profile 'strict'"):
        profile.apply_profile(spec)
    spec["seccomp"]["replace_profile_rules"] = True
    assert profile.apply_profile(spec)["seccomp"]["profile"] == "default"
    # Naming the same one is no swap.
    profile.apply_profile({"argv": ["/bin/true"], "profile": "strict",
                           "seccomp": {"profile": "strict"}})
