"""Hardening: fail closed at every step, fd and environment hygiene, /proc/self/exe, and
no ptrace of the shim by the target's uid while it still holds privileges."""

import ctypes
import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import (
    SYSTEM_PYTHON,
    needs_host_root,
    probe_spec,
    run_probe,
    run_wrapperd,
    skip_or_fail,
    until,
    wrapperd_cmd,
)
from wrapperd import shim

STEP_NAMES = [n for n, _ in shim.STEPS]


@pytest.mark.parametrize("step", STEP_NAMES)
def test_every_step_fails_closed(probe, scratch, step):
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", user={"uid": 65534},
                      capabilities={"drop": ["CAP_SYS_ADMIN"]})
    r, w = os.pipe()
    env = dict(os.environ, WRAPPERD_FAULT=f"fail:{step}")
    p = run_wrapperd(spec, "--status-fd", str(w), pass_fds=(w,), env=env)
    os.close(w)
    with os.fdopen(r) as f:
        rec = json.loads(f.readline())
    assert p.returncode == 125
    assert rec["step"] == step and rec["errno"] == 5
    assert p.stderr.decode() == f"wrapperd: {step}: fault injected (WRAPPERD_FAULT): " \
                                f"{os.strerror(5)}\n"
    assert not marker.exists()


@pytest.mark.parametrize("field, value, step", [
    ("oom_score_adj", -1000, "oom_score_adj"),       # lowering needs CAP_SYS_RESOURCE
    ("cwd", "/nonexistent/dir", "cwd"),
    ("pass_fds", [987], "fds"),
    ("cgroup", {"path": "/wrapperd-test-absent/x", "create": False, "version": 2}, "cgroup"),
])
def test_impossible_values_fail_at_their_step(probe, scratch, field, value, step):
    if field == "oom_score_adj":
        from sandbox import caps
        if caps.bounding_set() >> caps.cap_number("CAP_SYS_RESOURCE") & 1:
            needs_host_root("in a user namespace root holds CAP_SYS_RESOURCE (for that ns)")
            skip_or_fail("wrapperd holds CAP_SYS_RESOURCE here")
    marker = scratch / "ran"
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}", **{field: value}))
    assert p.returncode == 125, p.stderr
    assert p.stderr.decode().startswith(f"wrapperd: {step}: "), p.stderr
    assert not marker.exists()


def test_capability_step_fails_closed_without_cap_setpcap(probe, scratch):
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", capabilities={"drop": ["CAP_SYS_ADMIN"]})
    cmd = ["/usr/bin/setpriv", "--bounding-set=-setpcap", "--"] + wrapperd_cmd("--spec", "-")
    p = subprocess.run(cmd, input=json.dumps(spec).encode(), capture_output=True, timeout=30)
    assert p.returncode == 125
    assert p.stderr.decode().startswith("wrapperd: capabilities: drop CAP_SYS_ADMIN"), p.stderr
    assert not marker.exists()


def test_target_exe_is_the_target(probe):
    r = run_probe(probe_spec(probe))
    assert r["exe"] == os.path.realpath(SYSTEM_PYTHON)


