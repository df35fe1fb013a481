"""Flags mode is Talos's /sbin/wrapperd, step for step: one test per row of README.md's
table ("Flags mode: Talos's shim"), plus machined's exact invocations.

The commands are the installed launcher (`make venv` writes .venv/bin/wrapperd, the
production entry) and `python3 -I -m wrapperd` (tests.conftest.wrapperd_cmd).  The
target is the probe, kept alive (sleep) while the test reads its state from the
outside: /proc/PID/status, limits, oom_score_adj, stat, cwd and cgroup.  The caller's
own state (oom_score_adj, NOFILE, gid, groups, working directory, session, terminal) is
set up to differ from what the old flags mode forced, so that each row fails there."""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import sysconfig
import time

import pytest

from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, skip_or_fail, wrapperd_cmd

ENTRIES = ("launcher", "module")
CALLER_OOM = 123             # raising one's own oom_score_adj needs no capability
CALLER_NOFILE_SOFT = 1024
CALLER_GID = 4242            # not nobody's group: the old flags mode switched to 65534
CALLER_GROUPS = (4243, 4244)
TALOS_NOFILE = 1048576
CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_RESOURCE = 21, 22, 24


def _cmd(entry: str, *args: str) -> list:
    if entry == "module":
        return wrapperd_cmd(*args)
    path = os.path.join(sysconfig.get_path("scripts"), "wrapperd")
    if not os.access(path, os.X_OK):
        skip_or_fail(f"no installed wrapperd command at {path} (make venv writes it)")
    return [path, *args]


def _caller_setup(gid: "int | None" = None, groups=None):
    """The caller's own state, set in the child before it execs wrapperd."""
    def setup():
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(CALLER_OOM))
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (CALLER_NOFILE_SOFT, hard))
        if groups is not None:
            os.setgroups(list(groups))
        if gid is not None:
            os.setresgid(gid, gid, gid)
    return setup


def _read_line(p: subprocess.Popen, timeout: float = 30) -> bytes:
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        if select.select([p.stdout], [], [], left)[0]:
            return p.stdout.readline()
    return b""


def _status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def _stat(pid: int) -> dict:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"ppid": int(fields[1]), "pgrp": int(fields[2]), "session": int(fields[3]),
            "tty_nr": int(fields[4])}


def _nofile(pid: int) -> "tuple[int, int]":
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _state(pid: int) -> dict:
    """The target's kernel-visible state, read from outside while it runs."""
    return {"status": _status(pid), "stat": _stat(pid), "nofile": _nofile(pid),
            "oom": int(_read(f"/proc/{pid}/oom_score_adj")),
            "cwd": os.readlink(f"/proc/{pid}/cwd"),
            "cgroup": _read(f"/proc/{pid}/cgroup").splitlines(),
            "environ": open(f"/proc/{pid}/environ", "rb").read()}


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()                 # by pid: wrapperd became the target
    p.wait(timeout=30)
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def run_flags(entry, probe, flags, *, cwd="/", env=None, gid=None, groups=None):
    """Run the probe under `wrapperd FLAGS PROBE sleep:30` (no '--', as machined does);
    return (state read from outside, probe report)."""
    argv = [SYSTEM_PYTHON, "-I", probe, "sleep:30"]
    p = subprocess.Popen(_cmd(entry, *flags, *argv), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=cwd,
                         env=dict(TARGET_ENV) if env is None else env,
                         preexec_fn=_caller_setup(gid, groups))
    try:
        line = _read_line(p)
        if not line:
            _stop(p)
            pytest.fail(f"wrapperd {flags}: no report; exit {p.returncode}")
        report = json.loads(line)
        # No fork in flags mode (no session, no pid namespace): wrapperd is the target.
        assert report["pid"] == p.pid
        state = _state(p.pid)
    finally:
        _stop(p)
    return state, report


def _stderr_of(entry, probe, flags, **kw) -> str:
    """wrapperd's stderr for a target that exits at once (the probe, no sleep)."""
    p = subprocess.run(_cmd(entry, *flags, SYSTEM_PYTHON, "-I", probe),
                       env=dict(TARGET_ENV), capture_output=True, timeout=60,
                       preexec_fn=_caller_setup(), **kw)
    assert p.returncode == 0, p.stderr
    return p.stderr.decode()


def _ids(status: dict, key: str) -> list:
    return [int(x) for x in status[key].split()]


