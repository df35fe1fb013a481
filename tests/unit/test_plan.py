"""The prepared form (sandbox.plan) and the lean entry point (wrapperd --plan-fd):
round trips, and every kind of malformed plan refused with exit 125, one line, no
traceback, the target never run.  No privileges needed: a bad plan is refused before
any step."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from sandbox import SpecError, _record, plan
from sandbox.spawning import lean_command, package_root
from sandbox.spec import Spec
from tests.conftest import imported_in_lean_python
from wrapperd import shim

SPEC = {"argv": ["/bin/true"], "env": {"PATH": "/usr/bin:/bin"},
        "capabilities": {"drop": ["CAP_SYS_ADMIN"]}, "no_new_privs": True,
        "seccomp": {"profile": "default"}, "namespaces": {"pid": True, "ipc": True},
        "rlimits": {"CORE": [0, 0]}, "user": {"uid": os.getuid(), "umask": "0027"},
        "oom_score_adj": 100}


def encoded(spec=SPEC) -> bytes:
    return plan.encode(shim.prepare(Spec.from_dict(spec)))


def test_round_trip_gives_the_same_records():
    p = shim.prepare(Spec.from_dict(SPEC))
    q = plan.decode(plan.encode(p))
    for name in plan.PLAN_FIELDS:
        assert getattr(q, name) == getattr(p, name), name
    assert q.target.executable == "/bin/true" and q.target.argv == ("/bin/true",)
    assert q.target.env == {"PATH": "/usr/bin:/bin"}
    assert q.procattr.umask == 0o027 and q.procattr.no_new_privs is True
    assert q.procattr.oom_score_adj == 100 and q.rlimits.limits[0][0] == "CORE"
    assert q.seccomp.program == p.seccomp.program and q.seccomp.instructions > 100


def test_decoding_needs_no_attrs_json_or_libseccomp():
    # The lean shim's promise, checked in a fresh `python -I -S`.  Nor ctypes itself:
    # sandbox._libc builds the few types the steps use on _ctypes (about 3 ms less).
    assert imported_in_lean_python(
        "from sandbox import plan; plan.decode(sys.stdin.buffer.read())",
        ("attrs", "attr", "json", "re", "pyseccomp", "psutil", "cgroupspy", "argparse",
         "typing", "enum", "sandbox.spec", "ctypes", "struct"), stdin=encoded()) == []


def test_steps_read_only_records_a_plan_carries():
    # The spec stays with prepare(): a step reads facility records, which the plan
    # carries, and nothing else of the Plan.
    import inspect
    steps = "".join(inspect.getsource(step) for _name, step in shim.STEPS)
    steps += inspect.getsource(shim._before_fork)
    steps += "".join(inspect.getsource(needed) for _module, needed in shim.STEP_MODULES)
    used = set(re.findall(r"\bplan\.(\w+)", steps))
    assert used and used <= set(plan.PLAN_FIELDS), used - set(plan.PLAN_FIELDS)
    assert not hasattr(shim.Plan(), "spec")
    assert shim.Plan.__record_fields__ == tuple(plan.PLAN_FIELDS)


def test_a_plan_is_frozen_and_a_step_that_changes_it_returns_a_new_one():
    p = shim.prepare(Spec.from_dict(SPEC))
    with pytest.raises(AttributeError):
        p.creds = None
    q = _record.replace(p, creds=None)
    assert q.creds is None and p.creds is not None and q.caps is p.caps


def test_every_plan_record_declares_the_types_decode_checks():
    for tag in plan.RECORDS:
        cls = plan._record_class(tag)
        assert tuple(cls.__record_types__) == cls.__record_fields__, tag


def test_every_plan_record_is_encoded_under_the_tag_that_decodes_to_it():
    # A record defined in a module of a package (cgroups.hierarchy.Hierarchy) is named
    # by the package that exports it.
    for tag in plan.RECORDS:
        assert plan._tag(plan._record_class(tag)) == tag


def _mutations(spec=SPEC):
    def drop(key):
        return lambda d: d.pop(key)
    raw = encoded(spec)
    yield "not json", b"{nope"
    yield "not utf-8", b"\xff\xfe"
    yield "a list", b"[]"
    yield "trailing data", raw + b" {}"
    yield "truncated", raw[:-40]
    yield "nan", raw.replace(b'"no_new_privs":true', b'"no_new_privs":NaN')
    muts = {
        "wrong version": lambda d: d.update(wrapperd_plan=plan.FORMAT + 1),
        "no version": drop("wrapperd_plan"),
        "missing caps": drop("caps"),
        "extra top field": lambda d: d.update(extra=1),
        "unknown record": lambda d: d["caps"].update({"@": "os.system"}),
        "missing record field": lambda d: d["caps"]["f"].pop("bounding"),
        "extra record field": lambda d: d["caps"]["f"].update(evil=1),
        "wrong field type": lambda d: d["caps"]["f"].update(bounding="all"),
        "bool for int": lambda d: d["caps"]["f"].update(last_cap=True),
        "record in the wrong slot": lambda d: d.update(seccomp=d["caps"]),
        "bad hex": lambda d: d["seccomp"]["f"]["program"].update({"@bytes": "zz"}),
        "missing procattr": lambda d: d.update(procattr=None),
        "missing target": lambda d: d.update(target=None),
        "empty argv": lambda d: d["target"]["f"].update(argv=[]),
        "argv not strings": lambda d: d["target"]["f"].update(argv=["/bin/true", 1]),
        "env not strings": lambda d: d["target"]["f"].update(env={"@dict": [["A", 1]]}),
        "env a plain object": lambda d: d["target"]["f"].update(env={"A": "1"}),
        "missing procattr field": lambda d: d["procattr"]["f"].pop("cwd"),
        "umask a string": lambda d: d["procattr"]["f"].update(umask="0027"),
        "negative pass_fd": lambda d: d["fds"]["f"].update(pass_fds=[-1]),
        "bad rlimits": lambda d: d["rlimits"]["f"].update(limits=[["CORE", 4, "x", 0]]),
        "rlimits not a record": lambda d: d.update(rlimits=[["CORE", 4, 0, 0]]),
        "executable not a string": lambda d: d["target"]["f"].update(executable=None),
    }
    for name, mut in muts.items():
        d = json.loads(raw)
        mut(d)
        yield name, json.dumps(d).encode()


MALFORMED = dict(_mutations())


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_plan_is_refused(name):
    with pytest.raises(SpecError) as e:
        plan.decode(MALFORMED[name])
    assert "malformed plan" in str(e.value)


@pytest.mark.parametrize("lean", [False, True], ids=["-m wrapperd", "python -I -S"])
@pytest.mark.parametrize("name", ["not json", "unknown record", "wrong field type",
                                  "truncated", "missing procattr field"])
def test_malformed_plan_exits_125_and_never_runs_the_target(tmp_path, name, lean):
    marker = tmp_path / "ran"
    touch = dict(SPEC, argv=["/bin/touch", str(marker)])
    bad = dict(_mutations(touch))[name]
    r_fd, w_fd = os.pipe()
    s_r, s_w = os.pipe()
    os.write(w_fd, bad)
    os.close(w_fd)
    cmd = lean_command(package_root(), r_fd, s_w) if lean else \
        [sys.executable, "-I", "-m", "wrapperd", "--plan-fd", str(r_fd),
         "--status-fd", str(s_w)]
    p = subprocess.run(cmd, pass_fds=(r_fd, s_w), capture_output=True, timeout=30)
    os.close(r_fd)
    os.close(s_w)
    with os.fdopen(s_r, "rb") as f:
        record = json.loads(f.read())
    err = p.stderr.decode()
    assert p.returncode == 125, err
    assert err.count("\n") == 1 and err.startswith("wrapperd: spec: malformed plan"), err
    assert "Traceback" not in err
    assert record["step"] == "spec" and "malformed plan" in record["message"]
    assert not marker.exists()


def test_control_the_same_plan_unbroken_runs_the_target(tmp_path):
    marker = tmp_path / "ran"
    spec = {"argv": ["/bin/touch", str(marker)], "env": {}}
    r_fd, w_fd = os.pipe()
    s_r, s_w = os.pipe()
    os.write(w_fd, encoded(spec))
    os.close(w_fd)
    p = subprocess.run(lean_command(package_root(), r_fd, s_w), pass_fds=(r_fd, s_w),
                       capture_output=True, timeout=30)
    os.close(r_fd)
    os.close(s_w)
    with os.fdopen(s_r, "rb") as f:
        assert f.read() == b""               # EOF, no record: exec'd
    assert p.returncode == 0, p.stderr
    assert marker.exists()
