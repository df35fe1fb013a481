"""Mounts, made in the target's own (new) mount namespace, so the host never sees them.

apply() runs after the namespaces step, in the process that becomes the target -- inside
a new pid namespace, so a fresh /proc shows that namespace.  In order:

  1. every mount becomes private, recursively: without it, a mount made here would
     propagate back to the host's shared mounts (systemd makes / shared);
  2. a fresh /proc when the pid namespace is new (unless the spec mounts one itself);
  3. the spec's `mounts`, in order;
  4. `masked_paths`: /dev/null bound over a file, an empty read-only tmpfs over a
     directory (as OCI runtimes do for /proc/kcore, /sys/firmware, ...);
  5. `readonly_paths`: bound onto themselves, then made read-only, nosuid, nodev, noexec;
  6. `readonly_root`: / itself made read-only (the mounts on top of it keep their own
     flags).

Bind sources and the host's device nodes are opened (O_PATH) before anything is mounted
and bound from /proc/self/fd/N, so an earlier mount cannot hide or swap them.  Flags
are changed with mount_setattr(2) (5.12+), which needs no knowledge of the flags a
user namespace locks; older kernels get a bind remount that repeats the locked flags.
"""

from __future__ import annotations

import os

from . import _ct as ctypes  # the ctypes subset, without ctypes' import cost
from . import _libc
from ._record import frozen
from .errors import SetupError, SpecError

__all__ = ["Prepared", "prepare", "apply", "OCI_MASKED_PATHS", "OCI_READONLY_PATHS",
           "DEV_NODES"]

STEP = "mounts"

# What runc's default config masks and makes read-only, for reference and profiles.
OCI_MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                    "/sys/devices/virtual/powercap")
OCI_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                      "/proc/sysrq-trigger")
# A minimal /dev (type "dev"): bound from the host's, as bubblewrap's --dev does.
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"))

# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
# statvfs f_flag bit -> MS_ flag, for repeating locked flags on a bind remount.
_ST_TO_MS = {0x1: MS_RDONLY, 0x2: MS_NOSUID, 0x4: MS_NODEV, 0x8: MS_NOEXEC,
             0x10: MS_SYNCHRONOUS, 0x40: MS_MANDLOCK, 0x400: MS_NOATIME,
             0x800: MS_NODIRATIME, 0x1000: MS_RELATIME}
OPTION_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV,
                "noexec": MS_NOEXEC, "noatime": MS_NOATIME, "strictatime": MS_STRICTATIME}

# mount_setattr(2)
SYS_mount_setattr = 442          # the same number on every architecture
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_NOATIME = 0x10
_MS_TO_ATTR = {MS_RDONLY: MOUNT_ATTR_RDONLY, MS_NOSUID: MOUNT_ATTR_NOSUID,
               MS_NODEV: MOUNT_ATTR_NODEV, MS_NOEXEC: MOUNT_ATTR_NOEXEC,
               MS_NOATIME: MOUNT_ATTR_NOATIME}

_c_mount = _libc._libc.mount
_c_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                     ctypes.c_char_p]
_c_mount.restype = ctypes.c_int


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags: int, data=None) -> None:
    if _c_mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount_setattr(path: str, attr_set: int, recursive: bool) -> None:
    attr = _MountAttr(attr_set, MOUNT_ATTR__ATIME if attr_set & MOUNT_ATTR__ATIME else 0, 0, 0)
    syscall = _libc._libc.syscall
    syscall.restype = ctypes.c_long
    ret = syscall(ctypes.c_long(SYS_mount_setattr), ctypes.c_int(AT_FDCWD),
                  ctypes.c_char_p(os.fsencode(path)),
                  ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                  ctypes.c_size_t(ctypes.sizeof(attr)))
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# --------------------------------------------------------------------------- prepare

@frozen
class Prepared:
    mounts: tuple               # spec.Mount, in order
    fresh_proc: bool            # mount a new /proc for the new pid namespace
    masked_paths: tuple = ()
    readonly_paths: tuple = ()
    readonly_root: bool = False


