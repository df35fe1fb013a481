"""Exposure score: how much of the host a target could reach, 0.0 (none) to 10.0.

In the spirit of `systemd-analyze security`: a list of weighted checks, each with an
exposure between 0 (confined) and 1 (fully exposed) and a one-line explanation; the
score is 10 x the weighted mean, and a band names it.  The same checks run on a spec
(offline: what the shim would do) and on a live process (what /proc says, through
sandbox.inspect()).  A score is a guide for review and CI gating, not a proof.

    report = exposure.score(spec)          # a Spec: offline
    report = exposure.score(pid)           # a live process (or a Process, or inspect()'s dict)
    report.score, report.band, report.checks
"""

from __future__ import annotations

import attrs

__all__ = ["Check", "Report", "score", "of_spec", "of_process", "band", "BANDS",
           "DANGEROUS_CAPS"]

# (lowest score of the band, name), highest first -- systemd's names.
BANDS = ((9.9, "DANGEROUS"), (9.0, "UNSAFE"), (7.5, "EXPOSED"), (5.0, "MEDIUM"),
         (1.0, "OK"), (0.1, "SAFE"), (0.0, "PERFECT"))

# Capability groups and why each reaches past the service (capabilities(7)).
CAP_GROUPS = (
    ("cap_sys_admin", 12, ("CAP_SYS_ADMIN",),
     "mount, namespaces, bpf, quotas, ... (\"the new root\")"),
    ("caps_kernel", 10, ("CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_BPF", "CAP_PERFMON",
                         "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_MAC_ADMIN",
                         "CAP_MAC_OVERRIDE", "CAP_AUDIT_CONTROL", "CAP_SYSLOG",
                         "CAP_CHECKPOINT_RESTORE", "CAP_LINUX_IMMUTABLE", "CAP_MKNOD",
                         "CAP_SYS_PTRACE"),
     "load modules, raw I/O, ptrace, reboot, BPF, device nodes: reach the kernel"),
    ("caps_identity", 8, ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETFCAP"),
     "become any user or group, grant capabilities"),
    ("caps_files", 8, ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
                       "CAP_CHOWN", "CAP_FSETID"),
     "read/write/chown any file regardless of permissions"),
    ("caps_net", 5, ("CAP_NET_ADMIN", "CAP_NET_RAW"),
     "reconfigure the network, sniff and forge packets"),
    ("caps_other", 3, None,
     "other capabilities (kill, nice, IPC, resources, ...)"),
)
DANGEROUS_CAPS = tuple(c for _n, _w, caps_, _d in CAP_GROUPS if caps_ for c in caps_)
# Harmless enough to hold without counting as exposure.
BENIGN_CAPS = ("CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE", "CAP_WAKE_ALARM",
               "CAP_BLOCK_SUSPEND")

