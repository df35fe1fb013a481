"""systemd's filesystem protections (man systemd.exec; the tables of systemd's
src/core/namespace.c), expanded into what the other facilities already do.

expand(spec) -> (spec', Expansion): spec' has the mounts, masks, read-only root and
capability drops the settings stand for, and a mount namespace of its own; the
Expansion holds what no spec field says -- read-only paths that stay executable, paths
bound writable last, /proc's hidepid and subset, syscalls denied -- for the mounts
step and the restrictions filter.  Expanding is idempotent, and a spec's own mount at a
place wins over a preset's.  Paths a setting names that the host does not have are
skipped (as systemd's optional entries; a spec path with a leading '-' likewise).

  protect_system   true: /usr, /boot, /efi read-only; "full": and /etc; "strict": all
                   of it (readonly_root), /dev, /proc, /sys left to the settings below
  protect_home     true: /home, /root, /run/user inaccessible; "read-only"; "tmpfs"
  private_tmp      a tmpfs on /tmp and /var/tmp
  private_devices  a minimal /dev (null, zero, full, random, urandom, tty, pts, shm);
                   no CAP_MKNOD or CAP_SYS_RAWIO; @raw-io denied
  read_write_paths, read_only_paths, inaccessible_paths
  protect_kernel_tunables  /proc/sys, /proc/sysrq-trigger, /sys, ... read-only
  protect_kernel_modules   /usr/lib/modules inaccessible; no CAP_SYS_MODULE; @module
  protect_kernel_logs      /proc/kmsg, /dev/kmsg inaccessible; no CAP_SYSLOG; syslog
  protect_control_groups   /sys/fs/cgroup read-only
  protect_proc, proc_subset  a fresh /proc with hidepid= and subset=pid
"""

from __future__ import annotations

import os

import attrs

from .errors import SpecError

__all__ = ["Expansion", "expand", "describe"]

_HOME = ("/home", "/root", "/run/user")
# systemd's protect_kernel_tunables_proc_table and _sys_table (read-only parts).
_TUNABLES = ("/proc/acpi", "/proc/apm", "/proc/asound", "/proc/bus", "/proc/fs",
             "/proc/irq", "/proc/kallsyms", "/proc/kcore", "/proc/latency_stats",
             "/proc/mtrr", "/proc/scsi", "/proc/sys", "/proc/sysrq-trigger",
             "/proc/timer_list", "/sys", "/sys/fs/bpf", "/sys/kernel/debug",
             "/sys/kernel/tracing")
_MODULES = ("/lib/modules", "/usr/lib/modules")
_KERNEL_LOGS = ("/proc/kmsg", "/dev/kmsg")


@attrs.frozen
class Expansion:
    read_only: tuple = ()        # made read-only, exec kept (unlike readonly_paths)
    read_write: tuple = ()       # bound onto themselves writable, after everything else
    proc_data: "str | None" = None   # a fresh /proc with these options (hidepid=...)
    denied: tuple = ()           # syscalls and @groups denied with EPERM
    dropped: tuple = ()          # capabilities taken out

    def __bool__(self) -> bool:
        return bool(self.read_only or self.read_write or self.proc_data or self.denied or
                    self.dropped)


def _present(paths) -> "list[str]":
    """The paths the host has: a leading '-' (optional) is dropped, and so is a missing
    optional path; a missing required one stays (the mounts step names it)."""
    out = []
    for p in paths:
        optional = p.startswith("-")
        p = p[1:] if optional else p
        if optional and not os.path.lexists(p):
            continue
        if p not in out:
            out.append(p)
    return out


def _union(old, new) -> tuple:
    return tuple(dict.fromkeys([*old, *new]))