def _under(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def prepare(spec) -> "Prepared | None":
    """None unless the spec asks for a new mount namespace (namespaces.prepare has
    already refused mount fields without one)."""
    ns = spec.namespaces
    if ns is None or ns.mount is not True:
        return None
    ours = []             # tmpfs/dev destinations: missing destinations may be made there
    for i, m in enumerate(spec.mounts):
        path = f"mounts[{i}]"
        opts = set(m.options)
        if m.destination == "/":
            raise SpecError("cannot mount over / (use readonly_root)", f"{path}.destination")
        if {"ro", "rw"} <= opts:
            raise SpecError("give 'ro' or 'rw', not both", f"{path}.options")
        if "recursive" in opts and m.type != "bind":
            raise SpecError("'recursive' applies to bind mounts only", f"{path}.options")
        if m.type not in ("tmpfs", "dev") and (m.size is not None or m.mode is not None):
            raise SpecError("'size' and 'mode' apply to tmpfs and dev only", path)
        if "strictatime" in opts and m.type == "bind":
            # set_flags (mount_setattr) carries no atime mode: it would be dropped.
            raise SpecError("'strictatime' applies to fresh mounts, not bind",
                            f"{path}.options")
        if {"strictatime", "noatime"} <= opts:
            raise SpecError("give 'strictatime' or 'noatime', not both", f"{path}.options")
        if m.type == "bind":
            try:
                os.stat(m.source)
            except OSError as e:
                raise SpecError(f"{m.source}: {e.strerror}", f"{path}.source") from None
        elif m.source is not None:
            raise SpecError(f"a {m.type} mount takes no 'source'", f"{path}.source")
        if m.type == "proc" and ns.pid is False:
            raise SpecError("a fresh /proc needs a pid namespace (namespaces.pid)",
                            f"{path}.type")
        if not os.path.lexists(m.destination) and not _under(m.destination, ours):
            raise SpecError(f"{m.destination} does not exist (it is created only under a "
                            "tmpfs this spec mounts)", f"{path}.destination")
        if m.type in ("tmpfs", "dev"):
            ours.append(m.destination)
    fresh_proc = ns.pid is True and not any(m.destination.rstrip("/") == "/proc"
                                            for m in spec.mounts)
    return Prepared(mounts=tuple(spec.mounts), fresh_proc=fresh_proc,
                    masked_paths=tuple(getattr(spec, "masked_paths", ()) or ()),
                    readonly_paths=tuple(getattr(spec, "readonly_paths", ()) or ()),
                    readonly_root=bool(getattr(spec, "readonly_root", False)))


# --------------------------------------------------------------------------- apply

def _fail(what: str, e: OSError) -> SetupError:
    return SetupError(STEP, e.errno or 0, what)


def _open_path(path: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise _fail(f"open {path}", e) from None


def apply(p: Prepared) -> None:
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        raise _fail("make every mount private (MS_REC|MS_PRIVATE on /)", e) from None
    # Open, from the host's view, everything that will be bound.
    fds, devs, null = {}, {}, -1
    try:
        for i, m in enumerate(p.mounts):
            if m.type == "bind":
                fds[i] = _open_path(m.source)
        if any(m.type == "dev" for m in p.mounts):
            for n in DEV_NODES:
                devs[n] = _open_path(f"/dev/{n}")
        if p.masked_paths:
            null = _open_path("/dev/null")
        if p.fresh_proc:
            _mount_fs("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for i, m in enumerate(p.mounts):
            _one(m, fds.get(i), devs)
        for path in p.masked_paths:
            _mask(path, null)
        for path in p.readonly_paths:
            _readonly(path)
        if p.readonly_root:
            set_flags("/", MS_RDONLY, recursive=False)
    finally:
        for fd in [*fds.values(), *devs.values(), null]:
            if fd != -1:
                os.close(fd)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_fs(fstype: str, dest: str, flags: int, data: "str | None" = None) -> None:
    try:
        mount(fstype, dest, fstype, flags, data)
    except OSError as e:
        raise _fail(f"mount {fstype} on {dest}" + (f" ({data})" if data else ""), e) \
            from None


def _bind(fd: int, dest: str, recursive: bool, what: str) -> None:
    try:
        mount(_fd_path(fd), dest, None, MS_BIND | (MS_REC if recursive else 0))
    except OSError as e:
        raise _fail(f"bind {what} on {dest}", e) from None


def _make_dest(dest: str, is_dir: bool) -> None:
    if os.path.lexists(dest):
        return
    try:
        if is_dir:
            os.makedirs(dest, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
            os.close(os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    except OSError as e:
        raise _fail(f"create {dest}", e) from None


def _one(m, fd, devs) -> None:
    flags = 0
    for o in m.options:
        flags |= OPTION_FLAGS.get(o, 0)
    dest = m.destination
    if m.type == "bind":
        import stat
        _make_dest(dest, stat.S_ISDIR(os.fstat(fd).st_mode))
        _bind(fd, dest, "recursive" in m.options, m.source)
        if flags:
            set_flags(dest, flags, recursive="recursive" in m.options)
        return
    _make_dest(dest, True)
    if m.type == "tmpfs":
        data = [f"mode={m.mode}"] if m.mode is not None else []
        if m.size is not None:
            data.append(f"size={m.size}")
        _mount_fs("tmpfs", dest, flags, ",".join(data) or None)
    elif m.type == "proc":
        _mount_fs("proc", dest, flags | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    elif m.type == "mqueue":
        _mount_fs("mqueue", dest, flags | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    elif m.type == "devpts":
        _mount_fs("devpts", dest, flags | MS_NOSUID | MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620")
    elif m.type == "dev":
        _dev(dest, flags, devs, m.mode, m.size)
    else:   # the spec model knows no other type
        raise SetupError(STEP, 0, f"unknown mount type {m.type!r}")


def _dev(dest: str, flags: int, devs, mode: "str | None" = None,
         size: "int | None" = None) -> None:
    """A tmpfs with the harmless device nodes bound from the host (a user namespace
    cannot mknod), its own devpts and shm, and the usual links."""
    data = f"mode={mode or '0755'}" + (f",size={size}" if size is not None else "")
    _mount_fs("tmpfs", dest, flags | MS_NOSUID | MS_NODEV, data)
    for name, fd in devs.items():
        _make_dest(os.path.join(dest, name), False)
        _bind(fd, os.path.join(dest, name), False, f"/dev/{name}")
    for sub, fstype, fl, data in (
            ("shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
            ("pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")):
        _make_dest(os.path.join(dest, sub), True)
        _mount_fs(fstype, os.path.join(dest, sub), fl, data)
    for name, target in DEV_LINKS:
        try:
            os.symlink(target, os.path.join(dest, name))
        except OSError as e:
            raise _fail(f"symlink {dest}/{name}", e) from None


def _mask(path: str, null: int) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return          # nothing to hide (OCI runtimes skip these too)
    except OSError as e:
        raise _fail(f"masked path {path}", e) from None
    import stat
    if stat.S_ISDIR(st.st_mode):
        _mount_fs("tmpfs", path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=0k,nr_inodes=1,mode=0555")
    else:
        _bind(null, path, False, "/dev/null")


def _readonly(path: str) -> None:
    if not os.path.lexists(path):
        return
    try:
        mount(path, path, None, MS_BIND | MS_REC)
    except OSError as e:
        raise _fail(f"bind read-only path {path} onto itself", e) from None
    set_flags(path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, recursive=True)


def set_flags(path: str, ms_flags: int, recursive: bool) -> None:
    """Add ms_flags (ro nosuid nodev noexec noatime) to the mount at path."""
    attr = 0
    for ms, a in _MS_TO_ATTR.items():
        if ms_flags & ms:
            attr |= a
    try:
        mount_setattr(path, attr, recursive)
        return
    except OSError as e:
        if e.errno != 38:    # ENOSYS: a kernel before 5.12
            raise _fail(f"mount_setattr {path} ({_names(ms_flags)})", e) from None
    targets = [path] + (_submounts(path) if recursive else [])
    for t in targets:
        try:
            # A bind remount replaces the flags: repeat the ones already set (a user
            # namespace refuses to clear the ones it locked).
            have = 0
            f_flag = os.statvfs(t).f_flag
            for st_bit, ms in _ST_TO_MS.items():
                if f_flag & st_bit:
                    have |= ms
            mount(None, t, None, MS_BIND | MS_REMOUNT | have | ms_flags)
        except OSError as e:
            raise _fail(f"remount {t} ({_names(ms_flags)})", e) from None


def _names(ms_flags: int) -> str:
    return ",".join(n for n, f in OPTION_FLAGS.items() if ms_flags & f)


def _submounts(path: str) -> list:
    """Mount points strictly under path, from /proc/self/mountinfo (octal escapes)."""
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            point = point.encode().decode("unicode_escape")
            if point.startswith(prefix):
                out.append(point)
    return out
