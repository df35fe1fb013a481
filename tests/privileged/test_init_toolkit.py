"""The library as an init's toolkit: reaping that keeps every sandbox's true status,
targets that do not die with the thread that started them, exit reasons, what a
sandbox leaves running, its counters after it ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import sandbox
from sandbox.process import ExitReason
from sandbox.spawning import DEVNULL, PIPE
from tests.conftest import TARGET_ENV, needs_host_root, until

SH = "/bin/sh"

# A real init: pid 1 of a pid namespace of its own, reaping every orphan in a loop (and
# from SIGCHLD) while sandboxes exit with 0, 3, a signal and an OOM kill, and one
# leaves an orphan behind for it.  argv: the cgroup for the OOM case, and how it reaps.
INIT = textwrap.dedent("""
    import json, os, signal, sys, time
    import sandbox
    cg, how = sys.argv[1], sys.argv[2]
    assert os.getpid() == 1
    orphans = []

    def reap():
        if how == "sandbox.reap":
            orphans.extend(sandbox.reap())
        else:                               # the control: what an init does without us
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                orphans.append(pid)
    signal.signal(signal.SIGCHLD, lambda *_: reap())
    env = {"PATH": "/usr/bin:/bin"}
    procs = {
        "0": sandbox.spawn(["/bin/sh", "-c", "exit 0"], env=env),
        "3": sandbox.spawn(["/bin/sh", "-c", "exit 3"], env=env),
        "TERM": sandbox.spawn(["/bin/sh", "-c", "kill -TERM $$"], env=env),
        # str repetition writes every page: the cgroup's OOM killer, not MemoryError
        "oom": sandbox.spawn(["/usr/bin/python3", "-c", "s = 'x' * (1 << 30)"], env=env,
                             cgroup={"path": cg, "memory_max": 64 << 20}),
        # its sleep is left to us, pid 1, once the shell exits
        "orphan": sandbox.spawn(["/bin/sh", "-c", "/bin/sleep 0.3 & exit 0"], env=env),
    }
    def running(p):
        try:
            return p.poll() is None
        except sandbox.SandboxError:        # ended, its status lost (the control)
            return False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not orphans or any(running(p) for p in procs.values())):
        reap()                              # an init's main loop
        time.sleep(0.01)
    out = {}
    for name, p in procs.items():
        try:
            out[name] = [p.wait(), str(p.exit_reason)]
        except sandbox.SandboxError as e:
            out[name] = ["lost", str(e)]
        p.close()
    out["orphans"] = len(orphans)
    print(json.dumps(out))
""")


def _run_init(how: str, cgroup: str) -> dict:
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                        INIT, cgroup, how], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_an_init_reaping_with_sandbox_reap_keeps_every_status(cgroup_root):
    needs_host_root("a memory limit in the host's cgroup tree, and unshare --pid")
    got = _run_init("sandbox.reap", cgroup_root + "/oom")
    assert got["0"] == [0, "exited(0)"]
    assert got["3"] == [3, "exited(3)"]
    assert got["TERM"] == [-signal.SIGTERM, "killed(SIGTERM)"]
    assert got["oom"] == [-signal.SIGKILL, "oom_killed"]
    assert got["orphan"] == [0, "exited(0)"]
    assert got["orphans"] >= 1                  # the sleep, reaped by the init itself


def test_control_an_init_with_waitpid_minus_1_loses_them_and_says_so(cgroup_root):
    needs_host_root("a memory limit in the host's cgroup tree, and unshare --pid")
    got = _run_init("os.waitpid", cgroup_root + "/oom")
    lost = [k for k in ("0", "3", "TERM", "oom", "orphan") if got[k][0] == "lost"]
    # Never a made-up 0: each status the init's waitpid took is reported lost.
    assert lost, got
    for k in lost:
        assert "sandbox.reap()" in got[k][1]
    assert all(got[k][0] in ("lost", {"0": 0, "3": 3}.get(k, got[k][0]))
               for k in ("0", "3"))


def test_reap_without_children_is_a_no_op():
    r = subprocess.run([sys.executable, "-c", "import sandbox; print(sandbox.reap())"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


# The spawn from a worker thread that then exits; the target must live on (pdeathsig is
# the process's, not that thread's) and die when the process does.
FROM_A_THREAD = textwrap.dedent("""
    import concurrent.futures, signal, sys
    import sandbox
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        p = ex.submit(sandbox.spawn, ["/bin/sleep", "60"], pdeathsig=signal.SIGKILL,
                      env={"PATH": "/bin"}, stdout=sandbox.DEVNULL).result()
    # the executor's thread has exited here
    print(p.pid, flush=True)
    sys.stdin.read()                    # until the test closes it
