"""Mounts, made in the target's own (new) mount namespace, so the host never sees them.

apply() runs after the namespaces step, in the process that becomes the target -- inside
a new pid namespace, so a fresh /proc shows that namespace.  In order:

  1. every mount becomes private, recursively: without it, a mount made here would
     propagate back to the host's shared mounts (systemd makes / shared);
  2. every bind source (and the host's device nodes a `dev` mount binds) is cloned
     into a detached mount (open_tree(2) OPEN_TREE_CLONE) and given the bind's flags
     there: an earlier mount cannot hide or swap it, and step 3 does not touch it;
  3. `readonly_root`: every mount below / made read-only, recursively
     (mount_setattr(2) AT_RECURSIVE) -- the host's tmpfs mounts, /dev, /dev/shm, a
     separate /var, /home or /run included;
  4. a fresh /proc when the pid namespace is new (unless the spec mounts one itself),
     or protect_proc/proc_subset ask for one (with hidepid=/subset=);
  5. the spec's `mounts`, in order, on top of that: a new filesystem (tmpfs, proc, ...)
     is writable unless its options say `ro`; a bind has its source's flags plus its
     options (step 2);
  6. one last layer, shallowest path first (at one depth a writable bind first, so the
     stricter setting of a place wins): `masked_paths` (/dev/null bound over a file, an
     empty read-only tmpfs over a directory, as OCI runtimes do for /proc/kcore, ...);
     `readonly_paths` (bound onto themselves, then read-only, nosuid, nodev, noexec,
     recursively); sandbox.filesystem's read-only places (read-only only); and the
     writable binds (`late`: read_write_paths, service directories, the notify
     socket's directory).  So a mask or a read-only place below a writable directory
     stays, and a writable one below a read-only place stays writable.

Destinations are opened one component at a time from / (O_PATH|O_NOFOLLOW): a symlink
in any component is refused, `..` never reaches here (prepare() refuses it), and a
missing component is created (mkdirat, or openat O_CREAT|O_EXCL|O_NOFOLLOW, relative to
its parent's fd) only when the parent is on a filesystem a spec mount made here.  The
mount goes onto the opened fd (/proc/self/fd/N, or move_mount(2) for a clone), so no
path is looked up twice.  Bind sources are the spec author's choice and are followed as
given, symlinks included.

Flags are changed with mount_setattr(2) (5.12+), which needs no knowledge of the flags a
user namespace locks; for a path (readonly_root, readonly_paths) older kernels get a bind
remount that repeats the locked flags, but a bind's clone needs 5.12 (open_tree and
move_mount are 5.2).
"""

from __future__ import annotations

import errno
import os
import stat

from . import _libc
from ._record import field_types, frozen
from .errors import SetupError, SpecError

