"""cgroup v1 (one hierarchy per controller): the spec's limits as v1 files, with the
conversions v1 needs (cpu.shares, blkio.weight, memory and swap together), and writing
them -- through cgroupspy's model of the controllers it knows, imported only when a v1
limit is written."""

from __future__ import annotations

import errno as _errno
import os

from ..errors import SpecError
from .hierarchy import Hierarchy, _write_at

# v1 has no io controller: blkio plays its part
_V1_CTRL = {"io": "blkio"}


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
