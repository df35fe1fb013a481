"""The spec loader: strict JSON, every field validated and named by path."""

import json
import os

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


# Strings as bytes in UTF-8, with a non-UTF-8 byte written as U+DC80-U+DCFF (what
# os.fsdecode gives): any input string is a Spec or a SpecError, and a Spec's strings
# survive JSON, the plan and os.fsencode without a UnicodeEncodeError.
any_text = st.one_of(
    st.text(st.sampled_from("ab/é\udc80\udcff\ud800"), max_size=6),   # mostly valid
    st.text(st.characters(exclude_categories=()), max_size=6),        # anything at all
    st.sampled_from(["\udc80", "\udcff", "\ud800", "\udbff\udc00", "\udfff",
                     "a\udc80b", "tmp"]))


def _spec_with(t):
    return st.fixed_dictionaries({
        "argv": st.lists(t, min_size=1, max_size=3).map(lambda a: ["/bin/true", *a]),
        "env": st.dictionaries(t, t, max_size=3),
        "cwd": t.map(lambda s: "/" + s),
        "hostname": t,
        "name": t,
        "user": st.fixed_dictionaries({"uid": t | st.just(0), "gid": st.just(0)}),
        "namespaces": st.just({"uts": True, "mount": True}),
        "mounts": st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["bind", "tmpfs"]), "source": t.map(lambda s: "/" + s),
             "destination": t.map(lambda s: "/tmp/" + s)}), max_size=2),
        "masked_paths": st.lists(t.map(lambda s: "/" + s), max_size=2),
        "cgroup": st.fixed_dictionaries({"path": t}),
        "seccomp": st.fixed_dictionaries({"default_action": st.just("allow"),
                                          "syscalls": st.lists(st.fixed_dictionaries(
                                              {"names": st.lists(t, max_size=2),
                                               "action": st.just("errno:EPERM")}),
                                              max_size=1)}),
    }, optional={})


@settings(max_examples=300, deadline=None)
@given(_spec_with(any_text), st.sets(st.sampled_from(
    ["env", "hostname", "name", "user", "namespaces", "mounts", "masked_paths", "cgroup",
     "seccomp"])))
def test_any_string_is_a_spec_or_a_spec_error_and_encodes(d, drop):
    from sandbox import plan
    from sandbox.errors import SandboxError
    from wrapperd import shim
    d = {k: v for k, v in d.items() if k not in drop}
    try:
        s = Spec.from_dict(d)
    except SpecError as e:
        assert e.message.split(":")[0], e.message        # names the field
        return
    assert Spec.from_json(s.to_json()) == s
    assert Spec.from_json(s.to_json().encode("ascii")) == s
    for a in s.argv:
        assert os.fsdecode(os.fsencode(a)) == a
    try:
        p = shim.prepare(s)
    except SandboxError:
        return
    q = plan.decode(plan.encode(p))
    assert q.target.argv == s.argv and q.target.env == s.env and q.procattr.cwd == s.cwd


@pytest.mark.parametrize("field,where", [
    ({"argv": ["/bin/true", "a\ud800"]}, "argv[1]"),
    ({"env": {"K": "\udfff"}}, "env.K"),
    ({"env": {"K\ud800": "v"}}, "env"),
    ({"cwd": "/\udbff"}, "cwd"),
    ({"hostname": "h\ud800", "namespaces": {"uts": True}}, "hostname"),
])
def test_a_lone_surrogate_that_is_no_byte_names_its_field(field, where):
    with pytest.raises(SpecError) as e:
        Spec.from_dict(dict({"argv": ["/bin/true"]}, **field))
    assert e.value.message.startswith(where + ": a lone surrogate")


def test_a_surrogate_escaped_byte_is_that_byte():
    s = Spec.from_dict({"argv": ["/bin/echo", "a\udc80b"], "hostname": "h\udcff",
                        "namespaces": {"uts": True}})
    assert os.fsencode(s.argv[1]) == b"a\x80b"
    assert Spec.from_json(s.to_json()).argv[1] == "a\udc80b"


byte_text = st.text(st.sampled_from("ab/é\udc80\udcff"), max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(byte_text, max_size=3), st.dictionaries(st.text("AB_", min_size=1,
                                                                 max_size=3), byte_text,
                                                         max_size=3), byte_text)
def test_surrogate_escaped_bytes_reach_the_plan_unchanged(args, env, cwd):
    from sandbox import plan
    from wrapperd import shim
    s = Spec.from_dict({"argv": ["/bin/true", *args], "env": env, "cwd": "/" + cwd})
    q = plan.decode(plan.encode(shim.prepare(s)))
    assert [os.fsencode(a) for a in q.target.argv] == [os.fsencode(a) for a in s.argv]
    assert q.target.env == s.env and q.procattr.cwd == s.cwd


def test_cwd_inherit_is_no_chdir_and_round_trips():
    from sandbox import plan
    from wrapperd import shim
    s = Spec.from_dict({"argv": ["/bin/true"], "cwd": "inherit"})
    assert s.cwd is None                                # the shim's cwd step skips chdir
    assert s.to_dict()["cwd"] == "inherit" and Spec.from_json(s.to_json()) == s
    assert plan.decode(plan.encode(shim.prepare(s))).procattr.cwd is None
    # Not given, or null ("not set"): "/", as before.
    assert Spec.from_dict({"argv": ["/bin/true"]}).cwd == "/"
    assert Spec.from_dict({"argv": ["/bin/true"], "cwd": None}).cwd == "/"
