"""Landlock without the kernel: the spec model's checks, the ABI math of prepare
(groups, kernel names, net, scope, hard_requirement and best_effort), the plan round
trip, the order of STEPS, and the rule set's byte layout."""

from __future__ import annotations

import pytest

from sandbox import landlock, plan
from sandbox.errors import SpecError
from sandbox.spec import Spec
from wrapperd import shim

R = {n: b for n, (b, _) in landlock.FS_RIGHTS.items()}


def spec(ll, **kw) -> Spec:
    return Spec.from_dict({"argv": ["/bin/true"], "landlock": ll, **kw})


@pytest.mark.parametrize("ll, where", [
    ({}, "landlock"),
    ({"fs": [{"path": "usr", "access": ["read"]}]}, "landlock.fs[0].path"),
    ({"fs": [{"path": "/usr/../etc", "access": ["read"]}]}, "landlock.fs[0].path"),
    ({"fs": [{"path": "/usr", "access": []}]}, "landlock.fs[0].access"),
    ({"fs": [{"path": "/usr", "access": ["rwx"]}]}, "landlock.fs[0].access[0]"),
    ({"fs": [{"path": "/usr", "access": ["read", "read"]}]}, "landlock.fs[0].access"),
    ({"fs": [{"path": "/usr"}]}, "landlock.fs[0]"),
    ({"fs": [{"path": "/usr", "access": ["read"], "x": 1}]}, "landlock.fs[0].x"),
    ({"net": {"bind": [65536]}}, "landlock.net.bind[0]"),
    ({"net": {"connect": [True]}}, "landlock.net.connect[0]"),
    ({"net": {"bind": [1, 1]}}, "landlock.net.bind"),
    ({"scope": ["ptrace"]}, "landlock.scope[0]"),
    ({"scope": ["signal"], "compatibility": "maybe"}, "landlock.compatibility"),
])
def test_bad_landlock_fields_name_themselves(ll, where):
    with pytest.raises(SpecError) as e:
        spec(ll)
    assert e.value.path == where


def test_the_model_round_trips():
    s = spec({"fs": [{"path": "/usr", "access": ["read", "make_reg"], "follow": True}],
              "net": {"bind": [0]}, "scope": ["signal"], "compatibility": "best_effort"})
    assert Spec.from_dict(s.to_dict()) == s
    assert s.landlock.compatibility == "best_effort"
    assert spec({"scope": ["signal"]}).landlock.compatibility == "hard_requirement"


def test_groups_are_what_the_abi_knows_and_names_are_exact():
    mask, named, missing = landlock.rights(("read", "write", "create", "remove"), 7, "x")
    assert mask == R["read_file"] | R["read_dir"] | R["write_file"] | R["truncate"] | \
        R["make_reg"] | R["make_dir"] | R["make_sym"] | R["make_sock"] | R["make_fifo"] | \
        R["remove_file"] | R["remove_dir"]
    assert named == 0 and missing == []
    mask, named, missing = landlock.rights(("write",), 2, "x")
    assert mask == R["write_file"] and missing == []      # no truncate below ABI 3
    mask, named, missing = landlock.rights(("write_file", "truncate", "ioctl_dev"), 3, "x")
    assert mask == named == R["write_file"] | R["truncate"]
    assert missing == [("ioctl_dev", 5)]


def test_fs_known_by_abi():
    assert landlock.fs_known(1) == (1 << 13) - 1
    assert landlock.fs_known(2) == (1 << 14) - 1
    assert landlock.fs_known(3) == landlock.fs_known(4) == (1 << 15) - 1
    assert landlock.fs_known(5) == landlock.fs_known(7) == (1 << 16) - 1


def full(abi, compat="hard_requirement"):
    return spec({"fs": [{"path": "/usr", "access": ["read", "execute", "refer"]}],
                 "net": {"bind": [8080], "connect": [443]}, "scope": ["signal"],
                 "compatibility": compat})


def test_hard_requirement_names_the_rule_and_the_abi():
    assert landlock.prepare(full(7), 7).dropped == ()
    for abi, where, need in ((5, "landlock.scope", 6), (3, "landlock.net", 4),
                             (1, "landlock.fs[0].access", 2), (0, "landlock", 1)):
        with pytest.raises(SpecError) as e:
            landlock.prepare(full(abi), abi)
        assert e.value.path == where and f"ABI {need}" in e.value.message


