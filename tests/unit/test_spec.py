"""The spec loader: strict JSON, every field validated and named by path."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.errors import SpecError
from sandbox.spec import MAX_SPEC_BYTES, Spec

FULL = {
    "version": 1, "name": "web", "profile": "service",
    "argv": ["/usr/bin/python3", "-m", "http.server", "8080"],
    "env": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    "cwd": "/",
    "user": {"uid": 65534, "gid": 65534, "groups": [], "umask": "0022"},
    "capabilities": {"drop": ["CAP_SYS_ADMIN"]},
    "no_new_privs": True,
    "seccomp": {"profile": "default"},
    "namespaces": {"pid": True, "net": True, "ipc": True, "uts": True, "mount": True,
                   "cgroup": False, "user": None},
    "hostname": "web",
    "cgroup": {"path": "/wrapperd/web", "memory_max": 268435456, "pids_max": 256},
    "rlimits": {"NOFILE": [4096, 4096], "CORE": [0, 0]},
    "oom_score_adj": 500,
    "pass_fds": [],
}


def err(text) -> str:
    with pytest.raises(SpecError) as e:
        Spec.from_json(text if isinstance(text, (str, bytes)) else json.dumps(text))
    return str(e.value)


def test_design_example_loads_and_round_trips():
    s = Spec.from_json(json.dumps(FULL))
    assert s.user.uid == 65534 and s.capabilities.drop == ("CAP_SYS_ADMIN",)
    again = Spec.from_json(s.to_json())
    assert again == s
    assert again.to_json() == s.to_json()


@pytest.mark.parametrize("name", ["CAP_SYS_ADMIN", "cap_sys_admin", "sys_admin", "SYS_ADMIN"])
def test_capability_spellings(name):
    s = Spec.from_dict({"capabilities": {"drop": [name]}})
    assert s.capabilities.drop == ("CAP_SYS_ADMIN",)


@pytest.mark.parametrize("bad, message", [
    ("{", "malformed JSON"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"nice": NaN}', "NaN"),
    ('{"nice": Infinity}', "Infinity"),
    ({"argv": ["x"], "bogus": 1}, "bogus: unknown key"),
    ({"user": {"uid": -1}}, "user.uid: -1 is out of range"),
    ({"user": {"uid": 2**32 - 1}}, "user.uid: 4294967295 is out of range"),
    ({"user": {"uid": True}}, "user.uid: expected an integer, got a bool"),
    ({"user": {"uid": 1.5}}, "user.uid: expected an integer"),
    ({"no_new_privs": 1}, "no_new_privs: expected true or false, got a number"),
    ({"capabilities": {"drop": ["CAP_CHOWN", "CAP_KILL", "CAP_FOO"]}},
     "capabilities.drop[2]: unknown capability 'CAP_FOO'"),
    ({"capabilities": {"drop": ["CAP_KILL"], "keep": []}}, "either 'drop' or 'keep'"),
    ({"argv": ["a\0b"]}, "argv[0]: contains a NUL byte"),
    ({"env": {"A": "x\0"}}, "env.A: contains a NUL byte"),
    ({"env": {"A=B": "x"}}, "contains '='"),
    ({"cwd": "/tmp\0"}, "cwd: contains a NUL byte"),
    ({"cwd": "relative"}, "cwd: 'relative' is not an absolute path"),
    ({"cgroup": {"path": "../../etc"}}, "cgroup.path"),
    ({"cgroup": {"path": "/a/../b"}}, "must not contain"),
    ({"rlimits": {"NOFILE": [10, 5]}}, "rlimits.NOFILE: soft limit 10 is above hard limit 5"),
    ({"rlimits": {"FOO": [1, 1]}}, "rlimits.FOO: unknown resource"),
    ({"rlimits": {"NOFILE": [1, 1], "RLIMIT_NOFILE": [1, 1]}}, "given twice"),
    ({"version": 2}, "unsupported spec version"),
    ({"oom_score_adj": 1001}, "oom_score_adj: 1001 is out of range"),
    ({"securebits": ["nope"]}, "unknown securebit"),
    ({"pdeathsig": "SIGNOPE"}, "unknown signal"),
    ({"seccomp": {"default_action": "explode"}}, "unknown action"),
    ({"seccomp": {"profile": "default", "syscalls": [{"names": ["read"], "action": "allow",
      "args": [{"index": 6, "op": "eq", "value": 1}]}]}}, "index: 6 is out of range"),
    ('[1, 2]', "expected an object"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_bad_input_is_named(bad, message):
    assert message in err(bad)


def test_spec_over_one_mebibyte_is_refused():
    big = json.dumps({"env": {"X": "a" * MAX_SPEC_BYTES}})
    assert "larger than" in err(big)


def test_deep_nesting_is_an_error_not_a_crash():
    assert "malformed JSON" in err("[" * 100000)


def test_empty_argv_is_not_runnable():
    with pytest.raises(SpecError, match="argv: must not be empty"):
        Spec.from_dict({}).check_runnable()


# Any input gives a Spec or a SpecError -- never another exception.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                               max_size=4),
    max_leaves=20)
keys = st.sampled_from(Spec.KEYS + ("bogus",))
spec_like = st.dictionaries(keys, json_values, max_size=6)


@settings(max_examples=400, deadline=None)
@given(spec_like)
def test_loader_total_on_spec_shaped_input(d):
    try:
        s = Spec.from_dict(d)
    except SpecError:
        return
    assert Spec.from_json(s.to_json()) == s


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_loader_total_on_any_bytes(data):
    try:
        Spec.from_json(data)
    except SpecError:
        pass
