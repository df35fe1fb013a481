"""Thin ctypes bindings for the syscalls Python's standard library lacks.

Why not python-prctl for these: its capability table is fixed when it is built
(here it stops before CAP_CHECKPOINT_RESTORE), it cannot touch the ambient set,
and it routes capset through libcap's name table.  capget/capset and the
bounding/ambient prctls are a few lines of ctypes, so they live here.
Python 3.11 also has no os.unshare/os.setns (added in 3.12).
"""

from __future__ import annotations

import os

from . import _ct as ctypes  # the ctypes subset, without ctypes' import cost

_libc = ctypes.LibC()

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_LOWER = 3
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_MM = 35
PR_SET_MM_MAP = 14

# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


PR_SET_NAME = 15
# prctl again, with a string for its second argument (the name's address).
_prctl_name = _libc._FuncPtr(("prctl", _libc))
_prctl_name.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def set_name(name: bytes) -> None:
    """PR_SET_NAME: this thread's comm (15 bytes at most).  Not a write to
    /proc/thread-self/comm: an open for writing holds its mount writable, and a sibling
    making that mount read-only at the same moment would get EBUSY."""
    _check(_prctl_name(PR_SET_NAME, name, 0, 0, 0), "PR_SET_NAME")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CapDataPair = _CapData * 2


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) of pid (0: the caller) as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = _CapDataPair()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    return tuple(getattr(data[0], f) | (getattr(data[1], f) << 32)
                 for f in ("effective", "permitted", "inheritable"))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


class PrctlMmMap(ctypes.Structure):       # struct prctl_mm_map <linux/prctl.h>
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
        "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")] + \
        [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


def set_mm_map(mm: PrctlMmMap) -> None:
    """prctl(PR_SET_MM, PR_SET_MM_MAP): rewrite this process's memory map descriptors
    (what /proc/PID/stat, environ, cmdline and auxv are read from).  Needs no
    capability (CONFIG_CHECKPOINT_RESTORE; exe_fd -1 leaves /proc/PID/exe alone)."""
    _check(_prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.addressof(mm), ctypes.sizeof(mm), 0),
           "prctl(PR_SET_MM_MAP)")


def program_break() -> int:
    """sbrk(0): the heap's current end (brk), which /proc/PID/stat does not show."""
    sbrk = _libc.sbrk
    sbrk.restype = ctypes.c_ulong
    sbrk.argtypes = [ctypes.c_long]
    brk = sbrk(0)
    if brk == 2**64 - 1:
        err = ctypes.get_errno()
        raise OSError(err, f"sbrk: {os.strerror(err)}")
    return brk


def zero_memory(address: int, size: int) -> None:
    """memset(address, 0, size) in this process."""
    memset = _libc.memset
    memset.argtypes = [ctypes.c_ulong, ctypes.c_int, ctypes.c_size_t]
    memset(address, 0, size)


class _SockFprog(ctypes.Structure):       # struct sock_fprog <linux/filter.h>
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_load_bpf(program: bytes, flags: int = 0) -> None:
    """Load a compiled classic-BPF seccomp program (struct sock_filter[]).

    Loading raw BPF keeps libseccomp out of the process that applies the filter:
    the program is compiled in prepare() and only this prctl runs before exec.
    """
    if len(program) % 8:
        raise ValueError("seccomp program length is not a multiple of 8")
    # c_char_p keeps a reference to the bytes and points at their buffer (NUL bytes and
    # all: it is only a pointer here).
    prog = _SockFprog(len(program) // 8, program)
    # SECCOMP_SET_MODE_FILTER = 1 through seccomp(2) so flags can be passed.
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _check(_syscall(ctypes.c_long(SYS_seccomp), ctypes.c_long(1), ctypes.c_long(flags),
                    ctypes.byref(prog)), "seccomp(SECCOMP_SET_MODE_FILTER)")


def _sys_seccomp() -> int:
    machine = os.uname().machine
    return {"x86_64": 317, "aarch64": 277, "i686": 354, "i386": 354,
            "armv7l": 383, "ppc64le": 358, "s390x": 348, "riscv64": 277}.get(machine, -1)


SYS_seccomp = _sys_seccomp()
