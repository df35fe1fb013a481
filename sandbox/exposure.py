"""Exposure score: how much of the host a target could reach, 0.0 (none) to 10.0.

As `systemd-analyze security` scores a unit: a list of weighted checks, each with an
exposure between 0 (confined) and 1 (fully exposed) and a one-line explanation; the
score is 10 x the weighted mean rounded up to a tenth, and a band names it (systemd
252's bands).  Weights are systemd's for the settings it has (its weight / 100), so the
two scores are comparable (tests/privileged/test_exposure_systemd.py; where they differ
and why: docs/library.md).  The same checks run on a spec
(offline: what the shim would do) and on a live process (what /proc says, through
sandbox.inspect()).  A score is a guide for review and CI gating, not a proof.

    report = exposure.score(spec)          # a Spec: offline
    report = exposure.score(pid)           # a live process (or a Process, or inspect()'s dict)
    report.score, report.band, report.checks
"""

from __future__ import annotations

import math
import os

import attrs

__all__ = ["Check", "Report", "score", "of_spec", "of_process", "band", "BANDS",
           "DANGEROUS_CAPS"]

# (lowest score of the band, name), highest first: systemd 252's badness_table
# (src/analyze/analyze-security.c), whose score is rounded up to a tenth as ours is.
BANDS = ((10.0, "DANGEROUS"), (9.0, "UNSAFE"), (7.5, "EXPOSED"), (5.0, "MEDIUM"),
         (1.0, "OK"), (0.1, "SAFE"), (0.0, "PERFECT"))

# Weights are systemd-analyze security's (its weight / 100: User= 2000 is 20 here),
# split or summed where one of our checks stands for several of its settings; checks
# of our own (marked "ours") have weights of the same scale.