def expand(spec):
    """(spec', Expansion | None): see the module docstring.  SpecError when the spec
    cannot honour a setting (a joined mount namespace, a fresh /proc it cannot mount)."""
    fs = spec.filesystem
    if fs is None or fs == type(fs)():
        return spec, None
    from .spec import Mount, Namespaces
    ro: "list[str]" = []
    masked: "list[str]" = []
    mounts: "list[Mount]" = []
    denied: "list[str]" = []
    dropped: "list[str]" = []
    readonly_root = spec.readonly_root
    if fs.protect_system in (True, "full"):
        ro += ["/usr", "-/boot", "-/efi"] + (["/etc"] if fs.protect_system == "full" else [])
    elif fs.protect_system == "strict":
        readonly_root = True
    home = ["-" + h for h in _HOME]
    if fs.protect_home is True:
        masked += home
    elif fs.protect_home == "read-only":
        ro += home
    elif fs.protect_home == "tmpfs":
        mounts += [Mount("tmpfs", h, None, ("nosuid", "nodev"), None, "0755")
                   for h in _present(home)]
    if fs.private_tmp:
        mounts += [Mount("tmpfs", d, None, ("nosuid", "nodev"), None, "1777")
                   for d in ("/tmp", "/var/tmp")]
    if fs.private_devices:
        mounts.append(Mount("dev", "/dev", None, (), None, None))
        dropped += ["CAP_MKNOD", "CAP_SYS_RAWIO"]
        denied.append("@raw-io")
    if fs.protect_kernel_tunables:
        ro += ["-" + p for p in _TUNABLES]
    if fs.protect_kernel_modules:
        masked += ["-" + p for p in _MODULES]
        dropped.append("CAP_SYS_MODULE")
        denied.append("@module")
    if fs.protect_kernel_logs:
        # (a private /dev has no kmsg to hide)
        masked += ["-" + p for p in _KERNEL_LOGS if not (fs.private_devices and
                                                          p.startswith("/dev/"))]
        dropped.append("CAP_SYSLOG")
        denied.append("syslog")
    if fs.protect_control_groups:
        ro.append("-/sys/fs/cgroup")
    ro += fs.read_only_paths
    masked += fs.inaccessible_paths

    ns = spec.namespaces or Namespaces()
    if isinstance(ns.mount, str):
        raise SpecError("needs a mount namespace of its own; namespaces.mount joins one",
                        "filesystem")
    proc_data = None
    opts = ([f"hidepid={fs.protect_proc}"] if fs.protect_proc != "default" else []) + \
        (["subset=pid"] if fs.proc_subset == "pid" else [])
    if opts:
        if any(m.destination == "/proc" for m in spec.mounts):
            raise SpecError("protect_proc and proc_subset mount /proc themselves: drop the "
                            "spec's own /proc mount", "filesystem")
        if ns.user not in (False, None) and ns.pid is not True:
            # A new user namespace may mount a proc only for a pid namespace it owns.
            raise SpecError("protect_proc and proc_subset mount a fresh /proc, which in a "
                            "new user namespace needs a new pid namespace too "
                            "(namespaces.pid)", "filesystem")
        proc_data = ",".join(opts)
    # The spec's own mounts go on top of the presets' (a place they share is the
    # spec's), in the spec's order.
    theirs = {m.destination for m in spec.mounts}
    mine = [m for m in mounts if m.destination not in theirs]
    caps = spec.capabilities
    if dropped:
        caps = _drop(caps, dropped)
    spec2 = attrs.evolve(
        spec, namespaces=attrs.evolve(ns, mount=True), readonly_root=readonly_root,
        mounts=tuple(mine) + tuple(spec.mounts),
        masked_paths=_union(spec.masked_paths, _present(masked)), capabilities=caps)
    return spec2, Expansion(read_only=tuple(_present(ro)),
                            read_write=tuple(_present(fs.read_write_paths)),
                            proc_data=proc_data, denied=tuple(denied),
                            dropped=tuple(dropped))


def _drop(caps, names):
    """Capabilities without `names`: out of `keep` and `ambient` if the spec keeps a
    list, else added to `drop` (no `capabilities`: everything else unchanged)."""
    from .spec import Capabilities
    if caps is None:
        return Capabilities(drop=tuple(names))
    if caps.keep is not None:
        return attrs.evolve(caps, keep=tuple(c for c in caps.keep if c not in names),
                            ambient=None if caps.ambient is None else
                            tuple(c for c in caps.ambient if c not in names))
    return attrs.evolve(caps, drop=_union(caps.drop or (), names),
                        ambient=None if caps.ambient is None else
                        tuple(c for c in caps.ambient if c not in names))


def describe(x: "Expansion | None") -> "list[str]":
    """What the expansion adds beyond spec fields, a line each (for --dry-run)."""
    if not x:
        return []
    out = []
    if x.read_only:
        out.append("read-only " + " ".join(x.read_only))
    if x.read_write:
        out.append("writable " + " ".join(x.read_write))
    if x.proc_data:
        out.append(f"a fresh /proc ({x.proc_data})")
    if x.dropped:
        out.append("capabilities dropped " + " ".join(x.dropped))
    if x.denied:
        out.append("syscalls denied (EPERM) " + " ".join(x.denied))
    return out
