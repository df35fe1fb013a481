"""The processes that stay alive beside a target in a new pid namespace -- the
namespace's pid 1 (the reaper), the supervisor outside it, the fork server -- as the
kernel shows them, on every path that makes one: `wrapperd` (the shim forks the reaper),
`sandbox.spawn()` (the shim is started as pid 1) and the fork server (a reaper forked
ahead of the request).

* pid 1 is in every namespace the target is in: else a target would read the host's
  interfaces, routes and sockets (/proc/1/net/*) and mount table (/proc/1/mountinfo)
  through it.
* None keeps anything of the caller's environment (a secret in it, here) or an
  auxiliary vector for /proc/PID/environ and /proc/PID/auxv to show -- not even to a
  root target keeping CAP_SYS_PTRACE, which passes the kernel's ptrace read check
  whatever the helper's dumpable flag says.
  The session step's supervisor too (no pid namespace; the target's parent).
* None holds an fd.
* What stays is the static helper (sandbox/helper.c), not an interpreter: named
  wrapperd-reaper or wrapperd-super, /proc/PID/exe its binary; it forwards every
  forwarded signal, passes the target's exit status on (128+N when killed by signal N),
  reaps orphans as pid 1, is not dumpable, and loses no signal that arrived before it
  was ready.  Without its binary the Python supervisor stays instead, with the same
  guarantees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

import sandbox
from sandbox import procfs, supervisor
from sandbox.forkserver import ForkServer
from sandbox.spawning import DEVNULL, PIPE
from sandbox.supervisor import REAPER_COMM, SUPERVISOR_COMM
from tests.conftest import (
    ROOTLESS,
    SYSTEM_PYTHON,
    TARGET_ENV,
    needs_host_root,
    nspid,
    probe_spec,
    skip_or_fail,
    until,
    wrapperd_cmd,
)

ALL_BUT_USER = {"pid": True, "net": True, "mount": True, "ipc": True, "uts": True,
                "cgroup": True}
# As root, keeping CAP_SYS_PTRACE: the strongest reader of another process's /proc.
ROOT_WITH_PTRACE = {"no_new_privs": True, "capabilities": {"drop": ["CAP_SYS_MODULE"]}}
INSIDE = ("/proc/1/net/dev", "/proc/1/mountinfo", "/proc/self/mountinfo",
          "/proc/1/environ", "/proc/1/auxv")
VIAS = ["wrapperd", "spawn", "fork server"]
SECRET_NAME = "WRAPPERD_TEST_HELPER_SECRET"
READY_THEN_SLEEP = "import time; print('ready', flush=True); time.sleep(60)"


def _children(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Launched:
    """A probe running in a new pid namespace (it sleeps after its report), and the
    helpers beside it, by pid as the host sees them."""

    def __init__(self, report: dict, target: int, pid_1: int, others: dict, stop):
        self.report, self.target, self.pid_1, self.others = report, target, pid_1, others
        self._stop = stop

    def helpers(self) -> dict:
        return dict(self.others, reaper=self.pid_1)

    def stop(self) -> None:
        self._stop()


def _wrapperd_with_secret(spec: dict, secret: str, **popen) -> subprocess.Popen:
    """wrapperd reading spec from a pipe, with `secret` in its environment only."""
    r, w = os.pipe()
    os.write(w, json.dumps(spec).encode())
    os.close(w)
    try:
        return subprocess.Popen(wrapperd_cmd("--spec-fd", str(r)), pass_fds=(r,),
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **{SECRET_NAME: secret}), **popen)
    finally:
        os.close(r)


def _launch(via: str, probe: str, secret: str, monkeypatch) -> Launched:
    """Start the probe under ALL_BUT_USER as root keeping CAP_SYS_PTRACE, with `secret`
    in the caller's environment (never in the spec's)."""
    spec = probe_spec(probe, *(f"read:{p}" for p in INSIDE), "sleep:60",
                      namespaces=ALL_BUT_USER, **ROOT_WITH_PTRACE)
    assert secret not in json.dumps(spec)
    if via == "wrapperd":
        p = _wrapperd_with_secret(spec, secret)

        def stop():
            p.kill()                   # the supervisor: the reaper gets PDEATHSIG
            p.wait()
            p.stdout.close()
        try:
            report = json.loads(p.stdout.readline())
            # The report is out: the target was exec'd, under the reaper the shim
            # forked (supervisor -> reaper -> target).
            (reaper,) = _children(p.pid)
            (target,) = _children(reaper)
        except BaseException:
            stop()
            raise
        return Launched(report, target, reaper, {"supervisor": p.pid}, stop)
    monkeypatch.setenv(SECRET_NAME, secret)
    server = ForkServer() if via == "fork server" else None
    if server is not None:
        server.start()                 # after the secret is in our environment
    try:
        start = sandbox.spawn if server is None else server.spawn
        p = start(spec, stdin=DEVNULL, stdout=PIPE)
    except BaseException:
        if server is not None:
            server.close()
        raise

    def stop():
        p.kill()
        p.wait()
        p.close()
        if server is not None:
            server.close()
    try:
        report = json.loads(p.stdout.readline())
        target = p.target_pid
    except BaseException:
        stop()
        raise
    others = {"fork server": server.pid} if server is not None else {}
    # spawn(): our child is the shim born as pid 1; the fork server's: the reaper
    # it forked ahead.  Either way p.pid, the target's parent.
    return Launched(report, target, p.pid, others, stop)


@pytest.fixture
def secret() -> str:
    return f"wrapperd-secret-{uuid.uuid4().hex}"


@pytest.mark.parametrize("via", VIAS)
def test_pid_1_is_in_every_namespace_of_the_target(probe, secret, monkeypatch, via):
    run = _launch(via, probe, secret, monkeypatch)
    try:
        # The namespace's init, found from the host: pid 1 inside, the target's parent.
        assert nspid(run.pid_1)[-1] == 1 and nspid(run.target)[-1] == 2
        names = sorted(os.listdir(f"/proc/{run.target}/ns"))
        theirs = {n: os.readlink(f"/proc/{run.target}/ns/{n}") for n in names}
        init = {n: os.readlink(f"/proc/{run.pid_1}/ns/{n}") for n in names}
        mine = {n: os.readlink(f"/proc/self/ns/{n}") for n in names}
        assert init == theirs
        # Control: these are new namespaces, not ours that every process shares.
        for n in ("pid", "net", "mnt", "ipc", "uts", "cgroup"):
            assert theirs[n] != mine[n], n
        inside = run.report["read"]
        # From inside: /proc/1/net/dev lists loopback only, and /proc/1/mountinfo is
        # the target's own mount table.
        dev = inside["/proc/1/net/dev"]["data"].splitlines()[2:]
        assert [line.split(":")[0].strip() for line in dev] == ["lo"]
        assert inside["/proc/1/mountinfo"] == inside["/proc/self/mountinfo"]
    finally:
        run.stop()


@pytest.mark.parametrize("via", VIAS)
def test_helpers_keep_nothing_of_the_callers_environment(probe, secret, monkeypatch, via):
    run = _launch(via, probe, secret, monkeypatch)
    try:
        helpers = run.helpers()
        for name, pid in helpers.items():
            # From the host (root, every capability): empty, and no auxiliary vector
            # but its terminator.
            assert _read(f"/proc/{pid}/environ") == b"", name
            assert _read(f"/proc/{pid}/auxv").strip(b"\0") == b"", name
            # and no fd (the fork server has its own: its socket, its children's).
            if name != "fork server":
                assert os.listdir(f"/proc/{pid}/fd") == [], name
        # From inside, as root keeping CAP_SYS_PTRACE: read, and empty.
        inside = run.report["read"]
        assert inside["/proc/1/environ"] == {"data": ""}
        assert inside["/proc/1/auxv"]["data"].strip("\0") == ""
        assert secret not in json.dumps(run.report)
        # The target's own environment is the spec's, as always.
        assert run.report["env"] == TARGET_ENV
    finally:
        run.stop()


def test_control_a_process_started_with_the_secret_shows_it(secret):
    # The reads above can see an environment: an ordinary child of ours, started with
    # the secret, shows it in the same file.
    p = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", READY_THEN_SLEEP],
                         env={SECRET_NAME: secret},
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"          # running: past its execve
        assert secret.encode() in _read(f"/proc/{p.pid}/environ")
        assert _read(f"/proc/{p.pid}/auxv").strip(b"\0") != b""
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_the_session_forks_supervisor_keeps_nothing_of_the_callers_environment(
        probe, secret):
    # wrapperd leading its process group forks once for setsid and supervises: in the
    # host's pid namespace, a target's parent.
    p = _wrapperd_with_secret(probe_spec(probe, "sleep:60", **ROOT_WITH_PTRACE), secret,
                              process_group=0)
    try:
        report = json.loads(p.stdout.readline())
        assert report["stat"]["ppid"] == p.pid           # the supervisor is its parent
        assert _read(f"/proc/{p.pid}/environ") == b""
        assert _read(f"/proc/{p.pid}/auxv").strip(b"\0") == b""
        assert os.listdir(f"/proc/{p.pid}/fd") == []
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_sandbox_inspect_names_a_helper_and_its_target():
    # spawn()'s shim is pid 1 of the namespace it asked for: the reaper; the target is
    # its child.  `sandbox inspect` says which one it was given and where the target is.
    import sys as _sys
    spec = {"argv": ["/bin/sleep", "30"], "env": {"PATH": "/usr/bin:/bin"},
            "namespaces": {"pid": True}}
    with sandbox.spawn(spec) as p:
        target = until(lambda: p.target_pid if p.target_pid != p.pid else None, 30,
                       "the target to be forked")
        with open(f"/proc/{p.pid}/comm") as f:
            assert f.read().strip() == "wrapperd-reaper"
        r = subprocess.run([_sys.executable, "-I", "-c",
                            "from sandbox.cli import entry; entry()", "inspect",
                            str(p.pid)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        line = r.stdout.splitlines()[1]
        assert "wrapperd's reaper" in line and f"pid {target}" in line
        r = subprocess.run([_sys.executable, "-I", "-c",
                            "from sandbox.cli import entry; entry()", "inspect",
                            str(target)], capture_output=True, text=True, timeout=60)
        assert "wrapperd's" not in r.stdout
        p.kill()


# ----------------------------------------------------------------- the static helper

HELPER_EXE = os.path.realpath(supervisor.helper_path())
SLEEP = os.path.realpath("/bin/sleep")
TAIL = os.path.realpath("/usr/bin/tail")
# Each way a helper stays: wrapperd in a pid namespace (supervisor outside, reaper),
# spawn()'s shim born as pid 1 and the fork server's premade reaper, and wrapperd
# leading its process group with no pid namespace (the session fork's supervisor).
WAYS = [*VIAS, "session"]
HELPERS = {"wrapperd": [SUPERVISOR_COMM, REAPER_COMM], "spawn": [REAPER_COMM],
           "fork server": [REAPER_COMM], "session": [SUPERVISOR_COMM]}


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs


def _start(way: str, argv: list, server, **fields):
    """argv under `way`; a handle with pid (the outermost helper: our or the fork
    server's child), send_signal, wait(timeout) -> the exit code, kill."""
    spec = {"argv": argv, "env": TARGET_ENV, **fields}
    if way != "session":
        spec.setdefault("namespaces", {"pid": True})
    if way in ("wrapperd", "session"):
        p = subprocess.Popen(wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL,
                             process_group=0 if way == "session" else None)
        p.stdin.write(json.dumps(spec).encode())
        p.stdin.close()
        return p
    start = sandbox.spawn if way == "spawn" else server.spawn
    return start(spec, stdin=DEVNULL, stdout=DEVNULL)


def _stop(p) -> None:
    p.kill()
    p.wait()
    if hasattr(p, "close"):
        p.close()


def _tree(top: int) -> list:
    out, todo = [], [top]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        try:
            todo += _children(pid)
        except OSError:
            pass
    return out


def _exe(pid: int) -> "str | None":
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _settled(top: int, exe: str = SLEEP) -> "tuple[list, int]":
    """Once the target (running exe) runs: (the helpers above it, top down; its pid)."""
    def find():
        for pid in _tree(top):
            if _exe(pid) == exe:
                return pid
        return None
    target = until(find, 60, f"{exe} to run")
    chain = [target]
    while chain[-1] != top:
        chain.append(procfs.ppid(chain[-1]))
    return chain[:0:-1], target


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


@pytest.mark.parametrize("way", WAYS)
def test_what_stays_beside_the_target_is_the_static_helper(server, way):
    p = _start(way, [SLEEP, "60"], server)
    try:
        helpers, target = _settled(p.pid)
        assert [_comm(pid) for pid in helpers] == HELPERS[way]
        for pid in helpers:
            assert _exe(pid) == HELPER_EXE, pid          # not the interpreter
            assert supervisor.is_helper(_read(f"/proc/{pid}/cmdline"))
            assert os.listdir(f"/proc/{pid}/fd") == []
            assert _read(f"/proc/{pid}/environ") == b""
        if way in ("spawn", "fork server"):
            assert p.target_pid == target                # the handle looks past it
    finally:
        _stop(p)


DEFAULTS_THEN_SLEEP = f"""\
import os, signal
for sig in {tuple(int(s) for s in supervisor.FORWARDED_SIGNALS)}:
    signal.signal(sig, signal.SIG_DFL)
os.execv({SLEEP!r}, ["sleep", "60"])
"""


def _signame(sig: int) -> str:
    return signal.Signals(sig).name


@pytest.mark.parametrize("sig", supervisor.FORWARDED_SIGNALS, ids=_signame)
@pytest.mark.parametrize("way", WAYS)
def test_each_forwarded_signal_reaches_the_target(server, way, sig):
    # Sent to the outermost helper (the caller's child, or the fork server's), passed
    # down to sleep, which dies of it: every helper exits with 128+N.  sleep gets every
    # one at its default first: an ignored signal stays ignored across execve, and a
    # caller may ignore some (a shell's background job ignores SIGINT: the rootless run).
    p = _start(way, [SYSTEM_PYTHON, "-I", "-c", DEFAULTS_THEN_SLEEP], server)
    try:
        _settled(p.pid)
        p.send_signal(sig)
        assert p.wait(timeout=30) == 128 + sig
    finally:
        _stop(p)


@pytest.mark.parametrize("way", VIAS)
def test_a_signal_reaches_a_target_of_another_uid_in_its_user_namespace(server, way):
    # untrusted's shape: root inside is an id of its own outside, and wrapperd's host
    # root is mapped to nothing there.  The reaper (pid 1 in that namespace) loses its
    # capabilities at the exec of the helper: without CAP_KILL kept (ambient) its kill()
    # of a target of another uid fails, and a SIGTERM never arrives.
    needs_host_root("maps the host's 65534 into a user namespace of its own")
    maps = [{"inside": 0, "outside": 65534, "count": 1}]
    p = _start(way, [SYSTEM_PYTHON, "-I", "-c", DEFAULTS_THEN_SLEEP], server,
               namespaces={"pid": True, "user": {"uid_map": maps, "gid_map": maps}},
               user={"uid": 0, "gid": 0})
    try:
        _, target = _settled(p.pid)
        assert procfs.status(target)["Uid"].split()[0] == "65534"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        _stop(p)


@pytest.mark.parametrize("script, code", [("exit 0", 0), ("exit 3", 3),
                                          ("kill -KILL $$", 128 + signal.SIGKILL)],
                         ids=["0", "3", "SIGKILL"])
@pytest.mark.parametrize("way", WAYS)
def test_the_helpers_exit_with_the_targets_status(server, way, script, code):
    p = _start(way, ["/bin/sh", "-c", script], server)
    try:
        assert p.wait(timeout=60) == code
    finally:
        _stop(p)


@pytest.mark.parametrize("via", VIAS)
def test_the_reaper_reaps_an_orphan(server, via):
    # The target's shell forks a subshell that starts `sleep 3` and exits at once:
    # the sleep is reparented to the namespace's pid 1, which must reap it when it
    # exits (a zombie keeps its /proc entry).
    p = _start(via, ["/bin/sh", "-c", "(sleep 3 &); exec tail -f /dev/null"], server)
    try:
        helpers, target = _settled(p.pid, TAIL)
        reaper = helpers[-1]
        orphan = until(lambda: next((k for k in _children(reaper) if _exe(k) == SLEEP),
                                    None), 30, "the orphan under the reaper")
        until(lambda: not os.path.exists(f"/proc/{orphan}"), 60, "the orphan reaped")
        assert _children(reaper) == [target]
    finally:
        _stop(p)


def test_control_an_orphan_under_a_target_as_pid_1_stays_a_zombie(server):
    # The check above can fail: tail as pid 1 never waits, so the orphan stays.
    p = _start("spawn", ["/bin/sh", "-c", "(sleep 1 &); exec tail -f /dev/null"], server,
               namespaces={"pid": True, "as_pid_1": True})
    try:
        _, target = _settled(p.pid, TAIL)
        orphan = until(lambda: next(iter(_children(target)), None), 30, "the orphan")
        until(lambda: procfs.stat(orphan)[2] == "Z", 60, "the orphan to exit")
        assert os.path.exists(f"/proc/{orphan}")
    finally:
        _stop(p)


# Run under `setpriv --bounding-set=-sys_ptrace`: root, with every capability the
# helpers have (they are started the same way) but CAP_SYS_PTRACE.
SPAWN_UNDER_SETPRIV = """\
import json, sys
import sandbox
from sandbox.forkserver import ForkServer
from sandbox.spawning import DEVNULL
server = ForkServer().start() if sys.argv[1] == "fork server" else None
p = (server.spawn if server else sandbox.spawn)(json.loads(sys.argv[2]), stdin=DEVNULL,
                                                stdout=DEVNULL)
print(p.pid, flush=True)
sys.stdin.read()
p.kill()
p.wait()
p.close()
if server is not None:
    server.close()
"""
OPEN_MEM = """\
import errno, json, os, sys
out = {}
for pid in sys.argv[1:]:
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
        out[pid] = "ok"
    except OSError as e:
        out[pid] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


@pytest.mark.parametrize("way", WAYS)
def test_no_helper_is_dumpable(way):
    # dumpable is what the kernel's ptrace check asks of a tracer with the helper's uid
    # and a superset of its permitted capabilities, but without CAP_SYS_PTRACE: such a
    # process opens the (dumpable) target's /proc/PID/mem, and not a helper's.  execve
    # makes a process dumpable again: the helper must undo that itself, first thing.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_or_fail("no setpriv (util-linux)")
    under = [setpriv, "--bounding-set=-sys_ptrace", "--"]
    spec = {"argv": [SLEEP, "60"], "env": TARGET_ENV}
    if way != "session":
        spec["namespaces"] = {"pid": True}
    if way in ("wrapperd", "session"):
        p = subprocess.Popen(under + wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, process_group=0 if way == "session"
                             else None)
        p.stdin.write(json.dumps(spec).encode())
        p.stdin.close()
        top = p.pid
    else:
        p = subprocess.Popen(under + [sys.executable, "-I", "-c", SPAWN_UNDER_SETPRIV, way,
                                      json.dumps(spec)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        top = int(p.stdout.readline())
    try:
        helpers, target = _settled(top)
        assert [_comm(pid) for pid in helpers] == HELPERS[way]
        r = subprocess.run(under + [SYSTEM_PYTHON, "-I", "-c", OPEN_MEM, str(target),
                                    *map(str, helpers)], capture_output=True, text=True,
                           timeout=60)
        got = json.loads(r.stdout)
        assert got.pop(str(target)) == "ok"              # control: the check can pass
        assert set(got.values()) == {"EACCES"}, got
    finally:
        if way in ("wrapperd", "session"):
            p.kill()
        else:
            p.stdin.close()
        p.wait(timeout=60)
        p.stdout.close()


PENDING_THEN_EXEC = """\
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
child = os.fork()
if child == 0:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    os.execv("/bin/sleep", ["sleep", "60"])
os.kill(os.getpid(), signal.SIGTERM)          # blocked: pending across the exec
assert signal.SIGTERM in signal.sigpending()
os.execve(sys.argv[1], ["wrapperd-super", "supervise", str(child), "-1"], {})
"""


def test_a_signal_pending_before_the_helper_was_ready_is_forwarded():
    # As fork() leaves it: the forwarded signals blocked, one of them already pending
    # when the helper is exec'd.  It is handled (not the default: death) and passed on.
    r = subprocess.run([sys.executable, "-I", "-c", PENDING_THEN_EXEC, HELPER_EXE],
                       timeout=60)
    assert r.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("args", [[], ["reaper"], ["reaper", "1"], ["nap", "1", "-1"],
                                  ["reaper", "x", "-1"], ["join-reaper", "1", "-1"],
                                  ["reaper", "1", "-1"]],
                         ids=["none", "mode", "no fd", "bad mode", "bad pid",
                              "join without fd", "not ours"])
def test_the_helper_refuses_what_it_cannot_do_with_125(args):
    r = subprocess.run([HELPER_EXE, *args], capture_output=True, timeout=30, env={})
    assert r.returncode == 125


def _tree_without_the_helper(scratch) -> str:
    """A copy of the packages, without the helper's binary (nobody built it there)."""
    from sandbox.spawning import package_root
    root = str(scratch / "tree")
    skip = shutil.ignore_patterns("__pycache__", supervisor.HELPER)
    for pkg in ("sandbox", "wrapperd"):
        shutil.copytree(os.path.join(package_root(), pkg), os.path.join(root, pkg),
                        ignore=skip)
    return root


def _start_lean(root: str, spec) -> "tuple[subprocess.Popen, int]":
    """spec's plan run by the lean shim of the tree at root (the outside supervisor and
    the reaper, as wrapperd does): the shim, and the read end of its status pipe."""
    from sandbox import plan
    from sandbox.spawning import lean_command
    from wrapperd import shim
    r, w = os.pipe()
    os.write(w, plan.encode(shim.prepare(spec)))
    os.close(w)
    status_r, status_w = os.pipe()
    try:
        p = subprocess.Popen(lean_command(root, r, status_w), pass_fds=(r, status_w),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    finally:
        os.close(r)
        os.close(status_w)
    return p, status_r


def test_without_the_binary_the_python_supervisor_stays(scratch):
    # A tree where nobody built the helper: the same guarantees from the Python
    # supervisor and reaper (sandbox.supervisor.supervise), exe the interpreter.
    from sandbox.spawning import build_spec
    root = _tree_without_the_helper(scratch)
    spec = build_spec([SLEEP, "60"], env=TARGET_ENV, namespaces={"pid": True})
    p, status_r = _start_lean(root, spec)
    try:
        with os.fdopen(status_r, "rb") as f:
            assert f.read() == b""                       # exec'd
        helpers, target = _settled(p.pid)
        assert [_comm(pid) for pid in helpers] == [SUPERVISOR_COMM, REAPER_COMM]
        for pid in helpers:
            assert _exe(pid) == os.path.realpath(sys.executable)
            assert os.listdir(f"/proc/{pid}/fd") == []
            assert _read(f"/proc/{pid}/environ") == b""
        p.send_signal(signal.SIGUSR2)
        assert p.wait(timeout=30) == 128 + signal.SIGUSR2
    finally:
        p.kill()
        p.wait()


# A stand-in for the helper that is slow to become the reaper: as the reaper it waits,
# then fails as the helper does, 125, without a word (DIE), or execs the real helper,
# which says it is ready; as the supervisor it is the real helper at once.
SLOW_REAPER_C = """\
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "reaper") == 0) {
		usleep(500000);
		if (DIE)
			return 125;
	}
	execv(REAL, argv);
	return 127;
}
"""


def _tree_with_a_slow_reaper(scratch, die: bool) -> str:
    """A copy of the packages whose helper is SLOW_REAPER_C (built with cc)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists(HELPER_EXE):
        skip_or_fail("needs cc and the built helper")
    root = _tree_without_the_helper(scratch)
    src = scratch / "slow.c"
    src.write_text(SLOW_REAPER_C)
    subprocess.run([cc, "-O2", f"-DDIE={int(die)}", f'-DREAL="{HELPER_EXE}"', "-o",
                    os.path.join(root, "sandbox", supervisor.HELPER), str(src)], check=True)
    return root


def _lean_run(root: str, spec) -> "tuple[int, bytes]":
    """_start_lean, to the end: (exit status, status record)."""
    p, status_r = _start_lean(root, spec)
    with os.fdopen(status_r, "rb") as f:
        record = f.read()
    return p.wait(timeout=60), record


def test_nothing_of_the_target_runs_before_its_reaper_is_ready(scratch):
    # The reaper execs the helper while the target's steps go on; the target waits for
    # it in the reaper step, just before the filter.  A reaper that fails before it is
    # ready: the target never runs (pid 1's exit kills it where it waits), and its
    # status is the reaper's.
    from sandbox.spawning import build_spec
    root = _tree_with_a_slow_reaper(scratch, die=True)
    marker = scratch / "ran"
    spec = build_spec(["/usr/bin/touch", str(marker)], env=TARGET_ENV,
                      namespaces={"pid": True})
    code, _record = _lean_run(root, spec)
    assert code == 125
    assert not marker.exists()


def test_the_target_starts_once_its_reaper_is_the_helper(scratch):
    # The slow reaper becomes the real helper half a second late: the target, reading
    # its pid 1's name first thing, still sees the helper's (it waited for it).
    from sandbox.spawning import build_spec
    root = _tree_with_a_slow_reaper(scratch, die=False)
    out = scratch / "comm"
    spec = build_spec(["/bin/sh", "-c", f"cat /proc/1/comm > {out}"], env=TARGET_ENV,
                      namespaces={"pid": True, "mount": True}, mounts=[
                          {"type": "proc", "destination": "/proc"}])
    code, record = _lean_run(root, spec)
    assert (code, record) == (0, b"")
    assert out.read_text().strip() == REAPER_COMM


def test_with_mounts_the_reaper_is_ready_before_them(scratch):
    # The reaper shares the mount namespace the mounts step changes, and erases its
    # auxiliary vector through /proc/self/stat as it becomes the helper: with mounts,
    # that step waits for it, so it does so in the view it was forked in.  Here a
    # tmpfs hides /proc, and the reaper, half a second slow, would find nothing.
    from sandbox.spawning import build_spec
    root = _tree_with_a_slow_reaper(scratch, die=False)
    spec = build_spec([SLEEP, "60"], env=TARGET_ENV, namespaces={"pid": True, "mount": True},
                      mounts=[{"type": "tmpfs", "destination": "/proc"}])
    p, status_r = _start_lean(root, spec)
    try:
        with os.fdopen(status_r, "rb") as f:
            assert f.read() == b""                       # exec'd
        helpers, _target = _settled(p.pid)
        reaper = helpers[-1]
        assert _comm(reaper) == REAPER_COMM
        assert _read(f"/proc/{reaper}/auxv") == b"\0" * 16     # AT_NULL alone: cut
    finally:
        p.kill()
        p.wait(timeout=60)


JOIN_FOR_A_WORKER = """\
import os, socket, sys
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
worker = os.fork()
if worker == 0:                # asks as namespaces._share_with_reaper does
    ours.close()
    kinds = sys.argv[2]
    fds = [os.open(f"/proc/self/ns/{k}", os.O_RDONLY) for k in sys.argv[3:]]
    socket.send_fds(theirs, [kinds.encode()], fds)
    answer = theirs.recv(32).decode()
    while theirs.recv(32):
        pass
    print(answer, flush=True)  # after EOF: the helper is ready
    os._exit(0)
theirs.close()
fd = ours.detach()
if sys.argv[1] == "python":    # the Python fallback
    from sandbox import namespaces
    namespaces.join_for_worker(fd)
    os.close(fd)
    os.waitpid(worker, 0)
    sys.exit(0)
os.set_inheritable(fd, True)
os.execve(sys.argv[1], ["wrapperd-reaper", "join-reaper", str(worker), str(fd)], {})
"""


@pytest.mark.parametrize("kinds, files, answer", [
    ("-", [], "0"), ("uts,ipc", ["uts", "ipc"], "0"), ("uts", [], "22"),
    ("pid", ["pid"], "22"), ("uts", ["ipc"], "22")],
    ids=["nothing", "two", "no fd", "not joinable", "wrong type"])
def test_the_fork_servers_reaper_joins_in_c_as_in_python(kinds, files, answer):
    # The helper's join-reaper mode answers as namespaces.join_for_worker does: 0
    # joined (here: our own namespaces), else the errno (EINVAL for a name it may not
    # join, a count that does not match, an fd of another type of namespace).
    got = []
    for reaper in (HELPER_EXE, "python"):
        r = subprocess.run([sys.executable, "-I", "-c", JOIN_FOR_A_WORKER, reaper, kinds,
                            *files], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        got.append(r.stdout.strip())
    assert got[0] == got[1]
    # In the rootless run uts and ipc are the host's, which its root may not join (EPERM).
    assert got[0] == ("1" if ROOTLESS and files and answer == "0" else answer)
