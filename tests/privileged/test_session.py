"""A new session by default: a target left on the caller's terminal could push input into
it with TIOCSTI (bubblewrap CVE-2017-5226).  Real ptys, real sessions: a caller makes a
pty its controlling terminal (setsid + TIOCSCTTY) and runs wrapperd with stdin on the
pty's slave, either as an ordinary child (setsid works at once) or exec'd in its place as
the session leader (setsid fails with EPERM: wrapperd forks once and supervises).  The
probe reports its own session from /proc/self/stat and what ioctl(0, TIOCSTI) did; the
injected byte, when there is one, is read back from the pty's master (the echo)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import sandbox
from sandbox.spawning import PIPE
from tests.conftest import ROOTLESS, probe_spec, skip_or_fail, wrapperd_cmd

# The caller: leads a new session (Popen start_new_session), makes the pty on its stdin
# and stderr (stdout is a pipe, for the reports) its controlling terminal, then runs
# wrapperd as its child ("child") or becomes it ("exec": wrapperd then leads the session
# and its process group).
CALLER = """\
import fcntl, os, subprocess, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
print(os.getsid(0), flush=True)
if sys.argv[1] == "exec":
    os.execv(sys.argv[2], sys.argv[2:])
sys.exit(subprocess.call(sys.argv[2:]))
"""

NOBODY = {"uid": 65534, "gid": 65534}   # no CAP_SYS_ADMIN: it would bypass the tty check


def _legacy_tiocsti() -> None:
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
            if f.read().strip() == "0":
                skip_or_fail("dev.tty.legacy_tiocsti is 0: the kernel refuses TIOCSTI to "
                             "all but CAP_SYS_ADMIN, so the control cannot inject")
    except FileNotFoundError:
        pass                            # before Linux 6.2: TIOCSTI always allowed


def _echoed(master: int, wait: float) -> bytes:
    out = b""
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0 and select.select([master], [], [], left)[0]:
        try:
            chunk = os.read(master, 1024)
        except OSError:                 # EIO: the slave side is gone
            break
        if not chunk:
            break
        out += chunk
    return out


def _on_a_terminal(spec: dict, scratch, how: str):
    """Run wrapperd under a caller holding a pty as its controlling terminal; return
    (caller's session id, caller pid, wrapperd's exit code, probe report, echo)."""
    path = scratch / "spec.json"
    path.write_text(json.dumps(spec))
    master, slave = os.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-c", CALLER, how,
                              *wrapperd_cmd("--spec", str(path))],
                             stdin=slave, stdout=subprocess.PIPE, stderr=slave,
                             start_new_session=True)
        os.close(slave)
        slave = -1
        out, _ = p.communicate(timeout=30)
        echo = _echoed(master, 0.5)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    sid_line, _, report = out.decode().partition("\n")
    assert p.returncode == 0, echo                  # wrapperd's stderr is the terminal
    return int(sid_line), p.pid, json.loads(report), echo


@pytest.mark.parametrize("how", ["child", "exec"])
def test_target_cannot_push_input_into_the_callers_terminal(probe, scratch, how):
    _legacy_tiocsti()
    spec = probe_spec(probe, "tiocsti", user=NOBODY)       # no seccomp filter
    sid, caller, r, echo = _on_a_terminal(spec, scratch, how)
    assert sid == caller
    assert r["tiocsti"] == "EPERM"                  # not its controlling terminal
    assert r["stat"]["session"] == r["pid"] != sid  # it leads a session of its own
    assert r["stat"]["pgrp"] == r["pid"]
    assert r["stat"]["tty_nr"] == 0                 # and has no controlling terminal
    if how == "exec":                               # wrapperd led the group: it forked
        assert r["pid"] != caller and r["stat"]["ppid"] == caller
    assert b"x" not in echo


@pytest.mark.parametrize("how", ["child", "exec"])
def test_control_without_new_session_the_target_can_inject(probe, scratch, how):
    _legacy_tiocsti()
    spec = probe_spec(probe, "tiocsti", user=NOBODY, new_session=False)
    sid, caller, r, echo = _on_a_terminal(spec, scratch, how)
    assert r["tiocsti"] == "ok"
    assert r["stat"]["session"] == sid and r["stat"]["tty_nr"] != 0
    if how == "exec":
        assert r["pid"] == caller                   # no fork: wrapperd became the target
    assert b"x" in echo                             # the byte reached the terminal's input


def _start_as_group_leader(spec: dict, **kw) -> subprocess.Popen:
    r, w = os.pipe()
    os.write(w, json.dumps(spec).encode())
    os.close(w)
    try:
        return subprocess.Popen(wrapperd_cmd("--spec-fd", str(r)), pass_fds=(r,),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    finally:
        os.close(r)


@pytest.mark.parametrize("leader", ["process_group", "start_new_session"])
def test_a_group_leader_wrapperd_forks_and_passes_signals_and_status(probe, leader):
    kw = {"process_group": 0} if leader == "process_group" else {"start_new_session": True}
    p = _start_as_group_leader(probe_spec(probe, "sleep:30", user=NOBODY), **kw)
    try:
        r = json.loads(p.stdout.readline())
        target = r["pid"]
        assert os.getpgid(p.pid) == p.pid               # wrapperd led its group
        assert target != p.pid and r["stat"]["ppid"] == p.pid
        assert r["stat"]["session"] == r["stat"]["pgrp"] == target
        assert os.getsid(p.pid) != target
        assert os.listdir(f"/proc/{p.pid}/fd") == []    # the supervisor holds no fd
        p.send_signal(signal.SIGTERM)                   # forwarded to the target
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    assert not os.path.exists(f"/proc/{target}")


def test_a_group_leader_wrapperd_passes_the_exit_code_and_fails_closed(probe, scratch):
    p = _start_as_group_leader({"argv": ["/bin/sh", "-c", "exit 7"], "env": {}},
                               process_group=0)
    p.communicate(timeout=30)
    assert p.returncode == 7
    # A step after the fork fails: the child reports it, the supervisor passes on 125.
    marker = scratch / "ran"
    p = _start_as_group_leader(probe_spec(probe, f"touch:{marker}"), process_group=0,
                               env=dict(os.environ, WRAPPERD_FAULT="fail:fds"))
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 125
    assert err.decode() == f"wrapperd: fds: fault injected (WRAPPERD_FAULT): " \
                           f"{os.strerror(5)}\n"
    assert not marker.exists()


@pytest.mark.parametrize("fast", [False, True])
def test_spawn_gives_a_new_session_without_a_fork(probe, fast):
    p = sandbox.spawn(probe_spec(probe), stdout=PIPE, fast=fast)
    with p:
        r = json.loads(p.stdout.readline())
        assert p.wait(timeout=30) == 0
    assert r["pid"] == p.pid == p.target_pid                  # no supervisor in between
    assert r["stat"]["session"] == r["stat"]["pgrp"] == r["pid"] != os.getsid(0)
    # Control: the caller's session, when asked for.
    p = sandbox.spawn(probe_spec(probe, new_session=False), stdout=PIPE, fast=fast)
    with p:
        r = json.loads(p.stdout.readline())
        assert p.wait(timeout=30) == 0
    assert r["stat"]["session"] == os.getsid(0)


def test_a_target_holding_cap_sys_admin_still_injects_in_a_new_session(probe, scratch):
    # What the kernel does (drivers/tty/tty_io.c: tiocsti): CAP_SYS_ADMIN in the initial
    # user namespace may push input into any terminal it has open, controlling or not.
    # So a new session does not stop a root target that keeps CAP_SYS_ADMIN: the
    # `default`/`strict` seccomp profiles (TIOCSTI -> EPERM) or stdio that is not a
    # terminal do (SECURITY.md).  In the rootless run nobody holds it there: EPERM.
    _legacy_tiocsti()
    spec = probe_spec(probe, "tiocsti", capabilities={"drop": ["CAP_SYS_MODULE"]})
    _sid, _caller, r, echo = _on_a_terminal(spec, scratch, "child")
    assert r["stat"]["session"] == r["pid"] and r["stat"]["tty_nr"] == 0
    if ROOTLESS:
        assert r["tiocsti"] == "EPERM" and b"x" not in echo
    else:
        assert r["tiocsti"] == "ok" and b"x" in echo
    # With the default seccomp profile the same target cannot.
    spec = probe_spec(probe, "tiocsti", capabilities={"drop": ["CAP_SYS_MODULE"]},
                      seccomp={"profile": "default"})
    _sid, _caller, r, echo = _on_a_terminal(spec, scratch, "child")
    assert r["tiocsti"] == "EPERM" and b"x" not in echo


def test_process_handle_finds_the_target_behind_the_session_fork(probe):
    # spawn() never makes wrapperd fork for the session (it is an ordinary child), but a
    # handle around a wrapperd that did must still find and stop the target.
    from sandbox import Spec
    from sandbox.process import Process
    spec = probe_spec(probe, "sleep:30", user=NOBODY)
    p = _start_as_group_leader(spec, process_group=0)
    proc = Process(p, Spec.from_dict(spec))
    try:
        r = json.loads(p.stdout.readline())
        assert r["pid"] != p.pid
        assert proc.target_pid == r["pid"]
        assert proc.stop(10).wait() == 128 + signal.SIGTERM   # forwarded, passed on
    finally:
        proc.close(grace=1)
    assert not os.path.exists(f"/proc/{r['pid']}")
