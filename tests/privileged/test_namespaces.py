"""Namespaces, as the kernel reports them to the target (/proc/<target>/ns/*, its own pid,
its view of /proc, hostname, network interfaces) and to the host."""

import json
import os
import select
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import (
    SYSTEM_PYTHON,
    TARGET_ENV,
    needs_host_root,
    probe_spec,
    run_probe,
    run_wrapperd,
    skip_or_fail,
    until,
    wrapperd_cmd,
)

# spec kind -> the names under /proc/PID/ns that a new namespace of that kind changes
NS_FILES = {"user": ("user",), "mount": ("mnt",), "pid": ("pid", "pid_for_children"),
            "net": ("net",), "ipc": ("ipc",), "uts": ("uts",), "cgroup": ("cgroup",)}


def host_ns():
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}


def py_spec(code: str, **fields) -> dict:
    spec = {"argv": [SYSTEM_PYTHON, "-I", "-c", code], "env": dict(TARGET_ENV)}
    spec.update(fields)
    return spec


def run_json(spec, *args, **kw):
    p = run_wrapperd(spec, *args, **kw)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_no_namespaces_asked_means_all_the_callers(probe):
    # The control for the test below: the comparison itself sees equality.
    r = run_probe(probe_spec(probe))
    host = host_ns()
    assert {n: r["ns"][n] for n in host} == host


@pytest.mark.parametrize("kind", sorted(NS_FILES))
def test_each_namespace_asked_differs_and_the_others_are_the_callers(probe, kind):
    r = run_probe(probe_spec(probe, namespaces={kind: True}))
    host = host_ns()
    for name, ident in host.items():
        if name in NS_FILES[kind]:
            assert r["ns"][name] != ident, name
        else:
            assert r["ns"][name] == ident, name


def test_all_namespaces_at_once(probe):
    r = run_probe(probe_spec(probe, namespaces=dict.fromkeys(NS_FILES, True)))
    host = host_ns()
    for names in NS_FILES.values():
        for name in names:
            assert r["ns"][name] != host[name], name
    # user: true maps the caller (root here) to root inside, one id.
    assert r["status"]["Uid"].split() == ["0"] * 4


PID_VIEW = """
import errno, json, os
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
try:
    os.kill(%d, 0)
    kill = 'ok'
except OSError as e:
    kill = errno.errorcode[e.errno]
print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), 'pids': pids, 'kill': kill}))
"""


def test_new_pid_namespace_target_is_pid_2_under_a_reaper():
    outside = subprocess.Popen(["sleep", "30"])     # a pid that exists only outside
    try:
        assert outside.pid > 2
        r = run_json(py_spec(PID_VIEW % outside.pid, namespaces={"pid": True, "mount": True}))
    finally:
        outside.kill()
        outside.wait()
    assert r["pid"] == 2 and r["ppid"] == 1
    assert r["pids"] == [1, 2]                     # a fresh /proc: no host process in it
    assert r["kill"] == "ESRCH"                     # the host's pids name nothing inside


def test_as_pid_1_makes_the_target_pid_1():
    r = run_json(py_spec(PID_VIEW % os.getpid(),
                         namespaces={"pid": True, "mount": True, "as_pid_1": True}))
    assert r["pid"] == 1 and r["ppid"] == 0 and r["pids"] == [1]


def test_control_without_pid_namespace_host_processes_are_visible():
    r = run_json(py_spec(PID_VIEW % os.getpid()))
    assert r["pid"] > 2 and r["kill"] == "ok" and os.getpid() in r["pids"]


ORPHAN = """
import os, time
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    gc = os.fork()
    if gc == 0:                 # the grandchild: orphaned when the child exits at once
        time.sleep(0.2)
        os._exit(0)             # closes w: EOF for the target below
    os.write(w, str(gc).encode())
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
gc = int(os.read(r, 32))
while os.read(r, 32):           # EOF only once the grandchild has exited
    pass


def state():
    try:
        with open(f'/proc/{gc}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):   # ESRCH: gone while we read it
        return 'reaped'


# It exited: it is a zombie (a moment after EOF) until its parent, the reaper, reaps it.
deadline = time.monotonic() + %s
while state() != 'reaped' and time.monotonic() < deadline:
    time.sleep(0.02)
print(state())
"""


