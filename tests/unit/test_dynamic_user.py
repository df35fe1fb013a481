"""user.dynamic without privileges: the spec's refusals, the profile merge (a spec's uid
beats its profile's dynamic user), the plan round trip, the registry's trust checks and
record format, and the stable first candidate."""

from __future__ import annotations

import os
import stat

import pytest

from sandbox import SetupError, SpecError, dynamicuser, plan, profile
from sandbox.spawning import build_spec
from sandbox.spec import Spec

ARGV = ["/bin/true"]


@pytest.mark.parametrize("user, path", [
    ({"dynamic": True, "uid": 1000}, "user.uid"),
    ({"dynamic": True, "uid": "nobody"}, "user.uid"),
    ({"dynamic": True, "gid": 1000}, "user.gid"),
    ({"dynamic": True, "groups": [27]}, "user.groups"),
    ({"dynamic": "yes"}, "user.dynamic"),
    ({"umask": "0022"}, "user"),                     # neither uid nor dynamic
])
def test_spec_refuses_what_a_dynamic_user_cannot_honour(user, path):
    with pytest.raises(SpecError) as e:
        Spec.from_dict({"argv": ARGV, "user": user})
    assert e.value.path == path


def test_spec_dynamic_round_trips():
    s = Spec.from_dict({"argv": ARGV, "name": "web", "user": {"dynamic": True,
                                                               "umask": "0027"}})
    assert s.user.dynamic and s.user.uid is None and s.user.groups == ()
    assert Spec.from_dict(s.to_dict()) == s


def test_a_spec_uid_beats_the_profile_dynamic_user():
    for name in ("service", "network-service", "strict", "untrusted"):
        assert profile.resolve(name)["user"].get("dynamic") is True, name
        merged = profile.apply_profile({"argv": ARGV, "profile": name, "name": "svc",
                                        "user": {"uid": 4242}})
        assert merged["user"].get("dynamic") is None and merged["user"]["uid"] == 4242
        Spec.from_dict(merged)                   # and it loads: no uid+dynamic clash
    # The other way round: a spec's dynamic drops a layer's uid, gid and groups.
    base = {"user": {"uid": 1, "gid": 2, "groups": [3], "umask": "0022"}}
    assert profile.merge(base, {"user": {"dynamic": True}}) == {
        "user": {"umask": "0022", "dynamic": True}}


def test_dynamic_with_a_joined_user_namespace_or_wide_maps_is_refused():
    from wrapperd import shim
    with pytest.raises(SpecError) as e:
        shim.prepare(build_spec({"argv": ARGV, "user": {"dynamic": True},
                                 "namespaces": {"user": "/proc/self/ns/user"}}))
    assert e.value.path == "user.dynamic"
    wide = [{"inside": 0, "outside": 100000, "count": 2}]
    with pytest.raises(SpecError) as e:
        shim.prepare(build_spec({"argv": ARGV, "user": {"dynamic": True},
                                 "namespaces": {"user": {"uid_map": wide,
                                                         "gid_map": wide}}}))
    assert e.value.path == "namespaces.user.uid_map"


def test_the_plan_carries_the_dynamic_user_and_an_unallocated_identity():
    from wrapperd import shim
    p = shim.prepare(build_spec({"argv": ARGV, "name": "web", "user": {"dynamic": True}}))
    from sandbox import seccomp
    assert p.dynamic_user == dynamicuser.Prepared(
        name="web", user_ns=False, suid_filter=seccomp.restrict_suid_sgid(),
        registry=dynamicuser.registry_dir())
    assert p.creds.uid == p.creds.gid == -1 and p.creds.groups == ()
    back = plan.decode(plan.encode(p))
    assert back.dynamic_user == p.dynamic_user and back.creds == p.creds
    # The identity step refuses an id that was never allocated (-1 is "unchanged" to
    # setresuid): a plan that skipped the allocation cannot keep root.
    from sandbox import creds
    with pytest.raises(SetupError, match="not allocated"):
        creds.apply(p.creds)


