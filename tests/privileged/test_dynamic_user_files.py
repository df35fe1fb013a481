"""A dynamic user cannot leave a setuid or setgid file behind (systemd's DynamicUser=
implies RestrictSUIDSGID=).  Its id goes to another sandbox once released, and such a
file would run as that sandbox for anyone on the host: no_new_privs protects only the
sandbox that made it.  The target tries every way to make one -- chmod, fchmod, an
O_CREAT or O_TMPFILE mode, mknod, openat2, io_uring -- and the host checks that no
file with either bit exists.  Control: the same spec with a fixed uid makes them."""

from __future__ import annotations

import os
import shutil
import stat
import uuid

import pytest

from sandbox.forkserver import ForkServer
from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, host_dir_root, run_report

ATTEMPT = r"""
import ctypes, errno, json, os, stat, sys
d = sys.argv[1]
out = {}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))

def raw(nr, *args):
    r = libc.syscall(nr, *args)
    if r < 0:
        raise OSError(ctypes.get_errno(), "")
    os.close(r)

plain = os.path.join(d, "plain")
with open(plain, "w") as f:
    f.write("#!/bin/sh\n")
attempt("chmod_suid", lambda: os.chmod(plain, 0o4755))
attempt("chmod_sgid", lambda: os.chmod(plain, 0o2755))
fd = os.open(plain, os.O_RDONLY)
attempt("fchmod_suid", lambda: os.fchmod(fd, 0o4755))
attempt("create_suid", lambda: os.close(os.open(os.path.join(d, "created"),
                                                os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("tmpfile_sgid", lambda: os.close(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o2755)))
attempt("mknod_sgid", lambda: os.mknod(os.path.join(d, "node"), stat.S_IFREG | 0o2755))
how = (ctypes.c_uint64 * 3)(os.O_RDONLY, 0, 0)             # struct open_how
attempt("openat2", lambda: raw(437, -100, b"/", ctypes.byref(how), 24))
params = (ctypes.c_uint8 * 120)()                           # struct io_uring_params
attempt("io_uring_setup", lambda: raw(425, 1, ctypes.byref(params)))
# A mode the kernel sets itself (an overlay's copy-up of a setuid file a FUSE or tmpfs
# lower layer claims) needs a user namespace and mounts of the target's own.
def plain_syscall(nr, *args):
    if libc.syscall(nr, *args) < 0:
        raise OSError(ctypes.get_errno(), "")
attempt("unshare_user", lambda: plain_syscall(272, 0x10000000))      # CLONE_NEWUSER
attempt("clone3", lambda: plain_syscall(435, 0, 0))
attempt("fsopen", lambda: raw(430, b"tmpfs", 0))
attempt("mount", lambda: plain_syscall(165, b"none", b"/", b"tmpfs", 0, None))
attempt("add_key", lambda: plain_syscall(248, b"user", b"k", b"v", 1, -4))
attempt("chmod_plain", lambda: os.chmod(plain, 0o750))     # allowed: no special bit
print(json.dumps(out))
"""

DENIED = ("chmod_suid", "chmod_sgid", "fchmod_suid", "create_suid", "tmpfile_sgid",
          "mknod_sgid", "unshare_user", "fsopen", "mount", "add_key")


@pytest.fixture
def outdir():
    """A directory on the host any uid may write, outside what `service` makes private
    (/tmp, /var/tmp, /dev/shm)."""
    d = f"{host_dir_root()}/wrapperd-test-{uuid.uuid4().hex[:10]}"
    os.mkdir(d)
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _spec(outdir, fixed_uid, profile="service"):
    spec = {"argv": [SYSTEM_PYTHON, "-I", "-c", ATTEMPT, outdir], "env": dict(TARGET_ENV),
            "name": f"suid-{uuid.uuid4().hex[:8]}"}
    if profile is not None:
        spec["profile"] = profile
        # (the profile's protect_system strict: the one place it may write)
        spec["filesystem"] = {"read_write_paths": [outdir]}
    else:                           # a bare dynamic user: its own filter alone
        spec["user"] = {"dynamic": True}
    if fixed_uid:
        spec["user"] = {"uid": 4244, "gid": 4244}
    return spec


def _special_files(d) -> list:
    return sorted(n for n in os.listdir(d)
                  if os.lstat(os.path.join(d, n)).st_mode & (stat.S_ISUID | stat.S_ISGID))


def _run(how, spec) -> dict:
    if how != "fast":
        return run_report(how, spec)
    with ForkServer() as fs:
        return run_report(how, spec, fs)


@pytest.mark.parametrize("profile", ["service", None])
@pytest.mark.parametrize("how", ["wrapperd", "spawn", "fast"])
def test_a_dynamic_user_cannot_make_a_setuid_or_setgid_file(outdir, how, profile):
    r = _run(how, _spec(outdir, fixed_uid=False, profile=profile))
    assert {k: r[k] for k in DENIED} == dict.fromkeys(DENIED, "EPERM")
    assert r["openat2"] == r["clone3"] == "ENOSYS"
    assert r["io_uring_setup"] == "EPERM"
    assert r["chmod_plain"] == "ok"
    assert _special_files(outdir) == []                 # as the host sees it


def test_control_a_fixed_uid_makes_them(outdir):
    r = _run("wrapperd", _spec(outdir, fixed_uid=True))
    assert r["chmod_suid"] == r["create_suid"] == "ok"
    # and, without the service profile's filter, a user namespace of its own
    r = _run("wrapperd", dict(_spec(outdir, fixed_uid=True, profile=None),
                              user={"uid": 4244, "gid": 4244}))
    assert r["unshare_user"] == "ok"
    assert _special_files(outdir) != []
