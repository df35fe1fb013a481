"""Socket activation (`listen`) without privileges: every bad entry is one SpecError
naming the field, a good spec prepares into sockets, environment and a plan that
round-trips, and the fds step's placement puts the sockets at 3, 4, ... and moves the
status fd out of their way.  The kernel-visible behaviour is in
tests/privileged/test_listen.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sandbox import SpecError, listen, plan
from sandbox.spec import Spec
from wrapperd import shim

BASE = {"argv": ["/bin/true"], "env": {"PATH": "/usr/bin:/bin"}}


def load(entries, **fields) -> Spec:
    return Spec.from_dict({**BASE, "listen": entries, **fields})


@pytest.mark.parametrize("address, want", [
    ("127.0.0.1:80", ("inet", "127.0.0.1", 80)),
    ("0.0.0.0:65535", ("inet", "0.0.0.0", 65535)),
    ("[::1]:8080", ("inet6", "::1", 8080)),
    ("[0:0::1]:1", ("inet6", "::1", 1)),
    ("[::]:443", ("inet6", "::", 443)),
    ("/run/x.sock", ("unix", "/run/x.sock", 0)),
    ("@abstract", ("unix", "\0abstract", 0)),
])
def test_addresses_parse(address, want):
    assert listen.parse_address(address) == want


@pytest.mark.parametrize("entry, where, words", [
    ({"address": "127.0.0.1:0"}, "listen[0].address", "1 to 65535"),
    ({"address": "127.0.0.1:65536"}, "listen[0].address", "1 to 65535"),
    ({"address": "127.0.0.1:-1"}, "listen[0].address", "1 to 65535"),
    ({"address": "127.0.0.1:http"}, "listen[0].address", "1 to 65535"),
    ({"address": "127.0.0.1"}, "listen[0].address", "expected IPV4:PORT"),
    ({"address": "8080"}, "listen[0].address", "expected IPV4:PORT"),
    ({"address": "localhost:80"}, "listen[0].address", "not a numeric IPv4"),
    ({"address": "1.2.3:80"}, "listen[0].address", "not a numeric IPv4"),
    ({"address": "::1:80"}, "listen[0].address", "not a numeric IPv4"),
    ({"address": "[::1]80"}, "listen[0].address", "expected IPV4:PORT"),
    ({"address": "[zz::1]:80"}, "listen[0].address", "not a numeric IPv6"),
    ({"address": "run/x.sock"}, "listen[0].address", "expected IPV4:PORT"),
    ({"address": "/run/../x.sock"}, "listen[0].address", "normal absolute path"),
    ({"address": "/run/x/"}, "listen[0].address", "normal absolute path"),
    ({"address": "/" + "a" * 107}, "listen[0].address", "at most 107 bytes"),
    ({"address": "@"}, "listen[0].address", "needs a name"),
    ({"address": ""}, "listen[0].address", "must not be empty"),
    ({"address": 80}, "listen[0].address", "expected a string"),
    ({"type": "stream"}, "listen[0]", "missing required key 'address'"),
    ({"type": "raw", "address": "127.0.0.1:80"}, "listen[0].type", "is not one of"),
    ({"type": "seqpacket", "address": "127.0.0.1:80"}, "listen[0].type", "unix socket"),
    ({"address": "127.0.0.1:80", "name": "a:b"}, "listen[0].name", "':'"),
    ({"address": "127.0.0.1:80", "name": "x" * 256}, "listen[0].name", "at most 255"),
    ({"address": "127.0.0.1:80", "name": ""}, "listen[0].name", "must not be empty"),
    ({"address": "127.0.0.1:80", "name": "a\tb"}, "listen[0].name", "printable ASCII"),
    ({"address": "127.0.0.1:80", "backlog": -1}, "listen[0].backlog", "out of range"),
    ({"address": "127.0.0.1:80", "backlog": 2**31}, "listen[0].backlog", "out of range"),
    ({"address": "127.0.0.1:80", "backlog": True}, "listen[0].backlog", "an integer"),
    ({"type": "datagram", "address": "127.0.0.1:80", "backlog": 5}, "listen[0].backlog",
     "does not listen"),
    ({"address": "127.0.0.1:80", "port": 80}, "listen[0].port", "unknown key"),
])
def test_a_bad_entry_is_one_error_naming_the_field(entry, where, words):
    with pytest.raises(SpecError) as e:
        load([entry])
    assert e.value.path == where and words in e.value.message, str(e.value)


@pytest.mark.parametrize("entries", [
    [{"address": "127.0.0.1:80"}, {"address": "127.0.0.1:80", "name": "x"}],
    [{"address": "[::1]:80"}, {"address": "[0::1]:80"}],
    [{"address": "/run/x.sock"}, {"type": "datagram", "address": "/run/x.sock"}],
    [{"address": "@x"}, {"type": "seqpacket", "address": "@x"}],
])
def test_an_address_listed_twice_is_refused(entries):
    with pytest.raises(SpecError) as e:
        load(entries)
    assert e.value.path == "listen[1].address" and "listed twice" in e.value.message


def test_tcp_and_udp_may_share_a_port():
    s = load([{"address": "127.0.0.1:80"}, {"type": "datagram", "address": "127.0.0.1:80"}])
    assert [e.type for e in s.listen] == ["stream", "datagram"]


def test_listen_must_be_a_list():
    with pytest.raises(SpecError) as e:
        Spec.from_dict({**BASE, "listen": {"address": "127.0.0.1:80"}})
    assert e.value.path == "listen"


def test_pass_fds_must_lie_above_the_listening_sockets():
    two = [{"address": "127.0.0.1:80"}, {"address": "@x"}]
    for fd in (3, 4):
        with pytest.raises(SpecError) as e:
            load(two, pass_fds=[fd])
        assert e.value.path == "pass_fds" and "from 5 up" in e.value.message
    assert load(two, pass_fds=[5, 9]).pass_fds == (5, 9)
    assert Spec.from_dict({**BASE, "pass_fds": [3]}).pass_fds == (3,)     # no listen


def test_the_spec_round_trips_through_json():
    s = load([{"address": "127.0.0.1:80", "name": "http", "backlog": 7},
              {"type": "datagram", "address": "@dns"}])
    again = Spec.from_json(s.to_json())
    assert again == s
    assert s.to_dict()["listen"][1] == {"type": "datagram", "address": "@dns",
                                        "name": None, "backlog": None}


def test_prepare_lays_out_sockets_and_environment():
    s = load([{"address": "127.0.0.1:80", "name": "http"},
              {"type": "datagram", "address": "[::1]:53"},
              {"type": "seqpacket", "address": "/run/x.sock", "backlog": 3}],
             env={"PATH": "/usr/bin:/bin", "LISTEN_FDS": "9", "LISTEN_PID": "1"})
    p = shim.prepare(s)
    assert [(x.type, x.family, x.host, x.port, x.name, x.backlog)
            for x in p.listen.sockets] == [
        ("stream", "inet", "127.0.0.1", 80, "http", listen.DEFAULT_BACKLOG),
        ("datagram", "inet6", "::1", 53, "unknown", 0),
        ("seqpacket", "unix", "/run/x.sock", 0, "unknown", 3)]
    env = p.target.env
    assert env["LISTEN_FDS"] == "3" and env["LISTEN_FDNAMES"] == "http:unknown:unknown"
    # LISTEN_PID only at exec (the pid is not final before); the spec's is passed on
    # until then -- and replaced by the exec step.
    assert env["LISTEN_PID"] == "1"
    assert listen.pid_env(env)["LISTEN_PID"] == str(os.getpid())
    assert listen.describe(p.listen) == [
        "fd 3 (http): stream 127.0.0.1:80", "fd 4 (unknown): datagram [::1]:53",
        "fd 5 (unknown): seqpacket /run/x.sock, backlog 3"]


def test_no_listen_no_record_and_no_environment():
    p = shim.prepare(Spec.from_dict(BASE))
    assert p.listen is None and not any(k.startswith("LISTEN_") for k in p.target.env)


def test_the_plan_round_trips():
    p = shim.prepare(load([{"address": "127.0.0.1:80", "name": "http"},
                           {"address": "@x"}]))
    q = plan.decode(plan.encode(p))
    assert q.listen == p.listen and q.target.env == p.target.env


def test_a_plan_with_a_bad_socket_is_refused():
    doc = json.loads(plan.encode(shim.prepare(load([{"address": "127.0.0.1:80"}]))))
    doc["listen"]["f"]["sockets"][0]["f"]["name"] = "a:b"
    with pytest.raises(SpecError, match="malformed plan"):
        plan.decode(json.dumps(doc).encode())


def test_a_filter_that_denies_getpid_is_refused():
    # The exec step reads LISTEN_PID under the filter.
    spec = {**BASE, "listen": [{"address": "127.0.0.1:80"}],
            "seccomp": {"default_action": "allow",
                        "syscalls": [{"names": ["getpid"], "action": "errno:EPERM"}]}}
    with pytest.raises(SpecError) as e:
        shim.prepare(Spec.from_dict(spec))
    assert e.value.path == "seccomp" and "getpid" in e.value.message
    del spec["listen"]
    shim.prepare(Spec.from_dict(spec))            # without listen, none of its business


def test_the_profiles_filters_allow_getpid():
    for profile in ("default", "strict"):
        shim.prepare(Spec.from_dict({**BASE, "listen": [{"address": "127.0.0.1:80"}],
                                     "seccomp": {"profile": profile}}))


PLACE = r"""
import fcntl, json, os, sys
from sandbox import fds
# The sockets land anywhere (here: 9, 4, 0 -- a stdin slot the caller left closed), the
# status fd on 3, a reaper channel on 5; a pass_fds entry at 7 is left alone.  Each a
# pipe of its own (an inode to recognise it by).
def at(n):
    r, w = os.pipe()
    high = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 100)
    os.close(r); os.close(w)
    os.dup2(high, n, inheritable=False); os.close(high)