def test_first_candidate_is_stable_per_name_and_in_range():
    lo, hi = dynamicuser.DYNAMIC_RANGE
    a = dynamicuser.first_candidate("web")
    assert a == dynamicuser.first_candidate("web") and lo <= a <= hi
    assert len({dynamicuser.first_candidate(f"svc{i}") for i in range(50)}) > 40
    assert all(lo <= dynamicuser.first_candidate(None) <= hi for _ in range(20))


def test_record_format_round_trips_any_name():
    for name in (None, "web", "a\nb c", "ü"):
        data = dynamicuser._encode(name, [(12, 34), (56, 78)])
        assert dynamicuser._decode(data) == (name, [(12, 34), (56, 78)])
    assert dynamicuser._decode(b"garbage\n1 2 3\n") is None


def test_registry_must_be_a_root_owned_0700_directory(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the registry is root's")
    good = tmp_path / "reg"
    good.mkdir(mode=0o700)
    os.close(dynamicuser._open_dir(str(good), create=False))
    os.chmod(good, 0o755)
    with pytest.raises(SetupError, match="not 0700"):
        dynamicuser._open_dir(str(good), create=False)
    os.chmod(good, 0o700)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(SetupError):
        dynamicuser._open_dir(str(link), create=False)
    os.chown(good, 1, 1)
    with pytest.raises(SetupError, match="not owned by root"):
        dynamicuser._open_dir(str(good), create=False)
    # Created when missing, 0700.
    fresh = tmp_path / "a" / "b"
    os.close(dynamicuser._open_dir(str(fresh), create=True))
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700


def test_the_suid_filter_refuses_special_bits_and_nothing_else():
    # The program itself, run as the kernel would (seccomp.evaluate).
    from sandbox import seccomp
    prog = seccomp.restrict_suid_sgid()
    arch = seccomp.native_arch()

    def verdict(name, *args):
        import pyseccomp
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        return seccomp.action_name(seccomp.evaluate(prog, nr, arch, args))
    assert verdict("chmod", 0, 0o4755) == verdict("fchmodat", 0, 0, 0o2700) == "errno:1"
    assert verdict("chmod", 0, 0o755) == verdict("fchmod", 3, 0o1777) == "allow"
    assert verdict("openat", 0, 0, os.O_CREAT | os.O_WRONLY, 0o4755) == "errno:1"
    assert verdict("openat", 0, 0, os.O_RDONLY, 0o4755) == "allow"     # no creation
    assert verdict("openat", 0, 0, os.O_CREAT, 0o644) == "allow"
    assert verdict("openat2", 0, 0, 0, 24) == "errno:38"
    assert verdict("io_uring_setup", 1, 0) == "errno:1"


def test_a_dynamic_user_without_no_new_privs_is_refused():
    from wrapperd import shim
    with pytest.raises(SpecError) as e:
        shim.prepare(build_spec({"argv": ARGV, "user": {"dynamic": True},
                                 "no_new_privs": False}))
    assert e.value.path == "no_new_privs"


@pytest.mark.parametrize("cap", ["CAP_SETFCAP", "CAP_SYS_ADMIN"])
@pytest.mark.parametrize("which", ["keep", "ambient"])
def test_a_dynamic_user_keeps_no_capability_whose_files_outlive_it(cap, which):
    from wrapperd import shim
    caps = {"keep": [cap]} if which == "keep" else {"keep": [cap], "ambient": [cap]}
    with pytest.raises(SpecError) as e:
        shim.prepare(build_spec({"argv": ARGV, "user": {"dynamic": True},
                                 "capabilities": caps}))
    assert e.value.path.startswith("capabilities.keep[0]")
    shim.prepare(build_spec({"argv": ARGV, "user": {"dynamic": True},       # control
                             "capabilities": {"keep": ["CAP_NET_BIND_SERVICE"]}}))


def test_service_masks_the_hosts_mqueue_filesystem():
    # A queue made through the host's /dev/mqueue would live in the host's IPC
    # namespace, past the service and its id.
    from sandbox import profile
    for name in ("service", "network-service", "strict"):
        assert "/dev/mqueue" in profile.resolve(name)["masked_paths"], name