def test_the_reaper_reaps_orphans():
    # Generous: the reaper may be slow to run on a loaded machine.
    p = run_wrapperd(py_spec(ORPHAN % 20, namespaces={"pid": True, "mount": True}))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == b"reaped"


def test_control_as_pid_1_orphans_stay_zombies_unless_the_target_reaps():
    # The same grandchild, provably exited, stays a zombie: the target (pid 1 here) does
    # not reap -- the check above can fail.
    p = run_wrapperd(py_spec(ORPHAN % 1, namespaces={"pid": True, "mount": True,
                                                     "as_pid_1": True}))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == b"Z"


SIGNALLED = """
import os, signal, sys, time
def handler(sig, frame):
    # os.write: the signal may land while print('ready') still holds stdout's lock.
    os.write(1, b'got %d\\n' % sig)
    sys.exit(42)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGUSR1, handler)
print('ready', flush=True)
time.sleep(20)
sys.exit(3)
"""


def _start(spec):
    p = subprocess.Popen(wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(json.dumps(spec).encode())
    p.stdin.close()
    return p


@pytest.mark.parametrize("ns", [{"pid": True, "mount": True},
                                {"pid": True, "mount": True, "as_pid_1": True},
                                {"pid": True, "user": True}])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_to_the_shim_reaches_the_target_and_its_status_comes_back(ns, sig):
    p = _start(py_spec(SIGNALLED, namespaces=ns))
    try:
        assert p.stdout.readline() == b"ready\n"
        # The caller has one child: the shim, outside the namespace.
        with open(f"/proc/{p.pid}/status") as f:
            assert f"NSpid:\t{p.pid}\n" in f.read()
        os.kill(p.pid, sig)
        assert p.wait(30) == 42, p.stderr.read()   # generous: the suite may run loaded
        assert p.stdout.read() == b"got %d\n" % sig
    finally:
        p.kill()
        p.wait()


def test_target_killed_by_a_signal_gives_128_plus_n():
    p = _start(py_spec("import time; print('ready', flush=True); time.sleep(20)",
                       namespaces={"pid": True}))
    try:
        assert p.stdout.readline() == b"ready\n"
        os.kill(p.pid, signal.SIGTERM)      # no handler in the target (pid 2): it dies
        assert p.wait(10) == 128 + signal.SIGTERM
    finally:
        p.kill()
        p.wait()


def test_the_status_fd_sees_eof_at_exec_though_the_shim_waits_outside():
    r, w = os.pipe()
    try:
        p = subprocess.Popen(wrapperd_cmd("--spec", "-", "--status-fd", str(w)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(w,))
        os.close(w)
        p.stdin.write(json.dumps(py_spec("import time; time.sleep(60)",
                                         namespaces={"pid": True})).encode())
        p.stdin.close()
        # No wall-clock bound on the EOF: that the target still runs after it proves it
        # came at exec, not at exit (select only keeps a broken shim from hanging us).
        assert select.select([r], [], [], 30)[0], "no EOF on the status fd"
        assert os.read(r, 100) == b""           # EOF: neither shim nor reaper kept it
        assert p.poll() is None                 # ... while the target still runs
        p.terminate()
        assert p.wait(10) == 128 + signal.SIGTERM
    finally:
        os.close(r)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_hostname_inside_differs_and_the_hosts_is_untouched():
    before = socket.gethostname()
    p = run_wrapperd(py_spec("import socket; print(socket.gethostname())",
                             namespaces={"uts": True}, hostname="wrapperd-inside"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == b"wrapperd-inside"
    assert socket.gethostname() == before != "wrapperd-inside"


NET_VIEW = """
import fcntl, json, socket, struct
names = [n for _, n in socket.if_nameindex()]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack('16sH22x', fcntl.ioctl(s.fileno(), 0x8913,
                      struct.pack('16sH22x', b'lo', 0)))[1]
c = socket.socket()
try:
    c.connect(('127.0.0.1', 9))
    conn = 'ok'
except OSError as e:
    conn = e.errno
print(json.dumps({'names': names, 'lo_up': bool(flags & 1), 'conn': conn}))
"""


def test_new_net_namespace_has_only_loopback_up():
    r = run_json(py_spec(NET_VIEW, namespaces={"net": True}))
    assert r["names"] == ["lo"] and r["lo_up"]
    assert r["conn"] == 111               # ECONNREFUSED: loopback works, nothing listens


def test_control_the_host_has_more_than_loopback():
    r = run_json(py_spec(NET_VIEW))
    if r["names"] == ["lo"]:
        skip_or_fail("this host has only loopback: the control proves nothing")
    assert len(r["names"]) > 1


@pytest.fixture
def holder():
    """A process in its own net and uts namespaces, to be joined by path."""
    p = subprocess.Popen(["unshare", "--net", "--uts", "sleep", "60"])
    until(lambda: os.readlink(f"/proc/{p.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
          30, "unshare to start")
    yield p.pid
    p.kill()
    p.wait()


def test_joining_namespaces_by_path(probe, holder):
    r = run_probe(probe_spec(probe, namespaces={"net": f"/proc/{holder}/ns/net",
                                                "uts": f"/proc/{holder}/ns/uts"}))
    for name in ("net", "uts"):
        assert r["ns"][name] == os.readlink(f"/proc/{holder}/ns/{name}")
        assert r["ns"][name] != os.readlink(f"/proc/self/ns/{name}")
    assert r["ns"]["ipc"] == os.readlink("/proc/self/ns/ipc")


def test_joining_a_namespace_of_the_wrong_kind_fails_closed(probe, holder, scratch):
    marker = scratch / "ran"
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}",
                                namespaces={"net": f"/proc/{holder}/ns/uts"}))
    assert p.returncode == 125
    assert p.stderr.decode().startswith("wrapperd: namespaces: net: setns /proc/")
    assert not marker.exists()


def test_user_namespace_with_ranges_as_root(probe):
    needs_host_root("maps host ids 200000+, which a rootless container does not have")
    r = run_probe(probe_spec(probe, "run:/bin/cat,/proc/self/uid_map",
                             namespaces={"user": {
                                 "uid_map": [{"inside": 0, "outside": 200000, "count": 65536}],
                                 "gid_map": [{"inside": 0, "outside": 200000, "count": 65536}]}},
                             user={"uid": 1000, "gid": 1000}))
    assert r["status"]["Uid"].split() == ["1000"] * 4
    assert r["status"]["Gid"].split() == ["1000"] * 4
    assert r["run"]["stdout"].split() == ["0", "200000", "65536"]
    assert r["ns"]["user"] != os.readlink("/proc/self/ns/user")


def test_unmapped_user_is_refused_before_anything_runs(probe, scratch):
    marker = scratch / "ran"
    p = run_wrapperd(probe_spec(probe, f"touch:{marker}", namespaces={"user": True},
                                user={"uid": 65534}))
    assert p.returncode == 125
    assert b"user.uid: 65534 is not mapped" in p.stderr
    assert not marker.exists()


def test_rootless_user_namespace(probe):
    """wrapperd run as nobody: the caller's own uid maps to 0, setgroups is denied."""
    cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
           *wrapperd_cmd("--spec", "-")]
    spec = probe_spec(probe, "run:/bin/cat,/proc/self/uid_map", cwd="/",
                      namespaces={"user": True, "pid": True, "mount": True, "net": True,
                                  "uts": True, "ipc": True},
                      hostname="rootless", masked_paths=["/proc/timer_list"])
    p = subprocess.run(cmd, input=json.dumps(spec).encode(), capture_output=True,
                       timeout=30, cwd="/")
    assert p.returncode == 0, p.stderr.decode()
    r = json.loads(p.stdout)
    assert r["status"]["Uid"].split() == ["0"] * 4
    assert r["run"]["stdout"].split() == ["0", "65534", "1"]
    assert r["pid"] == 2
    host = host_ns()
    for name in ("user", "pid", "mnt", "net", "uts", "ipc"):
        assert r["ns"][name] != host[name], name
    assert r["ns"]["cgroup"] == host["cgroup"]


def test_rootless_control_without_user_namespace_fails_closed(probe, scratch):
    cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
           *wrapperd_cmd("--spec", "-")]
    spec = probe_spec(probe, f"touch:{scratch}/ran", namespaces={"net": True})
    p = subprocess.run(cmd, input=json.dumps(spec).encode(), capture_output=True,
                       timeout=30, cwd="/")
    assert p.returncode == 125
    assert p.stderr.decode() == ("wrapperd: namespaces: net: unshare(CLONE_NEWNET): "
                                 "Operation not permitted\n")
    assert not (scratch / "ran").exists()


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def test_killing_the_shim_takes_the_whole_pid_namespace_with_it():
    p = _start(py_spec("import time; print('ready', flush=True); time.sleep(20)",
                       namespaces={"pid": True}))
    try:
        assert p.stdout.readline() == b"ready\n"
        (reaper,) = _children(p.pid)
        (target,) = _children(reaper)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        until(lambda: not os.path.exists(f"/proc/{target}") and
              not os.path.exists(f"/proc/{reaper}"), 30, "the namespace to end with the shim")
    finally:
        p.kill()
        p.wait()