for n in (3, 4, 5, 7, 9):
    at(n)
at(0)
ino = {n: os.fstat(n).st_ino for n in (9, 4, 0, 3, 5, 7)}
status, reaper = fds.place_listening((9, 4, 0), (3, 5))
out = {"status": status, "reaper": reaper,
       "placed": [os.fstat(3 + i).st_ino == ino[n] for i, n in enumerate((9, 4, 0))],
       "inheritable": [os.get_inheritable(n) for n in (3, 4, 5)],
       "status_same": os.fstat(status).st_ino == ino[3], "status_cloexec":
       not os.get_inheritable(status), "reaper_same": os.fstat(reaper).st_ino == ino[5],
       "pass_fd": os.fstat(7).st_ino == ino[7]}
for n in (0, 9):
    try:
        os.fstat(n); out[f"open{n}"] = True
    except OSError:
        out[f"open{n}"] = False
print(json.dumps(out))
"""


def test_placing_puts_sockets_at_3_and_moves_what_was_there():
    r = subprocess.run([sys.executable, "-c", PLACE], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, check=True)
    out = json.loads(r.stdout)
    assert out["placed"] == [True, True, True] and out["inheritable"] == [True] * 3
    assert out["status"] >= 6 and out["status_same"] and out["status_cloexec"]
    assert out["reaper"] >= 6 and out["reaper_same"] and out["pass_fd"]
    assert out["open0"] is False and out["open9"] is False     # the copies were closed


def test_dry_run_shows_each_socket_and_binds_nothing():
    import socket
    with socket.socket() as s:              # a free port, released: still free after
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = {**BASE, "listen": [{"address": f"127.0.0.1:{port}", "name": "http"},
                               {"type": "datagram", "address": "@wrapperd-dry-run"}]}
    p = subprocess.run([sys.executable, "-I", "-m", "wrapperd", "--spec", "-",
                        "--dry-run"], input=json.dumps(spec).encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.decode().splitlines() == [
        f"wrapperd: listen: fd 3 (http): stream 127.0.0.1:{port}",
        "wrapperd: listen: fd 4 (unknown): datagram @wrapperd-dry-run"]
    assert json.loads(p.stdout)["listen"][0] == {
        "type": "stream", "address": f"127.0.0.1:{port}", "name": "http", "backlog": None}
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