NS_CHECKS = (  # (spec field, /proc name, weight, what the host's namespace exposes)
    ("mount", "mnt", 5, "the host's mount table and file systems"),
    ("net", "net", 5, "the host's network interfaces and abstract sockets"),
    ("pid", "pid", 4, "every host process (signals, /proc)"),
    ("user", "user", 3, "ids that are the host's ids"),
    ("ipc", "ipc", 2, "the host's SysV IPC and POSIX message queues"),
    ("uts", "uts", 1, "the host's hostname (may change it with CAP_SYS_ADMIN)"),
    ("cgroup", "cgroup", 1, "the host's cgroup tree paths"),
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
        return round(10.0 * sum(c.weight * c.exposure for c in self.checks) / total, 1)

    @property
    def band(self) -> str:
        return band(self.score)

    def to_dict(self) -> dict:
        return {"subject": self.subject, "score": self.score, "band": self.band,
                "checks": [c.to_dict() for c in self.checks]}

    def format(self) -> str:
        lines = []
        for c in sorted(self.checks, key=lambda c: -c.weight * c.exposure):
            mark = "✓" if c.exposure == 0 else "✗"
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


def _spec_caps(spec, root: bool, securebits: int) -> "tuple[frozenset, frozenset]":
    """(held, bounding) as capabilities(7) gives them at execve: caps.prepare's own
    arithmetic, for a shim holding every capability, so the score of a spec does not
    depend on who scores it."""
    from . import caps
    p = caps.prepare(spec.capabilities, root, securebits,
                     shim_holds=(1 << (caps.last_cap() + 1)) - 1)
    return frozenset(caps.names(p.permitted)), frozenset(caps.names(p.bounding))


def _spec_facts(spec) -> _Facts:
    from . import caps
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
    held, bnd = _spec_caps(spec, root, bits)
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
    arch = None
    if spec.seccomp is not None:
        arch = len(spec.seccomp.architectures) == 1 or \
            list(spec.seccomp.architectures) == ["native"]
    cg = spec.cgroup
    return _Facts(root=root, root_group=bool(root_group), uid_text=uid_text,
                  held=frozenset(held), bounding=frozenset(bnd),
                  no_new_privs=spec.no_new_privs, seccomp=spec.seccomp is not None,
                  seccomp_arch=arch, private_ns=private, rw_binds=rw,
                  memory_limit=cg is not None and cg.memory_max is not None,
                  pids_limit=cg is not None and cg.pids_max is not None,
                  cgroup=cg.full_path if cg is not None else None,
                  caps_ns_only=private["user"],
                  shared_uid=not dynamic and _shared(outside_uid), dynamic_uid=dynamic)


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


def _live_facts(info: dict) -> _Facts:
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
    return _Facts(root=root, root_group=root_group, uid_text=f"uid {uids['effective']}",
                  held=held, bounding=frozenset(c["bounding"]),
                  no_new_privs=bool(info["no_new_privs"]),
                  seccomp=filtered or info.get("seccomp") == "strict",
                  seccomp_arch=True if info.get("seccomp") == "strict" else None,
                  private_ns=private, rw_binds=(), memory_limit=mem, pids_limit=pids,
                  cgroup=cg, caps_ns_only=private["user"],
                  shared_uid=_shared(uids["effective"]),
                  dynamic_uid=info.get("dynamic_user") is not None)


# --------------------------------------------------------------------------- checks

def _checks(f: _Facts) -> "list[Check]":
    out = []
    if f.root:
        out.append(Check("root", 10, 1.0, f"runs as root ({f.uid_text}): owns every "
                                          "root-owned file and setting"))
    else:
        out.append(Check("root", 10, 0.0, f"runs as {f.uid_text}, not root"))
    if f.root:
        # As systemd-analyze's UserOrDynamicUser: root is the most shared uid of all.
        out.append(Check("uid_shared", 4, 1.0, "runs as root: the uid of every "
                                              "privileged process on the host"))
    elif f.shared_uid:
        out.append(Check("uid_shared", 4, 1.0, f"runs as {f.uid_text}, {SHARED_USER}: "
                                              "shared with other services, which can read "
                                              "its environ and memory, ptrace and kill it"))
    elif f.dynamic_uid:
        out.append(Check("uid_shared", 4, 0.0, "a dynamic uid: no other service runs "
                                              "with it"))
    else:
        out.append(Check("uid_shared", 4, 0.0, f"runs as {f.uid_text}, not shared with "
                                              f"every other service as {SHARED_USER} is"))
    out.append(Check("root_group", 2, 1.0 if f.root_group else 0.0,
                     "gid or a supplementary group is 0 (root's files by group)"
                     if f.root_group else "no root group"))
    seen: "set[str]" = set()
    for name, weight, group, why in CAP_GROUPS:
        if group is None:
            have = sorted(f.held - seen - set(BENIGN_CAPS))
            n_other = len(set(_all_caps()) - set(DANGEROUS_CAPS) - set(BENIGN_CAPS))
            e = min(1.0, len(have) / max(1, n_other))
        else:
            have = sorted(set(group) & f.held)
            seen |= set(group)
            e = 1.0 if have else 0.0
            if len(group) > 1 and have:
                e = max(0.5, len(have) / len(group))
        if have:
            shown = ", ".join(have[:3]) + (f" and {len(have) - 3} more" if len(have) > 3
                                           else "")
            text = f"holds {shown}: {why}"
            if f.caps_ns_only:
                # Capabilities in a child user namespace act only on what that
                # namespace owns; what is left is kernel attack surface.
                e *= 0.25
                text = f"holds {shown}, over its own user namespace only"
        elif group is None:
            text = "no other capabilities"
        else:
            text = f"none of {', '.join(group)}" if len(group) <= 2 else \
                f"no {name.replace('caps_', '')} capabilities"
        out.append(Check(name, weight, round(e, 2), text))
    if f.no_new_privs:
        out.append(Check("no_new_privs", 6, 0.0,
                         "no_new_privs: setuid binaries and file caps grant nothing"))
    else:
        dangerous = sorted(f.bounding & set(DANGEROUS_CAPS))
        out.append(Check("no_new_privs", 6, 1.0 if dangerous else 0.5,
                         "no no_new_privs: a setuid binary can regain "
                         + (f"{len(dangerous)} dangerous caps left in the bounding set"
                            if dangerous else "root's uid (bounding set is harmless)")))
    if not f.seccomp:
        out.append(Check("seccomp", 6, 1.0, "no seccomp filter: every syscall of the "
                                            "kernel is reachable"))
        out.append(Check("seccomp_arch", 2, 1.0, "no seccomp filter: other ABIs (32-bit, "
                                                 "x32) reachable too"))
    else:
        out.append(Check("seccomp", 6, 0.0, "a seccomp filter limits the syscalls"))
        if f.seccomp_arch is None:
            out.append(Check("seccomp_arch", 2, 0.5, "architecture lock of the filter "
                                                     "cannot be read from /proc"))
        elif f.seccomp_arch:
            out.append(Check("seccomp_arch", 2, 0.0, "the filter kills syscalls of any "
                                                     "other ABI"))
        else:
            out.append(Check("seccomp_arch", 2, 1.0, "the filter allows several ABIs: "
                                                     "32-bit entry points stay reachable"))
    for field, _proc, weight, what in NS_CHECKS:
        if f.private_ns[field]:
            out.append(Check(f"ns_{field}", weight, 0.0, f"own {field} namespace"))
        else:
            out.append(Check(f"ns_{field}", weight, 1.0, f"host {field} namespace: "
                                                          f"sees {what}"))
    dac = bool(f.held & {"CAP_DAC_OVERRIDE", "CAP_FOWNER"}) and not f.caps_ns_only
    if not f.private_ns["mount"]:
        if f.root or dac:
            out.append(Check("writable_paths", 6, 1.0, "host file systems, writable "
                                                       "everywhere (root or DAC override)"))
        else:
            out.append(Check("writable_paths", 6, 0.5, "host file systems: writable where "
                                                       f"{f.uid_text} may write (/tmp, "
                                                       "/dev/shm, its own files)"))
    elif f.rw_binds:
        out.append(Check("writable_paths", 6, 0.3, "writable host paths bound in: "
                                                   + ", ".join(f.rw_binds)))
    else:
        out.append(Check("writable_paths", 6, 0.0, "no writable host path bound in"))
    if f.memory_limit and f.pids_limit:
        out.append(Check("cgroup_limits", 4, 0.0, f"cgroup {f.cgroup}: memory and pids "
                                                  "limited"))
    elif f.memory_limit or f.pids_limit:
        missing = "pids" if f.memory_limit else "memory"
        out.append(Check("cgroup_limits", 4, 0.5, f"cgroup {f.cgroup}: no {missing} limit"))
    else:
        where = f"cgroup {f.cgroup}" if f.cgroup else "no cgroup of its own"
        out.append(Check("cgroup_limits", 4, 1.0, f"{where}: no memory or pids limit "
                                                  "(a fork bomb or leak reaches the host)"))
    return out


def of_spec(spec) -> Report:
    """Offline: what the shim would give a target under this spec (profile merged)."""
    from .spawning import resolve
    spec = resolve(spec)
    subject = spec.name or (spec.argv[0] if spec.argv else None) or \
        (f"profile {spec.profile}" if spec.profile else "spec")
    return Report(subject, tuple(_checks(_spec_facts(spec))))


def of_process(target) -> Report:
    """Live: what /proc says about a process (a pid, or inspect()'s dict)."""
    if isinstance(target, dict):
        info = target
    else:
        from .inspection import inspect
        info = inspect(target)
    subject = f"pid {info['pid']} ({info.get('name')})"
    return Report(subject, tuple(_checks(_live_facts(info))))
