"""Dynamic users, for real: sandboxes of the service, network-service, strict and
untrusted profiles run with a uid of their own, so that one cannot read another's
environ, write its memory, ptrace or signal it -- through the wrapperd CLI, spawn()
and the fork server alike.  The ids are read from the host's /proc/PID/status; the
attacks are made by a sandboxed probe (tests/probe.py attack:PID), with a control (a
sandbox of the same name, hence the same uid) showing that the very same attack lands.

The registry lives in the test run's own directory (conftest's
_own_dynamic_user_registry), never in /run.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import sandbox
from sandbox import cgroups, cli, dynamicuser
from sandbox.forkserver import ForkServer
from sandbox.spawning import DEVNULL, PIPE
from tests.conftest import (
    needs_host_root,
    probe_spec,
    run_report,
    run_wrapperd,
    until,
    wrapperd_cmd,
)

PROFILES = ("service", "network-service", "strict", "untrusted")
MODES = ("wrapperd", "spawn", "fast")
TOKEN = "WRAPPERD_TEST_TOKEN"
ATTACKS = ("environ", "mem_open", "mem_write", "ptrace", "kill0", "sigstop")


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs


def _spec(probe, profile, name, cg_root, *actions, token=None):
    spec = probe_spec(probe, *actions, profile=profile)
    if name is not None:
        spec["name"] = name
    if token is not None:
        spec["env"][TOKEN] = token
    if profile == "untrusted":
        # Its cgroup limits need a path: cg_root/NAME (or a unique one, unnamed).
        spec["cgroup"] = {"root": cg_root} if name is not None else \
            {"path": f"{cg_root}/u-{uuid.uuid4().hex[:8]}"}
    return spec


def _needs(profile):
    if profile == "untrusted" and cgroups.mode() != "unified":
        needs_host_root("the profile's cgroup limits live in cgroup v1 here")


def _find_pid(token: str, deadline: float) -> int:
    """The host pid of the target started with TOKEN=token in its environment."""
    want = f"{TOKEN}={token}".encode()
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
                        return int(entry)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process with {want!r}")


def _host_ids(pid: int) -> "tuple[list, list, list]":
    """Uid, Gid (real, effective, saved, fs) and Groups as the host's /proc shows them."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                out[k] = [int(x) for x in v.split()]
    return out["Uid"], out["Gid"], out["Groups"]


def _assert_dynamic(pid: int) -> int:
    uids, gids, groups = _host_ids(pid)
    lo, hi = dynamicuser.DYNAMIC_RANGE
    uid = uids[0]
    assert lo <= uid <= hi, uids
    assert uids == [uid] * 4 and gids == [uid] * 4 and groups == []
    for lookup in (pwd.getpwuid, grp.getgrgid):
        with pytest.raises(KeyError):
            lookup(uid)                     # never an id of the user or group database
    return uid


