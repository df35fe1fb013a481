"""Identity and capabilities, read back from the target's own /proc/self/status."""

import os
import shutil
import subprocess

import pytest

from sandbox import caps
from tests.conftest import (
    SYSTEM_PYTHON,
    capmask,
    ids,
    needs_host_root,
    probe_spec,
    run_probe,
    run_wrapperd,
    skip_or_fail,
    wrapperd_cmd,
)

ALL_HELD = caps.bounding_set()          # root here lacks CAP_SYS_RESOURCE: "all" = all held
SYS_ADMIN = 1 << caps.cap_number("CAP_SYS_ADMIN")
NET_BIND = 1 << caps.cap_number("CAP_NET_BIND_SERVICE")
SYS_BOOT = 1 << caps.cap_number("CAP_SYS_BOOT")


def masks(r):
    return {k: capmask(r, "Cap" + k) for k in ("Inh", "Prm", "Eff", "Bnd", "Amb")}


def test_talos_flags_drop_sys_admin_and_set_uid():
    p = subprocess.run(wrapperd_cmd("--dropped-caps", "CAP_SYS_ADMIN", "--uid", "65534", "--",
                                    "cat", "/proc/self/status"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, p.stderr
    st = dict(line.split(":\t", 1) for line in p.stdout.decode().splitlines() if ":\t" in line)
    assert not int(st["CapBnd"], 16) & SYS_ADMIN
    assert st["Uid"].split() == ["65534"] * 4


def test_non_root_drop_mode(probe):
    r = run_probe(probe_spec(probe, user={"uid": 65534}, capabilities={"drop": ["CAP_SYS_ADMIN"]}))
    assert ids(r, "Uid") == [65534] * 4 and ids(r, "Gid") == [65534] * 4
    assert r["status"]["Groups"] == ""
    assert masks(r) == {"Inh": 0, "Prm": 0, "Eff": 0, "Amb": 0, "Bnd": ALL_HELD & ~SYS_ADMIN}
    assert r["status"]["NoNewPrivs"] == "1"


def test_root_drop_mode(probe):
    r = run_probe(probe_spec(probe, capabilities={"drop": ["sys_admin", "sys_boot"]}))
    want = ALL_HELD & ~SYS_ADMIN & ~SYS_BOOT
    assert masks(r) == {"Inh": 0, "Prm": want, "Eff": want, "Amb": 0, "Bnd": want}
    assert ids(r, "Uid") == [0] * 4


def test_root_keep_mode(probe):
    r = run_probe(probe_spec(probe, capabilities={"keep": ["CAP_NET_BIND_SERVICE",
                                                          "CAP_CHOWN"]}))
    want = NET_BIND | 1 << caps.cap_number("CAP_CHOWN")
    assert masks(r) == {"Inh": 0, "Prm": want, "Eff": want, "Amb": 0, "Bnd": want}


def test_non_root_keep_mode_raises_kept_caps_as_ambient(probe, low_port):
    needs_host_root("binding a low port needs the cap in the userns owning the net ns")
    r = run_probe(probe_spec(probe, f"bind:{low_port}", user={"uid": 65534},
                             capabilities={"keep": ["CAP_NET_BIND_SERVICE"]}))
    assert masks(r) == {"Inh": NET_BIND, "Prm": NET_BIND, "Eff": NET_BIND, "Amb": NET_BIND,
                        "Bnd": NET_BIND}
    assert r["bind"] == "ok"


def test_non_root_without_the_cap_cannot_bind_a_low_port(probe, low_port):
    r = run_probe(probe_spec(probe, f"bind:{low_port}", user={"uid": 65534},
                             capabilities={"keep": []}))
    assert masks(r) == dict.fromkeys(("Inh", "Prm", "Eff", "Amb", "Bnd"), 0)
    assert r["bind"] == "EACCES"


def test_explicit_ambient_subset_in_drop_mode(probe):
    r = run_probe(probe_spec(probe, user={"uid": 65534},
                             capabilities={"drop": ["CAP_SYS_ADMIN"],
                                           "ambient": ["CAP_NET_BIND_SERVICE"]}))
    assert masks(r) == {"Inh": NET_BIND, "Prm": NET_BIND, "Eff": NET_BIND, "Amb": NET_BIND,
                        "Bnd": ALL_HELD & ~SYS_ADMIN}


def test_root_with_ambient(probe):
    r = run_probe(probe_spec(probe, capabilities={"keep": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
                                                  "ambient": ["CAP_NET_BIND_SERVICE"]}))
    kept = NET_BIND | 1 << caps.cap_number("CAP_KILL")
    assert masks(r) == {"Inh": NET_BIND, "Prm": kept, "Eff": kept, "Amb": NET_BIND,
                        "Bnd": kept}


def test_groups_and_gid_by_name(probe):
    r = run_probe(probe_spec(probe, user={"uid": "nobody", "gid": "nogroup",
                                          "groups": ["daemon", 4242], "umask": "0077"}))
    import grp
    assert ids(r, "Uid") == [65534] * 4
    assert ids(r, "Gid") == [grp.getgrnam("nogroup").gr_gid] * 4
    assert sorted(int(g) for g in r["status"]["Groups"].split()) == \
        sorted([grp.getgrnam("daemon").gr_gid, 4242])
    assert r["status"]["Umask"] == "0077"


def test_gid_defaults_to_the_users_primary_group(probe):
    import pwd
    daemon = pwd.getpwnam("daemon")
    r = run_probe(probe_spec(probe, user={"uid": daemon.pw_uid}))
    assert ids(r, "Gid") == [daemon.pw_gid] * 4
    assert r["status"]["Groups"] == ""


def test_no_new_privs_can_be_turned_off(probe):
    r = run_probe(probe_spec(probe, no_new_privs=False))
    assert r["status"]["NoNewPrivs"] == "0"


def test_cap_newer_than_python_prctl_can_be_dropped(probe):
    if caps.last_cap() < caps.cap_number("CAP_CHECKPOINT_RESTORE"):
        skip_or_fail("kernel predates CAP_CHECKPOINT_RESTORE")
    r = run_probe(probe_spec(probe, capabilities={"drop": ["CAP_CHECKPOINT_RESTORE"]}))
    assert not capmask(r, "CapBnd") & 1 << caps.cap_number("CAP_CHECKPOINT_RESTORE")


def test_keeping_a_cap_outside_our_bounding_set_is_refused():
    missing = [n for i, n in enumerate(caps.CAP_NAMES[:caps.last_cap() + 1])
               if not ALL_HELD >> i & 1]
    if not missing:
        needs_host_root("in a user namespace root holds every capability (for that ns)")
        skip_or_fail("wrapperd holds every capability here")
    p = run_wrapperd({"argv": ["/bin/true"], "capabilities": {"keep": [missing[0]]}})
    assert p.returncode == 125
    assert b"not in wrapperd's own bounding set" in p.stderr


def test_ambient_must_be_kept():
    p = run_wrapperd({"argv": ["/bin/true"], "user": {"uid": 65534},
                      "capabilities": {"keep": ["CAP_KILL"], "ambient": ["CAP_CHOWN"]}})
    assert p.returncode == 125 and b"must also be kept" in p.stderr


@pytest.fixture
def setuid_python(shared_dir):
    path = os.path.join(shared_dir, "python3-setuid")
    shutil.copy(os.path.realpath(SYSTEM_PYTHON), path)
    os.chown(path, 0, 0)
    os.chmod(path, 0o4755)
    yield path
    os.unlink(path)


def test_setuid_root_binary_gains_nothing(probe, setuid_python):
    inner = f"run:{setuid_python},-I,{probe}"
    r = run_probe(probe_spec(probe, inner, user={"uid": 65534}))
    st = r["run"]["status"]
    assert st["Uid"].split() == ["65534"] * 4
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0


def test_setuid_control_without_no_new_privs_the_bit_works(probe, setuid_python):
    # Proves the test above could fail: the same binary does gain euid 0 without nnp.
    inner = f"run:{setuid_python},-I,{probe}"
    r = run_probe(probe_spec(probe, inner, user={"uid": 65534}, no_new_privs=False))
    assert r["run"]["status"]["Uid"].split()[1] == "0"


def test_securebits_are_set_and_locked(probe):
    r = run_probe(probe_spec(probe, user={"uid": 65534},
                             securebits=["noroot", "noroot_locked", "no_setuid_fixup_locked"]))
    assert r["securebits"] == caps.SECUREBITS["noroot"] | caps.SECUREBITS["noroot_locked"] | \
        caps.SECUREBITS["no_setuid_fixup_locked"]


def test_securebit_noroot_makes_a_root_target_capless(probe):
    r = run_probe(probe_spec(probe, user={"uid": 0}, securebits=["noroot", "noroot_locked"]))
    assert ids(r, "Uid") == [0] * 4
    assert capmask(r, "CapEff") == 0 and capmask(r, "CapPrm") == 0


def test_pdeathsig_is_armed_after_the_uid_change(probe):
    r = run_probe(probe_spec(probe, user={"uid": 65534}, pdeathsig="SIGTERM"))
    assert r["pdeathsig"] == 15


def test_failure_to_set_uid_never_runs_the_target(probe, scratch):
    # wrapperd started without CAP_SETUID (setpriv drops it from the bounding set, so the
    # exec of wrapperd loses it): the identity step fails and the target never runs.
    import json
    marker = scratch / "ran"
    spec = probe_spec(probe, f"touch:{marker}", user={"uid": 65534})
    r, w = os.pipe()
    cmd = ["/usr/bin/setpriv", "--bounding-set=-setuid", "--"] + \
        wrapperd_cmd("--spec", "-", "--status-fd", str(w))
    p = subprocess.run(cmd, input=json.dumps(spec).encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, pass_fds=(w,), timeout=30)
    os.close(w)
    rec = os.read(r, 4096)
    os.close(r)
    assert p.returncode == 125, p.stderr
    assert p.stderr.decode().startswith("wrapperd: identity: setresuid(65534)")
    assert json.loads(rec)["step"] == "identity"
    assert not marker.exists()
    # The control: the same spec without the fault runs the target.
    assert run_wrapperd(spec).returncode == 0 and marker.exists()
