"""Cgroups: find the hierarchies, create the target's cgroup, set limits, join it.

One facade over two backends: v2 (the unified hierarchy: plain file writes) and v1
(one hierarchy per controller).  The mode is read from /proc/self/mountinfo at run
time: "unified" (pure v2), "hybrid" (v1 controllers plus a v2 hierarchy without
controllers) or "legacy" (v1 only).

This module is the shim's cgroup step: prepare() works out which hierarchies to join
and what to write in each (reads only), apply() creates, writes and joins; Prepared and
Target are the records a plan carries.  The rest, one idea a module:
  hierarchy  discovery (Hierarchy, hierarchies(), mode()) and the walk every path takes
             from a mount's root (open_path(), and reads and writes relative to its fd);
  v1, v2     the spec's limits as each version's files, and how they are written;
  group      Group, the library's handle on a cgroup: loaded on first use of
             cgroups.Group, never by the shim (nor cgroupspy, which Group reads v1
             statistics through).
"""

from __future__ import annotations

import errno as _errno
import os
import stat

from .._record import field_types, frozen
from ..errors import SetupError, SpecError
from .hierarchy import V1_CONTROLLERS, Hierarchy, _is_named, _write_at, hierarchies, mode, open_path
from .v1 import _V1_CTRL, _blkio_weight_file, _v1_writes, _write_v1
from .v2 import _enable_v2_controllers, _v2_available, _v2_writes

__all__ = ["Hierarchy", "hierarchies", "mode", "Prepared", "prepare", "apply", "Group",
           "open_path", "cgroup_of"]

# Each limit: spec field -> controller.  The files (and v1 conversions) are in
# v2._v2_writes and v1._v1_writes.
LIMITS = {
    "memory_max": "memory", "memory_high": "memory", "memory_swap_max": "memory",
    "pids_max": "pids", "cpu_max": "cpu", "cpu_weight": "cpu", "io_weight": "io",
    "cpuset_cpus": "cpuset", "cpuset_mems": "cpuset",
}


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


# Group is the library's (group.py): loaded on first use, so that the shim, which imports
# this module, never loads it.  Type checkers see it (mypy knows TYPE_CHECKING by name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .group import Group


def __getattr__(name: str):
    if name == "Group":
        from .group import Group
        globals()["Group"] = Group
        return Group
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
