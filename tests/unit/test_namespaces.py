"""namespaces.prepare() and mounts.prepare(): what is refused before anything runs."""

import os

import pytest

from sandbox import mounts, namespaces
from sandbox.errors import SpecError
from sandbox.spec import Spec


def spec(**d):
    d.setdefault("argv", ["/bin/true"])
    return Spec.from_dict(d)


def refused(path_fragment, **d):
    s = spec(**d)
    with pytest.raises(SpecError) as e:
        namespaces.prepare(s)
        mounts.prepare(s)
    assert path_fragment in str(e.value), str(e.value)
    return str(e.value)


def test_nothing_asked_prepares_nothing():
    assert namespaces.prepare(spec()) is None
    assert mounts.prepare(spec()) is None
    assert namespaces.prepare(spec(namespaces={"net": False})) is None


def test_hostname_needs_a_new_uts_namespace():
    refused("hostname", hostname="x")
    refused("hostname", hostname="x", namespaces={"net": True})
    refused("hostname", hostname="x", namespaces={"uts": "/proc/self/ns/uts"})
    assert namespaces.prepare(spec(hostname="x", namespaces={"uts": True})).hostname == "x"


@pytest.mark.parametrize("field", [
    {"mounts": [{"type": "tmpfs", "destination": "/tmp"}]},
    {"masked_paths": ["/proc/kcore"]},
    {"readonly_paths": ["/proc/sys"]},
    {"readonly_root": True},
])
def test_mount_fields_need_a_new_mount_namespace(field):
    refused("namespaces.mount", **field)
    refused("namespaces.mount", namespaces={"mount": "/proc/self/ns/mnt"}, **field)
    assert namespaces.prepare(spec(namespaces={"mount": True}, **field)) is not None


def test_as_pid_1_needs_a_new_pid_namespace():
    refused("namespaces.as_pid_1", namespaces={"as_pid_1": True})
    refused("namespaces.as_pid_1", namespaces={"as_pid_1": True, "pid": "/proc/1/ns/pid"})


def test_a_path_to_join_must_exist():
    msg = refused("namespaces.net", namespaces={"net": "/nonexistent/ns/net"})
    assert "No such file" in msg


def test_order_new_user_first_pid_last_and_joins():
    p = namespaces.prepare(spec(namespaces={"pid": True, "net": "/proc/self/ns/net",
                                            "uts": True, "user": True, "mount": True}))
    assert p.new == ("user", "mount", "uts", "pid")
    assert p.join == (("net", "/proc/self/ns/net"),)
    assert p.forks and not p.as_pid_1


def test_user_true_maps_the_caller_to_root():
    p = namespaces.prepare(spec(namespaces={"user": True}))
    assert p.uid_map == ((0, os.geteuid(), 1),) and p.gid_map == ((0, os.getegid(), 1),)
    assert p.caller_uid_inside == 0 and p.target_is_root(None)


def test_overlapping_ranges_are_refused():
    m = [{"inside": 0, "outside": 100000, "count": 10},
         {"inside": 5, "outside": 200000, "count": 10}]
    refused("namespaces.user.uid_map", namespaces={"user": {"uid_map": m, "gid_map": m[:1]}})


def test_empty_map_is_refused():
    refused("namespaces.user.gid_map", namespaces={"user": {
        "uid_map": [{"inside": 0, "outside": 100000, "count": 10}]}})


@pytest.mark.skipif(os.geteuid() != 0, reason="the helper path differs unprivileged")
def test_unmapped_target_ids_are_refused():
    from sandbox import creds
    s = spec(namespaces={"user": True}, user={"uid": 65534})
    with pytest.raises(SpecError, match=r"user\.uid: 65534 is not mapped"):
        namespaces.prepare(s, creds.prepare(s.user))


def test_mount_checks():
    ns = {"mount": True}
    refused("mounts[0].source", namespaces=ns,
            mounts=[{"type": "bind", "source": "/nonexistent", "destination": "/tmp"}])
    refused("mounts[0].destination", namespaces=ns,
            mounts=[{"type": "tmpfs", "destination": "/nonexistent/x"}])
    refused("mounts[0].destination", namespaces=ns,
            mounts=[{"type": "tmpfs", "destination": "/"}])
    refused("mounts[0].options", namespaces=ns,
            mounts=[{"type": "tmpfs", "destination": "/tmp", "options": ["ro", "rw"]}])
    refused("mounts[0].type", namespaces=ns,
            mounts=[{"type": "proc", "destination": "/proc"}])
    refused("mounts[0]", namespaces=ns,
            mounts=[{"type": "bind", "source": "/tmp", "destination": "/tmp", "size": 1}])
    # One spelling per place, and never a '..' (it would climb out of our own tmpfs).
    for bad in ("/tmp/../x", "/tmp/..", "/tmp/./x", "/tmp//x", "/tmp/", "/tmp/x/.."):
        refused("mounts[1].destination", namespaces=ns,
                mounts=[{"type": "tmpfs", "destination": "/tmp"},
                        {"type": "tmpfs", "destination": bad}])


def test_missing_destination_under_our_own_tmpfs_is_allowed():
    p = mounts.prepare(spec(namespaces={"mount": True}, mounts=[
        {"type": "tmpfs", "destination": "/tmp"},
        {"type": "tmpfs", "destination": "/tmp/wrapperd-unit-x/a/b"}]))
    assert len(p.mounts) == 2 and not p.fresh_proc


def test_fresh_proc_with_new_pid_and_mount_namespaces():
    assert mounts.prepare(spec(namespaces={"mount": True, "pid": True})).fresh_proc
    p = mounts.prepare(spec(namespaces={"mount": True, "pid": True},
                            mounts=[{"type": "proc", "destination": "/proc"}]))
    assert not p.fresh_proc        # the spec mounts its own


def test_new_fields_round_trip():
    s = spec(namespaces={"mount": True}, masked_paths=["/proc/kcore"],
             readonly_paths=["/proc/sys"], readonly_root=True)
    assert Spec.from_dict(s.to_dict()) == s
    with pytest.raises(SpecError, match="masked_paths"):
        spec(masked_paths=["relative"])
    with pytest.raises(SpecError, match="readonly_root"):
        spec(readonly_root=1)


def test_exit_code():
    from sandbox import supervisor
    assert supervisor.exit_code(42 << 8) == 42
    assert supervisor.exit_code(15) == 128 + 15
