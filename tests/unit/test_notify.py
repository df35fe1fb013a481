"""sandbox.notify without privileges: what prepare() gives the target for each socket
and spec, and what the Listener keeps of the messages it reads."""

from __future__ import annotations

import os
import socket

import pytest

from sandbox import creds, namespaces, notify
from sandbox.errors import SpecError
from sandbox.spec import Spec


def spec(**fields):
    return Spec.from_dict({"argv": ["/bin/true"], "notify": True, **fields})


def records(s):
    c = creds.prepare(s.user, s.securebits, s.namespaces)
    return c, namespaces.prepare(s, c)


def prepared(s, sock):
    return notify.prepare(s, sock, *records(s))


def test_without_notify_nothing():
    assert notify.prepare(Spec.from_dict({"argv": ["/bin/true"]}), None) is None
    assert Spec.from_dict({"argv": ["/bin/true"]}).notify is False
    assert Spec.from_json(spec().to_json()).notify is True


def test_not_a_bool_is_refused():
    with pytest.raises(SpecError, match="^notify: "):
        Spec.from_dict({"argv": ["/bin/true"], "notify": 1})


def test_no_socket_is_a_spec_error():
    with pytest.raises(SpecError, match="^notify: no socket to give the target"):
        prepared(spec(), None)


def test_the_librarys_socket_is_bound_over_base_in_a_mount_namespace(monkeypatch, tmp_path):
    monkeypatch.setenv(notify.ENV, str(tmp_path / "n"))
    sock = f"{tmp_path}/n/0123456789abcdef/notify"
    p = prepared(spec(namespaces={"mount": True}, user={"uid": 65534}), sock)
    assert p.env == f"{tmp_path}/n/notify"
    (bind,) = p.binds()
    assert (bind.type, bind.source, bind.destination) == \
        ("bind", f"{tmp_path}/n/0123456789abcdef", f"{tmp_path}/n")
    # Without one: the host path, for the spawner's own uid only.
    p = prepared(spec(), sock)
    assert (p.env, p.binds()) == (sock, ())
    for fields in ({"user": {"uid": os.geteuid() + 1}},
                   {"user": {"dynamic": True}, "name": "x"},
                   {"namespaces": {"user": True}}):
        with pytest.raises(SpecError, match=r"namespaces\.mount"):
            prepared(spec(**fields), sock)


def test_placeholder_is_the_librarys_layout():
    p = prepared(spec(namespaces={"mount": True}), notify.placeholder())
    assert p.env == notify.base_dir() + "/notify"


def test_address_families_without_af_unix_is_refused():
    with pytest.raises(SpecError, match="add AF_UNIX"):
        prepared(spec(address_families=["AF_INET"]), "@sd")
    assert prepared(spec(address_families=["AF_UNIX"]), "@sd") is not None


def test_a_callers_socket(tmp_path):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        p = prepared(spec(namespaces={"mount": True}), path)
        assert p.env == path
        (bind,) = p.binds()
        assert bind.source == bind.destination == path      # onto itself
        assert prepared(spec(), path).binds() == ()
    finally:
        s.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match="is not a socket"):
        prepared(spec(), str(tmp_path / "file"))
    with pytest.raises(SpecError, match="No such file"):
        prepared(spec(), str(tmp_path / "missing"))
    with pytest.raises(SpecError, match="neither an absolute path"):
        prepared(spec(), "relative")
    with pytest.raises(SpecError, match="longer than a socket address"):
        prepared(spec(), "/" + "x" * 200)


def test_an_abstract_socket():
    assert prepared(spec(), "@sd").env == "@sd"
    assert prepared(spec(), "@sd").binds() == ()
    with pytest.raises(SpecError, match="abstract"):
        prepared(spec(namespaces={"net": True, "user": True}), "@sd")


def test_the_shim_gives_notify_socket_over_the_specs_env(tmp_path, monkeypatch):
    from wrapperd import shim
    monkeypatch.setenv(notify.ENV, str(tmp_path))
    s = spec(env={"NOTIFY_SOCKET": "/spec/own", "A": "b"})
    plan = shim.prepare(s, notify_socket=f"{tmp_path}/{'a' * 16}/notify")
    assert plan.target.env == {"A": "b", "NOTIFY_SOCKET": f"{tmp_path}/{'a' * 16}/notify"}
    with pytest.raises(SpecError):
        shim.prepare(s)


def test_the_listener_keeps_what_came(tmp_path):
    listener = notify.Listener(base=str(tmp_path / "base"))
    try:
        assert os.stat(tmp_path / "base").st_mode & 0o777 == 0o700
        assert os.stat(listener.directory).st_mode & 0o777 == 0o755
        assert os.stat(listener.path).st_mode & 0o777 == 0o666
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for m in (b"STATUS=one\nMAINPID=42", b"READY=1", b"WATCHDOG=1\nERRNO=7",
                  b"STOPPING=1\nSTATUS=two\nno equals sign\nX=y=z", b"A=" + b"x" * 5000):
            s.sendto(m, listener.path)
        r, w = os.pipe()                     # BARRIER=1 brings an fd: closed on read
        s.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    w.to_bytes(4, "little"))], 0, listener.path)
        os.close(w)
        assert listener.drain() == 0         # from us, not a sandbox's pid: dropped
        assert listener.dropped == 6 and not listener.ready
        assert os.read(r, 1) == b""          # EOF: the only write end was closed
        os.close(r)
        for m in (b"STATUS=one\nMAINPID=42", b"READY=1", b"WATCHDOG=1\nERRNO=7",
                  b"STOPPING=1\nSTATUS=two\nno equals sign\nX=y=z", b"A=" + b"x" * 5000):
            s.sendto(m, listener.path)
        s.close()
        assert listener.drain((os.getpid(),)) == 4    # the last one is too long
        assert (listener.ready, listener.status, listener.main_pid, listener.errno,
                listener.stopping) == (True, "two", 42, 7, True)
        assert listener.watchdog_at is not None
        assert listener.fields["X"] == "y=z" and listener.dropped == 7
    finally:
        listener.close()
    assert not os.path.exists(tmp_path / "base")     # emptied: removed
    listener.close()                                  # idempotent


def test_oci_export_says_notify_cannot_be_said():
    from sandbox.oci import export_spec
    notes: list = []
    export_spec(spec(), notes)
    assert any(n.startswith("notify: OCI has no field") for n in notes)


def test_verify_expects_notify_socket_in_the_environment():
    from sandbox.verification import expected
    assert "NOTIFY_SOCKET" in expected(spec(env={"A": "b"}))["env_keys"]
    assert "NOTIFY_SOCKET" not in expected(Spec.from_dict({"argv": ["/bin/true"]}))[
        "env_keys"]