def test_best_effort_drops_and_says_so():
    p = landlock.prepare(full(7, "best_effort"), 3)
    assert p.abi == 3 and p.handled_fs == landlock.fs_known(3)
    assert p.handled_net == 0 and p.scoped == 0 and p.bind == p.connect == ()
    assert [d.split(":")[0] for d in p.dropped] == ["landlock.net", "landlock.scope"]
    assert p.rules[0].access == R["read_file"] | R["read_dir"] | R["execute"] | R["refer"]
    p = landlock.prepare(full(7, "best_effort"), 1)
    assert p.rules[0].access & R["refer"] == 0
    assert p.dropped[0].startswith("landlock.fs[0].access: refer needs Landlock ABI 2")
    p = landlock.prepare(full(7, "best_effort"), 0)
    assert not p.enforced and p.dropped and "nothing is restricted" in \
        landlock.describe(p)[-1]


def test_only_what_is_given_is_handled():
    p = landlock.prepare(spec({"scope": ["abstract_unix_socket"]}), 7)
    assert (p.handled_fs, p.handled_net, p.scoped) == (0, 0, 1)
    p = landlock.prepare(spec({"net": {}}), 7)
    assert (p.handled_fs, p.handled_net, p.scoped) == (0, 3, 0)
    p = landlock.prepare(spec({"fs": []}), 7)
    assert (p.handled_fs, p.handled_net, p.scoped, p.rules) == \
        (landlock.fs_known(7), 0, 0, ())


def test_a_file_gets_file_rights_and_refuses_directory_rights_by_name(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    p = landlock.prepare(spec({"fs": [{"path": str(f), "access": ["read", "write",
                                                                   "create"]}]}), 7)
    assert p.rules[0].access == R["read_file"] | R["write_file"] | R["truncate"]
    with pytest.raises(SpecError, match="make_reg apply to directories"):
        landlock.prepare(spec({"fs": [{"path": str(f), "access": ["make_reg"]}]}), 7)
    (tmp_path / "l").symlink_to(f)
    with pytest.raises(SpecError, match="symlink"):
        landlock.prepare(spec({"fs": [{"path": str(tmp_path / "l"),
                                       "access": ["read"]}]}), 7)
    p = landlock.prepare(spec({"fs": [{"path": str(tmp_path / "l"), "access": ["read"],
                                       "follow": True}]}), 7)
    assert p.rules[0].follow


def test_paths_are_checked_only_in_the_host_view():
    ll = {"fs": [{"path": "/no/such/landlock/path", "access": ["read"]}]}
    with pytest.raises(SpecError):
        landlock.prepare(spec(ll), 7)
    p = landlock.prepare(spec(ll, namespaces={"mount": True}), 7)
    assert p.rules[0].path == "/no/such/landlock/path"


def test_the_env_hook_only_lowers(monkeypatch):
    monkeypatch.setenv(landlock.ENV_ABI, "2")
    assert landlock.abi() == min(2, landlock.kernel_abi())
    monkeypatch.setenv(landlock.ENV_ABI, "99")
    assert landlock.abi() == landlock.kernel_abi()


def test_the_plan_carries_it_and_the_step_sits_before_seccomp():
    s = spec({"fs": [{"path": "/usr", "access": ["read", "execute"]}],
              "net": {"bind": [1]}, "scope": ["signal"]})
    p = shim.prepare(s, landlock_abi=7)
    assert plan.decode(plan.encode(p)).landlock == p.landlock
    with pytest.raises(SpecError, match="no_new_privs"):
        shim.prepare(spec({"fs": []}, no_new_privs=False, user={"uid": 65534}),
                     landlock_abi=7)


def test_a_bad_record_is_refused_by_the_plan():
    p = shim.prepare(spec({"net": {"bind": [1]}}), landlock_abi=7)
    doc = plan.encode(p).replace(b'"handled_net":3', b'"handled_net":12')
    with pytest.raises(SpecError, match="unknown Landlock right"):
        plan.decode(doc)