# Capability groups and why each reaches past the service (capabilities(7)): each part
# is (weight, caps) as one of systemd's CapabilityBoundingSet=~ checks, exposed when
# any of its caps is held.  caps_other weighs each cap of its own (OTHER_CAP_WEIGHTS).
CAP_GROUPS = (
    ("cap_sys_admin", ((15, ("CAP_SYS_ADMIN",)),),
     "mount, namespaces, bpf, quotas, ... (\"the new root\")"),
    ("caps_kernel", ((15, ("CAP_SYS_PTRACE",)), (10, ("CAP_SYS_MODULE",)),
                     (10, ("CAP_SYS_RAWIO",)), (10, ("CAP_SYS_TIME",)),
                     (5, ("CAP_AUDIT_CONTROL",)), (5, ("CAP_SYSLOG",)), (5, ("CAP_MKNOD",)),
                     (1, ("CAP_SYS_BOOT",)), (1, ("CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE")),
                     (0.75, ("CAP_LINUX_IMMUTABLE",)), (0.25, ("CAP_BPF",)),
                     (0.25, ("CAP_PERFMON",)), (0.25, ("CAP_CHECKPOINT_RESTORE",))),
     "load modules, raw I/O, ptrace, reboot, BPF, device nodes: reach the kernel"),
    ("caps_identity", ((15, ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")),
                       (3, ("CAP_SETFCAP",))),
     "become any user or group, grant capabilities"),
    ("caps_files", ((10, ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER")),
                    (7, ("CAP_CHOWN", "CAP_FSETID"))),
     "read/write/chown any file regardless of permissions"),
    ("caps_net", ((10, ("CAP_NET_ADMIN",)), (5, ("CAP_NET_RAW",))),
     "reconfigure the network, sniff and forge packets"),
    ("caps_other", None,
     "other capabilities (kill, nice, IPC, resources, ...)"),
)
OTHER_CAP_WEIGHTS = {"CAP_KILL": 5, "CAP_SYS_NICE": 2.5, "CAP_SYS_RESOURCE": 2.5,
                     "CAP_IPC_LOCK": 0.5, "CAP_SYS_CHROOT": 0.5, "CAP_IPC_OWNER": 0.5,
                     "CAP_NET_BROADCAST": 0.25, "CAP_LEASE": 0.25,
                     "CAP_SYS_TTY_CONFIG": 0.25, "CAP_SYS_PACCT": 0.25}
OTHER_CAP_DEFAULT = 0.25
DANGEROUS_CAPS = tuple(c for _n, parts, _d in CAP_GROUPS if parts
                       for _w, caps_ in parts for c in caps_)
# Harmless enough to hold without counting as exposure.
BENIGN_CAPS = ("CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE", "CAP_WAKE_ALARM",
               "CAP_BLOCK_SUSPEND")

# systemd's SystemCallFilter=~@GROUP checks (ours: profiles/syscalls.toml's groups).
SYSCALL_GROUPS = (("swap", 10), ("clock", 10), ("debug", 10), ("mount", 10),
                  ("module", 10), ("raw-io", 10), ("reboot", 10), ("privileged", 7),
                  ("resources", 7), ("obsolete", 2.5), ("cpu-emulation", 2.5))

# systemd's RestrictNamespaces=~KIND checks, with the clone flags.
NS_KINDS = (("user", 0x10000000, 15), ("mnt", 0x00020000, 5), ("ipc", 0x08000000, 5),
            ("pid", 0x20000000, 5), ("cgroup", 0x02000000, 5), ("net", 0x40000000, 5),
            ("uts", 0x04000000, 1))

# systemd's RestrictAddressFamilies=~ checks.
AF_CHECKS = (("af_inet", 15, ("AF_INET", "AF_INET6"), "Internet sockets"),
             ("af_packet", 10, ("AF_PACKET",), "packet sockets (sniff, forge frames)"),
             ("af_other", 12.5, None, "exotic sockets (each family its own kernel code)"),
             ("af_netlink", 2, ("AF_NETLINK",), "netlink sockets (the kernel's "
                                                "configuration interfaces)"),
             ("af_unix", 0.25, ("AF_UNIX", "AF_LOCAL"), "local sockets"))

NS_CHECKS = (  # (spec field, /proc name, weight, what the host's namespace exposes)
    # systemd: PrivateNetwork= 25, PrivateMounts= 10, PrivateUsers= 10, RemoveIPC= 1,
    # ProtectHostname= 0.5; pid and cgroup are ours (systemd 252 has no such setting).
    ("net", "net", 25, "the host's network interfaces and abstract sockets"),
    ("mount", "mnt", 10, "the host's mount table and file systems"),
    ("user", "user", 10, "ids that are the host's ids"),
    ("pid", "pid", 5, "every host process (signals, /proc)"),
    ("ipc", "ipc", 1, "the host's SysV IPC and POSIX message queues"),
    ("cgroup", "cgroup", 1, "the host's cgroup tree paths"),
    ("uts", "uts", 0.5, "the host's hostname (may change it with CAP_SYS_ADMIN)"),
)


@attrs.frozen
class Check:
    name: str
    weight: float
    exposure: float      # 0.0 confined .. 1.0 fully exposed
    explanation: str     # one line

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "exposure": self.exposure,
                "explanation": self.explanation}


@attrs.frozen
class Report:
    subject: str
    checks: tuple

    @property
    def score(self) -> float:
        total = sum(c.weight for c in self.checks)
        if not total:
            return 0.0
        # As systemd: rounded up to a tenth (a hair of float error aside).
        raw = 100.0 * sum(c.weight * c.exposure for c in self.checks) / total
        return math.ceil(raw - 1e-6) / 10.0

    @property
    def band(self) -> str:
        return band(self.score)

    def to_dict(self) -> dict:
        return {"subject": self.subject, "score": self.score, "band": self.band,
                "checks": [c.to_dict() for c in self.checks]}

    def format(self) -> str:
        lines = []
        for c in sorted(self.checks, key=lambda c: -c.weight * c.exposure):
            mark = "·" if c.weight == 0 else "✓" if c.exposure == 0 else "✗"   # ·: counted
            lines.append(f"{mark} {c.name:<18} {c.weight * c.exposure:5.1f}/{c.weight:<3g} "
                         f"{c.explanation}")
        lines.append(f"→ overall exposure of {self.subject}: {self.score:.1f} {self.band}")
        return "\n".join(lines)


def band(value: float) -> str:
    for lo, name in BANDS:
        if value >= lo:
            return name
    return BANDS[-1][1]


def score(target) -> Report:
    """A Report for a Spec (offline), a pid, a sandbox.Process, or inspect()'s dict."""
    from .spec import Spec
    if isinstance(target, Spec):
        return of_spec(target)
    if isinstance(target, dict):
        return of_process(target)
    pid = getattr(target, "target_pid", None) or getattr(target, "pid", target)
    return of_process(pid)


# --------------------------------------------------------------------------- facts
# Both entry points reduce their input to the same facts; the checks read only these.

@attrs.frozen
class _Syscalls:
    """What the seccomp filters let through, as far as it is known.  `known` False: a
    filter is loaded but /proc does not show what it denies (a live process)."""
    known: bool
    groups: dict = {}             # SYSCALL_GROUPS name -> (allowed, of how many)
    families: "frozenset | None" = None     # address families socket() may make
    ns_denied: frozenset = frozenset()      # NS_KINDS no clone/unshare may make
    suid_denied: bool = False     # chmod/mknod/open with S_ISUID or S_ISGID refused
    keyring_denied: bool = False  # keyctl, add_key, request_key refused
    personality_denied: bool = False  # personality() to another persona refused
    wx_denied: bool = False       # mmap(PROT_WRITE | PROT_EXEC) refused
    realtime_denied: bool = False     # sched_setscheduler(SCHED_FIFO) refused


@attrs.frozen
class _Facts:
    root: bool               # uid 0 in any of real/effective/saved (and not noroot)
    root_group: bool         # gid 0 or group 0
    uid_text: str
    held: frozenset          # caps the process holds or gets back at exec (prm | amb)
    bounding: frozenset
    no_new_privs: bool
    seccomp: bool            # a filter is loaded
    seccomp_arch: "bool | None"   # the filter kills other ABIs (None: cannot tell)
    private_ns: dict         # spec field name -> bool (not the host's)
    rw_binds: tuple          # writable host paths bound in (mount namespace)
    memory_limit: bool
    pids_limit: bool
    cgroup: "str | None"
    caps_ns_only: bool = False   # in its own user namespace: caps reach only its namespaces
    shared_uid: bool = False     # the host sees it as nobody, whom every such service is
    dynamic_uid: bool = False    # a dynamic user: an id no other sandbox runs with
    syscalls: "_Syscalls | None" = None   # None: no filter at all
    fs: tuple = ()           # the filesystem checks, already judged (_fs_spec, _fs_live)
    umask: "int | None" = None   # None: inherited from whoever starts it
    rtprio: "int | None" = None  # RLIMIT_RTPRIO's hard limit; None: inherited
    multi_arch: bool = False     # the filter lets several ABIs through
    landlock: str = "none"       # its Landlock domain, counted: _landlock(); or
                                 # "unknown"/"yes" for a live process


# The uid and name systemd-analyze's UserOrDynamicUser check calls shared ("nobody"):
# whoever runs as it can read, ptrace and signal every other service running as it.
SHARED_UID = 65534
SHARED_USER = "nobody"


def _shared(uid) -> bool:
    if uid == SHARED_UID or uid == SHARED_USER:
        return True
    if isinstance(uid, int):
        import pwd
        try:
            return pwd.getpwuid(uid).pw_name == SHARED_USER
        except KeyError:
            pass
    return False


def _all_caps() -> frozenset:
    from . import caps
    return frozenset(caps.CAP_NAMES[:caps.last_cap() + 1])


def _spec_caps(spec, root: bool, securebits: int) -> "tuple[frozenset, frozenset, int]":
    """(held, bounding, permitted mask) as capabilities(7) gives them at execve: caps.prepare's own
    arithmetic, for a shim holding every capability, so the score of a spec does not
    depend on who scores it."""
    from . import caps
    p = caps.prepare(spec.capabilities, root, securebits,
                     shim_holds=(1 << (caps.last_cap() + 1)) - 1)
    return frozenset(caps.names(p.permitted)), frozenset(caps.names(p.bounding)), \
        p.permitted


def _spec_facts(spec) -> _Facts:
    from . import caps, filesystem
    # What the `filesystem` settings stand for: mounts, masks, a read-only root and
    # capability drops (the Expansion holds the rest: read-only paths, /proc's options,
    # syscalls denied).
    spec, x = filesystem.expand(spec)
    bits = 0
    for name in spec.securebits:
        bits |= caps.SECUREBITS[name]
    uid: "int | str | None"
    gid: "int | str | None"
    groups: tuple
    if spec.user is None:
        uid, gid, groups = None, None, ()
        # No user: the target keeps the caller's identity -- root when an init spawns it.
        root, uid_text = True, "the caller's uid (root when an init spawns it)"
    elif spec.user.dynamic:
        uid, gid, groups = None, None, ()
        root, uid_text = False, "a dynamic uid of its own"
    else:
        uid = spec.user.uid
        if isinstance(uid, str):
            try:
                from .creds import resolve_uid
                uid = resolve_uid(uid)[0]
            except Exception:
                uid = 0 if uid == "root" else uid   # unknown here: judged by its name
        root = uid == 0
        uid_text = f"uid {uid}"
        gid = spec.user.gid
        groups = spec.user.groups
    root = root and not bits & caps.SECBIT_NOROOT
    root_group = (spec.user is None) or gid in (0, "root") or \
        any(g in (0, "root") for g in groups) or \
        (gid is None and uid == 0)
    ns = spec.namespaces
    private = {f: ns is not None and (getattr(ns, f) is True or
                                      isinstance(getattr(ns, f), dict))
               for f, *_ in NS_CHECKS}
    # Caps are computed for the uid inside; "root" is judged by the uid outside.
    held, bnd, permitted = _spec_caps(spec, root, bits)
    dynamic = spec.user is not None and spec.user.dynamic
    outside_uid = uid if not private["user"] else None
    if dynamic:
        pass          # the host sees its dynamic id, whether or not in a user namespace
    elif private["user"] and isinstance(ns.user, dict):
        inside = 0 if spec.user is None else uid
        outside = _map_id(ns.user.get("uid_map", ()), inside) \
            if isinstance(inside, int) else None
        root = outside == 0
        outside_uid = outside
        uid_text = f"uid {inside} inside, {outside} outside its user namespace"
    rw = tuple(m.source for m in spec.mounts
               if m.type == "bind" and "ro" not in m.options) if private["mount"] else ()
    if private["mount"] and x is not None:
        rw += x.read_write
    arch = None
    if spec.seccomp is not None:
        arch = len(spec.seccomp.architectures) == 1 or \
            list(spec.seccomp.architectures) == ["native"]
    cg = spec.cgroup
    umask = int(spec.user.umask, 8) if spec.user is not None and spec.user.umask else None
    rt = spec.rlimits.get("RTPRIO")
    rtprio = None if rt is None else (rt.hard if isinstance(rt.hard, int) else 1 << 30)
    return _Facts(landlock=_landlock(spec.landlock),
                  root=root, root_group=bool(root_group), uid_text=uid_text,
                  held=frozenset(held), bounding=frozenset(bnd),
                  no_new_privs=spec.no_new_privs, seccomp=spec.seccomp is not None,
                  seccomp_arch=arch, private_ns=private, rw_binds=rw,
                  memory_limit=cg is not None and cg.memory_max is not None,
                  pids_limit=cg is not None and cg.pids_max is not None,
                  cgroup=cg.full_path if cg is not None else None,
                  caps_ns_only=private["user"],
                  shared_uid=not dynamic and _shared(outside_uid), dynamic_uid=dynamic,
                  syscalls=_spec_syscalls(spec, x, permitted, dynamic),
                  fs=_fs_spec(spec, x, private["mount"]), umask=umask, rtprio=rtprio,
                  multi_arch=spec.seccomp is not None and not arch)


def _map_id(maps, inside: int) -> "int | None":
    from .procfs import to_outside
    return to_outside([(m.inside, m.outside, m.count) for m in maps], inside)


def _cgroup_limits(info: dict) -> "tuple[bool, bool, str | None]":
    """(memory limited, pids limited, a path) from the live process's own cgroups."""
    from . import cgroups
    mem = pids = False
    shown = None
    try:
        hs = cgroups.hierarchies()
    except OSError:
        return False, False, None
    paths = {}
    for line in info.get("cgroup") or []:
        _hid, ctrls, path = line.split(":", 2)
        paths[ctrls] = path
    for h in hs:
        if h.version == 2:
            path = paths.get("")
            files = {"memory.max": "mem", "pids.max": "pids"}
        else:
            path = next((p for c, p in paths.items()
                         if c and set(c.split(",")) & set(h.controllers)), None)
            files = {"memory.limit_in_bytes": "mem", "pids.max": "pids"}
        if path is None:
            continue
        if path != "/":
            shown = shown or path
        for fname, kind in files.items():
            try:
                with open(f"{h.mountpoint}{path}/{fname}") as f:
                    v = f.read().strip()
            except OSError:
                continue
            # v1 memory "unlimited" is a huge page-rounded number, not "max".
            limited = v != "max" and v.isdigit() and int(v) < 1 << 62
            if kind == "mem":
                mem = mem or limited
            else:
                pids = pids or limited
    return mem, pids, shown


def _host_ns(entry: dict) -> bool:
    """The host's namespace: pid 1's; where pid 1's cannot be read, the inspecting
    process's own (an init inspecting the services it spawned)."""
    host = entry.get("host")
    return entry.get("caller", False) if host is None else host


def _live_facts(info: dict, read_proc: bool = False) -> _Facts:
    uids = info["uids"]
    root = 0 in (uids["real"], uids["effective"], uids["saved"])
    gids = info["gids"]
    root_group = 0 in (gids["real"], gids["effective"], gids["saved"]) or \
        0 in info.get("groups", [])
    c = info["capabilities"]
    held = frozenset(c["permitted"]) | frozenset(c["ambient"])
    if root and not info["no_new_privs"]:
        held |= frozenset(c["bounding"])   # root regains the bounding set at any execve
    ns = info.get("namespaces", {})
    private = {f: proc in ns and not _host_ns(ns[proc]) for f, proc, *_ in NS_CHECKS}
    mem, pids, cg = _cgroup_limits(info)
    filtered = info.get("seccomp") == "filter" and info.get("seccomp_filters", 0) > 0
    ll = info.get("landlock", "unknown")
    return _Facts(landlock="unknown" if ll in ("unknown", None) else str(ll),
                  root=root, root_group=root_group, uid_text=f"uid {uids['effective']}",
                  held=held, bounding=frozenset(c["bounding"]),
                  no_new_privs=bool(info["no_new_privs"]),
                  seccomp=filtered or info.get("seccomp") == "strict",
                  seccomp_arch=True if info.get("seccomp") == "strict" else None,
                  private_ns=private, rw_binds=(), memory_limit=mem, pids_limit=pids,
                  cgroup=cg, caps_ns_only=private["user"],
                  shared_uid=_shared(uids["effective"]),
                  dynamic_uid=info.get("dynamic_user") is not None,
                  syscalls=_live_syscalls(info),
                  fs=_fs_live(info.get("pid") if read_proc else None),
                  umask=int(info["umask"], 8) if info.get("umask") else None,
                  rtprio=_rtprio(info))


def _rtprio(info: dict) -> "int | None":
    rt = (info.get("rlimits") or {}).get("RTPRIO")
    if not rt:
        return None
    hard = rt[1]
    return hard if isinstance(hard, int) else 1 << 30


# ------------------------------------------------------------------ syscall facts

_RET_ACTION_FULL = 0xFFFF0000
_RET_ALLOWS = (0x7FFF0000, 0x7FFC0000)      # SECCOMP_RET_ALLOW, SECCOMP_RET_LOG
_NAMES: dict = {}


def _syscall_numbers(arch: str) -> dict:
    """{name: number} of every syscall libseccomp names on this ABI."""
    hit = _NAMES.get(arch)
    if hit is None:
        import pyseccomp

        from . import seccomp
        token = seccomp.ARCHES[arch]
        hit = {}
        for nr in range(seccomp.highest_known(pyseccomp, arch) + 1):
            try:
                hit[pyseccomp.resolve_syscall(token, nr).decode()] = nr
            except ValueError:
                continue
        _NAMES[arch] = hit
    return hit


class _Kept:
    """caps.prepare()'s result as seccomp.prepare reads it: the permitted mask."""

    def __init__(self, permitted: int):
        self.permitted = permitted


def _spec_syscalls(spec, x, permitted: int, dynamic: bool) -> "_Syscalls | None":
    """Offline: the filters wrapperd would load for the spec's target -- the spec's own,
    the restrictions (address_families, what `filesystem` denies) and a dynamic user's
    (restrict_suid_sgid) -- compiled, and run on each syscall of this ABI with zero
    arguments (or the ones named) as the kernel would."""
    from . import seccomp
    arches = spec.seccomp.architectures if spec.seccomp is not None else ("native",)
    programs = []
    if spec.seccomp is not None:
        programs.append(seccomp.prepare(spec.seccomp, _Kept(permitted)).program)
    denied = x.denied if x is not None else ()
    if spec.address_families is not None or denied:
        programs.append(seccomp.prepare_restrictions(spec.address_families, denied,
                                                     arches).program)
    if dynamic:
        programs.append(seccomp.restrict_suid_sgid(arches))
    if not programs:
        return None
    arch = seccomp.native_arch()
    numbers = _syscall_numbers(arch)

    def allows(name: str, *args: int) -> bool:
        nr = numbers.get(name)
        return nr is not None and all(
            seccomp.evaluate(p, nr, arch, args) & _RET_ACTION_FULL in _RET_ALLOWS
            for p in programs)

    groups = {}
    for g, _w in SYSCALL_GROUPS:
        members = [s for s in seccomp.expand("@" + g) if s in numbers]
        groups[g] = (sum(allows(s) for s in members), len(members))
    fams = frozenset(n for n, v in seccomp.ADDRESS_FAMILIES.items()
                     if allows("socket", v, 1, 0) or allows("socket", v, 2, 0) or
                     allows("socket", v, 3, 0))
    ns_denied = frozenset(k for k, flag, _w in NS_KINDS
                          if not allows("unshare", flag) and not allows("clone", flag)
                          and not allows("clone3"))
    return _Syscalls(
        known=True, groups=groups, families=fams, ns_denied=ns_denied,
        suid_denied=not allows("chmod", 0, 0o4000) and not allows("fchmodat", 0, 0, 0o2000),
        keyring_denied=not any(allows(s) for s in ("keyctl", "add_key", "request_key")),
        personality_denied=not allows("personality", 0x0400000),   # READ_IMPLIES_EXEC
        wx_denied=not allows("mmap", 0, 4096, 0x7, 0x22),
        realtime_denied=not allows("sched_setscheduler", 0, 1))


def _live_syscalls(info: dict) -> "_Syscalls | None":
    """Live: /proc shows whether a filter is loaded, never what it denies."""
    mode = info.get("seccomp")
    if mode == "strict":        # read, write, exit, sigreturn: nothing else
        return _Syscalls(known=True, groups={g: (0, 1) for g, _w in SYSCALL_GROUPS},
                         families=frozenset(), ns_denied=frozenset(k for k, *_ in NS_KINDS),
                         suid_denied=True, keyring_denied=True, personality_denied=True,
                         wx_denied=True, realtime_denied=True)
    if mode == "filter" and info.get("seccomp_filters", 0) > 0:
        return _Syscalls(known=False)
    return None


# --------------------------------------------------------------- filesystem facts
# systemd's filesystem settings, judged by what they do: offline from what
# sandbox.filesystem.expand() makes of the spec (its mounts, masks, read-only root and
# paths, /proc's options), live from the process's mountinfo.  Each is
# (name, weight, exposure, explanation); weights are systemd's (PrivateDevices= and
# DeviceAllow= together for private_devices).

FS_WEIGHTS = {"protect_system": 10, "protect_home": 10, "private_tmp": 10,
              "private_devices": 20, "protect_kernel_tunables": 10,
              "protect_kernel_modules": 10, "protect_kernel_logs": 10,
              "protect_control_groups": 10, "protect_proc": 10, "proc_subset": 0.1}
_HOMES = ("/home", "/root")
_MODULE_DIRS = ("/lib/modules", "/usr/lib/modules")
_HIDEPID = {"invisible": 0.0, "2": 0.0, "ptraceable": 0.0, "4": 0.0, "noaccess": 1 / 3,
            "1": 1 / 3}


def _fs_checks(judged: dict) -> tuple:
    return tuple((name, FS_WEIGHTS[name], round(e, 2), text)
                 for name, (e, text) in judged.items())


def _fs_spec(spec, x, own_mnt: bool) -> tuple:
    if not own_mnt:
        host = "host file system (no mount namespace of its own)"
        return _fs_checks({
            "protect_system": (1.0, f"{host}: /usr, /etc, /boot as the host has them"),
            "protect_home": (1.0, f"{host}: /home, /root as the host has them"),
            "private_tmp": (1.0, "the host's /tmp and /var/tmp: other services' files"),
            "private_devices": (1.0, "the host's /dev: hardware devices, as their modes "
                                     "allow"),
            "protect_kernel_tunables": (1.0, "the host's /proc/sys and /sys"),
            "protect_kernel_modules": (1.0, "the host's /lib/modules"),
            "protect_kernel_logs": (1.0, "the host's /proc/kmsg and /dev/kmsg"),
            "protect_control_groups": (1.0, "the host's /sys/fs/cgroup, as writable as "
                                            "it is"),
            "protect_proc": (1.0, "the host's /proc: every process's entries"),
            "proc_subset": (1.0, "the host's /proc: kernel files too")})
    ro = set(spec.readonly_paths) | set(x.read_only if x else ())
    masked = {p.lstrip("-") for p in spec.masked_paths}
    mounts = {m.destination: m for m in spec.mounts}
    proc = (x.proc_data if x else None) or ""
    opts = dict(o.partition("=")[::2] for o in proc.split(",") if o)
    subset_pid = opts.get("subset") == "pid"
    out = {}
    if spec.readonly_root:
        out["protect_system"] = (0.0, "the whole file system read-only (but its own "
                                      "directories and read_write_paths)")
    elif {"/usr", "/etc"} <= ro:
        out["protect_system"] = (0.3, "/usr, /boot and /etc read-only, the rest writable "
                                      "as permissions allow")
    elif "/usr" in ro:
        out["protect_system"] = (0.5, "/usr and /boot read-only, /etc and the rest "
                                      "writable as permissions allow")
    else:
        out["protect_system"] = (1.0, "the host's file system, writable as permissions "
                                      "allow")
    worst = 0.0
    for h in _HOMES:
        if h in masked:
            e = 0.0
        elif h in mounts and mounts[h].type == "tmpfs":
            e = 0.1
        elif h in ro or spec.readonly_root:
            e = 0.5
        elif not os.path.lexists(h):
            e = 0.0
        else:
            e = 1.0
        worst = max(worst, e)
    out["protect_home"] = (worst, {0.0: "no /home, /root or /run/user",
                                   0.1: "empty private /home and /root",
                                   0.5: "/home and /root read-only",
                                   1.0: "/home and /root as the host has them"}[worst])
    tmp = [d for d in ("/tmp", "/var/tmp") if d in mounts and mounts[d].type != "bind"]
    out["private_tmp"] = (1.0 - len(tmp) / 2,
                          "a private /tmp and /var/tmp" if len(tmp) == 2 else
                          f"a private {tmp[0]}, the host's other" if tmp else
                          "the host's /tmp and /var/tmp: other services' files")
    dev = mounts.get("/dev")
    if dev is not None and dev.type in ("dev", "tmpfs"):
        out["private_devices"] = (0.0, "a minimal /dev: null, zero, full, random, "
                                       "urandom, tty, its own pts and shm")
    else:
        out["private_devices"] = (1.0, "the host's /dev: hardware devices, as their modes "
                                       "allow (no device ACL)")
    sys_ok = "/proc/sys" in ro or "/proc/sys" in masked or subset_pid
    out["protect_kernel_tunables"] = (
        (0.0, "/proc/sys, /sys and the other kernel tunables read-only") if sys_ok and
        ("/sys" in ro or "/sys" in masked) else
        (0.5, "/proc/sys out of reach, /sys writable as permissions allow") if sys_ok else
        (1.0, "/proc/sys and /sys writable as permissions allow"))
    mods = [p for p in _MODULE_DIRS if os.path.lexists(p)]
    out["protect_kernel_modules"] = (
        (0.0, "no /lib/modules") if all(p in masked for p in mods) else
        (1.0, "/lib/modules readable"))
    kmsg = ("/proc/kmsg" in masked or subset_pid) and \
        ("/dev/kmsg" in masked or out["private_devices"][0] == 0.0)
    out["protect_kernel_logs"] = ((0.0, "no /proc/kmsg or /dev/kmsg") if kmsg else
                                  (1.0, "/proc/kmsg and /dev/kmsg as their modes allow"))
    out["protect_control_groups"] = (
        (0.0, "/sys/fs/cgroup read-only") if "/sys/fs/cgroup" in ro or
        "/sys/fs/cgroup" in masked else
        (1.0, "/sys/fs/cgroup writable as permissions allow"))
    hp = _HIDEPID.get(opts.get("hidepid", ""), 1.0)
    out["protect_proc"] = (hp, f"/proc hidepid={opts['hidepid']}" if "hidepid" in opts
                           else "/proc shows every process's entries")
    out["proc_subset"] = ((0.0, "/proc shows processes only (subset=pid)") if subset_pid
                          else (1.0, "/proc shows kernel files too"))
    return _fs_checks(out)


def _covering(mounts, path: str):
    """The mount path is on (the last, topmost, of those at the longest prefix)."""
    best = None
    for m in mounts:
        mp = m.mount_point
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = m
    return best


def _read_only(m) -> bool:
    return m is not None and "ro" in m.options.split(",")


def _fs_live(pid: "int | None") -> tuple:
    """Live: the filesystem checks from /proc/PID/mountinfo (and /proc/1's, for what
    the host's /tmp and / are); all "unknown" (0.5) where it cannot be read."""
    from . import procfs
    try:
        if pid is None:
            raise OSError("no pid")
        mounts = procfs.mountinfo(pid)
    except (OSError, ValueError):
        why = "cannot be read from /proc (mountinfo)"
        return _fs_checks({n: (0.5, why) for n in FS_WEIGHTS})
    try:
        host = procfs.mountinfo(1)
    except (OSError, ValueError):
        host = procfs.mountinfo("self")
    root = f"/proc/{pid}/root"
    out = {}
    if _read_only(_covering(mounts, "/")):
        out["protect_system"] = (0.0, "/ read-only")
    elif _read_only(_covering(mounts, "/usr")) and _read_only(_covering(mounts, "/etc")):
        out["protect_system"] = (0.3, "/usr and /etc read-only, / writable")
    elif _read_only(_covering(mounts, "/usr")):
        out["protect_system"] = (0.5, "/usr read-only, /etc and / writable")
    else:
        out["protect_system"] = (1.0, "/usr, /etc and / writable as permissions allow")
    worst = 0.0
    for h in _HOMES:
        m = _covering(mounts, h)
        if not os.path.lexists(root + h):
            e = 0.0
        elif m is not None and m.mount_point == h and m.fstype == "tmpfs":
            e = 0.0 if _read_only(m) else 0.1
        else:
            e = 0.5 if _read_only(m) else 1.0
        worst = max(worst, e)
    out["protect_home"] = (worst, {0.0: "no /home or /root (empty, read-only)",
                                   0.1: "an empty private /home or /root",
                                   0.5: "/home and /root read-only",
                                   1.0: "/home and /root writable as permissions "
                                        "allow"}[worst])
    private = [d for d in ("/tmp", "/var/tmp")
               if (_covering(mounts, d) or ()) and _covering(host, d) and
               _covering(mounts, d).device != _covering(host, d).device]
    out["private_tmp"] = (1.0 - len(private) / 2,
                          "a private /tmp and /var/tmp" if len(private) == 2 else
                          "the host's /tmp or /var/tmp")
    dev = _covering(mounts, "/dev")
    out["private_devices"] = ((0.0, "a /dev of its own (tmpfs)") if dev is not None and
                              dev.fstype == "tmpfs" else
                              (1.0, "the host's /dev (devtmpfs): hardware devices"))
    proc = next((m for m in reversed(mounts) if m.mount_point == "/proc"), None)
    popts = dict(o.partition("=")[::2] for o in (proc.super_options if proc else "")
                 .split(",") if o)
    subset_pid = popts.get("subset") == "pid"
    sys_ok = subset_pid or _read_only(_covering(mounts, "/proc/sys"))
    out["protect_kernel_tunables"] = (
        (0.0, "/proc/sys and /sys read-only") if sys_ok and
        _read_only(_covering(mounts, "/sys")) else
        (0.5, "/proc/sys read-only, /sys writable as permissions allow") if sys_ok else
        (1.0, "/proc/sys writable as permissions allow"))
    mods = [p for p in _MODULE_DIRS if os.path.lexists(root + p)]
    hidden = all((m := _covering(mounts, p)) is not None and m.mount_point == p
                 for p in mods)
    out["protect_kernel_modules"] = ((0.0, "no /lib/modules") if hidden else
                                     (1.0, "/lib/modules readable"))
    kmsg = [p for p in ("/proc/kmsg", "/dev/kmsg") if os.path.lexists(root + p) and
            not (p == "/proc/kmsg" and subset_pid) and
            not ((m := _covering(mounts, p)) is not None and m.mount_point == p)]
    out["protect_kernel_logs"] = ((1.0, f"{' and '.join(kmsg)} as their modes allow")
                                  if kmsg else (0.0, "no /proc/kmsg or /dev/kmsg"))
    cg = _covering(mounts, "/sys/fs/cgroup")
    out["protect_control_groups"] = ((0.0, "/sys/fs/cgroup read-only") if _read_only(cg)
                                     else (1.0, "/sys/fs/cgroup writable as permissions "
                                                "allow"))
    hp = popts.get("hidepid", "")
    out["protect_proc"] = (_HIDEPID.get(hp, 1.0), f"/proc hidepid={hp}" if hp else
                           "/proc shows every process's entries")
    out["proc_subset"] = ((0.0, "/proc shows processes only (subset=pid)") if subset_pid
                          else (1.0, "/proc shows kernel files too"))
    return _fs_checks(out)


# --------------------------------------------------------------------------- checks

def _cap_checks(f: _Facts) -> "list[Check]":
    from . import caps
    out = []
    for name, parts, why in CAP_GROUPS:
        if parts is None:
            others = [c for c in caps.CAP_NAMES[:caps.last_cap() + 1]
                      if c not in DANGEROUS_CAPS and c not in BENIGN_CAPS]
            weights = {c: OTHER_CAP_WEIGHTS.get(c, OTHER_CAP_DEFAULT) for c in others}
            weight = sum(weights.values())
            have = sorted(c for c in f.held if c in weights)
            e = sum(weights[c] for c in have) / weight
        else:
            weight = sum(w for w, _c in parts)
            have = sorted(c for _w, group in parts for c in group if c in f.held)
            e = sum(w for w, group in parts if set(group) & f.held) / weight
        if have:
            shown = ", ".join(have[:3]) + (f" and {len(have) - 3} more" if len(have) > 3
                                           else "")
            text = f"holds {shown}: {why}"
            if f.caps_ns_only:
                # Capabilities in a child user namespace act only on what that
                # namespace owns; what is left is kernel attack surface.
                e *= 0.25
                text = f"holds {shown}, over its own user namespace only"
        elif parts is None:
            text = "no other capabilities"
        else:
            group = [c for _w, g in parts for c in g]
            text = f"none of {', '.join(group)}" if len(group) <= 2 else \
                f"no {name.replace('caps_', '')} capabilities"
        out.append(Check(name, round(weight, 2), round(e, 2), text))
    return out


def _syscall_checks(f: _Facts) -> "list[Check]":
    s = f.syscalls
    out = []
    unknown = "cannot be read from /proc (a filter is loaded)"
    gw = sum(w for _g, w in SYSCALL_GROUPS)
    if s is None:
        out.append(Check("seccomp", gw, 1.0, "no seccomp filter: every syscall of the "
                                             "kernel is reachable"))
        out.append(Check("seccomp_arch", 10, 1.0, "no seccomp filter: other ABIs "
                                                  "(32-bit, x32) reachable too"))
    elif not s.known:
        out.append(Check("seccomp", gw, 0.5, "a seccomp filter is loaded; what it denies "
                                             "cannot be read from /proc"))
        out.append(Check("seccomp_arch", 10, 0.5, "architecture lock of the filter "
                                                  "cannot be read from /proc"))
    else:
        e = sum(w * s.groups[g][0] / max(1, s.groups[g][1]) for g, w in SYSCALL_GROUPS)
        open_ = [f"@{g} ({s.groups[g][0]}/{s.groups[g][1]})" for g, _w in SYSCALL_GROUPS
                 if s.groups[g][0]]
        out.append(Check("seccomp", gw, round(e / gw, 2),
                         "the filter lets through " + ", ".join(open_) if open_ else
                         "the filter denies @" + ", @".join(g for g, _w in
                                                           SYSCALL_GROUPS)))
        if f.multi_arch:
            out.append(Check("seccomp_arch", 10, 0.8, "the filter allows several ABIs: "
                                                      "32-bit entry points stay reachable"))
        else:
            out.append(Check("seccomp_arch", 10, 0.0, "the filter kills syscalls of any "
                                                      "other ABI"))
    # Namespace creation (systemd's RestrictNamespaces=): a user namespace makes every
    # other kind possible inside it; any other kind needs CAP_SYS_ADMIN, so where the
    # target lacks it the kernel refuses what no filter does (half exposed: nothing
    # but that one capability check stands in the way).
    nw = sum(w for _k, _f, w in NS_KINDS)
    admin = "CAP_SYS_ADMIN" in f.held and not f.caps_ns_only
    if s is not None and not s.known:
        out.append(Check("ns_create", nw, 0.5, f"namespaces it may make {unknown}"))
    else:
        denied = s.ns_denied if s is not None else frozenset()
        if "user" not in denied:
            e, text = 1.0, ("may make a user namespace, and in it every other kind"
                            if s is None or not denied else
                            "may make a user namespace (and in it " +
                            ", ".join(sorted(denied)) + " too)")
        else:
            left = [(k, w) for k, _f, w in NS_KINDS if k not in denied]
            e = sum(w * (1.0 if admin else 0.5) for _k, w in left) / nw
            text = ("no filter refuses " + ", ".join(k for k, _w in left) +
                    (" namespaces, and it holds CAP_SYS_ADMIN" if admin else
                     " namespaces; the kernel does, without CAP_SYS_ADMIN")
                    if left else "the filter refuses every new namespace")
        out.append(Check("ns_create", nw, round(e, 2), text))
    for name, w, known, text_yes, text_no in (
            ("restrict_suid_sgid", 10, s is not None and s.suid_denied,
             "making setuid/setgid files refused", "may make setuid/setgid files"),
            ("keyring", 10, s is not None and s.keyring_denied,
             "kernel keyrings refused (nothing shared through them)",
             "reaches the kernel keyrings it inherits and its uid's"),
            ("lock_personality", 1, s is not None and s.personality_denied,
             "personality changes refused", "may change its ABI personality"),
            ("memory_wx", 1, s is not None and s.wx_denied,
             "writable+executable mappings refused",
             "may map memory writable and executable")):
        if s is not None and not s.known:
            out.append(Check(name, w, 0.5, f"{text_no.split(' (')[0]}: {unknown}"))
        else:
            out.append(Check(name, w, 0.0 if known else 1.0,
                             text_yes if known else text_no))
    # Realtime scheduling (systemd's RestrictRealtime=): CAP_SYS_NICE, or a
    # RLIMIT_RTPRIO above 0 (an unset one is inherited: not restricted here).
    if "CAP_SYS_NICE" in f.held and not f.caps_ns_only:
        rt = (1.0, "holds CAP_SYS_NICE: may take realtime scheduling")
    elif s is not None and s.known and s.realtime_denied:
        rt = (0.0, "realtime scheduling refused by the filter")
    elif f.rtprio == 0:
        rt = (0.0, "RLIMIT_RTPRIO 0: no realtime scheduling")
    elif f.rtprio is None:
        rt = (1.0, "RLIMIT_RTPRIO inherited: realtime scheduling not restricted")
    else:
        rt = (1.0, f"RLIMIT_RTPRIO {f.rtprio}: may take realtime scheduling")
    out.append(Check("realtime", 5, *rt))
    # Socket families (systemd's RestrictAddressFamilies=): each family is kernel code
    # of its own, whatever network namespace the socket is made in.
    af_w: float
    for name, af_w, fams, what in AF_CHECKS:
        if s is None:
            out.append(Check(name, af_w, 1.0, f"may make {what}: no filter restricts "
                                           "socket families"))
            continue
        if not s.known:
            out.append(Check(name, af_w, 0.5, f"{what}: socket families the filter allows "
                                           "cannot be read from /proc"))
            continue
        assert s.families is not None
        named = {n for _n, _w, fs, _t in AF_CHECKS if fs for n in fs}
        have = sorted(s.families - named) if fams is None else \
            sorted(s.families & set(fams))
        if have:
            shown = ", ".join(have[:3]) + (f" and {len(have) - 3} more"
                                           if len(have) > 3 else "")
            out.append(Check(name, af_w, 1.0, f"may make {what}: {shown}"))
        else:
            out.append(Check(name, af_w, 0.0, f"no {what}"))
    return out


def _checks(f: _Facts) -> "list[Check]":
    out = []
    if f.root:
        out.append(Check("root", 12, 1.0, f"runs as root ({f.uid_text}): owns every "
                                          "root-owned file and setting"))
    else:
        out.append(Check("root", 12, 0.0, f"runs as {f.uid_text}, not root"))
    if f.root:
        # As systemd-analyze's UserOrDynamicUser: root is the most shared uid of all.
        out.append(Check("uid_shared", 8, 1.0, "runs as root: the uid of every "
                                              "privileged process on the host"))
    elif f.shared_uid:
        out.append(Check("uid_shared", 8, 1.0, f"runs as {f.uid_text}, {SHARED_USER}: "
                                              "shared with other services, which can read "
                                              "its environ and memory, ptrace and kill it"))
    elif f.dynamic_uid:
        out.append(Check("uid_shared", 8, 0.0, "a dynamic uid: no other service runs "
                                              "with it"))
    else:
        out.append(Check("uid_shared", 8, 0.0, f"runs as {f.uid_text}, not shared with "
                                              f"every other service as {SHARED_USER} is"))
    out.append(Check("root_group", 2, 1.0 if f.root_group else 0.0,
                     "gid or a supplementary group is 0 (root's files by group)"
                     if f.root_group else "no root group"))
    # systemd's UMask= badness: world-writable 10, world-readable 5, group-writable 2,
    # group-readable 1 (of 10).
    if f.umask is None:
        out.append(Check("umask", 1, 0.5, "umask inherited (0022 as a rule: files "
                                          "world-readable)"))
    else:
        for bit, e, what in ((0o002, 1.0, "world-writable"), (0o004, 0.5, "world-readable"),
                             (0o020, 0.2, "group-writable"), (0o040, 0.1, "group-readable")):
            if not f.umask & bit:
                out.append(Check("umask", 1, e, f"umask {f.umask:04o}: new files {what}"))
                break
        else:
            out.append(Check("umask", 1, 0.0, f"umask {f.umask:04o}: new files its own"))
    out += _cap_checks(f)
    if f.no_new_privs:
        out.append(Check("no_new_privs", 10, 0.0,
                         "no_new_privs: setuid binaries and file caps grant nothing"))
    else:
        dangerous = sorted(f.bounding & set(DANGEROUS_CAPS))
        out.append(Check("no_new_privs", 10, 1.0 if dangerous else 0.5,
                         "no no_new_privs: a setuid binary can regain "
                         + (f"{len(dangerous)} dangerous caps left in the bounding set"
                            if dangerous else "root's uid (bounding set is harmless)")))
    out += _syscall_checks(f)
    for field, _proc, weight, what in NS_CHECKS:
        if f.private_ns[field]:
            out.append(Check(f"ns_{field}", weight, 0.0, f"own {field} namespace"))
        else:
            out.append(Check(f"ns_{field}", weight, 1.0, f"host {field} namespace: "
                                                          f"sees {what}"))
    # systemd's IPAddressDeny=: what addresses it reaches.  Its own network namespace
    # has only its own loopback: no address of the host or beyond.
    if f.private_ns["net"]:
        out.append(Check("ip_reach", 10, 0.0, "own network namespace: only its own "
                                              "loopback"))
    else:
        out.append(Check("ip_reach", 10, 1.0, "the host's network: every address it "
                                              "routes to"))
    out += [Check(*c) for c in f.fs]
    dac = bool(f.held & {"CAP_DAC_OVERRIDE", "CAP_FOWNER"}) and not f.caps_ns_only
    if not f.private_ns["mount"]:
        if f.root or dac:
            out.append(Check("writable_paths", 10, 1.0, "host file systems, writable "
                                                        "everywhere (root or DAC override)"))
        else:
            out.append(Check("writable_paths", 10, 0.5, "host file systems: writable "
                                                        f"where {f.uid_text} may write "
                                                        "(/tmp, /dev/shm, its own files)"))
    elif f.rw_binds:
        out.append(Check("writable_paths", 10, 0.3, "writable host paths bound in: "
                                                    + ", ".join(f.rw_binds)))
    else:
        out.append(Check("writable_paths", 10, 0.0, "no writable host path bound in"))
    if f.memory_limit and f.pids_limit:
        out.append(Check("cgroup_limits", 15, 0.0, f"cgroup {f.cgroup}: memory and pids "
                                                   "limited"))
    elif f.memory_limit or f.pids_limit:
        missing = "pids" if f.memory_limit else "memory"
        out.append(Check("cgroup_limits", 15, 0.5, f"cgroup {f.cgroup}: no {missing} "
                                                   "limit"))
    else:
        where = f"cgroup {f.cgroup}" if f.cgroup else "no cgroup of its own"
        out.append(Check("cgroup_limits", 15, 1.0, f"{where}: no memory or pids limit "
                                                   "(a fork bomb or leak reaches the host)"))
    # Counted, not scored: systemd-analyze has no Landlock, and a weight here would move
    # every score off the comparison with it (docs/library.md).
    text = {"none": "no Landlock domain",
            "unknown": "Landlock: this kernel's /proc does not show a domain"}
    out.append(Check("landlock", 0, 0.0, text.get(f.landlock, f"Landlock: {f.landlock}")))
    return out


def _landlock(ll) -> str:
    """A spec's Landlock rules, counted: "none", or what is restricted and by how many
    rules."""
    if ll is None:
        return "none"
    parts = []
    if ll.fs is not None:
        parts.append(f"files: {len(ll.fs)} rule{'' if len(ll.fs) == 1 else 's'}")
    if ll.net is not None:
        parts.append(f"TCP: bind {len(ll.net.bind)} port(s), connect "
                     f"{len(ll.net.connect)} port(s)")
    if ll.scope:
        parts.append("scoped: " + ", ".join(ll.scope))
    return "; ".join(parts) or "none"


def of_spec(spec) -> Report:
    """Offline: what the shim would give a target under this spec (profile merged)."""
    from .spawning import resolve
    spec = resolve(spec)
    subject = spec.name or (spec.argv[0] if spec.argv else None) or \
        (f"profile {spec.profile}" if spec.profile else "spec")
    return Report(subject, tuple(_checks(_spec_facts(spec))))


def of_process(target, read_proc: "bool | None" = None) -> Report:
    """Live: what /proc says about a process (a pid, or inspect()'s dict).  The mount
    table (/proc/PID/mountinfo) is read for a pid, and for a dict only with
    read_proc=True (else the filesystem checks are "unknown")."""
    if isinstance(target, dict):
        info = target
    else:
        from .inspection import inspect
        info = inspect(target)
        read_proc = True if read_proc is None else read_proc
    subject = f"pid {info['pid']} ({info.get('name')})"
    return Report(subject, tuple(_checks(_live_facts(info, bool(read_proc)))))
