"""Cgroups: find the hierarchies, create the target's cgroup, set limits, join it.

One facade over two backends: v2 (the unified hierarchy: plain file writes) and v1
(one hierarchy per controller).  The mode is read from /proc/self/mountinfo at run
time: "unified" (pure v2), "hybrid" (v1 controllers plus a v2 hierarchy without
controllers) or "legacy" (v1 only).

Paths never contain '..' (the spec refuses them) and are walked one component at a time
with O_NOFOLLOW from the mount's root, so a symlink planted in the tree cannot send a
write outside the cgroup mount.
"""

from __future__ import annotations

import errno as _errno
import os

import attrs

from .errors import SetupError, SpecError

__all__ = ["Hierarchy", "hierarchies", "mode", "Prepared", "prepare", "apply",
           "open_path", "cgroup_of"]

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
                  "pids", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc")


@attrs.frozen
class Hierarchy:
    version: int          # 1 or 2
    mountpoint: str
    controllers: tuple    # v1: the controllers bound to this mount; v2: ()


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) + 1 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def hierarchies(mountinfo: str = "/proc/self/mountinfo") -> "list[Hierarchy]":
    found: dict = {}
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _src, superopts = (right.split() + ["", "", ""])[:3]
            if fields[3] != "/":
                continue      # a bind of a sub-cgroup, not the hierarchy's root
            mnt = _unescape(fields[4])
            if fstype == "cgroup2":
                found.setdefault(("v2",), Hierarchy(2, mnt, ()))
            elif fstype == "cgroup":
                ctrls = tuple(o for o in superopts.split(",") if o in V1_CONTROLLERS)
                if ctrls:
                    found.setdefault(ctrls, Hierarchy(1, mnt, ctrls))
    return list(found.values())


def mode(hs: "list[Hierarchy] | None" = None) -> str:
    hs = hierarchies() if hs is None else hs
    v1 = any(h.version == 1 for h in hs)
    v2 = any(h.version == 2 for h in hs)
    return "hybrid" if v1 and v2 else "legacy" if v1 else "unified" if v2 else "none"


def _v2_available(h: Hierarchy) -> set:
    try:
        with open(os.path.join(h.mountpoint, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()


# Each limit: spec field -> (controller, v2 file, v1 file)
LIMITS = {
    "memory_max": ("memory", "memory.max", "memory.limit_in_bytes"),
    "pids_max": ("pids", "pids.max", "pids.max"),
}


@attrs.frozen
class Target:
    hierarchy: Hierarchy
    writes: tuple          # ((file, value), ...) written before joining


@attrs.frozen
class Prepared:
    path: str              # absolute within each mount
    create: bool
    targets: tuple


def prepare(cg, hs: "list[Hierarchy] | None" = None) -> Prepared:
    hs = hierarchies() if hs is None else hs
    path = cg.full_path
    m = mode(hs)
    if m == "none":
        raise SpecError("no cgroup filesystem is mounted", "cgroup")
    version = cg.version
    if version == "auto":
        version = 2 if m == "unified" else 1
    wanted = {k: getattr(cg, k) for k in LIMITS if getattr(cg, k) is not None}
    targets = []
    if version == 2:
        v2 = [h for h in hs if h.version == 2]
        if not v2:
            raise SpecError("cgroup v2 is not mounted here", "cgroup.version")
        avail = _v2_available(v2[0])
        writes = []
        for k, value in wanted.items():
            ctrl, f2, _f1 = LIMITS[k]
            if ctrl not in avail:
                raise SpecError(f"the {ctrl} controller is not available in cgroup v2 here "
                                f"(mode: {m}); use version 1", f"cgroup.{k}")
            writes.append((f2, str(value)))
        targets.append(Target(v2[0], tuple(writes)))
    else:
        v1 = [h for h in hs if h.version == 1]
        if not v1:
            raise SpecError("no cgroup v1 hierarchy is mounted here", "cgroup.version")
        for h in v1:
            writes = []
            for k, value in wanted.items():
                ctrl, _f2, f1 = LIMITS[k]
                if ctrl in h.controllers:
                    writes.append((f1, str(value)))
            targets.append(Target(h, tuple(writes)))
        for k in wanted:
            if not any(LIMITS[k][0] in h.controllers for h in v1):
                raise SpecError(f"the {LIMITS[k][0]} controller is not mounted", f"cgroup.{k}")
        # In hybrid mode also join the v2 hierarchy: placement there gives cgroup.kill.
        targets += [Target(h, ()) for h in hs if h.version == 2]
    return Prepared(path=path, create=cg.create, targets=tuple(targets))


def open_path(mountpoint: str, path: str, create: bool = False) -> int:
    """Open (and with create, mkdir) path under mountpoint, never following a symlink."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
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
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


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
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _enable_v2_controllers(h: Hierarchy, path: str, ctrls: set) -> None:
    """Enable ctrls in cgroup.subtree_control of every ancestor of path."""
    if not ctrls:
        return
    comps = [c for c in path.split("/") if c]
    for depth in range(len(comps)):
        fd = open_path(h.mountpoint, "/".join(comps[:depth]), create=True)
        try:
            with open(os.open("cgroup.subtree_control", os.O_RDONLY, dir_fd=fd)) as f:
                have = set(f.read().split())
            missing = ctrls - have
            if missing:
                _write_at(fd, "cgroup.subtree_control", " ".join("+" + c for c in missing))
        finally:
            os.close(fd)


def apply(p: Prepared) -> None:
    """Create, configure and join: limits are written before this process enters."""
    for t in p.targets:
        h = t.hierarchy
        where = f"{h.mountpoint}{p.path}"
        try:
            if h.version == 2 and t.writes:
                _enable_v2_controllers(h, p.path, {LIMITS[k][0] for k in LIMITS
                                                   if any(w[0] == LIMITS[k][1]
                                                          for w in t.writes)})
            fd = open_path(h.mountpoint, p.path, create=p.create)
        except OSError as e:
            raise SetupError("cgroup", e.errno, f"open {where}") from None
        try:
            for name, value in t.writes:
                try:
                    _write_at(fd, name, value)
                except OSError as e:
                    raise SetupError("cgroup", e.errno, f"write {value} to {where}/{name}") \
                        from None
            try:
                _write_at(fd, "cgroup.procs", "0")
            except OSError as e:
                raise SetupError("cgroup", e.errno, f"join {where}") from None
        finally:
            os.close(fd)
    mine = cgroup_of("self")
    for t in p.targets:
        key = "" if t.hierarchy.version == 2 else t.hierarchy.controllers
        if mine.get(key) != p.path:
            raise SetupError("cgroup", 0, f"not in {p.path} after joining "
                             f"({t.hierarchy.mountpoint}: {mine.get(key)})")


def cgroup_of(pid) -> dict:
    """Parse /proc/<pid>/cgroup: {controllers tuple (v1) or '' (v2): path}."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _hid, ctrls, path = line.rstrip("\n").split(":", 2)
            key = tuple(c for c in ctrls.split(",") if c in V1_CONTROLLERS) if ctrls else ""
            if ctrls and not key:
                continue     # named hierarchy (name=systemd): not ours
            out[key] = path
    return out
