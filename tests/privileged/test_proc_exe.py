"""/proc/self/exe and the supervisor (runc CVE-2019-5736 class): the target cannot write
the interpreter it or the shim runs through /proc, and cannot reach a wrapperd process
that stays alive outside it (the session fork's or the pid namespace's supervisor, the
namespace's reaper) -- neither its /proc/PID/exe nor its memory.  What the kernel does,
asked by the probe as the target; the control shows that a target holding
CAP_SYS_PTRACE does reach the supervisor's memory (why the `default` profile drops it)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from sandbox import supervisor
from tests.conftest import ROOTLESS, probe_spec, wrapperd_cmd

NOBODY = {"uid": 65534, "gid": 65534}
HELPER_EXE = os.path.realpath(supervisor.helper_path())
ROOT_DEFAULT = {"profile": "default"}


def _run(spec: dict, group_leader: bool) -> "tuple[dict, int]":
    """Run wrapperd with spec on an fd; (the probe's report, wrapperd's pid)."""
    r, w = os.pipe()
    os.write(w, json.dumps(spec).encode())
    os.close(w)
    try:
        p = subprocess.Popen(wrapperd_cmd("--spec-fd", str(r)), pass_fds=(r,),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             process_group=0 if group_leader else None)
    finally:
        os.close(r)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out), p.pid


# In the rootless run the interpreter (and the helper) belong to the host's root,
# unmapped there: the container's root gets EACCES before the kernel looks at whether
# the file is running.
ROOT_WRITE_ERROR = "EACCES" if ROOTLESS else "ETXTBSY"


@pytest.mark.parametrize("who, errno_name", [("root-default", ROOT_WRITE_ERROR),
                                              ("nobody", "EACCES")])
def test_target_cannot_open_its_own_exe_for_writing(probe, who, errno_name):
    fields = ROOT_DEFAULT if who == "root-default" else {"user": NOBODY}
    r, _ = _run(probe_spec(probe, "openw:/proc/self/exe", **fields), group_leader=False)
    # The target runs the very interpreter wrapperd runs from (/usr/bin/python3): root
    # gets ETXTBSY (the kernel refuses writes to a running executable), nobody EACCES.
    assert r["actions"]["openw:/proc/self/exe"] == errno_name
    assert r["exe"] == os.path.realpath("/usr/bin/python3")


# (name, extra spec fields, wrapperd a group leader, ancestors outside the target that
# are wrapperd processes: how many levels up)
LAYOUTS = [
    ("session-fork", {}, True, 1),                                     # supervisor
    ("pid-ns-host-proc", {"namespaces": {"pid": True}}, False, 2),     # reaper, supervisor
    ("pid-ns-own-proc", {"namespaces": {"pid": True, "mount": True}}, False, 1),  # reaper
    ("pid-ns-session-fork", {"namespaces": {"pid": True}}, True, 2),   # no second fork
]


@pytest.mark.parametrize("who", ["root-default", "nobody"])
@pytest.mark.parametrize("name, extra, leader, levels", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_target_cannot_reach_the_supervisors_exe_or_memory(probe, who, name, extra,
                                                            leader, levels):
    fields = dict(ROOT_DEFAULT if who == "root-default" else {"user": NOBODY}, **extra)
    r, wrapperd_pid = _run(probe_spec(probe, f"ancestors:{levels}", **fields), leader)
    up = r["ancestors"]
    assert len(up) == levels, up
    if name != "pid-ns-own-proc":
        assert up[-1]["pid"] == wrapperd_pid       # the host's view: the supervisor
    else:
        assert up[0]["pid"] == 1                   # the namespace's reaper
    for a in up:
        # Not even the link: the kernel's ptrace access check (PTRACE_MODE_READ) fails.
        assert a["exe_link"] == "EACCES", a
        assert a["exe_r"] == a["exe_w"] == a["mem_rw"] == "EACCES", a


@pytest.mark.parametrize("name, extra, leader, levels", LAYOUTS[:2], ids=["session-fork",
                                                                          "pid-ns-host-proc"])
def test_control_a_root_target_with_cap_sys_ptrace_reaches_the_supervisor(probe, name,
                                                                           extra, leader,
                                                                           levels):
    # The same root target but keeping CAP_SYS_PTRACE (capabilities.drop without it):
    # it passes the kernel's ptrace check -- into the memory of a process that still holds
    # every capability the spec dropped.  Writing the running interpreter still fails.
    spec = probe_spec(probe, f"ancestors:{levels}", no_new_privs=True,
                      capabilities={"drop": ["CAP_SYS_MODULE"]}, **extra)
    r, wrapperd_pid = _run(spec, leader)
    sup = r["ancestors"][-1]
    assert sup["pid"] == wrapperd_pid
    assert sup["exe_link"] == HELPER_EXE           # the static helper it became
    assert sup["exe_r"] == "ok" and sup["mem_rw"] == "ok"
    assert sup["exe_w"] == ROOT_WRITE_ERROR


# The library's own layouts: spawn() starts the shim as pid 1 of the namespace (it stays
# as the reaper), and the fork server forks a reaper ahead of the request.  Either one is
# the target's one ancestor inside; neither may be reachable, and the control shows
# that the check can fail.
def _spawn_via(via: str, spec: dict) -> "tuple[dict, int]":
    import sandbox
    from sandbox.forkserver import ForkServer
    from sandbox.spawning import DEVNULL, PIPE
    with ForkServer() as fs:
        start = sandbox.spawn if via == "spawn" else fs.spawn
        p = start(spec, stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
        with p:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    return json.loads(out), p.pid


@pytest.mark.parametrize("who", ["root-default", "nobody"])
@pytest.mark.parametrize("via", ["spawn", "fork server"])
def test_target_cannot_reach_the_reaper_the_library_made(probe, who, via):
    fields = dict(ROOT_DEFAULT if who == "root-default" else {"user": NOBODY})
    r, reaper = _spawn_via(via, probe_spec(probe, "ancestors:1", namespaces={"pid": True},
                                           **fields))
    up = r["ancestors"]
    assert up[0]["pid"] == reaper
    assert up[0]["exe_link"] == "EACCES", up
    assert up[0]["exe_r"] == up[0]["exe_w"] == up[0]["mem_rw"] == "EACCES", up


@pytest.mark.parametrize("via", ["spawn", "fork server"])
def test_control_a_target_with_cap_sys_ptrace_reaches_the_reaper_the_library_made(probe,
                                                                                 via):
    spec = probe_spec(probe, "ancestors:1", no_new_privs=True, namespaces={"pid": True},
                      capabilities={"drop": ["CAP_SYS_MODULE"]})
    r, reaper = _spawn_via(via, spec)
    sup = r["ancestors"][0]
    assert sup["pid"] == reaper and sup["exe_r"] == "ok" and sup["mem_rw"] == "ok"