def _own_bounding() -> int:
    return int(_status(os.getpid())["CapBnd"], 16)


# ----------------------------------------------------------------- one test per row

@pytest.mark.parametrize("entry", ENTRIES)
def test_oom_score_zero_is_not_written_and_non_zero_is(probe, entry):
    state, _r = run_flags(entry, probe, ["-oom-score=0"])
    assert state["oom"] == CALLER_OOM               # the caller's, untouched
    state, _r = run_flags(entry, probe, ["-oom-score=321"])
    assert state["oom"] == 321


def _talos_nofile_allowed() -> bool:
    """Whether this host lets wrapperd set Talos's 1048576 (the kernel's rules)."""
    nr_open = int(_read("/proc/sys/fs/nr_open"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = int(_status(os.getpid())["CapEff"], 16) >> CAP_SYS_RESOURCE & 1
    initial_userns = _read("/proc/self/uid_map").split() == ["0", "0", "4294967295"]
    return TALOS_NOFILE <= nr_open and (hard >= TALOS_NOFILE or (cap and initial_userns))


@pytest.mark.parametrize("entry", ENTRIES)
def test_nofile_is_talos_s_or_the_hard_limit_with_one_warning(probe, entry):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    state, _r = run_flags(entry, probe, ["-uid=65534"])
    err = _stderr_of(entry, probe, ["-uid=65534"])
    warnings = [x for x in err.splitlines()
                if x.startswith("wrapperd: rlimits: warning: ")]
    if _talos_nofile_allowed():
        assert state["nofile"] == (TALOS_NOFILE, TALOS_NOFILE)
        assert warnings == [], err
    else:
        # As on this machine (no CAP_SYS_RESOURCE): never silently lower than the host
        # allows -- the soft limit goes up to the hard one, and one line says so.
        assert state["nofile"] == (min(hard, int(_read("/proc/sys/fs/nr_open"))),) * 2
        assert state["nofile"][0] > CALLER_NOFILE_SOFT
        assert len(warnings) == 1 and "NOFILE 1048576" in warnings[0], err
        assert err.count("\n") == 1, err


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_cgroup_is_joined(probe, entry, cgroup_root):
    state, _r = run_flags(entry, probe, [f"-cgroup-path={cgroup_root}/svc"])
    assert any(line.endswith(f"{cgroup_root}/svc") for line in state["cgroup"]), \
        state["cgroup"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_listed_caps_leave_the_bounding_set_and_nothing_else_does(probe, entry):
    # Talos's shim skipped this when kernel.kexec_load_disabled was non-zero; wrapperd
    # drops them whatever it says (README: a deliberate difference).
    state, _r = run_flags(entry, probe, ["-dropped-caps=cap_sys_admin,cap_sys_boot"])
    want = _own_bounding() & ~(1 << CAP_SYS_ADMIN | 1 << CAP_SYS_BOOT)
    assert int(state["status"]["CapBnd"], 16) == want
    assert int(state["status"]["CapEff"], 16) == want           # a root target
    assert _ids(state["status"], "Uid") == [0] * 4


@pytest.mark.parametrize("entry", ENTRIES)
def test_setuid_keeps_the_callers_gid_and_groups(probe, entry):
    state, _r = run_flags(entry, probe, ["-uid=65534"], gid=CALLER_GID,
                             groups=CALLER_GROUPS)
    s = state["status"]
    assert _ids(s, "Uid") == [65534] * 4
    assert _ids(s, "Gid") == [CALLER_GID] * 4
    assert sorted(_ids(s, "Groups")) == list(CALLER_GROUPS)
    assert int(s["CapEff"], 16) == int(s["CapPrm"], 16) == 0     # setuid's usual drop


@pytest.mark.parametrize("entry", ENTRIES)
def test_uid_zero_changes_no_id(probe, entry):
    state, _r = run_flags(entry, probe, ["-uid=0"], gid=CALLER_GID,
                             groups=CALLER_GROUPS)
    s = state["status"]
    assert _ids(s, "Uid") == [0] * 4 and _ids(s, "Gid") == [CALLER_GID] * 4
    assert sorted(_ids(s, "Groups")) == list(CALLER_GROUPS)


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_environment_is_the_callers_byte_for_byte(probe, entry):
    # LANG=C would make Python add LC_CTYPE=C.UTF-8 to its own os.environ (PEP 538).
    env = {"PATH": TARGET_ENV["PATH"], "LANG": "C", "RAW": "\udcff\udcfe",
           "EMPTY": ""}
    state, _r = run_flags(entry, probe, ["-uid=65534"], env=env)
    want = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())
    assert state["environ"] == want


@pytest.mark.parametrize("entry", ENTRIES)
def test_no_new_privs_stays_off(probe, entry):
    state, _r = run_flags(entry, probe, ["-uid=65534"])
    assert state["status"]["NoNewPrivs"] == "0"


SETUID_HELPER = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d\n", (int)geteuid()); return 0; }
"""


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_setuid_helper_under_the_service_keeps_its_rights(scratch, entry):
    # What no_new_privs broke: a setuid-root program run by the service.
    src = scratch / "helper.c"
    helper = scratch / "setuid-helper"
    src.write_text(SETUID_HELPER)
    subprocess.run(["gcc", "-o", str(helper), str(src)], check=True, timeout=120)
    try:
        os.chmod(helper, 0o4755)
        p = subprocess.run(_cmd(entry, "-uid=65534", str(helper)), env=dict(TARGET_ENV),
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout == b"0\n"            # the file's owner, root (here: of the userns)
    finally:
        helper.unlink()                     # no setuid-root file left behind


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_callers_session_and_group_are_kept(probe, entry):
    state, _r = run_flags(entry, probe, ["-uid=65534"])
    assert state["stat"]["session"] == os.getsid(0)
    assert state["stat"]["pgrp"] == os.getpgid(0)


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_callers_working_directory_is_kept(probe, scratch, entry):
    workdir = scratch / "service dir"
    workdir.mkdir(mode=0o700)           # not even enterable by the target's uid
    state, _r = run_flags(entry, probe, ["-uid=65534"], cwd=str(workdir))
    assert state["cwd"] == str(workdir)


# The caller leads a new session with the pty as its controlling terminal, prints its
# session id, then runs wrapperd as a child or becomes it (wrapperd then leads the
# session: the old flags mode forked there to call setsid).
PTY_CALLER = """\
import fcntl, os, subprocess, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
print(os.getsid(0), flush=True)
if sys.argv[1] == "exec":
    os.execv(sys.argv[2], sys.argv[2:])
sys.exit(subprocess.call(sys.argv[2:]))
"""


def _tty_nr(fd: int) -> int:
    """The device number of a terminal as /proc/PID/stat's tty_nr encodes it."""
    rdev = os.fstat(fd).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    return (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)


@pytest.mark.parametrize("how", ["child", "exec"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_target_on_a_pty_keeps_its_controlling_terminal(probe, entry, how):
    master, slave = os.openpty()
    cmd = _cmd(entry, "-uid=65534", SYSTEM_PYTHON, "-I", probe, "sleep:30")
    p = None
    try:
        want_tty = _tty_nr(slave)
        p = subprocess.Popen([sys.executable, "-c", PTY_CALLER, how, *cmd],
                             stdin=slave, stdout=subprocess.PIPE, stderr=slave,
                             start_new_session=True, env=dict(TARGET_ENV))
        os.close(slave)
        slave = -1
        sid = int(_read_line(p) or b"0")
        line = _read_line(p)
        assert line, "no report from the target"
        pid = json.loads(line)["pid"]
        stat = _stat(pid)
        assert sid == p.pid
        assert stat["session"] == sid and stat["tty_nr"] == want_tty
        if how == "exec":
            assert pid == p.pid             # no fork: wrapperd became the target
        else:
            assert stat["ppid"] == p.pid and stat["pgrp"] == p.pid
        os.kill(pid, 9)
    finally:
        if p is not None:
            if p.poll() is None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            p.stdout.close()
        os.close(master)
        if slave != -1:
            os.close(slave)


@pytest.mark.parametrize("entry", ENTRIES)
def test_path_lookup_and_exit_codes(entry, tmp_path):
    def run(*args):
        p = subprocess.run(_cmd(entry, "-uid=65534", *args), env=dict(TARGET_ENV),
                           capture_output=True, timeout=60)
        # Less the NOFILE warning, where this host forbids Talos's limit.
        lines = [x for x in p.stderr.decode().splitlines(keepends=True)
                 if not x.startswith("wrapperd: rlimits: warning: ")]
        return p.returncode, "".join(lines)
    rc, err = run("sh", "-c", "exit 7")             # found in PATH (Talos: exec as given)
    assert rc == 7
    rc, err = run("no-such-program-x")
    assert rc == 127 and err.startswith("wrapperd: exec: ") and err.count("\n") == 1
    f = tmp_path / "noexec"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    rc, err = run(str(f))
    assert rc == 126 and err.startswith("wrapperd: exec: ")
    p = subprocess.run(_cmd(entry, "-dropped-caps=cap_nonsense", "/bin/true"),
                       env=dict(TARGET_ENV), capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 125 and err.startswith("wrapperd: spec: ")
    assert err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------- machined's invocations

def _machined(style: str, cgroup: str, caps: str, oom: int, uid: int) -> list:
    pairs = [("name", "svc"), ("dropped-caps", caps), ("cgroup-path", cgroup),
             ("oom-score", str(oom)), ("uid", str(uid))]
    if style == "-flag=value":        # exactly what machined's process runner passes
        return [f"-{k}={v}" for k, v in pairs]
    if style == "--flag=value":
        return [f"--{k}={v}" for k, v in pairs]
    dash = "-" if style == "-flag value" else "--"
    return [x for k, v in pairs for x in (f"{dash}{k}", v)]


@pytest.mark.parametrize("style", ["-flag=value", "-flag value", "--flag=value",
                                   "--flag value"])
@pytest.mark.parametrize("caps, uid", [("cap_sys_admin,cap_sys_boot", 0),
                                       ("cap_sys_admin,CAP_SYS_BOOT", 65534)])
def test_machined_invocations(probe, scratch, cgroup_root, style, caps, uid):
    flags = _machined(style, f"{cgroup_root}/svc", caps, 0, uid)
    state, _r = run_flags("launcher", probe, flags, cwd=str(scratch), gid=CALLER_GID,
                             groups=CALLER_GROUPS)
    s = state["status"]
    want = _own_bounding() & ~(1 << CAP_SYS_ADMIN | 1 << CAP_SYS_BOOT)
    assert int(s["CapBnd"], 16) == want
    assert _ids(s, "Uid") == [uid] * 4 and _ids(s, "Gid") == [CALLER_GID] * 4
    assert sorted(_ids(s, "Groups")) == list(CALLER_GROUPS)
    assert state["oom"] == CALLER_OOM                 # -oom-score=0: not written
    assert s["NoNewPrivs"] == "0" and state["cwd"] == str(scratch)
    assert state["stat"]["session"] == os.getsid(0)
    assert any(line.endswith(f"{cgroup_root}/svc") for line in state["cgroup"])


def test_machined_empty_dropped_caps_and_uid_zero_change_nothing(probe, scratch):
    # A service with no caps to drop: machined still passes the flag, empty.
    flags = ["-name=svc", "-dropped-caps=", "-oom-score=0", "-uid=0"]
    state, _r = run_flags("launcher", probe, flags, cwd=str(scratch), gid=CALLER_GID,
                             groups=CALLER_GROUPS)
    s = state["status"]
    assert int(s["CapBnd"], 16) == int(s["CapEff"], 16) == _own_bounding()
    assert _ids(s, "Uid") == [0] * 4 and _ids(s, "Gid") == [CALLER_GID] * 4
    assert state["oom"] == CALLER_OOM and s["NoNewPrivs"] == "0"
    assert state["cwd"] == str(scratch) and state["stat"]["session"] == os.getsid(0)


# ----------------------------------------------------------------- one flag away

def test_profile_talos_is_the_safer_mode(probe, scratch):
    # --profile (or a spec) leaves flags mode: a new session, cwd /, the user's own gid
    # and groups from the user database, the caller's NOFILE.
    state, _r = run_flags("launcher", probe,
                             ["--profile", "talos", "-uid=65534", "--"], cwd=str(scratch),
                             gid=CALLER_GID, groups=CALLER_GROUPS)
    s = state["status"]
    assert _ids(s, "Gid") == [65534] * 4 and _ids(s, "Groups") == []
    assert state["cwd"] == "/" and state["stat"]["session"] != os.getsid(0)
    assert state["nofile"][0] == CALLER_NOFILE_SOFT
    assert not int(s["CapBnd"], 16) >> CAP_SYS_BOOT & 1    # the profile's drop
