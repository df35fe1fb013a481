"""Edge cases of the shim's steps, each with its control:
a cwd the target's uid cannot enter, the caller's blocked signals, seccomp filters that
kill what the shim itself calls, an unmapped wrapperd uid in a new user namespace, and
rlimits in the top half of rlim_t's range."""

import json
import os
import signal
import subprocess
import threading

import pytest

import sandbox
from sandbox.errors import SpecError
from tests.conftest import (
    TARGET_ENV,
    needs_host_root,
    probe_spec,
    run_probe,
    run_wrapperd,
    wrapperd_cmd,
)

NOBODY = 65534


# ------------------------------------------------------------------ cwd

def test_cwd_the_target_uid_cannot_enter_fails_closed(probe, scratch):
    # The cwd step runs as root, before the uid change: the target (nobody) must not be
    # left inside a 0700 root directory, from where it could read what lies below it
    # by relative paths.
    private = scratch / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_text("s")
    os.chmod(private / "secret", 0o644)
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", user={"uid": NOBODY}, cwd=str(private))
    p = run_wrapperd(spec)
    assert p.returncode == 125
    assert p.stderr.decode() == \
        f"wrapperd: cwd: chdir {private} as the target: Permission denied\n"
    assert not marker.exists()
    # Control: the same directory, searchable by others, is the target's cwd.
    os.chmod(private, 0o711)
    r = run_probe(spec)
    assert r["cwd"] == str(private) and marker.exists()


def test_control_root_still_enters_a_0700_cwd(probe, scratch):
    # Control for the check above: root (keeping CAP_DAC_READ_SEARCH) still enters it.
    private = scratch / "private"
    private.mkdir(mode=0o700)
    r = run_probe(probe_spec(probe, cwd=str(private)))
    assert r["cwd"] == str(private)


# ------------------------------------------------------------------ signals

SIG_SPEC = {"argv": ["/bin/grep", "^Sig", "/proc/self/status"], "env": dict(TARGET_ENV)}
BLOCKED = {signal.SIGTERM, signal.SIGUSR1}


def _sigsets(out: bytes) -> dict:
    return {k.rstrip(":"): int(v, 16) for k, v in
            (line.split() for line in out.decode().splitlines()) if k != "SigQ:"}


def _bit(sig) -> int:
    return 1 << (int(sig) - 1)


