"""A spec string is bytes in UTF-8, a non-UTF-8 byte written as U+DC80-U+DCFF (what
os.fsdecode gives): through `wrapperd --spec`, spawn() and the fork server the target
gets that byte (its /proc/<pid>/cmdline and environ are the judge), and any other lone
surrogate is a SpecError (exit 125, one line, no traceback)."""

import json
import subprocess
import time

import pytest

import sandbox
from sandbox import SpecError
from sandbox.forkserver import ForkServer
from tests.conftest import TARGET_ENV, wrapperd_cmd

BYTE_ARG = "a\udc80b\udcff"             # the bytes a 0x80 b 0xff
BYTE_ENV = "v\udc80"


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs


def _proc_bytes(pid: int, what: str) -> "list[bytes]":
    with open(f"/proc/{pid}/{what}", "rb") as f:
        return f.read().split(b"\0")[:-1]


def _wait_exec(pid: int, program: bytes) -> None:
    """Until pid runs program (the shim execs it; cmdline changes then)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _proc_bytes(pid, "cmdline")[:1] == [program]:
                return
        except OSError:
            pass
        time.sleep(0.01)
    pytest.fail(f"pid {pid} never ran {program!r}")


def _spec():
    return {"argv": ["/bin/sh", "-c", "sleep 60; true", BYTE_ARG],
            "env": dict(TARGET_ENV, BYTES=BYTE_ENV)}


def _check_target(pid: int) -> None:
    _wait_exec(pid, b"/bin/sh")
    assert _proc_bytes(pid, "cmdline") == [b"/bin/sh", b"-c", b"sleep 60; true",
                                           b"a\x80b\xff"]
    assert b"BYTES=v\x80" in _proc_bytes(pid, "environ")


def test_wrapperd_spec_passes_the_byte_and_refuses_other_surrogates(tmp_path):
    f = tmp_path / "spec.json"
    f.write_text(json.dumps(_spec()))            # JSON escapes: "a\udc80b\udcff"
    p = subprocess.Popen(wrapperd_cmd("--spec", str(f)), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        _check_target(p.pid)                     # the shim execs in place: same pid
    finally:
        p.kill()
        p.wait()
    # A hostname too (its length is counted in bytes, 64 at most).
    f.write_text(json.dumps({"argv": ["/bin/cat", "/proc/sys/kernel/hostname"],
                             "env": TARGET_ENV, "hostname": "h\udc80" + "x" * 62,
                             "namespaces": {"uts": True}}))
    r = subprocess.run(wrapperd_cmd("--spec", str(f)), capture_output=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"h\x80" + b"x" * 62 + b"\n", b"")
    f.write_text(json.dumps({"argv": ["/bin/true"], "hostname": "h\udc80" + "x" * 63,
                             "namespaces": {"uts": True}}))
    r = subprocess.run(wrapperd_cmd("--spec", str(f)), capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (125, b"wrapperd: spec: hostname: longer than 64 "
                                             b"bytes\n")
    bad = dict(_spec(), argv=["/bin/true", "a\ud800"])
    f.write_text(json.dumps(bad))
    r = subprocess.run(wrapperd_cmd("--spec", str(f)), capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 125 and err.count("\n") == 1, err
    assert err.startswith("wrapperd: spec: argv[1]: a lone surrogate") and \
        "Traceback" not in err


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_spawn_passes_the_byte_and_refuses_other_surrogates(mode, server):
    start = server.spawn if mode == "fast" else sandbox.spawn
    with start(_spec()) as p:
        _check_target(p.target_pid)
        p.kill()
    for bad in (dict(_spec(), argv=["/bin/true", "a\ud800"]),
                dict(_spec(), env={"K": "\udfff"})):
        with pytest.raises(SpecError) as e:
            start(bad)
        assert "a lone surrogate" in str(e.value)
    # The fork server is still serving after the refusals.
    assert start(["/bin/true"], env=TARGET_ENV).wait() == 0
