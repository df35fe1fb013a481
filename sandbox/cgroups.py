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
import stat

from ._record import field_types, frozen
from .errors import SetupError, SpecError
from .fds import read_all

__all__ = ["Hierarchy", "hierarchies", "mode", "Prepared", "prepare", "apply", "Group",
           "open_path", "cgroup_of"]

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
    from . import procfs
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


def _v2_available(h: Hierarchy) -> set:
    try:
        with open(os.path.join(h.mountpoint, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()


# Each limit: spec field -> controller.  The files (and v1 conversions) are in _v2_writes
# and _v1_writes below.
LIMITS = {
    "memory_max": "memory", "memory_high": "memory", "memory_swap_max": "memory",
    "pids_max": "pids", "cpu_max": "cpu", "cpu_weight": "cpu", "io_weight": "io",
    "cpuset_cpus": "cpuset", "cpuset_mems": "cpuset",
}
# v1 has no io controller: blkio plays its part
_V1_CTRL = {"io": "blkio"}


@frozen
class Target:
    hierarchy: Hierarchy
    writes: tuple          # ((file, value), ...) written, in order, before joining
    enable: tuple = ()     # v2: controllers to enable in every ancestor's subtree_control

    __record_types__ = field_types(hierarchy=Hierarchy, writes=tuple[tuple[str, str], ...],
                                   enable=tuple[str, ...])


@frozen
class Prepared:
    path: str              # absolute within each mount
    create: bool
    targets: tuple

    __record_types__ = field_types(path=str, create=bool, targets=tuple[Target, ...])


def _v2_writes(cg) -> list:
    """(controller, file, value) for the v2 files: the spec's values as the kernel takes
    them."""
    out = []
    for field, fname in (("memory_max", "memory.max"), ("memory_high", "memory.high"),
                         ("memory_swap_max", "memory.swap.max"), ("pids_max", "pids.max"),
                         ("cpu_max", "cpu.max"), ("cpu_weight", "cpu.weight"),
                         ("io_weight", "io.weight"), ("cpuset_cpus", "cpuset.cpus"),
                         ("cpuset_mems", "cpuset.mems")):
        v = getattr(cg, field)
        if v is not None:
            out.append((field, fname, str(v)))
    return out


def cpu_weight_to_shares(w: int) -> int:
    # systemd's mapping: the v2 default weight 100 is the v1 default 1024 shares, linearly
    # (runc's OCI formula sends weight 100 to 2597 shares, more than the default)
    return min(max(w * 1024 // 100, 2), 262144)


def io_weight_to_blkio(w: int) -> int:
    # systemd's mapping: default io.weight 100 is the default blkio.weight 500, clamped to
    # blkio's [10, 1000]
    return min(max(w * 500 // 100, 10), 1000)


def _v1_writes(cg, blkio_weight_file: "str | None") -> list:
    """(field, file, value) for the v1 files, in the order the kernel needs them."""
    out = []
    if cg.memory_high is not None:
        raise SpecError("cgroup v1 has no memory.high; use version 2 or memory_max",
                        "cgroup.memory_high")
    if cg.memory_max is not None:
        out.append(("memory_max", "memory.limit_in_bytes", str(cg.memory_max)))
    if cg.memory_swap_max is not None:
        # v1 limits memory+swap together: memsw must be >= limit_in_bytes, written after
        if cg.memory_max is None:
            raise SpecError("cgroup v1 limits memory+swap together: set memory_max too",
                            "cgroup.memory_swap_max")
        out.append(("memory_swap_max", "memory.memsw.limit_in_bytes",
                    str(cg.memory_max + cg.memory_swap_max)))
    if cg.pids_max is not None:
        out.append(("pids_max", "pids.max", str(cg.pids_max)))
    if cg.cpu_max is not None:
        quota, period = cg.cpu_max.split()
        # period first: the kernel checks quota against the current period
        out.append(("cpu_max", "cpu.cfs_period_us", period))
        out.append(("cpu_max", "cpu.cfs_quota_us", "-1" if quota == "max" else quota))
    if cg.cpu_weight is not None:
        out.append(("cpu_weight", "cpu.shares", str(cpu_weight_to_shares(cg.cpu_weight))))
    if cg.io_weight is not None:
        if blkio_weight_file is None:
            raise SpecError("the blkio hierarchy has no weight file here (needs the BFQ I/O "
                            "scheduler)", "cgroup.io_weight")
        out.append(("io_weight", blkio_weight_file, str(io_weight_to_blkio(cg.io_weight))))
    if cg.cpuset_cpus is not None:
        out.append(("cpuset_cpus", "cpuset.cpus", cg.cpuset_cpus))
    if cg.cpuset_mems is not None:
        out.append(("cpuset_mems", "cpuset.mems", cg.cpuset_mems))
    return out


def _blkio_weight_file(h: Hierarchy) -> "str | None":
    for name in ("blkio.weight", "blkio.bfq.weight"):
        if os.path.exists(os.path.join(h.mountpoint, name)):
            return name
    return None


def prepare(cg, hs: "list[Hierarchy] | None" = None) -> Prepared:
    """Work out which hierarchies to join and what to write in each; reads only."""
    hs = hierarchies(named=bool(getattr(cg, "named", ()))) if hs is None else hs
    m = mode(hs)
    if m == "none":
        raise SpecError("no cgroup filesystem is mounted", "cgroup")
    version, chosen = _select(cg, hs)
    for i, name in enumerate(getattr(cg, "named", ())):
        if version == 2:
            raise SpecError("named hierarchies are cgroup v1: use version 1", "cgroup.named")
        if not any(h.controllers == ("name=" + name,) for h in chosen):
            raise SpecError(f"no cgroup hierarchy name={name} is mounted",
                            f"cgroup.named[{i}]")
    targets = []
    if version == 2:
        if not chosen:
            raise SpecError("cgroup v2 is not mounted here", "cgroup.version")
        h = chosen[0]
        avail = _v2_available(h)
        writes: "list[tuple[str, str]]" = []
        enable: "list[str]" = []
        for field, fname, value in _v2_writes(cg):
            ctrl = LIMITS[field]
            if ctrl not in avail:
                raise SpecError(f"the {ctrl} controller is not available in cgroup v2 here "
                                f"(mode: {m}); use version 1", f"cgroup.{field}")
            writes.append((fname, value))
            if ctrl not in enable:
                enable.append(ctrl)
        targets.append(Target(h, tuple(writes), tuple(enable)))
    else:
        v1 = [h for h in chosen if h.version == 1]
        if not v1:
            raise SpecError("no cgroup v1 hierarchy is mounted here", "cgroup.version")
        blkio = next((h for h in v1 if "blkio" in h.controllers), None)
        wanted = _v1_writes(cg, _blkio_weight_file(blkio) if blkio else None)
        for field, _f, _v in wanted:
            ctrl = _V1_CTRL.get(LIMITS[field], LIMITS[field])
            if not any(ctrl in h.controllers for h in v1):
                raise SpecError(f"the {ctrl} controller is not mounted", f"cgroup.{field}")
        for h in chosen:
            targets.append(Target(h, tuple(
                (f, v) for field, f, v in wanted if h.version == 1
                and _V1_CTRL.get(LIMITS[field], LIMITS[field]) in h.controllers)))
    for t in targets:
        _check_no_file_in_the_way(t.hierarchy.mountpoint, cg.full_path)
    return Prepared(path=cg.full_path, create=cg.create, targets=tuple(targets))


def _check_no_file_in_the_way(mountpoint: str, path: str) -> None:
    """A path that names a file (or symlink) in one hierarchy would fail at the cgroup
    step only after directories were made, and joined, in the hierarchies before it:
    refuse it here, before anything is created.  apply() still checks (races)."""
    cur = mountpoint
    for comp in [c for c in path.split("/") if c]:
        cur = os.path.join(cur, comp)
        try:
            st = os.lstat(cur)
        except OSError:
            return                  # not there yet (created at the cgroup step)
        if stat.S_ISLNK(st.st_mode):
            return                  # never followed: the cgroup step's walk refuses it
        if not stat.S_ISDIR(st.st_mode):
            raise SpecError(f"{cur} exists and is not a directory", "cgroup.path")


def open_path(mountpoint: str, path: str, create: bool = False) -> int:
    """Open (and with create, mkdir) path under mountpoint, never following a symlink
    and never leaving the mount's filesystem (a mount planted in the tree is refused)."""
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


def _enable_v2_controllers(h: Hierarchy, path: str, ctrls, create: bool) -> None:
    """Enable ctrls in cgroup.subtree_control of every ancestor of path, top down (a
    controller can only be enabled where the parent has it enabled)."""
    if not ctrls:
        return
    comps = [c for c in path.split("/") if c]
    for depth in range(len(comps)):
        fd = open_path(h.mountpoint, "/".join(comps[:depth]), create=create)
        try:
            have = set(_read_at(fd, "cgroup.subtree_control").split())
            missing = [c for c in ctrls if c not in have]
            if missing:
                _write_at(fd, "cgroup.subtree_control", " ".join("+" + c for c in missing))
        finally:
            os.close(fd)


# v1 files of the controllers cgroupspy models -> (controller class, attribute).  pids
# and freezer are plain file writes: cgroupspy models neither (and no v2 at all).
_SPY = {
    "memory.limit_in_bytes": ("MemoryController", "limit_in_bytes"),
    "memory.memsw.limit_in_bytes": ("MemoryController", "memsw_limit_in_bytes"),
    "cpu.cfs_period_us": ("CpuController", "cfs_period_us"),
    "cpu.cfs_quota_us": ("CpuController", "cfs_quota_us"),
    "cpu.shares": ("CpuController", "shares"),
    "cpuset.cpus": ("CpuSetController", "cpus"),
    "cpuset.mems": ("CpuSetController", "mems"),
    "blkio.weight": ("BlkIOController", "weight"),
}


class _FdNode:
    """What a cgroupspy controller needs of a tree node: full_path.  /proc/self/fd/N
    names the very directory open_path opened without following symlinks, so cgroupspy's
    path-based writes cannot be redirected by a rename or symlink in the tree."""

    def __init__(self, fd: int):
        self.full_path = f"/proc/self/fd/{fd}".encode()


def _expand_list(s: str) -> "set[int]":
    out: "set[int]" = set()
    for part in s.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _write_v1(fd: int, name: str, value: str) -> None:
    spy = _SPY.get(name)
    if spy is None:
        _write_at(fd, name, value)
        return
    # v1 only, and the shim must stay lean: imported when a v1 limit is written
    from cgroupspy import controllers
    ctl = getattr(controllers, spy[0])(_FdNode(fd))
    v = _expand_list(value) if name in ("cpuset.cpus", "cpuset.mems") else int(value)
    try:
        setattr(ctl, spy[1], v)
    except (ValueError, TypeError) as e:     # cgroupspy's own checks
        raise OSError(_errno.EINVAL, str(e)) from None


def apply(p: Prepared, parent_too: "int | None" = None) -> None:
    """Create, configure and join: limits are written before this process enters.
    parent_too: also move this process's parent, whose pid here is 1 and whose pid in
    /proc is parent_too, in first (a fork server's premade reaper, see wrapperd.shim)."""
    for t in p.targets:
        h = t.hierarchy
        where = f"{h.mountpoint}{p.path}"
        try:
            if h.version == 2:
                _enable_v2_controllers(h, p.path, t.enable, p.create)
            fd = open_path(h.mountpoint, p.path, create=p.create)
        except OSError as e:
            raise SetupError("cgroup", e.errno or 0, f"open {where}") from None
        try:
            writes = list(t.writes)
            while writes:
                name, value = writes.pop(0)
                try:
                    if h.version == 1:
                        try:
                            _write_v1(fd, name, value)
                        except OSError as e:
                            # v1 wants limit <= memsw at every moment: raising both in an
                            # existing cgroup takes memsw first
                            memsw = [w for w in writes
                                     if w[0] == "memory.memsw.limit_in_bytes"]
                            if e.errno != _errno.EINVAL or name != "memory.limit_in_bytes" \
                                    or not memsw:
                                raise
                            writes.remove(memsw[0])
                            _write_v1(fd, *memsw[0])
                            _write_v1(fd, name, value)
                    else:
                        _write_at(fd, name, value)
                except OSError as e:
                    raise SetupError("cgroup", e.errno or 0,
                                     f"write {value} to {where}/{name}") from None
            try:
                if parent_too is not None:
                    # A pid written here is read in the writer's pid namespace: the
                    # premade reaper is pid 1 of ours.
                    _write_at(fd, "cgroup.procs", "1")
                _write_at(fd, "cgroup.procs", "0")
            except OSError as e:
                raise SetupError("cgroup", e.errno or 0, f"join {where}") from None
        finally:
            os.close(fd)
    for who in ("self", parent_too):
        if who is None:
            continue
        placed = cgroup_of(who)
        for t in p.targets:
            key = "" if t.hierarchy.version == 2 else t.hierarchy.controllers
            if placed.get(key) != p.path:
                raise SetupError("cgroup", 0, f"{'' if who == 'self' else 'the reaper '}"
                                 f"not in {p.path} after joining "
                                 f"({t.hierarchy.mountpoint}: {placed.get(key)})")


def cgroup_of(pid) -> dict:
    """Parse /proc/<pid>/cgroup: {controllers tuple (v1; ('name=X',) for a named
    hierarchy) or '' (v2): path}."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _hid, ctrls, path = line.rstrip("\n").split(":", 2)
            key = tuple(c for c in ctrls.split(",") if c in V1_CONTROLLERS) if ctrls else ""
            if ctrls and not key:
                if not ctrls.startswith("name="):
                    continue
                key = (ctrls,)      # a named hierarchy: ('name=systemd',)
            out[key] = path
    return out


# --------------------------------------------------------------------------- library side
# Group: the handle an init (or sandbox.spawn's Process) keeps on a service's cgroup, in
# every hierarchy it was placed in.  Every path is opened from the mount root with
# O_NOFOLLOW (open_path) and files are read/written relative to the directory fd.

DEFAULT_ROOT = "/wrapperd"
_discover = hierarchies     # Group.__init__'s parameter shadows the name


def _may_write_v1(hs: "list[Hierarchy]") -> bool:
    v1 = [h for h in hs if h.version == 1 and not _is_named(h)]
    return bool(v1) and os.access(os.path.join(v1[0].mountpoint, "cgroup.procs"), os.W_OK)


def _select(cg, hs: "list[Hierarchy]") -> "tuple[int, list[Hierarchy]]":
    """The cgroup version a spec resolves to here, and the hierarchies it joins."""
    m = mode(hs)
    version = cg.version
    if version == "auto":
        if m == "unified" or (m == "hybrid" and not _may_write_v1(hs)):
            # An unprivileged shim (a rootless container) in hybrid mode can only use a
            # v2 subtree delegated to it: the v1 hierarchies belong to the host's root.
            version = 2
        else:
            version = 1
    if version == 2:
        return 2, [h for h in hs if h.version == 2][:1]
    # v1: every controller hierarchy, the named ones asked for; in hybrid mode the v2 one
    # too (it gives cgroup.kill)
    wanted = {"name=" + n for n in getattr(cg, "named", ())}
    return 1, ([h for h in hs if h.version == 1 and not _is_named(h)]
               + [h for h in hs if _is_named(h) and h.controllers[0] in wanted]
               + [h for h in hs if h.version == 2][:1])


def _read_at(dirfd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return read_all(fd).decode()
    finally:
        os.close(fd)


def _kv(text: str) -> dict:
    """'key value' lines (memory.events, cpu.stat, memory.oom_control) -> {key: int}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _int_or_none(text: str):
    t = text.strip()
    if t == "max":
        return None
    try:
        return int(t)
    except ValueError:
        return None


class Group:
    """One cgroup path in one or more hierarchies (v2 and/or v1 controllers).

    Group(path) covers every mounted hierarchy (those where the directory does not
    exist are skipped); Group.from_spec(cg) covers exactly the ones the shim joins for
    that spec.  Methods act on the whole subtree below path.
    """

    def __init__(self, path: str, hierarchies: "list[Hierarchy] | None" = None):
        if not path.startswith("/"):
            path = DEFAULT_ROOT + "/" + path
        comps = [c for c in path.split("/") if c]
        if any(c in (".", "..") for c in comps):
            raise SpecError(f"{path!r} must not contain '.' or '..'", "cgroup.path")
        if not comps:
            raise SpecError("refusing to manage a hierarchy's root cgroup", "cgroup.path")
        self.path = "/" + "/".join(comps)
        self.hierarchies = list(_discover(named=True) if hierarchies is None
                                else hierarchies)

    @classmethod
    def from_spec(cls, cg, hs: "list[Hierarchy] | None" = None) -> "Group":
        hs = hierarchies(named=True) if hs is None else hs
        _version, chosen = _select(cg, hs)
        return cls(cg.full_path, chosen)

    def __repr__(self) -> str:
        return f"Group({self.path!r}, {[h.mountpoint for h in self.hierarchies]!r})"

    # -- walking
    def _open(self, h: Hierarchy) -> "int | None":
        try:
            return open_path(h.mountpoint, self.path)
        except FileNotFoundError:
            return None

    def _dirs(self, h: Hierarchy):
        """Yield (relative dir, dirfd) for every cgroup in the subtree, parents first."""
        top = self._open(h)
        if top is None:
            return
        try:
            # fwalk never follows symlinks (cgroupfs has none, but a fake tree might)
            for rel, _dirs, _files, fd in os.fwalk(".", dir_fd=top):
                yield rel, fd
        finally:
            os.close(top)

    def _v2(self) -> "Hierarchy | None":
        return next((h for h in self.hierarchies if h.version == 2), None)

    def _v1(self, ctrl: str) -> "Hierarchy | None":
        return next((h for h in self.hierarchies
                     if h.version == 1 and ctrl in h.controllers), None)

    def _read(self, h: "Hierarchy | None", name: str) -> "str | None":
        if h is None:
            return None
        fd = self._open(h)
        if fd is None:
            return None
        try:
            return _read_at(fd, name)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _write(self, h: Hierarchy, name: str, value: str) -> bool:
        """Write to the group's own file; False if the file (or dir) is not there."""
        fd = self._open(h)
        if fd is None:
            return False
        try:
            _write_at(fd, name, value)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    # -- queries
    def exists(self) -> bool:
        for h in self.hierarchies:
            fd = self._open(h)
            if fd is not None:
                os.close(fd)
                return True
        return False

    def procs(self) -> "set[int]":
        """Every process (thread-group id) anywhere in the tree, in every hierarchy."""
        pids: set = set()
        for h in self.hierarchies:
            for _rel, fd in self._dirs(h):
                try:
                    pids.update(int(x) for x in _read_at(fd, "cgroup.procs").split())
                except FileNotFoundError:
                    pass
        return pids

    def stats(self) -> dict:
        """memory_current/memory_peak (bytes), pids_current, cpu_usage_usec; None where
        this machine's hierarchies do not say."""
        out: "dict[str, int | None]" = {"memory_current": None, "memory_peak": None,
                                        "pids_current": None, "cpu_usage_usec": None}
        v2 = self._v2()
        if v2 is not None:
            out["memory_current"] = _int_or_none(self._read(v2, "memory.current") or "")
            out["memory_peak"] = _int_or_none(self._read(v2, "memory.peak") or "")
            out["pids_current"] = _int_or_none(self._read(v2, "pids.current") or "")
            # cpu.stat's usage_usec is there even without the cpu controller (rstat)
            out["cpu_usage_usec"] = _kv(self._read(v2, "cpu.stat") or "").get("usage_usec")
        mem, pids, acct = self._v1("memory"), self._v1("pids"), self._v1("cpuacct")
        if out["memory_current"] is None and mem is not None:
            out["memory_current"] = self._spy(mem, "MemoryController", "usage_in_bytes")
            out["memory_peak"] = self._spy(mem, "MemoryController", "max_usage_in_bytes")
        if out["pids_current"] is None and pids is not None:
            out["pids_current"] = _int_or_none(self._read(pids, "pids.current") or "")
        if acct is not None:
            ns = self._spy(acct, "CpuAcctController", "usage")
            if isinstance(ns, int):
                out["cpu_usage_usec"] = ns // 1000
        return out

    def _spy(self, h: Hierarchy, cls: str, attr: str):
        """Read a v1 file through cgroupspy's model of it (None if unreadable): cgroupspy
        is handed /proc/self/fd/N of the directory open_path opened."""
        from cgroupspy import controllers  # v1 only, library side only
        fd = self._open(h)
        if fd is None:
            return None
        try:
            return getattr(getattr(controllers, cls)(_FdNode(fd)), attr)
        except (OSError, ValueError, TypeError):
            return None
        finally:
            os.close(fd)

    def events(self) -> dict:
        """Counters of limits hit: oom_kill (processes the OOM killer killed), oom (times
        the OOM killer ran / v1: the group was under OOM), memory_max (allocations that hit
        the limit: v2 memory.events max, v1 memory.failcnt), pids_max (forks refused)."""
        out = {"oom_kill": 0, "oom": 0, "memory_max": 0, "pids_max": 0}
        v2 = self._v2()
        ev2 = _kv(self._read(v2, "memory.events") or "") if v2 else {}
        if ev2:
            out["oom_kill"] = ev2.get("oom_kill", 0)
            out["oom"] = ev2.get("oom", 0)
            out["memory_max"] = ev2.get("max", 0)
        else:
            mem = self._v1("memory")
            if mem is not None:
                oc = self._spy(mem, "MemoryController", "oom_control")
                oc = oc if isinstance(oc, dict) else {}
                out["oom_kill"] = oc.get("oom_kill", 0)     # kernel >= 4.13
                out["oom"] = oc.get("under_oom", 0)
                out["memory_max"] = self._spy(mem, "MemoryController", "failcnt") or 0
        pe = _kv(self._read(v2, "pids.events") or "") if v2 else {}
        if not pe:
            pe = _kv(self._read(self._v1("pids"), "pids.events") or "")
        out["pids_max"] = pe.get("max", 0)
        return out

    # -- actions
    def freeze(self, timeout: float = 5.0) -> None:
        """Stop every task in the tree (v2 cgroup.freeze, else the v1 freezer), and wait
        until the kernel says frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        import time
        v2 = self._v2()
        if v2 is not None and self._write(v2, "cgroup.freeze", "1" if frozen else "0"):
            def done():
                ev = _kv(self._read(v2, "cgroup.events") or "")
                return ev.get("frozen") == int(frozen)
        else:
            fz = self._v1("freezer")
            if fz is None or not self._write(fz, "freezer.state",
                                             "FROZEN" if frozen else "THAWED"):
                raise OSError(_errno.ENOTSUP, f"no freezer for cgroup {self.path}")

            def done():
                state = (self._read(fz, "freezer.state") or "").strip()
                return state == ("FROZEN" if frozen else "THAWED")
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise OSError(_errno.ETIMEDOUT,
                              f"cgroup {self.path} not {'frozen' if frozen else 'thawed'}")
            time.sleep(0.005)

    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process in the tree, including orphans and double-forked daemons,
        until the tree is empty.  True if it emptied within timeout.

        v2 cgroup.kill does it atomically in the kernel (nothing can fork its way out).
        Otherwise the tree is frozen first, so no task can fork or exit while we read
        the pids (an exited pid could be reused by an unrelated process), each gets
        SIGKILL, and the thaw lets the pending SIGKILLs land."""
        import signal
        import time
        deadline = time.monotonic() + timeout
        v2 = self._v2()
        fz = self._v1("freezer")
        attempt = 0
        while True:
            pids = self.procs()
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            attempt += 1
            # cgroup.kill reaches only the v2 members: if a process lingers (say, moved
            # in a v1 hierarchy alone), fall back to the per-task kill below
            if attempt <= 20 and v2 is not None and self._write(v2, "cgroup.kill", "1"):
                pass
            elif fz is not None or v2 is not None:
                try:
                    self.freeze(timeout=1.0)
                except OSError:
                    pass      # best effort: kill anyway, the loop catches stragglers
                try:
                    for pid in self.procs():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                finally:
                    try:
                        self.thaw(timeout=1.0)
                    except OSError:
                        pass
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.01)

    def wait_empty(self, timeout: float) -> bool:
        import time
        deadline = time.monotonic() + timeout
        while self.procs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def remove(self) -> None:
        """rmdir the tree bottom-up in every hierarchy; already-gone is fine.  EBUSY
        (processes still inside) is raised: kill() first."""
        for h in self.hierarchies:
            top = self._open(h)
            if top is None:
                continue
            try:
                entries = [(rel, list(dirs)) for rel, dirs, _f, _fd in
                           os.fwalk(".", dir_fd=top)]
                for rel, dirs in reversed(entries):
                    pfd = top if rel == "." else os.open(
                        rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=top)
                    try:
                        for d in dirs:
                            try:
                                os.rmdir(d, dir_fd=pfd)
                            except FileNotFoundError:
                                pass
                    finally:
                        if pfd != top:
                            os.close(pfd)
            finally:
                os.close(top)
            parent, _, name = self.path.rpartition("/")
            try:
                pfd = open_path(h.mountpoint, parent)
            except FileNotFoundError:
                continue
            try:
                os.rmdir(name, dir_fd=pfd)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise OSError(e.errno, f"rmdir {h.mountpoint}{self.path}: "
                              f"{e.strerror}") from None
            finally:
                os.close(pfd)
