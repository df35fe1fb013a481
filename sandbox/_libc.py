"""Thin ctypes bindings for the syscalls Python's standard library lacks: the one module
that uses ctypes.

Why not python-prctl for these: its capability table is fixed when it is built
(here it stops before CAP_CHECKPOINT_RESTORE), it cannot touch the ambient set,
and it routes capset through libcap's name table.  capget/capset and the
bounding/ambient prctls are a few lines of ctypes, so they live here.
Python 3.11 also has no os.unshare/os.setns (added in 3.12), and nothing of the mount
API (mount, mount_setattr, open_tree, move_mount), which sandbox.mounts uses.

Why not ctypes itself: `import ctypes` costs the lean shim about 3 ms of its ~15 ms
(ctypes/__init__.py defines every C type, wintypes aliases, the CDLL/PyDLL/LibraryLoader
machinery, and imports struct and ctypes._endian), while `import _ctypes` costs about
0.4 ms.  So the few types below are built directly on ctypes' C module, _ctypes, as
ctypes/__init__.py itself makes them: same names, same behaviour (a value of one of
these types is accepted wherever ctypes' own type of that name is).  Anything else
should use the real ctypes.
"""

from __future__ import annotations

import _ctypes
import os
from _ctypes import Structure, addressof, byref, get_errno, sizeof


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_uint(_ctypes._SimpleCData):
    _type_ = "I"


class c_long(_ctypes._SimpleCData):
    _type_ = "l"


class c_ulong(_ctypes._SimpleCData):
    _type_ = "L"


class c_ushort(_ctypes._SimpleCData):
    _type_ = "H"


class c_uint64(_ctypes._SimpleCData):
    _type_ = "Q"


class c_char_p(_ctypes._SimpleCData):
    _type_ = "z"


c_uint32 = c_uint
c_size_t = c_ulong                  # LP64: the only data model the shim runs on


class LibC:
    """ctypes.CDLL(None, use_errno=True): the process's own symbols (libc), each
    function an int-returning cdecl function that saves errno (see get_errno)."""

    def __init__(self):
        class _FuncPtr(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int
        self._FuncPtr = _FuncPtr
        self._handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        func = self._FuncPtr((name, self))      # dlsym; AttributeError if missing
        func.__name__ = name
        setattr(self, name, func)               # resolved once
        return func


_libc = LibC()

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
_prctl.argtypes = [c_int, c_ulong, c_ulong, c_ulong, c_ulong]
_prctl.restype = c_int


def _check(ret: int, what: "str | None") -> int:
    """ret, unless it is a failed call's -1: then OSError(errno), its message prefixed
    with what (None: the bare strerror)."""
    if ret == -1:
        err = get_errno()
        raise OSError(err, os.strerror(err) if what is None else f"{what}: {os.strerror(err)}")
    return ret


def _syscall(number: int, *args) -> int:
    """syscall(2), for a call libc has no function for: its return value (-1 and errno
    on failure, for _check)."""
    syscall = _libc.syscall
    syscall.restype = c_long
    return syscall(c_long(number), *args)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


PR_SET_NAME = 15
# prctl again, with a string for its second argument (the name's address).
_prctl_name = _libc._FuncPtr(("prctl", _libc))
_prctl_name.argtypes = [c_int, c_char_p, c_ulong, c_ulong, c_ulong]


def set_name(name: bytes) -> None:
    """PR_SET_NAME: this thread's comm (15 bytes at most).  Not a write to
    /proc/thread-self/comm: an open for writing holds its mount writable, and a sibling
    making that mount read-only at the same moment would get EBUSY."""
    _check(_prctl_name(PR_SET_NAME, name, 0, 0, 0), "PR_SET_NAME")


class _CapHeader(Structure):
    _fields_ = [("version", c_uint32), ("pid", c_int)]


class _CapData(Structure):
    _fields_ = [
        ("effective", c_uint32),
        ("permitted", c_uint32),
        ("inheritable", c_uint32),
    ]


_CapDataPair = _CapData * 2


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) of pid (0: the caller) as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = _CapDataPair()
    _check(_libc.capget(byref(hdr), data), "capget")
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
    _check(_libc.capset(byref(hdr), data), "capset")


