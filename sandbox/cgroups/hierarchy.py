"""Where the cgroup hierarchies are, and how a path in one is opened.

hierarchies() reads /proc/self/mountinfo: every cgroup2 mount and every v1 mount with
the controllers bound to it; mode() names what they make: "unified" (pure v2),
"hybrid" (v1 controllers plus a v2 hierarchy without controllers), "legacy" (v1 only)
or "none".

Paths never contain '..' (the spec refuses them) and are walked one component at a time
with O_NOFOLLOW from the mount's root, so a symlink planted in the tree cannot send a
write outside the cgroup mount.  open_path() is that walk; the files of the directory
it opens are read and written relative to its fd (_read_at, _write_at).
"""

from __future__ import annotations

import errno as _errno
import os
import stat

from .._record import field_types, frozen
from ..fds import read_all

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
                  "pids", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc")


@frozen
class Hierarchy:
    version: int          # 1 or 2
    mountpoint: str
    controllers: tuple    # v1: the controllers bound to this mount; v2: ()

    __record_types__ = field_types(version=int, mountpoint=str, controllers=tuple[str, ...])


def hierarchies(mountinfo: str = "/proc/self/mountinfo",
                named: bool = False) -> "list[Hierarchy]":
    """Every cgroup hierarchy mounted here; with named, the v1 hierarchies without a
    controller too (mounted with name=X, such as name=systemd), as controllers
    ('name=X',)."""
    from .. import procfs
    found: dict = {}
    for m in procfs.mountinfo(path=mountinfo):
        if m.root != "/":
            continue          # a bind of a sub-cgroup, not the hierarchy's root
        opts = m.super_options.split(",")
        if m.fstype == "cgroup2":
            found.setdefault(("v2",), Hierarchy(2, m.mount_point, ()))
        elif m.fstype == "cgroup":
            ctrls = tuple(o for o in opts if o in V1_CONTROLLERS)
            if ctrls:
                found.setdefault(ctrls, Hierarchy(1, m.mount_point, ctrls))
            elif named:
                name = next((o for o in opts if o.startswith("name=")), None)
                if name:
                    found.setdefault((name,), Hierarchy(1, m.mount_point, (name,)))
    return list(found.values())


def _is_named(h: Hierarchy) -> bool:
    return h.version == 1 and bool(h.controllers) and h.controllers[0].startswith("name=")


def mode(hs: "list[Hierarchy] | None" = None) -> str:
    hs = hierarchies() if hs is None else hs
    v1 = any(h.version == 1 and not _is_named(h) for h in hs)
    v2 = any(h.version == 2 for h in hs)
    return "hybrid" if v1 and v2 else "legacy" if v1 else "unified" if v2 else "none"


def open_path(mountpoint: str, path: str, create: bool = False) -> int:
    """Open (and with create, mkdir) path under mountpoint, never following a symlink
    and never leaving the mount's filesystem (a mount planted in the tree is refused).
    With create, a parent removed under us is made again: another sandbox's cleanup
    removes the (empty) parents its spawn() made, and may do so between our mkdir of
    a parent and of its child (ENOENT there); once our child exists, rmdir of the
    parent fails, so a few walks from the top suffice."""
    for attempt in range(8 if create else 1):
        try:
            return _open_path(mountpoint, path, create)
        except FileNotFoundError:
            if not create or attempt == 7:
                raise
    raise AssertionError("unreachable")


def _open_path(mountpoint: str, path: str, create: bool) -> int:
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dev = os.fstat(fd).st_dev
        for comp in [c for c in path.split("/") if c]:
            if comp in (".", ".."):
                raise OSError(_errno.EINVAL, f"bad path component {comp!r}")
            if create:
                try:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    if mountpoint and _is_cpuset(fd):
                        _init_cpuset(fd, comp)
                except FileExistsError:
                    pass
            try:
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=fd)
            except NotADirectoryError:
                # O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR: name the real reason
                if stat.S_ISLNK(os.lstat(comp, dir_fd=fd).st_mode):
                    raise OSError(_errno.ELOOP, f"{comp!r} is a symlink: not followed") \
                        from None
                raise
            os.close(fd)
            fd = nfd
            if os.fstat(fd).st_dev != dev:
                raise OSError(_errno.EXDEV, f"{comp!r} is another filesystem mounted "
                              "in the cgroup tree")
        return fd
    except BaseException:
        os.close(fd)
        raise


# A v1 cpuset quirk that creating a cgroup (open_path's create) must handle.  It lives
# beside open_path, its one caller, not in v1.py: v1.py writes through _write_at, and
# the two modules would import each other.
def _is_cpuset(dirfd: int) -> bool:
    try:
        os.stat("cpuset.cpus", dir_fd=dirfd)
        os.stat("cgroup.clone_children", dir_fd=dirfd)   # v1 only
        return True
    except OSError:
        return False


def _init_cpuset(parent_fd: int, child: str) -> None:
    # A new v1 cpuset cgroup starts with empty cpus/mems and refuses tasks (ENOSPC)
    # until they are set: copy the parent's.
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(os.open(name, os.O_RDONLY, dir_fd=parent_fd), closefd=True) as f:
            value = f.read().strip()
        cfd = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            _write_at(cfd, name, value)
        finally:
            os.close(cfd)


def _write_at(dirfd: int, name: str, value: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        os.write(fd, os.fsencode(value))
    finally:
        os.close(fd)


def _read_at(dirfd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return read_all(fd).decode()
    finally:
        os.close(fd)