""")


def test_a_target_does_not_die_with_the_thread_that_spawned_it():
    c = subprocess.Popen([sys.executable, "-c", FROM_A_THREAD], stdin=PIPE, stdout=PIPE)
    try:
        pid = int(c.stdout.readline())
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        assert state in ("S", "R"), state               # alive, the thread gone
        assert os.readlink(f"/proc/{pid}/exe").endswith("sleep")
        c.stdin.close()                                 # the process exits: pdeathsig
        assert c.wait(timeout=30) == 0

        def gone():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                return True
        until(gone, 30, f"target {pid} to get its pdeathsig")
    finally:
        c.kill()
        c.wait()


def test_exit_reasons():
    def reason(argv, **kw):
        with sandbox.spawn(argv, env=TARGET_ENV, stdout=DEVNULL, **kw) as p:
            p.wait(timeout=60)
            return p.returncode, p.exit_reason
    assert reason([SH, "-c", "exit 7"]) == (7, ExitReason("exited", code=7))
    assert reason([SH, "-c", "kill -TERM $$"])[1] == "killed(SIGTERM)"
    # Behind a supervisor (a pid namespace), the shell's convention 128+N:
    rc, why = reason([SH, "-c", "kill -TERM $$"], namespaces={"pid": True})
    assert rc in (-signal.SIGTERM, 128 + signal.SIGTERM) and why == "killed(SIGTERM)"
    with pytest.raises(subprocess.TimeoutExpired) as e:
        sandbox.run(["/bin/sleep", "30"], env=TARGET_ENV, timeout=0.5)
    assert e.value.exit_reason == "timed_out"
    with pytest.raises(sandbox.SetupError) as e:
        sandbox.spawn(["/bin/true"], env=TARGET_ENV, cwd="/nonexistent-dir-wrapperd")
    assert str(e.value.exit_reason) == f"setup_failed({e.value.step})"


def test_what_a_daemon_left_running_is_seen_and_waited_for(cgroup_root):
    # The main process exits 0 at once; what it forked runs on in its cgroup.
    p = sandbox.spawn([SH, "-c", "/bin/sleep 0.5 & exit 0"], env=TARGET_ENV,
                      cgroup=cgroup_root + "/daemon", stdout=DEVNULL)
    with p:
        assert p.wait(timeout=30) == 0
        left = p.processes()
        assert left and p.pid not in left       # the main process is gone, its child not
        assert p.wait(timeout=30, group=True) == 0
        assert p.processes() == []
    with pytest.raises(sandbox.SandboxError, match="needs the spec's cgroup"):
        q = sandbox.spawn(["/bin/true"], env=TARGET_ENV, stdout=DEVNULL)
        with q:
            q.wait(timeout=30, group=True)


def test_stats_outlive_the_cgroup_and_parents_are_removed(cgroup_root):
    path = cgroup_root + "/a/b/c"
    p = sandbox.spawn([sys.executable, "-c", "s = 'x' * (16 << 20)"], env=TARGET_ENV,
                      cgroup=path, stdout=DEVNULL)
    with p:
        assert p.wait(timeout=60) == 0
    st = p.stats()
    assert st["running"] is False and st["returncode"] == 0
    assert st["cgroup"]["memory_peak"] is None or st["cgroup"]["memory_peak"] >= 16 << 20
    assert st["cgroup"]["cpu_usage_usec"] is None or st["cgroup"]["cpu_usage_usec"] > 0
    from sandbox import cgroups
    for h in cgroups.hierarchies():
        assert not os.path.exists(h.mountpoint + cgroup_root + "/a"), h.mountpoint
