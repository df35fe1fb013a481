"""One home for exit codes and the status record: what the shim writes, the library
reads back as the same error."""

from __future__ import annotations

import errno
import json

from sandbox import errors
from sandbox.errors import ExecError, SetupError, SpecError


def test_exit_codes():
    assert errors.exit_code(SpecError("bad")) == 125
    assert errors.exit_code(SetupError("cgroup", errno.EACCES, "join")) == 125
    assert errors.exit_code(ExecError(errno.ENOENT, "execve x")) == 127
    assert errors.exit_code(ExecError(errno.EACCES, "execve x")) == 126
    assert errors.exit_code(RuntimeError("boom")) == 125


def test_a_record_reads_back_as_the_error_it_stands_for():
    for err in (SpecError("argv: empty"), SetupError("cgroup", errno.EACCES, "join"),
                ExecError(errno.ENOENT, "execve /nope"), SetupError("m", 0, "caf\u00e9 \udc80")):
        raw = errors.status_record(err)
        assert raw.endswith(b"\n") and raw.isascii()
        back = errors.error_from_record(raw, errors.exit_code(err), 42)
        assert type(back) is type(err)
        assert (back.step, back.errno, back.message) == (err.step, err.errno, err.message)
        assert back.exit_status == errors.exit_code(err) and back.pid == 42


def test_readers_ignore_members_they_do_not_understand():
    raw = json.dumps({"step": "seccomp", "errno": 22, "message": "load",
                      "future": {"x": 1}}).encode() + b"\n"
    back = errors.error_from_record(raw, 125, None)
    assert (back.step, back.errno, back.message) == ("seccomp", 22, "load")


def test_an_unreadable_record_is_still_an_error():
    back = errors.error_from_record(b"garbage", 1, 7)
    assert isinstance(back, SetupError) and back.step == "spawn"
    assert "unreadable status record" in back.message


def test_anything_else_is_reported_as_internal():
    rec = json.loads(errors.status_record(KeyError("k")))
    assert rec["step"] == "internal" and "KeyError" in rec["message"]