def unshare(flags: int) -> None:
    _check(_libc.unshare(c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(c_int(fd), c_int(nstype)), "setns")


class _PrctlMmMap(Structure):       # struct prctl_mm_map <linux/prctl.h>
    _fields_ = [(name, c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
        "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")] + \
        [("auxv_size", c_uint32), ("exe_fd", c_uint32)]


def set_mm_map(**fields: int) -> None:
    """prctl(PR_SET_MM, PR_SET_MM_MAP): rewrite this process's memory map descriptors
    (what /proc/PID/stat, environ, cmdline and auxv are read from).  Needs no
    capability (CONFIG_CHECKPOINT_RESTORE; exe_fd -1 leaves /proc/PID/exe alone).

    fields: struct prctl_mm_map's, but for these two, which are set here: the auxiliary
    vector becomes its terminator alone (AT_NULL, 0), and brk is the heap's current end
    (program_break()), read last: nothing may move it before the prctl."""
    auxv = (c_uint64 * 2)()                       # AT_NULL, 0
    mm = _PrctlMmMap(auxv=addressof(auxv), auxv_size=sizeof(auxv), **fields)
    mm.brk = program_break()
    _check(_prctl(PR_SET_MM, PR_SET_MM_MAP, addressof(mm), sizeof(mm), 0),
           "prctl(PR_SET_MM_MAP)")


def program_break() -> int:
    """sbrk(0): the heap's current end (brk), which /proc/PID/stat does not show."""
    sbrk = _libc.sbrk
    sbrk.restype = c_ulong
    sbrk.argtypes = [c_long]
    brk = sbrk(0)
    if brk == 2**64 - 1:
        err = get_errno()
        raise OSError(err, f"sbrk: {os.strerror(err)}")
    return brk


def zero_memory(address: int, size: int) -> None:
    """memset(address, 0, size) in this process."""
    memset = _libc.memset
    memset.argtypes = [c_ulong, c_int, c_size_t]
    memset(address, 0, size)


class _SockFprog(Structure):       # struct sock_fprog <linux/filter.h>
    _fields_ = [("len", c_ushort), ("filter", c_char_p)]


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
    _check(_syscall(SYS_seccomp, c_long(1), c_long(flags), byref(prog)),
           "seccomp(SECCOMP_SET_MODE_FILTER)")


def _sys_seccomp() -> int:
    machine = os.uname().machine
    return {"x86_64": 317, "aarch64": 277, "i686": 354, "i386": 354,
            "armv7l": 383, "ppc64le": 358, "s390x": 348, "riscv64": 277}.get(machine, -1)


SYS_seccomp = _sys_seccomp()


# --------------------------------------------------------------------------- the mount API
# For sandbox.mounts, which chooses the flags (its MS_*, MOUNT_ATTR_*, AT_* ...).  Paths
# are str (or bytes), None for a NULL pointer; a failure is OSError with the bare
# strerror (the mounts step says what it was doing).

# open_tree(2) and move_mount(2) (5.2+): the same numbers on every architecture but alpha
SYS_open_tree = 428
SYS_move_mount = 429
SYS_mount_setattr = 442          # the same number on every architecture

_c_mount = _libc.mount
_c_mount.argtypes = [c_char_p, c_char_p, c_char_p, c_ulong, c_char_p]
_c_mount.restype = c_int


class _MountAttr(Structure):        # struct mount_attr <linux/mount.h>
    _fields_ = [("attr_set", c_uint64), ("attr_clr", c_uint64),
                ("propagation", c_uint64), ("userns_fd", c_uint64)]


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags: int, data=None) -> None:
    _check(_c_mount(_b(source), _b(target), _b(fstype), flags, _b(data)), None)


def mount_setattr(dirfd: int, path, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    """mount_setattr(2) (5.12+) with a struct mount_attr of attr_set and attr_clr (no
    propagation change, no idmapping)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(_syscall(SYS_mount_setattr, c_int(dirfd), c_char_p(os.fsencode(path)),
                    c_uint(flags), byref(attr), c_size_t(sizeof(attr))), None)


def open_tree(dirfd: int, path, flags: int) -> int:
    """open_tree(2): an fd on the mount at path (with OPEN_TREE_CLONE, a detached copy)."""
    return _check(_syscall(SYS_open_tree, c_int(dirfd), c_char_p(os.fsencode(path)),
                           c_uint(flags)), None)


def move_mount(from_dirfd: int, from_path, to_dirfd: int, to_path, flags: int) -> None:
    """move_mount(2): attach the mount from_path names (relative to from_dirfd) onto
    to_path (relative to to_dirfd)."""
    _check(_syscall(SYS_move_mount, c_int(from_dirfd), c_char_p(os.fsencode(from_path)),
                    c_int(to_dirfd), c_char_p(os.fsencode(to_path)), c_uint(flags)), None)


# --------------------------------------------------------------------------- Landlock
# <linux/landlock.h>: the generic syscall numbers (x86_64 and aarch64 alike).  The
# attributes are passed as bytes (sandbox.landlock packs them: a struct's size is what
# tells the kernel which of its fields the caller knows).  A failure is OSError with the
# bare strerror (the landlock step says what it was doing).
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446


def landlock_create_ruleset(attr: "bytes | None", flags: int = 0) -> int:
    return _check(_syscall(SYS_landlock_create_ruleset, c_char_p(attr),
                           c_size_t(len(attr) if attr else 0), c_uint32(flags)), None)


def landlock_add_rule(ruleset_fd: int, rule_type: int, attr: bytes) -> None:
    _check(_syscall(SYS_landlock_add_rule, c_int(ruleset_fd), c_int(rule_type),
                    c_char_p(attr), c_uint32(0)), None)


def landlock_restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    _check(_syscall(SYS_landlock_restrict_self, c_int(ruleset_fd), c_uint32(flags)), None)
