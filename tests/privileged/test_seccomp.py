"""Seccomp, seen from inside the target: raw syscalls made by a small C probe (glibc's
wrappers hide errnos), and the kernel's own /proc/<pid>/status."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from sandbox import seccomp
from tests.conftest import (
    HERE,
    SYSTEM_PYTHON,
    TARGET_ENV,
    probe_spec,
    run_probe,
    run_wrapperd,
    skip_or_fail,
    wrapperd_cmd,
)

CLONE_NEWUSER = 0x10000000
TIOCSTI, TIOCLINUX, TCGETS = 0x5412, 0x541C, 0x5401
EPERM, ENOSYS, ENOTTY = 1, 38, 25
X32_BIT = 0x40000000
I386_GETPID = 20
NOBODY = {"uid": 65534, "gid": 65534}


@pytest.fixture(scope="module")
def cprobe(shared_dir):
    if shutil.which("gcc") is None:
        skip_or_fail("gcc is needed to build the seccomp probe")
    out = os.path.join(shared_dir, "seccomp_probe")
    subprocess.run(["gcc", "-O2", "-o", out, os.path.join(HERE, "seccomp_probe.c")],
                   check=True)
    os.chmod(out, 0o755)
    return out


def nr(name):
    import pyseccomp
    n = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    assert n >= 0, name
    return n


def spec_for(cprobe, *ops, **fields):
    spec = {"argv": [cprobe, *ops], "env": dict(TARGET_ENV), "rlimits": {"CORE": [0, 0]}}
    spec.update(fields)
    return spec


def results(spec):
    p = run_wrapperd(spec)
    assert p.returncode == 0, p.stderr.decode()
    return [tuple(r) for r in json.loads(p.stdout)["results"]]


# --------------------------------------------------------------------------- the profile

def _marked(rules):
    """The profile's rules with each errno replaced by a marker no kernel path returns,
    so an errno seen in the target can only have come from the filter."""
    out = []
    for r in rules:
        d = r.dump()
        if d["action"].startswith("errno:"):
            d["action"] = "errno:" + str(3000 + int(seccomp.action_value(d["action"]) & 0xFFF))
        out.append(d)
    return out


def test_every_unconditional_deny_of_default_returns_its_errno(cprobe):
    prof = seccomp.load_profile("default")
    want = {}
    import pyseccomp
    excepted = {s for r in prof.syscalls if r.args for n in r.names
                for s in seccomp.expand(n)}       # conditional rules: tested on their own
    for r in prof.syscalls:
        if r.args or not r.action.startswith("errno:") or set(r.names) & excepted:
            continue
        for n in r.names:
            for s in seccomp.expand(n):
                num = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, s)
                if num >= 0:                   # names of other ABIs do not exist here
                    want[s] = 3000 + (seccomp.action_value(r.action) & 0xFFF)
    assert {"init_module", "kexec_load", "reboot", "swapon", "mount", "pivot_root", "bpf",
            "perf_event_open", "userfaultfd", "keyctl", "ptrace", "open_by_handle_at",
            "iopl", "ioperm", "clone3"} <= set(want)
    names = sorted(want)
    # Zero arguments everywhere; nobody without capabilities, so that a filter which
    # failed to deny could still not change the host.
    ops = [f"sys:{nr(s)}" for s in names] + [f"sys:{nr('getppid')}", f"sys:{nr('getpid')}"]
    sc = {"default_action": "allow", "syscalls": _marked(prof.syscalls)}
    res = results(spec_for(cprobe, *ops, user=NOBODY, capabilities={"keep": []},
                           seccomp=sc))
    got = {s: res[i][1] for i, s in enumerate(names)}
    assert got == want
    assert res[-2][0] > 0 and res[-1][0] > 0      # allowed calls still work


def test_default_profile_denies_with_eperm_and_control_without_filter(cprobe):
    ops = [f"sys:{nr('mount')}", f"sys:{nr('bpf')}", f"sys:{nr('init_module')}",
           f"sys:{nr('perf_event_open')}", f"sys:{nr('getppid')}"]
    res = results(spec_for(cprobe, *ops, seccomp={"profile": "default"}))
    assert [e for _, e in res[:4]] == [EPERM] * 4
    assert res[4][0] > 0
    control = results(spec_for(cprobe, *ops))         # root, no filter: the kernel answers
    assert all(e not in (0, EPERM) for _, e in control[:4]), control


def test_tiocsti_and_tioclinux_fail_only_under_the_filter(cprobe):
    ioctl = nr("ioctl")
    ops = [f"sys:{ioctl}:0:{TIOCSTI}:0", f"sys:{ioctl}:0:{TIOCLINUX}:0",
           f"sys:{ioctl}:0:{TIOCSTI | 1 << 32}:0",      # high bits: the kernel drops them
           f"sys:{ioctl}:0:{TCGETS}:0"]
    for profile in ("default", "strict"):
        res = results(spec_for(cprobe, *ops, seccomp={"profile": profile}))
        assert [e for _, e in res] == [EPERM, EPERM, EPERM, ENOTTY], profile
    # Control: without the filter the same calls reach the tty layer (stdin is a pipe).
    assert [e for _, e in results(spec_for(cprobe, *ops))] == [ENOTTY] * 4


def test_new_user_namespaces_are_refused_but_clone_works(cprobe):
    # clone first: after unshare(CLONE_NEWUSER) our uid is unmapped, and an unmapped
    # uid may not create a nested user namespace.
    ops = [f"clone:{CLONE_NEWUSER}", "clone:0", f"sys:{nr('clone3')}:0:0",
           f"sys:{nr('unshare')}:0", f"sys:{nr('unshare')}:{CLONE_NEWUSER}"]
    res = results(spec_for(cprobe, *ops, user=NOBODY, seccomp={"profile": "default"}))
    assert [e for _, e in res] == [EPERM, 0, ENOSYS, 0, EPERM]
    # Control: nobody may create user namespaces here when no filter stops it.
    res = results(spec_for(cprobe, *ops, user=NOBODY))
    assert [e for _, e in res] == [0, 0, res[2][1], 0, 0]
    assert res[2][1] != ENOSYS


@pytest.mark.parametrize("how", ["seccomp profile", "spec profile"])
def test_a_spec_rule_for_clone_or_ioctl_keeps_the_profiles_deny_rules(cprobe, how):
    # A spec naming clone, unshare and ioctl (here: to allow them) on top of `default`
    # still gets the profile's EPERM for CLONE_NEWUSER and TIOCSTI/TIOCLINUX: the deny
    # rules of the profile win unless the spec says replace_profile_rules.
    ioctl = nr("ioctl")
    ops = [f"clone:{CLONE_NEWUSER}", "clone:0", f"sys:{nr('unshare')}:{CLONE_NEWUSER}",
           f"sys:{ioctl}:0:{TIOCSTI}:0", f"sys:{ioctl}:0:{TIOCLINUX}:0",
           f"sys:{ioctl}:0:{TCGETS}:0"]
    rules = [{"names": ["clone", "unshare", "ioctl"], "action": "allow"}]
    if how == "seccomp profile":
        fields = {"seccomp": {"profile": "default", "syscalls": rules}}
    else:
        fields = {"profile": "service", "seccomp": {"syscalls": rules}}
    res = results(spec_for(cprobe, *ops, user=NOBODY, **fields))
    assert [e for _, e in res] == [EPERM, 0, EPERM, EPERM, EPERM, ENOTTY]
    # Control: asked for explicitly, the profile's rules for them are replaced, and
    # wrapperd --dry-run names each replaced rule.
    for r in rules:
        r["replace_profile_rules"] = True
    spec = spec_for(cprobe, *ops, user=NOBODY, **fields)
    res = results(spec)
    assert [e for _, e in res] == [0, 0, 0, ENOTTY, ENOTTY, ENOTTY]
    p = run_wrapperd(spec, "--dry-run")
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode()
    assert "wrapperd: seccomp: replaced seccomp profile 'default'" in err
    for what in ("clone: errno:EPERM", "unshare: errno:EPERM", "ioctl: errno:EPERM"):
        assert what in err, err


def test_personality_only_harmless_values(cprobe):
    pers = nr("personality")
    ops = [f"sys:{pers}:0xffffffff", f"sys:{pers}:0", f"sys:{pers}:0x0040000",
           f"sys:{pers}:0x0400000", f"sys:{pers}:{1 << 32 | 0x0040000}",
           f"sys:{pers}:{1 << 32 | 8}", f"sys:{pers}:0"]
    # The kernel takes an unsigned int: high bits are dropped, by it and by the filter.
    res = results(spec_for(cprobe, *ops, seccomp={"profile": "default"}))
    assert [e for _, e in res] == [0, 0, EPERM, EPERM, EPERM, 0, 0]
    assert [e for _, e in results(spec_for(cprobe, *ops))] == [0] * 7     # control


# --------------------------------------------------------------------------- ABIs

def _killed_by_sigsys(spec):
    p = run_wrapperd(spec)
    return p.returncode == -signal.SIGSYS, p


def test_x32_and_int80_are_killed_by_default(cprobe):
    if os.uname().machine != "x86_64":
        skip_or_fail("x32 and int 0x80 exist only on x86_64")
    sc = {"default_action": "allow"}
    x32 = f"sys:{X32_BIT | nr('getpid')}"
    for op in (x32, f"int80:{I386_GETPID}"):
        killed, p = _killed_by_sigsys(spec_for(cprobe, op, seccomp=sc))
        assert killed, (op, p.returncode, p.stdout, p.stderr)
        # Control: without a filter the call returns (x32 may be ENOSYS: not killed).
        p = run_wrapperd(spec_for(cprobe, op))
        assert p.returncode == 0, p.stderr
    assert results(spec_for(cprobe, f"int80:{I386_GETPID}"))[0][0] > 0


def test_naming_an_abi_lets_it_through(cprobe):
    if os.uname().machine != "x86_64":
        skip_or_fail("x32 and int 0x80 exist only on x86_64")
    sc = {"default_action": "allow", "architectures": ["native", "x86", "x32"]}
    res = results(spec_for(cprobe, f"int80:{I386_GETPID}", f"sys:{X32_BIT | nr('getpid')}",
                           seccomp=sc))
    assert res[0][0] > 0
    assert res[1][1] in (0, ENOSYS)         # x32 may be disabled in the kernel: not killed


def test_rules_apply_to_named_extra_abi(cprobe):
    if os.uname().machine != "x86_64":
        skip_or_fail("int 0x80 exists only on x86_64")
    sc = {"default_action": "allow", "architectures": ["native", "x86"],
          "syscalls": [{"names": ["getpid"], "action": "errno:3001"}]}
    res = results(spec_for(cprobe, f"int80:{I386_GETPID}", f"sys:{nr('getpid')}",
                           seccomp=sc))
    assert [e for _, e in res] == [3001, 3001]


# --------------------------------------------------------------------------- actions, caps

def test_actions(cprobe):
    ppid = f"sys:{nr('getppid')}"

    def one(action):
        return {"default_action": "allow",
                "syscalls": [{"names": ["getppid"], "action": action}]}
    assert results(spec_for(cprobe, ppid, seccomp=one("errno:EACCES")))[0][1] == 13
    assert results(spec_for(cprobe, ppid, seccomp=one("errno:77")))[0][1] == 77
    assert results(spec_for(cprobe, ppid, seccomp=one("log")))[0][0] > 0
    for action in ("kill_process", "trap"):
        killed, p = _killed_by_sigsys(spec_for(cprobe, ppid, seccomp=one(action)))
        assert killed, (action, p.returncode)


def test_allow_list_default_action(cprobe):
    sc = {"default_action": "errno:EACCES", "syscalls": [
        {"names": ["@basic", "@basic-io", "@file-system", "@signal", "mprotect"],
         "action": "allow"}]}
    res = results(spec_for(cprobe, f"sys:{nr('getppid')}", f"sys:{nr('sysinfo')}:0",
                           seccomp=sc))
    assert res[0][0] > 0 and res[1][1] == 13


def test_capability_aware_rules(cprobe):
    sc = {"default_action": "allow", "syscalls": [
        {"names": ["getppid"], "action": "errno:3002", "unless_caps": ["CAP_NET_RAW"]},
        {"names": ["getpid"], "action": "errno:3003", "if_caps": ["CAP_NET_RAW"]}]}
    ops = [f"sys:{nr('getppid')}", f"sys:{nr('getpid')}"]
    keeps = results(spec_for(cprobe, *ops, seccomp=sc,
                             capabilities={"keep": ["CAP_NET_RAW"]}))
    assert keeps[0][0] > 0 and keeps[1][1] == 3003
    lacks = results(spec_for(cprobe, *ops, seccomp=sc,
                             capabilities={"drop": ["CAP_NET_RAW"]}))
    assert lacks[0][1] == 3002 and lacks[1][0] > 0


# --------------------------------------------------------------------------- /proc, errors

def test_status_shows_one_filter_in_mode_2_under_strict(probe):
    r = run_probe(probe_spec(probe, user=NOBODY, seccomp={"profile": "strict"}))
    assert r["status"]["Seccomp"] == "2"
    assert r["status"]["Seccomp_filters"] == "1"
    assert r["status"]["NoNewPrivs"] == "1"
    control = run_probe(probe_spec(probe, user=NOBODY))
    assert control["status"]["Seccomp"] == "0"


def test_unknown_syscall_is_exit_125_naming_it(scratch):
    marker = scratch / "ran"
    spec = {"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
            "seccomp": {"default_action": "allow", "syscalls": [
                {"names": ["getppid", "fooctl"], "action": "errno:EPERM"}]}}
    r, w = os.pipe()
    p = run_wrapperd(spec, "--status-fd", str(w), pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        record = json.loads(f.read())
    assert p.returncode == 125
    assert "unknown syscall 'fooctl'" in p.stderr.decode()
    assert "seccomp.syscalls[0].names[1]" in p.stderr.decode()
    assert "fooctl" in record["message"] and record["step"] in ("spec", "seccomp")
    assert not marker.exists()


def test_filter_without_no_new_privs_is_refused(scratch):
    marker = scratch / "ran"
    spec = {"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
            "user": NOBODY, "no_new_privs": False, "seccomp": {"profile": "default"}}
    p = run_wrapperd(spec)
    assert p.returncode == 125 and "no_new_privs" in p.stderr.decode()
    assert not marker.exists()


# --------------------------------------------------------------------------- real programs

def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_http_server_runs_under_strict(tmp_path):
    port = _free_port()
    spec = {"argv": [SYSTEM_PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                     "--directory", "/usr/share/doc"],
            "env": dict(TARGET_ENV), "user": NOBODY, "seccomp": {"profile": "strict"}}
    proc = subprocess.Popen(wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"http.server did not serve: rc={proc.poll()} "
                                f"{proc.stderr.read().decode() if proc.poll() is not None else ''}")
                time.sleep(0.1)
        with open(f"/proc/{proc.pid}/status") as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_compiled_bpf_loads_in_bwrap(cprobe, tmp_path):
    if shutil.which("bwrap") is None:
        skip_or_fail("bubblewrap is not installed")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"seccomp": {"profile": "default"}}))
    bpf = tmp_path / "default.bpf"
    from sandbox.cli import main
    assert main(["seccomp", "compile", str(spec), "-o", str(bpf)]) == 0
    assert bpf.stat().st_size % 8 == 0 and bpf.stat().st_size > 0
    fd = os.open(bpf, os.O_RDONLY)
    try:
        p = subprocess.run(["bwrap", "--seccomp", str(fd), "--bind", "/", "/", cprobe,
                            f"sys:{nr('mount')}", f"sys:{nr('getppid')}"],
                           pass_fds=(fd,), capture_output=True,
                           timeout=30)
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)["results"]
    assert res[0][1] == EPERM and res[1][0] > 0
    # Control: without --seccomp the same mount(2) under bwrap is not EPERM (the kernel
    # answers EFAULT to its null arguments), so the EPERM above came from the filter.
    p = subprocess.run(["bwrap", "--bind", "/", "/", cprobe, f"sys:{nr('mount')}"],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["results"][0][1] not in (0, EPERM)


# ------------------------------------------------ syscalls newer than the filter, 32 bits

STATMOUNT = 457                 # x86_64, i386 and the generic table alike (Linux 6.8)
EFAULT, EAFNOSUPPORT = 14, 97


def test_a_syscall_newer_than_the_filter_gets_enosys(cprobe):
    top = seccomp.highest_known(__import__("pyseccomp"), seccomp.native_arch())
    if top >= STATMOUNT:
        skip_or_fail(f"this libseccomp knows statmount ({top}): nothing newer to call")
    op = f"sys:{STATMOUNT}"
    # The kernel has it: without a filter a NULL request is EFAULT or EINVAL, not ENOSYS.
    [(_, bare)] = results(spec_for(cprobe, op))
    if bare == ENOSYS:
        skip_or_fail("this kernel has no statmount (Linux 6.8)")
    assert [e for _, e in results(spec_for(cprobe, op, seccomp={"profile": "strict"}))] \
        == [ENOSYS]
    # ... and 0x3ff, above anything any kernel has, likewise; the known ones the default.
    assert [e for _, e in results(spec_for(cprobe, op, "sys:0x3ff", f"sys:{nr('acct')}",
                                           seccomp={"profile": "strict"}))] == \
        [ENOSYS, ENOSYS, EPERM]
    sc = {"profile": "strict", "unknown_syscalls_action": "default_action"}
    assert [e for _, e in results(spec_for(cprobe, op, seccomp=sc))] == [EPERM]
    sc = {"profile": "strict", "unknown_syscalls_action": "errno:3005"}
    assert [e for _, e in results(spec_for(cprobe, op, seccomp=sc))] == [3005]
    if os.uname().machine == "x86_64":       # the i386 entry, where that ABI is allowed
        sc = {"profile": "strict", "architectures": ["native", "x86"]}
        assert [e for _, e in results(spec_for(cprobe, f"int80:{STATMOUNT}", seccomp=sc))] \
            == [ENOSYS]
        assert [e for _, e in results(spec_for(cprobe, f"int80:{STATMOUNT}"))] != [ENOSYS]


def test_an_int_argument_cannot_be_walked_around_with_the_upper_half(cprobe):
    # socket((1 << 32) | AF_INET, SOCK_STREAM, 0): the kernel reads the family as an int
    # and makes an AF_INET socket (control), so the filter must see AF_INET too.
    sock = nr("socket")
    ops = [f"sys:{sock}:2:1:0", f"sys:{sock}:{1 << 32 | 2}:1:0", f"sys:{sock}:1:1:0"]
    control = results(spec_for(cprobe, *ops))
    assert all(ret >= 0 for ret, _ in control), control
    sc = {"default_action": "allow", "syscalls": [
        {"names": ["socket"], "action": "errno:3002",
         "args": [{"index": 0, "op": "eq", "value": 2}]}]}
    assert [e for _, e in results(spec_for(cprobe, *ops, seccomp=sc))] == [3002, 3002, 0]
    sc = {"default_action": "allow", "syscalls": [        # "anything but AF_UNIX"
        {"names": ["socket"], "action": "errno:3003",
         "args": [{"index": 0, "op": "ne", "value": 1}]}]}
    assert [e for _, e in results(spec_for(cprobe, *ops, f"sys:{sock}:{1 << 32 | 1}:1:0",
                                           seccomp=sc))] == [3003, 3003, 0, 0]


def test_address_families(cprobe, probe):
    sock, pair = nr("socket"), nr("socketpair")
    # AF_INET, AF_INET with the upper half set, AF_NETLINK, AF_UNIX; socketpair with a
    # NULL vector: EFAULT once allowed, EAFNOSUPPORT from the filter otherwise.
    ops = [f"sys:{sock}:2:1:0", f"sys:{sock}:{1 << 32 | 2}:1:0", f"sys:{sock}:16:3:0",
           f"sys:{sock}:1:1:0", f"sys:{pair}:1:1:0:0", f"sys:{pair}:2:1:0:0"]
    control = [e for _, e in results(spec_for(cprobe, *ops))]
    assert control[:4] == [0, 0, 0, 0] and control[4] == EFAULT, control
    got = [e for _, e in results(spec_for(cprobe, *ops, address_families=["AF_UNIX"]))]
    assert got == [EAFNOSUPPORT, EAFNOSUPPORT, EAFNOSUPPORT, 0, EFAULT, EAFNOSUPPORT]
    got = [e for _, e in results(spec_for(cprobe, *ops, address_families=[]))]
    assert got == [EAFNOSUPPORT] * 4 + [EAFNOSUPPORT, EAFNOSUPPORT]
    # A filter of its own: one, without a seccomp section; two with one.
    r = run_probe(probe_spec(probe, user=NOBODY, address_families=["AF_UNIX"]))
    assert (r["status"]["Seccomp"], r["status"]["Seccomp_filters"]) == ("2", "1")
    r = run_probe(probe_spec(probe, user=NOBODY, address_families=["AF_UNIX"],
                             seccomp={"profile": "strict"}))
    assert r["status"]["Seccomp_filters"] == "2"


def test_address_families_without_no_new_privs_is_refused(scratch):
    marker = scratch / "ran"
    spec = {"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
            "user": NOBODY, "no_new_privs": False, "address_families": ["AF_UNIX"]}
    p = run_wrapperd(spec)
    assert p.returncode == 125
    assert p.stderr.decode() == ("wrapperd: spec: address_families: needs no_new_privs: "
                                 "true (it is a seccomp filter)\n")
    assert not marker.exists()