def test_rootless_ranges_go_through_newuidmap_which_checks_subuid(probe, scratch):
    # More than the caller's own id: newuidmap must run, and find our /proc/PID owned by
    # the caller (the shim is made dumpable for it) -- then it refuses the range, since
    # /etc/subuid grants nobody nothing.  The target never runs.
    cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
           *wrapperd_cmd("--spec", "-")]
    spec = probe_spec(probe, f"touch:{scratch}/ran", namespaces={"user": {
        "uid_map": [{"inside": 0, "outside": 65534, "count": 1},
                    {"inside": 1, "outside": 3000000, "count": 10}],
        "gid_map": [{"inside": 0, "outside": 65534, "count": 1}]}})
    p = subprocess.run(cmd, input=json.dumps(spec).encode(), capture_output=True,
                       timeout=30, cwd="/")
    assert p.returncode == 125
    err = p.stderr.decode()
    assert err.startswith("wrapperd: namespaces: user: write the id maps: newuidmap failed:")
    assert "[1-11) -> [3000000-3000010) not allowed" in err and err.count("\n") == 1
    assert not (scratch / "ran").exists()


@pytest.fixture
def userns_holder():
    """A process in its own user namespace (root mapped to root) and net namespace."""
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"])
    deadline = time.monotonic() + 30            # a bounded wait, not a timing assertion
    while True:
        try:
            with open(f"/proc/{p.pid}/uid_map") as f:
                if f.read().split() == ["0", str(os.geteuid()), "1"]:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "unshare did not start"
        time.sleep(0.01)
    yield p.pid
    p.kill()
    p.wait()


def test_joining_a_user_namespace_and_a_net_namespace_it_owns(probe, userns_holder):
    pid = userns_holder
    r = run_probe(probe_spec(probe, namespaces={"user": f"/proc/{pid}/ns/user",
                                                "net": f"/proc/{pid}/ns/net"}))
    for name in ("user", "net"):
        assert r["ns"][name] == os.readlink(f"/proc/{pid}/ns/{name}") != \
            os.readlink(f"/proc/self/ns/{name}")
    assert r["status"]["Uid"].split() == ["0"] * 4