__all__ = ["Mount", "Prepared", "prepare", "apply", "OCI_MASKED_PATHS", "OCI_READONLY_PATHS",
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
DEV_SHM_SIZE = 64 << 20             # bytes, as runc's default /dev/shm
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
AT_EMPTY_PATH = 0x1000

# open_tree(2) and move_mount(2) (5.2+)
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40

# How a destination's components are opened: the object itself, never a symlink's target.
_O_WALK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def mount_setattr(path: str, attr_set: int, recursive: bool, dirfd: int = AT_FDCWD) -> None:
    """Set attr_set on the mount at path (relative to dirfd; "" with a dirfd: that fd's
    own mount, a detached one included)."""
    flags = (AT_RECURSIVE if recursive else 0) | (AT_EMPTY_PATH if not path else 0)
    _libc.mount_setattr(dirfd, path, flags, attr_set,
                        MOUNT_ATTR__ATIME if attr_set & MOUNT_ATTR__ATIME else 0)


def open_tree_clone(path: str, recursive: bool) -> int:
    """A detached copy of the mount (with recursive: the mount tree) at path, as an fd."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _libc.open_tree(AT_FDCWD, path, flags)


def move_mount_fd(from_fd: int, to_fd: int) -> None:
    """Attach the (detached) mount from_fd onto the object to_fd is open on."""
    _libc.move_mount(from_fd, "", to_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)


# --------------------------------------------------------------------------- prepare

@frozen
class Mount:
    """One of the spec's `mounts`, as apply() reads it (see sandbox.spec.Mount)."""
    type: str                   # bind, tmpfs, proc, mqueue, devpts or dev
    destination: str
    source: "str | None"        # bind only
    options: tuple              # names in OPTION_FLAGS, "recursive" (bind)
    size: "int | None"          # tmpfs and dev only
    mode: "str | None"          # tmpfs and dev only: octal

    __record_types__ = field_types(type=str, destination=str, source=str | None,
                                   options=tuple[str, ...], size=int | None, mode=str | None)


@frozen
class Prepared:
    mounts: tuple               # Mount, in order
    fresh_proc: bool            # mount a new /proc for the new pid namespace
    masked_paths: tuple = ()
    readonly_paths: tuple = ()
    readonly_root: bool = False
    late: tuple = ()            # Mount (bind), after everything else: writable places
                                # (read_write_paths, service directories) over read-only
    read_only: tuple = ()       # made read-only, exec kept (sandbox.filesystem)
    proc_data: "str | None" = None   # the fresh /proc's options (hidepid=, subset=)

    __record_types__ = field_types(mounts=tuple[Mount, ...], fresh_proc=bool,
                                   masked_paths=tuple[str, ...], readonly_paths=tuple[str, ...],
                                   readonly_root=bool, late=tuple[Mount, ...],
                                   read_only=tuple[str, ...], proc_data=str | None)


def _under(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _check_destination(dest: str, field: str) -> None:
    """One spelling per place: absolute, no '.' or '..' component, no '//' or trailing
    '/'.  A '..' would climb out of the tmpfs a missing destination is made in (apply()
    never follows one either); the rest keeps `mounts` keyed by one string per place."""
    if not dest.startswith("/") or "\0" in dest or \
            any(c in ("", ".", "..") for c in dest[1:].split("/")):
        raise SpecError(f"{dest!r} is not a normal absolute path (no '.' or '..' "
                        "component, no '//' or trailing '/')", field)


def prepare(spec, expansion=None) -> "Prepared | None":
    """None unless the spec asks for a new mount namespace (namespaces.prepare has
    already refused mount fields without one).  expansion: what sandbox.filesystem
    expanded the spec's `filesystem` into, beyond spec fields."""
    ns = spec.namespaces
    if ns is None or ns.mount is not True:
        return None
    ours: "list[str]" = []   # tmpfs/dev destinations: missing destinations may be made there
    for i, m in enumerate(spec.mounts):
        path = f"mounts[{i}]"
        opts = set(m.options)
        if m.destination != "/":
            _check_destination(m.destination, f"{path}.destination")
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
    proc_data = expansion.proc_data if expansion is not None else None
    fresh_proc = (ns.pid is True or proc_data is not None) and \
        not any(m.destination.rstrip("/") == "/proc" for m in spec.mounts)
    late: "tuple[Mount, ...]" = ()
    if expansion is not None:
        late = tuple(Mount("bind", p, p, ("rw",), None, None) for p in expansion.read_write)
    return Prepared(mounts=tuple(Mount(m.type, m.destination, m.source, tuple(m.options),
                                       m.size, m.mode) for m in spec.mounts),
                    fresh_proc=fresh_proc,
                    masked_paths=tuple(getattr(spec, "masked_paths", ()) or ()),
                    readonly_paths=tuple(getattr(spec, "readonly_paths", ()) or ()),
                    readonly_root=bool(getattr(spec, "readonly_root", False)), late=late,
                    read_only=expansion.read_only if expansion is not None else (),
                    proc_data=proc_data)


# --------------------------------------------------------------------------- apply

def _fail(what: str, e: OSError) -> SetupError:
    return SetupError(STEP, e.errno or 0, what)


def _open_path(path: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise _fail(f"open {path}", e) from None


def _clone(path: str, recursive: bool, ms_flags: int) -> int:
    """A detached copy of the mount (tree) at path, with ms_flags added: the bind's
    source as the host has it now, which no later mount and no read-only root touches."""
    try:
        fd = open_tree_clone(path, recursive)
    except OSError as e:
        raise _fail(f"clone {path} (open_tree)", e) from None
    attr = _attr(ms_flags)
    if attr:
        try:
            mount_setattr("", attr, recursive, dirfd=fd)
        except OSError as e:
            os.close(fd)
            raise _fail(f"mount_setattr {path} ({_names(ms_flags)})", e) from None
    return fd


def apply(p: Prepared) -> None:
    try:
        _libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        raise _fail("make every mount private (MS_REC|MS_PRIVATE on /)", e) from None
    # Clone, from the host's view, everything that will be bound: before the read-only
    # root, so a bind keeps its source's own flags (plus its options).
    fds, devs, null = {}, {}, -1
    ours: "set[int]" = set()   # st_dev of the filesystems the spec's mounts made: creation allowed
    try:
        everything = p.mounts + p.late
        for i, m in enumerate(everything):
            if m.type == "bind":
                fds[i] = _clone(m.source, "recursive" in m.options, _flags(m))
        if any(m.type == "dev" for m in p.mounts):
            for n in DEV_NODES:
                devs[n] = _clone(f"/dev/{n}", False, 0)
        if p.masked_paths:
            null = _open_path("/dev/null")
        if p.readonly_root:
            # Every mount the host's tree holds, not / alone: a host tmpfs, /dev/shm, a
            # separate /var would otherwise stay writable.  The spec's own mounts go on
            # top afterwards and keep their flags.
            set_flags("/", MS_RDONLY, recursive=True)
        if p.fresh_proc:
            _mount_fs("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, p.proc_data)
        for i, m in enumerate(p.mounts):
            _one(m, fds.get(i), devs, ours)
        # The last layer -- masks, read-only places, the writable binds -- shallowest
        # first, as systemd orders by path: a mask or a read-only place below a
        # writable bind (read_write_paths, a service directory) is applied after it and
        # stays masked or read-only; a writable bind below a read-only place stays
        # writable.  At one depth the writable bind goes first: of two settings of one
        # place, the stricter wins.
        layer = [(path, 1, "mask", -1) for path in p.masked_paths] + \
            [(path, 1, "readonly", -1) for path in p.readonly_paths] + \
            [(path, 1, "read_only", -1) for path in p.read_only] + \
            [(m.destination, 0, "bind", i) for i, m in enumerate(p.late, len(p.mounts))]
        layer.sort(key=lambda op: (_depth(op[0]), op[1]))     # (stable: spec order)
        for path, _, what, i in layer:
            if what == "mask":
                _mask(path, null)
            elif what == "readonly":
                _readonly(path)
            elif what == "read_only":
                _readonly(path, MS_RDONLY)
            else:
                _one(everything[i], fds.get(i), devs, ours)
    finally:
        for fd in [*fds.values(), *devs.values(), null]:
            if fd != -1:
                os.close(fd)


def _depth(path: str) -> int:
    return len([c for c in path.split("/") if c])


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_fs(fstype: str, dest: str, flags: int, data: "str | None" = None,
              fd: int = -1) -> None:
    """Mount a new fstype on dest -- on the object fd is open on, when given."""
    try:
        _libc.mount(fstype, dest if fd == -1 else _fd_path(fd), fstype, flags, data)
    except OSError as e:
        raise _fail(f"mount {fstype} on {dest}" + (f" ({data})" if data else ""), e) \
            from None


def _bind(fd: int, dest: str, recursive: bool, what: str) -> None:
    try:
        _libc.mount(_fd_path(fd), dest, None, MS_BIND | (MS_REC if recursive else 0))
    except OSError as e:
        raise _fail(f"bind {what} on {dest}", e) from None


def _attach(clone: int, to: int, what: str, dest: str) -> None:
    """Attach a detached clone onto the object `to` is open on."""
    if stat.S_ISDIR(os.fstat(clone).st_mode) != stat.S_ISDIR(os.fstat(to).st_mode):
        # what mount(2) says; move_mount(2) says only EINVAL
        raise SetupError(STEP, errno.ENOTDIR, f"bind {what} on {dest}")
    try:
        move_mount_fd(clone, to)
    except OSError as e:
        raise _fail(f"bind {what} on {dest}", e) from None


class _Dest:
    """A destination opened without following a symlink: fd (O_PATH) on the object,
    parent the directory it is in, name its name there."""

    def __init__(self, parent: int, name: str, fd: int):
        self.parent, self.name, self.fd = parent, name, fd

    def top(self, dest: str) -> int:
        """An fd on what is mounted there now (a lookup by name crosses into the mount
        on top; self.fd stays on what is underneath)."""
        try:
            return os.open(self.name, _O_WALK, dir_fd=self.parent)
        except OSError as e:
            raise _fail(f"open {dest} after mounting", e) from None

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.parent)


def _walk(start: int, start_path: str, parts, ours, is_dir: bool) -> _Dest:
    """Open start/parts[0]/parts[1]/... one component at a time with O_NOFOLLOW (mounts
    are crossed, symlinks refused), creating a missing one only on a filesystem the
    spec mounted (st_dev in ours), relative to its parent's fd.  start is dup'ed."""
    dest = start_path.rstrip("/") + "/" + "/".join(parts)
    parent, fd = -1, os.dup(start)
    try:
        for i, name in enumerate(parts):
            here = start_path.rstrip("/") + "/" + "/".join(parts[:i + 1])
            last = i == len(parts) - 1
            if name in ("", ".", ".."):      # prepare() refuses these; never walk one
                raise SetupError(STEP, errno.EINVAL, f"{dest}: {name!r} in the path")
            if parent != -1:
                os.close(parent)
            parent, fd = fd, -1
            try:
                fd = os.open(name, _O_WALK, dir_fd=parent)
            except FileNotFoundError:
                fd = _create(parent, name, here, dest, ours, is_dir or not last)
            except OSError as e:
                raise _fail(f"open {here}", e) from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                raise SetupError(STEP, errno.ELOOP, f"{dest}: {here} is a symlink (a "
                                 "destination is never followed through one)")
            if not last and not stat.S_ISDIR(mode):
                raise SetupError(STEP, errno.ENOTDIR, f"{dest}: {here}")
        return _Dest(parent, parts[-1], fd)
    except BaseException:
        for f in (parent, fd):
            if f != -1:
                os.close(f)
        raise


def _create(parent: int, name: str, here: str, dest: str, ours, is_dir: bool) -> int:
    if os.fstat(parent).st_dev not in ours:
        raise SetupError(STEP, errno.ENOENT, f"{dest}: {here} does not exist (it is created "
                         "only on a tmpfs this spec mounts)")
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY |
                             os.O_CLOEXEC, 0o644, dir_fd=parent))
        return os.open(name, _O_WALK, dir_fd=parent)
    except OSError as e:
        raise _fail(f"create {here}", e) from None


def _open_dest(dest: str, ours, is_dir: bool) -> _Dest:
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _walk(root, "/", dest[1:].split("/"), ours, is_dir)
    finally:
        os.close(root)


def _flags(m: Mount) -> int:
    flags = 0
    for o in m.options:
        flags |= OPTION_FLAGS.get(o, 0)
    return flags


def _one(m, clone, devs, ours) -> None:
    dest = m.destination
    if m.type == "bind":
        d = _open_dest(dest, ours, stat.S_ISDIR(os.fstat(clone).st_mode))
        try:
            _attach(clone, d.fd, m.source, dest)
        finally:
            d.close()
        return
    flags = _flags(m)
    d = _open_dest(dest, ours, True)
    try:
        if m.type == "tmpfs":
            data = [f"mode={m.mode}"] if m.mode is not None else []
            if m.size is not None:
                data.append(f"size={m.size}")
            _mount_fs("tmpfs", dest, flags, ",".join(data) or None, d.fd)
            _add_ours(d, dest, ours)
        elif m.type == "proc":
            _mount_fs("proc", dest, flags | MS_NOSUID | MS_NODEV | MS_NOEXEC, fd=d.fd)
        elif m.type == "mqueue":
            _mount_fs("mqueue", dest, flags | MS_NOSUID | MS_NODEV | MS_NOEXEC, fd=d.fd)
        elif m.type == "devpts":
            _mount_fs("devpts", dest, flags | MS_NOSUID | MS_NOEXEC,
                      "newinstance,ptmxmode=0666,mode=0620", d.fd)
        elif m.type == "dev":
            _dev(d, dest, flags, devs, ours, m.mode, m.size)
        else:   # the spec model knows no other type
            raise SetupError(STEP, 0, f"unknown mount type {m.type!r}")
    finally:
        d.close()


def _add_ours(d: _Dest, dest: str, ours) -> int:
    """Record the filesystem just mounted at d as one of ours; an fd on its root."""
    top = d.top(dest)
    ours.add(os.fstat(top).st_dev)
    return top


def _dev(d: _Dest, dest: str, flags: int, devs, ours, mode: "str | None" = None,
         size: "int | None" = None) -> None:
    """A tmpfs with the harmless device nodes bound from the host (a user namespace
    cannot mknod), its own devpts and shm, and the usual links."""
    data = f"mode={mode or '0755'}" + (f",size={size}" if size is not None else "")
    _mount_fs("tmpfs", dest, flags | MS_NOSUID | MS_NODEV, data, d.fd)
    root = _add_ours(d, dest, ours)
    try:
        for name, clone in devs.items():
            node = _walk(root, dest, [name], ours, False)
            try:
                _attach(clone, node.fd, f"/dev/{name}", f"{dest}/{name}")
            finally:
                node.close()
        for sub, fstype, fl, data in (
                # runc's /dev/shm: bounded (it is memory), and nothing executed from it
            ("shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={DEV_SHM_SIZE}"),
                ("pts", "devpts", MS_NOSUID | MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=0620")):
            sd = _walk(root, dest, [sub], ours, True)
            try:
                _mount_fs(fstype, f"{dest}/{sub}", fl, data, sd.fd)
            finally:
                sd.close()
        for name, target in DEV_LINKS:
            try:
                os.symlink(target, name, dir_fd=root)
            except OSError as e:
                raise _fail(f"symlink {dest}/{name}", e) from None
    finally:
        os.close(root)


def _mask(path: str, null: int) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return          # nothing to hide (OCI runtimes skip these too)
    except OSError as e:
        raise _fail(f"masked path {path}", e) from None
    if stat.S_ISDIR(st.st_mode):
        _mount_fs("tmpfs", path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=0k,nr_inodes=1,mode=0555")
    else:
        _bind(null, path, False, "/dev/null")


def _readonly(path: str, flags: int = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC) -> None:
    """readonly_paths: read-only and nothing run from there (as /proc's parts are);
    sandbox.filesystem's read-only places (/usr) keep exec: flags MS_RDONLY."""
    if not os.path.lexists(path):
        return
    try:
        _libc.mount(path, path, None, MS_BIND | MS_REC)
    except OSError as e:
        raise _fail(f"bind read-only path {path} onto itself", e) from None
    set_flags(path, flags, recursive=True)


def _attr(ms_flags: int) -> int:
    attr = 0
    for ms, a in _MS_TO_ATTR.items():
        if ms_flags & ms:
            attr |= a
    return attr


def set_flags(path: str, ms_flags: int, recursive: bool) -> None:
    """Add ms_flags (ro nosuid nodev noexec noatime) to the mount at path."""
    try:
        mount_setattr(path, _attr(ms_flags), recursive)
        return
    except OSError as e:
        if e.errno != errno.ENOSYS:    # a kernel before 5.12
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
            _libc.mount(None, t, None, MS_BIND | MS_REMOUNT | have | ms_flags)
        except OSError as e:
            raise _fail(f"remount {t} ({_names(ms_flags)})", e) from None


def _names(ms_flags: int) -> str:
    return ",".join(n for n, f in OPTION_FLAGS.items() if ms_flags & f)


def _submounts(path: str) -> list:
    """Mount points strictly under path, from /proc/self/mountinfo."""
    from . import procfs
    prefix = path.rstrip("/") + "/"
    return [m.mount_point for m in procfs.mountinfo()
            if m.mount_point.startswith(prefix)]
