"""cgroup v2 (the unified hierarchy): the spec's limits as v2 files (the values as the
kernel takes them), the controllers this hierarchy offers, and enabling them in every
ancestor of a cgroup."""

from __future__ import annotations

import os

from .hierarchy import Hierarchy, _read_at, _write_at, open_path


def _v2_available(h: Hierarchy) -> set:
    try:
        with open(os.path.join(h.mountpoint, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()


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