@contextlib.contextmanager
def _running(mode, spec, server):
    """Start spec (a probe that prints its report, then sleeps) by mode; yield the
    target's host pid once it runs; kill everything on the way out."""
    token = spec["env"][TOKEN]
    deadline = time.monotonic() + 60
    pids = []
    if mode == "wrapperd":
        p = subprocess.Popen(wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(json.dumps(spec).encode())
        p.stdin.close()
    else:
        kw = dict(stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
        p = server.spawn(spec, **kw) if mode == "fast" else sandbox.spawn(spec, **kw)
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read().decode() if mode == "wrapperd" else "no report"
        pid = _find_pid(token, deadline)
        pids.append(pid)
        yield pid
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            p.kill()
        p.wait(timeout=30)
        if mode == "wrapperd":
            p.stdout.close()
            p.stderr.close()


def _token() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("mode", MODES)
def test_sandboxes_of_two_names_get_two_uids_and_cannot_reach_each_other(
        mode, profile, probe, server, cgroup_root):
    _needs(profile)
    tag = uuid.uuid4().hex[:8]
    a_name, b_name = f"dyn-a-{tag}", f"dyn-b-{tag}"
    a_spec = _spec(probe, profile, a_name, cgroup_root, "sleep:60", token=_token())
    b_spec = _spec(probe, profile, b_name, cgroup_root, "sleep:60", token=_token())
    with _running(mode, a_spec, server) as a_pid, _running(mode, b_spec, server) as b_pid:
        a_uid, b_uid = _assert_dynamic(a_pid), _assert_dynamic(b_pid)
        assert a_uid != b_uid
        # The attacker is a sandbox of the other name: strict's and untrusted's own pid
        # namespace and /proc would hide the victim from one of the same profile, so
        # they are attacked from `service`, which sees the host's /proc and pids (a
        # dynamic id is a name's, whatever the profile).
        by = profile if profile in ("service", "network-service") else "service"
        for attacker, victim, victim_uid in ((a_name, b_pid, b_uid), (b_name, a_pid, a_uid)):
            spec = _spec(probe, by, attacker, cgroup_root, f"attack:{victim}",
                         token=_token())
            report = run_report(mode, spec, server)
            own = int(report["status"]["Uid"].split()[0])
            assert own == (a_uid if attacker == a_name else b_uid) != victim_uid
            got = report["attack"]
            assert all(got[k] != "ok" for k in ATTACKS), (attacker, got)
            # The victim was not stopped.
            with open(f"/proc/{victim}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] != "T"
            # Control: a sandbox of the victim's own name (so its uid) reaches it.
            victim_name = b_name if attacker == a_name else a_name
            spec = _spec(probe, by, victim_name, cgroup_root, f"attack:{victim}",
                         token=_token())
            ctl = run_report(mode, spec, server)["attack"]
            assert ctl["kill0"] == "ok", ctl             # signals go by uid alone
            if profile != "untrusted":
                # (A target in a user namespace of its own is out of ptrace's reach for
                # anyone without CAP_SYS_PTRACE there, same uid or not: commoncap.)
                assert ctl["environ"] == ctl["mem_write"] == "ok", ctl


@pytest.mark.parametrize("mode", MODES)
def test_ptrace_attach_is_refused_across_names_without_seccomp_in_the_way(
        mode, probe, server, cgroup_root):
    # The profiles' seccomp filters refuse ptrace(2) to everyone, which would hide what
    # the uid alone decides: here the attacker is a bare dynamic user of a name.
    tag = uuid.uuid4().hex[:8]
    victim_spec = _spec(probe, "service", f"dyn-v-{tag}", cgroup_root, "sleep:60",
                        token=_token())
    with _running(mode, victim_spec, server) as victim:
        for name, expect in ((f"dyn-x-{tag}", "EPERM"), (f"dyn-v-{tag}", "ok")):
            spec = probe_spec(probe, f"attack:{victim}", name=name,
                              user={"dynamic": True})
            got = run_report(mode, spec, server)["attack"]
            assert got["ptrace"] == expect, (name, got)     # "ok": the control
            if expect != "ok":
                assert all(got[k] != "ok" for k in ATTACKS), got


@pytest.mark.parametrize("mode", MODES)
def test_same_name_same_uid_while_held_then_released(mode, probe, server, cgroup_root):
    name = f"dyn-same-{uuid.uuid4().hex[:8]}"
    one = _spec(probe, "service", name, cgroup_root, "sleep:60", token=_token())
    two = _spec(probe, "service", name, cgroup_root, "sleep:60", token=_token())
    with _running(mode, one, server) as p1:
        uid = _assert_dynamic(p1)
        with _running(mode, two, server) as p2:
            assert _assert_dynamic(p2) == uid
            rec = dynamicuser.lookup(uid)
            assert rec is not None and rec["name"] == name
            assert len(rec["holders"]) == 2          # both starts hold it
        # The first still runs: the name still holds the id.
        with _running(mode, dict(two, env=dict(two["env"], **{TOKEN: _token()})),
                      server) as p3:
            assert _host_ids(p3)[0][0] == uid
    # Both gone (nothing runs with the uid): the record is stale, and another name
    # whose first candidate is that very id gets it.
    until(lambda: uid not in dynamicuser._ids_in_use(), 30, f"uid {uid} to be free")
    other = next(n for n in (f"dyn-reuse-{i}" for i in range(10**6))
                 if dynamicuser.first_candidate(n) == uid)
    spec = _spec(probe, "service", other, cgroup_root, "sleep:60", token=_token())
    with _running(mode, spec, server) as p4:
        assert _host_ids(p4)[0][0] == uid
        assert dynamicuser.lookup(uid)["name"] == other


@pytest.mark.parametrize("mode", ("wrapperd", "fast"))
def test_eight_unnamed_sandboxes_started_at_once_get_eight_uids(mode, probe, server,
                                                                cgroup_root):
    specs = [_spec(probe, "service", None, cgroup_root, "sleep:60", token=_token())
             for _ in range(8)]
    with contextlib.ExitStack() as stack:
        if mode == "wrapperd":
            # Eight wrapperd processes allocating at the same moment.
            with ThreadPoolExecutor(8) as pool:
                pids = list(pool.map(lambda s: stack.enter_context(
                    _running(mode, s, server)), specs))
        else:
            with ThreadPoolExecutor(8) as pool:
                pids = list(pool.map(lambda s: stack.enter_context(
                    _running(mode, s, server)), specs))
        uids = [_assert_dynamic(pid) for pid in pids]
        assert len(set(uids)) == 8, uids


@pytest.mark.parametrize("holds", ["uid", "group"])
def test_an_id_some_process_holds_is_skipped(probe, server, cgroup_root, holds):
    # A process of the host already runs as the name's first candidate, or holds it as
    # a supplementary group (which reaches the id's files as well), with no record in
    # the registry: the candidate is skipped (the kernel's view decides, not ours).
    name = f"dyn-busy-{uuid.uuid4().hex[:8]}"
    busy = dynamicuser.first_candidate(name)
    ids = dict(user=busy, group=busy, extra_groups=[]) if holds == "uid" else \
        dict(user=4245, group=4245, extra_groups=[busy])
    holder = subprocess.Popen(["/bin/sleep", "60"], **ids)
    try:
        line = "Uid:" if holds == "uid" else "Groups:"
        with open(f"/proc/{holder.pid}/status") as f:
            assert str(busy) in next(ln for ln in f if ln.startswith(line)).split()
        spec = _spec(probe, "service", name, cgroup_root, "sleep:60", token=_token())
        with _running("wrapperd", spec, server) as pid:
            assert _assert_dynamic(pid) != busy
    finally:
        holder.kill()
        holder.wait()


def test_a_spec_uid_beats_the_profile_dynamic_user(probe, server, cgroup_root):
    spec = _spec(probe, "service", f"dyn-fixed-{uuid.uuid4().hex[:8]}", cgroup_root,
                 "sleep:60", token=_token())
    spec["user"] = {"uid": 4242}
    with _running("spawn", spec, server) as pid:
        assert _host_ids(pid)[0] == [4242] * 4


def test_untrusted_root_inside_is_its_dynamic_id_outside(probe, server, cgroup_root):
    _needs("untrusted")
    spec = _spec(probe, "untrusted", f"dyn-ns-{uuid.uuid4().hex[:8]}", cgroup_root,
                 "sleep:60", token=_token())
    with _running("spawn", spec, server) as pid:
        uid = _assert_dynamic(pid)
        with open(f"/proc/{pid}/uid_map") as f:
            assert f.read().split() == ["0", str(uid), "1"]
        with open(f"/proc/{pid}/gid_map") as f:
            assert f.read().split() == ["0", str(uid), "1"]


def test_inspect_and_verify_name_the_dynamic_user(probe, server, cgroup_root, capsys):
    name = f"dyn-inspect-{uuid.uuid4().hex[:8]}"
    spec = _spec(probe, "service", name, cgroup_root, "sleep:60", token=_token())
    with sandbox.spawn(spec, stdin=DEVNULL, stdout=PIPE, stderr=PIPE) as p:
        assert p.stdout.readline()
        uid = _assert_dynamic(p.target_pid)
        assert sandbox.verify(p, seccomp=True, namespaces=True) == []
        assert cli.main(["inspect", str(p.target_pid)]) == 0
        out = capsys.readouterr().out
        assert f"dynamic user {uid}, allocated for {name!r}" in out
        assert cli.main(["inspect", str(p.target_pid), "--json"]) in (0, 1)
        info = json.loads(capsys.readouterr().out)
        assert info["dynamic_user"] == {"uid": uid, "name": name}
        checks = {c["name"]: c for c in info["exposure"]["checks"]}
        assert checks["uid_shared"]["exposure"] == 0.0
        p.kill()


@pytest.mark.parametrize("bad", ("mode", "symlink", "owner"))
def test_an_unsound_registry_is_refused_and_the_target_never_runs(
        bad, probe, tmp_path, scratch):
    reg = tmp_path / "reg"
    reg.mkdir(mode=0o700)
    path = reg
    if bad == "mode":
        os.chmod(reg, 0o755)
    elif bad == "symlink":
        path = tmp_path / "link"
        path.symlink_to(reg)
    else:
        os.chown(reg, 1, 1)
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", profile="service", name="dyn-bad")
    env = dict(os.environ, **{dynamicuser.ENV: str(path)})
    r = run_wrapperd(spec, env=env)
    assert r.returncode == 125
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrapperd: dynamic_user: registry "), lines
    assert {"mode": "mode 0755, not 0700", "symlink": "a symlink",
            "owner": "not owned by root"}[bad] in lines[0]
    assert not marker.exists()
    assert os.listdir(reg) == []                 # nothing recorded