def test_no_secret_or_loader_variable_leaks(probe):
    env = dict(os.environ, LD_PRELOAD="/nonexistent.so", LD_LIBRARY_PATH="/x",
               PYTHONPATH="/y", API_TOKEN="secret")
    r = run_probe(probe_spec(probe), env=env)
    assert not {"LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "API_TOKEN"} & set(r["env"])


def test_spec_and_status_fds_do_not_reach_the_target(probe):
    spec_r, spec_w = os.pipe()
    st_r, st_w = os.pipe()
    os.write(spec_w, json.dumps(probe_spec(probe)).encode())
    os.close(spec_w)
    p = subprocess.run(wrapperd_cmd("--spec-fd", str(spec_r), "--status-fd", str(st_w)),
                       pass_fds=(spec_r, st_w), capture_output=True, timeout=30)
    os.close(spec_r)
    os.close(st_w)
    assert os.read(st_r, 100) == b""
    os.close(st_r)
    assert p.returncode == 0, p.stderr
    assert sorted(int(fd) for fd in json.loads(p.stdout)["fds"]) == [0, 1, 2]


PTRACE_ATTACH, PTRACE_DETACH = 16, 17


def _ptrace_as(uid: int, pid: int) -> int:
    """Fork, drop to uid, try PTRACE_ATTACH on pid; return the errno (0: attached)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            libc = ctypes.CDLL(None, use_errno=True)
            ret = libc.ptrace(PTRACE_ATTACH, pid, None, None)
            err = 0 if ret == 0 else ctypes.get_errno()
            if ret == 0:
                libc.ptrace(PTRACE_DETACH, pid, None, None)
            os.write(w, str(err).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    out = os.read(r, 16)
    os.close(r)
    return int(out)


def _runs_as(pid: int, name: str, uid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return st["Name"] == name and st["Uid"].split() == [str(uid)] * 4


def _wait_stopped(pid: int) -> None:
    # Bounded, not timed: the shim's start may take seconds on a loaded machine.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError("the shim never stopped")


@pytest.mark.parametrize("step", ["capabilities", "no_new_privs", "exec"])
def test_shim_is_not_ptraceable_by_the_target_uid_while_privileged(probe, step):
    # Stop the shim after it switched to uid 65534 but before exec: that uid must not be
    # able to attach to it (it may still hold capabilities).
    env = dict(os.environ, WRAPPERD_FAULT=f"stop:{step}")
    spec = json.dumps(probe_spec(probe, user={"uid": 65534},
                                 capabilities={"keep": ["CAP_NET_BIND_SERVICE"]}))
    spec_r, spec_w = os.pipe()
    os.write(spec_w, spec.encode())
    os.close(spec_w)
    p = subprocess.Popen(wrapperd_cmd("--spec-fd", str(spec_r)), pass_fds=(spec_r,),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(spec_r)
    try:
        _wait_stopped(p.pid)
        with open(f"/proc/{p.pid}/status") as f:
            assert "65534" in [line for line in f if line.startswith("Uid:")][0]
        assert _ptrace_as(65534, p.pid) == 1          # EPERM
    finally:
        os.kill(p.pid, signal.SIGCONT)
        out, _err = p.communicate(timeout=30)
    assert p.returncode == 0
    # Control: the same uid can attach to the target once it runs as an ordinary process.
    target = subprocess.Popen(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                               "--clear-groups", "sleep", "5"])
    try:
        # Attach only once setpriv has switched to 65534 and exec'd sleep (between the
        # two the process is not dumpable): a fixed sleep would race on a loaded machine.
        until(lambda: _runs_as(target.pid, "sleep", 65534), 30, "setpriv to run sleep as 65534")
        assert _ptrace_as(65534, target.pid) == 0
    finally:
        target.kill()
        target.wait()


def _start_from_a_parent_that_exits(spec: dict, errfile: str, linger: float,
                                    marker=None) -> None:
    """Fork a parent that starts wrapperd (telling it its pid) and exits after `linger`
    seconds -- before the shim can arm pdeathsig when linger is 0 -- or as soon as
    `marker` exists (the target ran: the parent has outlived the setup)."""
    pid = os.fork()
    if pid == 0:
        try:
            r, w = os.pipe()
            os.write(w, json.dumps(spec).encode())
            os.close(w)
            with open(errfile, "w") as err:
                subprocess.Popen(wrapperd_cmd("--spec-fd", str(r), "--parent-pid",
                                              str(os.getpid())), pass_fds=(r,), stderr=err)
            end = time.monotonic() + linger
            while time.monotonic() < end and not (marker and marker.exists()):
                time.sleep(0.02)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("linger", [0.0, 30.0])       # 30: ends when the target ran
def test_pdeathsig_with_a_parent_that_already_exited_never_runs_the_target(scratch, linger):
    marker = scratch / "ran"
    errfile = str(scratch / "err")
    spec = {"argv": ["/bin/sh", "-c", f"touch {marker}"], "pdeathsig": "SIGKILL",
            "env": {"PATH": "/usr/bin:/bin"}}
    _start_from_a_parent_that_exits(spec, errfile, linger, marker)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not marker.exists() and \
            not open(errfile).read():
        time.sleep(0.05)
    if linger:      # control: the parent outlives the setup, so the target runs
        assert marker.exists(), open(errfile).read()
    else:
        assert open(errfile).read() == \
            "wrapperd: pdeathsig: the parent exited before pdeathsig was armed\n"
        assert not marker.exists()