def _in_blocking_thread(fn):
    """fn() in a thread whose signal mask blocks BLOCKED (what a child forked by that
    thread inherits); its result."""
    out = {}

    def body():
        signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
        try:
            out["r"] = fn()
        except BaseException as e:          # noqa: B036 -- re-raised below
            out["e"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    if "e" in out:
        raise out["e"]
    return out["r"]


def _via_cli():
    p = subprocess.run(wrapperd_cmd("--spec", "-"), input=json.dumps(SIG_SPEC).encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _via_spawn():
    return sandbox.run(dict(SIG_SPEC), capture_output=True, timeout=30).stdout


def _via_fast():
    with sandbox.ForkServer() as fs:      # started here: it inherits this thread's mask
        proc = fs.spawn(dict(SIG_SPEC), stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=30)
        return out


@pytest.mark.parametrize("path", [_via_cli, _via_spawn, _via_fast],
                         ids=["cli", "plan", "fast"])
def test_target_gets_an_empty_signal_mask_and_default_sigpipe(path):
    got = _sigsets(_in_blocking_thread(path))
    assert got["SigBlk"] == 0
    assert not got["SigIgn"] & (_bit(signal.SIGPIPE) | _bit(signal.SIGXFSZ))


def test_control_a_plain_child_of_the_blocking_thread_inherits_the_mask():
    out = _in_blocking_thread(lambda: subprocess.run(
        SIG_SPEC["argv"], capture_output=True, check=True).stdout)
    assert _sigsets(out)["SigBlk"] == _bit(signal.SIGTERM) | _bit(signal.SIGUSR1)


# ------------------------------------------------------------------ seccomp vs the shim

def _filter(name: str, action: str) -> dict:
    return {"default_action": "allow", "syscalls": [{"names": [name], "action": action}]}


@pytest.mark.parametrize("name", ["rt_sigaction", "rt_sigprocmask"])
def test_filter_killing_signal_calls_does_not_kill_the_shim(probe, scratch, name):
    # The shim restores signals before it loads the filter: only execve comes after.
    marker = scratch / "ran"
    r, w = os.pipe()
    p = run_wrapperd({"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
                      "seccomp": _filter(name, "kill_process")},
                     "--status-fd", str(w), pass_fds=(w,))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b""
    assert p.returncode == 0, p.stderr
    assert marker.exists()


def test_filter_killing_execve_is_refused_before_anything_runs(scratch):
    marker = scratch / "ran"
    spec = {"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
            "seccomp": _filter("execve", "kill_process")}
    r, w = os.pipe()
    p = run_wrapperd(spec, "--status-fd", str(w), pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        rec = json.loads(f.read())
    assert p.returncode == 125 and rec["step"] == "spec"
    assert p.stderr.decode().startswith(
        "wrapperd: spec: seccomp: the filter's action for execve is kill_process")
    for fast in (False, True):
        with pytest.raises(SpecError, match="execve is kill_process"):
            sandbox.spawn(dict(spec), fast=fast)
    assert not marker.exists()
    # Control: an errno action for execve is reported by the shim itself (exit 126).
    spec["seccomp"] = _filter("execve", "errno:EPERM")
    p = run_wrapperd(spec)
    assert p.returncode == 126
    assert p.stderr.decode().startswith("wrapperd: exec: execve /usr/bin/touch")


# ------------------------------------------------------------------ user namespace

MAPS = {"uid_map": [{"inside": 0, "outside": 100000, "count": 65536}],
        "gid_map": [{"inside": 0, "outside": 100000, "count": 65536}]}


def test_user_namespace_leaving_wrappers_uid_unmapped_is_refused(probe, scratch):
    # Without `user` the target keeps the shim's uid: root, unmapped, shown as 65534
    # inside -- but the kernel checks files against host uid 0.
    needs_host_root("maps host ids 100000+, which a rootless container does not have")
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", namespaces={"user": MAPS})
    p = run_wrapperd(spec)
    assert p.returncode == 125
    assert p.stderr.decode().startswith(
        "wrapperd: spec: namespaces.user.uid_map: wrapperd's own uid 0 is not mapped")
    with pytest.raises(SpecError, match="not mapped"):
        sandbox.spawn(dict(spec), fast=True)
    assert not marker.exists()
    # Control: with a user inside the map, the target runs as host uid 100000.
    proc = sandbox.spawn(probe_spec(probe, "openw:/etc/shadow", "sleep:5",
                                    namespaces={"user": MAPS}, user={"uid": 0, "gid": 0}),
                         stdout=subprocess.PIPE)
    with proc:
        line = proc.stdout.readline()
        with open(f"/proc/{proc.target_pid}/status") as f:
            uids = [ln.split()[1:] for ln in f if ln.startswith("Uid:")][0]
        proc.kill()
    assert uids == ["100000"] * 4
    assert json.loads(line)["actions"]["openw:/etc/shadow"] == "EACCES"


# ------------------------------------------------------------------ rlimits

def test_rlimit_in_the_top_half_of_rlim_t_is_applied(probe):
    big = 2**63 + 5
    r = run_probe(probe_spec(probe, rlimits={"CORE": [big - 1, big]}))
    line = [ln for ln in r["limits"].splitlines() if ln.startswith("Max core file size")]
    assert line[0].split()[4:6] == [str(big - 1), str(big)]



# ------------------------------------------------------------------ cgroup

def test_cgroup_path_naming_a_file_in_one_hierarchy_creates_nothing(scratch, cgroup_root):
    # memory.limit_in_bytes is a file at the root of the v1 memory hierarchy only: the
    # cgroup step used to mkdir (and join) it in cpu, cpuacct, cpuset ... first.
    needs_host_root("uses the host's v1 hierarchies")
    from sandbox import cgroups
    name = "memory.limit_in_bytes"
    hs = [h for h in cgroups.hierarchies() if h.version == 1]
    assert any(os.path.isfile(os.path.join(h.mountpoint, name)) for h in hs)
    before = {h.mountpoint for h in hs if os.path.isdir(os.path.join(h.mountpoint, name))}
    assert not before, f"left over from elsewhere: {before}"
    marker = scratch / "ran"
    p = run_wrapperd({"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
                      "cgroup": {"path": "/" + name, "version": 1}})
    assert p.returncode == 125
    assert p.stderr.decode().startswith("wrapperd: spec: cgroup.path: ")
    assert not marker.exists()
    assert [h.mountpoint for h in hs if os.path.isdir(os.path.join(h.mountpoint, name))] == []
    # Control: a fresh path of our own is created and joined.
    p = run_wrapperd({"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
                      "cgroup": {"path": cgroup_root, "version": 1}})
    assert p.returncode == 0, p.stderr
    assert marker.exists()
