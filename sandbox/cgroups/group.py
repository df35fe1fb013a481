"""Group: the handle an init (or sandbox.spawn's Process) keeps on a service's cgroup, in
every hierarchy it was placed in.  Every path is opened from the mount root with
O_NOFOLLOW (open_path) and files are read/written relative to the directory fd.

The library side: sandbox.cgroups loads this module on first use of cgroups.Group; the
shim never does (nor cgroupspy, which Group reads v1 statistics through).
"""

from __future__ import annotations

import errno as _errno
import os

from ..errors import SpecError
from . import _select
from .hierarchy import Hierarchy, _read_at, _write_at, hierarchies, open_path
from .v1 import _FdNode

DEFAULT_ROOT = "/wrapperd"
_discover = hierarchies     # Group.__init__'s parameter shadows the name


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
