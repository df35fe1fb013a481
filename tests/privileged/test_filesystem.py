"""systemd's filesystem protections (the spec's `filesystem`), seen from inside the
target: what it can write, list, open and call, with the errno the kernel gives --
and the same probe without the setting as the control, so no assertion can pass
because the probe itself is broken."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from sandbox import caps
from tests.conftest import TARGET_ENV, needs_host_root, run_wrapperd

NOBODY = {"uid": 65534, "gid": 65534}
PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}

def name(e):
    return errno.errorcode.get(e, str(e))

for op in sys.argv[1:]:
    kind, _, arg = op.partition(":")
    try:
        if kind == "write":             # create (and remove) a file in a directory
            p = os.path.join(arg, ".wrapperd-fs-test-%d" % os.getpid())
            with open(p, "w"):
                pass
            os.unlink(p)
            out[op] = "ok"
        elif kind == "openw":           # open an existing file for writing
            os.close(os.open(arg, os.O_WRONLY))
            out[op] = "ok"
        elif kind == "ls":
            out[op] = sorted(os.listdir(arg))
        elif kind == "rdev":
            out[op] = os.stat(arg).st_rdev
        elif kind == "exists":
            out[op] = os.path.lexists(arg)
        elif kind == "mkdir":
            os.mkdir(arg)
            os.rmdir(arg)
            out[op] = "ok"
        elif kind == "sys":             # a raw syscall with zero arguments
            r = libc.syscall(int(arg), 0, 0, 0)
            out[op] = "ok" if r >= 0 else name(ctypes.get_errno())
        elif kind == "status":
            with open("/proc/self/status") as f:
                out[op] = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)[arg]
    except OSError as e:
        out[op] = name(e.errno)
print(json.dumps(out))
"""
NR = {"x86_64": {"ioperm": 173, "init_module": 175, "syslog": 103},
      "aarch64": {"init_module": 105, "syslog": 116}}.get(os.uname().machine, {})


def probe(*ops, **fields):
    spec = {"argv": ["/usr/bin/python3", "-I", "-c", PROBE, *ops], "env": dict(TARGET_ENV)}
    spec.update(fields)
    p = run_wrapperd(spec)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def both(ops, filesystem, **fields):
    """(with the setting, without it): the control shows the probe can tell."""
    return (probe(*ops, filesystem=filesystem, **fields),
            probe(*ops, namespaces={"mount": True}, **fields))


@pytest.fixture
def etc_name():
    n = f"wrapperd-fs-test-{uuid.uuid4().hex[:8]}"
    yield n
    for p in (f"/etc/{n}", f"/var/lib/{n}"):
        if os.path.isdir(p):
            os.rmdir(p)


def test_protect_system(etc_name):
    needs_host_root("writes the host's /etc to tell true from full")
    ops = ["write:/usr/lib", "write:/etc", "write:/var/lib"]
    # A root target: read-only is the mount's doing, not the file modes'.
    on, off = both(ops, {"protect_system": True})
    assert off == {o: "ok" for o in ops}
    assert on == {"write:/usr/lib": "EROFS", "write:/etc": "ok", "write:/var/lib": "ok"}
    on = probe(*ops, filesystem={"protect_system": "full"})
    assert on == {"write:/usr/lib": "EROFS", "write:/etc": "EROFS", "write:/var/lib": "ok"}
    # strict: everything, but what read_write_paths names; /dev/null stays usable and
    # /usr stays executable (this probe is /usr/bin/python3).
    os.mkdir(f"/var/lib/{etc_name}")
    ops = ["write:/var/lib", f"write:/var/lib/{etc_name}", "openw:/dev/null", "write:/run"]
    on = probe(*ops, filesystem={"protect_system": "strict",
                                 "read_write_paths": [f"/var/lib/{etc_name}", "-/nonexistent"]})
    assert on == {"write:/var/lib": "EROFS", f"write:/var/lib/{etc_name}": "ok",
                  "openw:/dev/null": "ok", "write:/run": "EROFS"}


@pytest.mark.parametrize("mode, want", [
    (True, {"ls:/root": [], "write:/root": "EROFS"}),        # an empty read-only tmpfs
    ("read-only", {"write:/root": "EROFS"}),
    ("tmpfs", {"ls:/root": [], "write:/root": "ok"}),
])
def test_protect_home(mode, want):
    needs_host_root("the control writes the host's /root")
    ops = ["ls:/root", "write:/root"]
    on, off = both(ops, {"protect_home": mode})
    assert off["write:/root"] == "ok" and off["ls:/root"] != []
    assert {k: on[k] for k in want} == want


def test_private_tmp():
    host = f"/tmp/wrapperd-fs-test-{uuid.uuid4().hex[:8]}"     # in the host's /tmp itself
    with open(host, "w") as f:
        f.write("x")
    try:
        ops = [f"exists:{host}", "write:/tmp", "write:/var/tmp"]
        on, off = both(ops, {"private_tmp": True})
        assert off[f"exists:{host}"] is True
        assert on == {f"exists:{host}": False, "write:/tmp": "ok", "write:/var/tmp": "ok"}
    finally:
        os.unlink(host)


def test_private_devices():
    ops = ["ls:/dev", "status:CapBnd", "openw:/dev/null"] + \
        ([f"sys:{NR['ioperm']}"] if "ioperm" in NR else [])
    on, off = both(ops, {"private_devices": True})
    assert set(on["ls:/dev"]) == {"fd", "full", "null", "ptmx", "pts", "random", "shm",
                                  "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
    assert len(off["ls:/dev"]) > len(on["ls:/dev"])
    bnd = int(on["status:CapBnd"], 16)
    assert not bnd & caps.mask(["CAP_MKNOD", "CAP_SYS_RAWIO"])
    assert int(off["status:CapBnd"], 16) & caps.mask(["CAP_MKNOD"])
    assert on["openw:/dev/null"] == "ok"
    if "ioperm" in NR:      # @raw-io: EPERM from the filter (without CAP_SYS_RAWIO too)
        assert on[f"sys:{NR['ioperm']}"] == "EPERM"


def test_protect_kernel_tunables_modules_logs_and_control_groups():
    needs_host_root("the control opens the host's sysctls and makes a cgroup")
    cg = f"/sys/fs/cgroup/unified/wrapperd-fs-test-{uuid.uuid4().hex[:8]}"
    if not os.path.isdir("/sys/fs/cgroup/unified"):
        cg = f"/sys/fs/cgroup/wrapperd-fs-test-{uuid.uuid4().hex[:8]}"
    ops = ["openw:/proc/sys/kernel/domainname", "write:/sys/kernel", "ls:/usr/lib/modules",
           f"mkdir:{cg}", "status:CapBnd", "rdev:/proc/kmsg"] + \
        [f"sys:{NR[n]}" for n in ("init_module", "syslog") if n in NR]
    fs = {"protect_kernel_tunables": True, "protect_kernel_modules": True,
          "protect_kernel_logs": True, "protect_control_groups": True}
    on, off = both(ops, fs)
    assert off["openw:/proc/sys/kernel/domainname"] == "ok" and off[f"mkdir:{cg}"] == "ok"
    assert on["openw:/proc/sys/kernel/domainname"] == "EROFS"
    assert on["write:/sys/kernel"] == "EROFS"
    assert on[f"mkdir:{cg}"] == "EROFS"
    if isinstance(off["ls:/usr/lib/modules"], list):     # (a kernel without modules:
        assert on["ls:/usr/lib/modules"] == []            # no directory to hide)
    # /proc/kmsg: /dev/null (1, 3) bound over it (masked_paths): no kernel log there.
    assert off["rdev:/proc/kmsg"] == 0 and on["rdev:/proc/kmsg"] == os.makedev(1, 3)
    assert not int(on["status:CapBnd"], 16) & caps.mask(["CAP_SYS_MODULE", "CAP_SYSLOG"])
    for n in ("init_module", "syslog"):
        if n in NR:
            assert on[f"sys:{NR[n]}"] == "EPERM", n


def test_protect_proc_and_proc_subset():
    ops = ["exists:/proc/1/status", "exists:/proc/sys", "exists:/proc/self/status"]
    on, off = both(ops, {"protect_proc": "invisible", "proc_subset": "pid"}, user=NOBODY)
    assert off == {o: True for o in ops}
    assert on == {"exists:/proc/1/status": False, "exists:/proc/sys": False,
                  "exists:/proc/self/status": True}
    on = probe(*ops, filesystem={"protect_proc": "ptraceable"}, user=NOBODY)
    assert on["exists:/proc/1/status"] is False and on["exists:/proc/sys"] is True


def test_dry_run_shows_the_expansion():
    spec = {"argv": ["/bin/true"], "env": dict(TARGET_ENV),
            "filesystem": {"protect_system": "strict", "private_tmp": True,
                           "protect_kernel_logs": True, "protect_proc": "invisible"}}
    p = run_wrapperd(spec, "--dry-run")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["readonly_root"] is True and d["namespaces"]["mount"] is True
    assert [m["destination"] for m in d["mounts"]] == ["/tmp", "/var/tmp"]
    assert "/proc/kmsg" in d["masked_paths"]
    assert "CAP_SYSLOG" in d["capabilities"]["drop"]
    err = p.stderr.decode()
    assert "wrapperd: filesystem: a fresh /proc (hidepid=invisible)" in err
    assert "wrapperd: filesystem: syscalls denied (EPERM) syslog" in err


@pytest.mark.parametrize("fields, match", [
    ({"filesystem": {"protect_system": "yes"}},
     'filesystem.protect_system: "yes" is not one of false, true, "full", "strict"'),
    ({"filesystem": {"protect_home": 1}}, "filesystem.protect_home: 1 is not one of"),
    ({"filesystem": {"protect_proc": "hidden"}}, "filesystem.protect_proc: "),
    ({"filesystem": {"read_only_paths": ["relative"]}},
     "filesystem.read_only_paths[0]: 'relative' is not a normal absolute path"),
    ({"filesystem": {"protect_system": "strict"}, "namespaces": {"mount": "/proc/1/ns/mnt"}},
     "filesystem: needs a mount namespace of its own; namespaces.mount joins one"),
    ({"filesystem": {"protect_proc": "invisible"}, "namespaces": {"user": True}},
     "filesystem: protect_proc and proc_subset mount a fresh /proc"),
    ({"filesystem": {"private_tmp": True}, "no_new_privs": False,
      "capabilities": {"keep": []}, "user": NOBODY}, None),        # no filter: fine
    ({"filesystem": {"protect_kernel_logs": True}, "no_new_privs": False, "user": NOBODY},
     "filesystem: needs no_new_privs: true (it is a seccomp filter)"),
])
def test_bad_input_is_one_line(fields, match, tmp_path):
    marker = tmp_path / "ran"
    argv = ["/usr/bin/touch", str(marker)] if match else ["/bin/true"]   # (a private /tmp)
    spec = {"argv": argv, "env": dict(TARGET_ENV), **fields}
    p = run_wrapperd(spec)
    err = p.stderr.decode()
    if match is None:
        assert p.returncode == 0, err
        return
    assert p.returncode == 125 and err.count("\n") == 1 and match in err, err
    assert not marker.exists()
