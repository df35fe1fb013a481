"""The OCI bridge: an OCI runtime-spec config.json's `process`, `root`, `hostname`,
`mounts` and `linux` sections to our spec, and back where the model allows.

Nothing is dropped silently: every part of the config that wrapperd cannot honour is
returned as a line naming the OCI field and why (`import_config`), and
`Spec.from_oci()` refuses a config with any such line.  What maps:

  process.args/env/cwd              argv, env, cwd
  process.user.uid/gid/additionalGids/umask    user.*
  process.capabilities              bounding -> capabilities.keep, ambient -> ambient;
                                    effective/permitted/inheritable must be what execve
                                    gives the target under that (else listed)
  process.rlimits, noNewPrivileges, oomScoreAdj     rlimits, no_new_privs, oom_score_adj
  root.readonly                     readonly_root (root.path other than / is listed:
                                    wrapperd keeps the host's root)
  hostname                          hostname
  mounts                            mounts: bind/rbind, tmpfs (size, mode), proc, mqueue,
                                    devpts; a tmpfs on /dev is our `dev` (a minimal /dev,
                                    what runc makes of it; size, mode too), /dev/pts and
                                    /dev/shm mounts go on top of it; sysfs, cgroup, and
                                    every option not carried (gid=5 too) are listed
  linux.namespaces                  namespaces (a path joins); a new pid namespace makes
                                    the target pid 1 (as_pid_1), as in any OCI runtime
  linux.uidMappings/gidMappings     namespaces.user maps
  linux.seccomp                     seccomp, through sandbox.seccomp_oci (Docker-complete)
  linux.cgroupsPath + resources     cgroup: memory.limit/swap, pids.limit, cpu.quota/period,
                                    cpu.shares, cpu.cpus/mems, blockIO.weight
  linux.maskedPaths/readonlyPaths   masked_paths, readonly_paths
"""

from __future__ import annotations

from typing import Any

from .errors import SpecError

__all__ = ["import_config", "export_spec"]

_NS = {"pid": "pid", "network": "net", "mount": "mount", "ipc": "ipc", "uts": "uts",
       "user": "user", "cgroup": "cgroup"}
_FLAG_OPTS = {"ro": "ro", "rw": "rw", "nosuid": "nosuid", "nodev": "nodev",
              "noexec": "noexec", "rbind": "recursive", "noatime": "noatime",
              "strictatime": "strictatime"}
# Options that change nothing for us: our mounts are always private (nothing propagates
# to the host), relatime is the kernel's default, suid/dev/exec are the defaults -- of a
# fresh mount, and unless we force the opposite (_FORCED); a bind mount keeps its
# source's flags (we only add flags), so there they are listed.
_NOOP_OPTS = ("bind", "private", "rprivate", "relatime", "suid", "dev", "exec")
_FORCED = {"proc": ("suid", "dev", "exec"), "mqueue": ("suid", "dev", "exec"),
           "devpts": ("suid", "exec"), "dev": ("suid", "dev"),
           "bind": ("suid", "dev", "exec", "relatime")}
# What our devpts is mounted with (sandbox.mounts passes exactly this data): options
# that say the same are honoured.  Anything else (gid=5 too: ours has no gid=) is listed.
_DEVPTS_SAME = ("newinstance", "ptmxmode=0666", "mode=0620", "mode=620")


def import_config(config: Any) -> "tuple[Any, list[str]]":
    """Return (Spec, lines naming what could not be honoured)."""
    from .spec import Spec
    if not isinstance(config, dict):
        raise SpecError("an OCI config must be a JSON object")
    lost: list = []
    d: dict = {}
    _process(config.get("process") or {}, d, lost)
    root = config.get("root") or {}
    if root.get("path") not in (None, "/"):
        lost.append(f"root.path: {root.get('path')!r} -- wrapperd keeps the host's root "
                    "(mounts apply on top of it)")
    if root.get("readonly"):
        d["readonly_root"] = True
    if config.get("hostname"):
        d["hostname"] = config["hostname"]
    for k in ("domainname", "hooks"):
        if config.get(k):
            lost.append(f"{k}: not supported")
    _mounts(config.get("mounts") or [], d, lost)
    _linux(config.get("linux") or {}, d, lost)
    return Spec.from_dict(d), lost


def _process(proc: dict, d: dict, lost: list) -> None:
    if not proc.get("args"):
        raise SpecError("process.args is missing or empty")
    d["argv"] = proc["args"]
    env = {}
    for i, e in enumerate(proc.get("env") or []):
        if not isinstance(e, str) or "=" not in e:
            raise SpecError(f"not NAME=value: {e!r}", f"process.env[{i}]")
        k, _, v = e.partition("=")
        env[k] = v
    d["env"] = env
    d["cwd"] = proc.get("cwd") or "/"
    user = proc.get("user") or {}
    d["user"] = {"uid": user.get("uid", 0), "gid": user.get("gid", 0),
                 "groups": list(user.get("additionalGids") or [])}
    if user.get("umask") is not None:
        d["user"]["umask"] = f"{int(user['umask']):04o}"
    if user.get("username"):
        lost.append("process.user.username: ignored (uid/gid are used)")
    caps = proc.get("capabilities")
    if caps is None:
        d["capabilities"] = {"keep": []}     # OCI: no capabilities section = none at all
    else:
        bnd = list(caps.get("bounding") or [])
        inh = set(caps.get("inheritable") or [])
        amb = [c for c in caps.get("ambient") or [] if c in inh]
        if len(amb) < len(caps.get("ambient") or []):
            # The kernel raises an ambient cap only if it is inheritable (and permitted);
            # runc ignores the refusal, so the target holds none of these: neither here.
            lost.append("process.capabilities.ambient: "
                        f"{sorted(set(caps['ambient']) - inh)} are not inheritable: the "
                        "kernel refuses them (runc ignores that), so they are left out")
        d["capabilities"] = {"keep": bnd, "ambient": amb}
        is_root = d["user"]["uid"] == 0
        # What execve leaves a target holding: root gets its bounding set (file caps of
        # root are all-ones), anyone else exactly its ambient set.
        have = set(bnd) if is_root else set(amb)
        for s in ("effective", "permitted"):
            want = set(caps.get(s) or [])
            if want != have:
                lost.append(f"process.capabilities.{s}: {sorted(want)} differs from what "
                            f"execve gives this target ({sorted(have)})")
        if set(caps.get("inheritable") or []) != set(amb):
            lost.append("process.capabilities.inheritable: wrapperd sets inheritable = ambient")
    rl = {}
    for r in proc.get("rlimits") or []:
        rl[str(r.get("type", ""))] = [r.get("soft"), r.get("hard")]
    if rl:
        d["rlimits"] = rl
    d["no_new_privs"] = bool(proc.get("noNewPrivileges", False))
    if proc.get("oomScoreAdj") is not None:
        d["oom_score_adj"] = proc["oomScoreAdj"]
    for k in ("terminal", "consoleSize", "apparmorProfile", "selinuxLabel", "ioPriority",
              "scheduler", "execCPUAffinity"):
        if proc.get(k):
            lost.append(f"process.{k}: not supported")


def _mounts(mounts: list, d: dict, lost: list) -> None:
    """Every option is either carried into the mount (a flag, size, mode), a no-op for
    our always-private fresh mounts, the same as what we mount with, or listed: nothing
    in between, so --strict never passes a config whose mount we make differently.
    /dev/pts and /dev/shm under a tmpfs /dev become mounts of their own on top of what
    our `dev` makes there, so their options (noexec, size=, ...) apply as given."""
    out = []
    for i, m in enumerate(mounts):
        where = f"mounts[{i}] ({m.get('destination')})"
        opts = list(m.get("options") or [])
        t = m.get("type") or ("bind" if {"bind", "rbind"} & set(opts) else None)
        if "bind" in opts or "rbind" in opts:
            t = "bind"                       # runc: a bind option makes it a bind mount
        dest = m.get("destination")
        if t == "tmpfs" and dest == "/dev":
            t = "dev"
        if t not in ("bind", "tmpfs", "proc", "mqueue", "devpts", "dev"):
            lost.append(f"{where}: type {t!r} is not supported")
            continue
        mine = {"type": t, "destination": dest}
        if t == "bind":
            mine["source"] = m.get("source")
        kept = []
        for o in opts:
            if o == "strictatime" and t == "bind":
                lost.append(f"{where}: option {o!r} is not supported on a bind mount")
            elif o in _FORCED.get(t, ()):
                lost.append(f"{where}: option {o!r} is not supported on a {t} mount "
                            f"(ours is no{o} or keeps the source's flag)")
            elif o in _FLAG_OPTS:
                kept.append(_FLAG_OPTS[o])
            elif o in _NOOP_OPTS:
                pass
            elif t in ("tmpfs", "dev") and o.startswith("size="):
                mine["size"] = _size(o[5:])
            elif t in ("tmpfs", "dev") and o.startswith("mode="):
                mine["mode"] = o[5:]
            elif t == "devpts" and o in _DEVPTS_SAME:
                pass                         # what our devpts is made with
            else:
                lost.append(f"{where}: option {o!r} is not supported")
        mine["options"] = sorted(set(kept))
        out.append(mine)
    if out:
        d["mounts"] = out


def _linux(linux: dict, d: dict, lost: list) -> None:
    ns: dict = {}
    for i, n in enumerate(linux.get("namespaces") or []):
        kind = _NS.get(n.get("type"))
        if kind is None:
            lost.append(f"linux.namespaces[{i}]: type {n.get('type')!r} is not supported")
            continue
        ns[kind] = n.get("path") or True
    if ns.get("pid") is True:
        ns["as_pid_1"] = True        # an OCI process is pid 1 of its pid namespace
    if linux.get("uidMappings") or linux.get("gidMappings"):
        def conv(ms):
            return [{"inside": m["containerID"], "outside": m["hostID"], "count": m["size"]}
                    for m in ms or []]
        if ns.get("user") is not True:
            lost.append("linux.uidMappings: given without a new user namespace")
        else:
            ns["user"] = {"uid_map": conv(linux.get("uidMappings")),
                          "gid_map": conv(linux.get("gidMappings"))}
    if ns:
        d["namespaces"] = ns
    if linux.get("seccomp"):
        from . import seccomp_oci
        section, notes = seccomp_oci.import_profile(linux["seccomp"])
        d["seccomp"] = section
        # "allows the ABIs ..." says what *is* done, as the profile asks: not a loss.
        lost += [f"linux.seccomp: {n}" for n in notes if not n.startswith("allows the ABIs")]
    cg: dict = {}
    if linux.get("cgroupsPath"):
        p = linux["cgroupsPath"]
        if ":" in p:
            lost.append(f"linux.cgroupsPath: systemd form {p!r} is not supported")
        else:
            cg["path"] = p
    limits = _resources(linux.get("resources") or {}, lost)
    if limits:
        if not cg:
            lost.append("linux.resources: limits without linux.cgroupsPath are not applied")
        else:
            cg.update(limits)
    if cg:
        d["cgroup"] = cg
    for key, mine in (("maskedPaths", "masked_paths"), ("readonlyPaths", "readonly_paths")):
        if linux.get(key):
            d[mine] = list(linux[key])
    if linux.get("rootfsPropagation") not in (None, "", "private", "rprivate"):
        lost.append(f"linux.rootfsPropagation: {linux['rootfsPropagation']!r} -- wrapperd's "
                    "mounts are always private")
    for k in ("sysctl", "devices", "intelRdt", "personality", "mountLabel", "timeOffsets"):
        if linux.get(k):
            lost.append(f"linux.{k}: not supported")


def _resources(res: dict, lost: list) -> dict:
    limits: dict = {}
    for k, v in res.items():
        if not v:
            continue
        if k == "memory":
            for mk, mv in v.items():
                if mv is None:
                    continue
                if mk == "limit":
                    limits["memory_max"] = mv
                elif mk == "swap" and v.get("limit") is not None and mv >= v["limit"]:
                    # OCI's swap is memory+swap (v1 memsw); ours is the swap alone.
                    limits["memory_swap_max"] = mv - v["limit"]
                else:
                    lost.append(f"linux.resources.memory.{mk}: not supported")
        elif k == "pids":
            if v.get("limit") is not None and v["limit"] > 0:
                limits["pids_max"] = v["limit"]
        elif k == "cpu":
            for ck, cv in v.items():
                if cv is None:
                    continue
                if ck == "quota":
                    limits["cpu_max"] = [cv, v.get("period") or 100000] if cv > 0 else \
                        f"max {v.get('period') or 100000}"
                elif ck == "period":
                    if v.get("quota") is None:
                        lost.append("linux.resources.cpu.period: without a quota")
                elif ck == "shares":
                    weight = round(cv * 100 / 1024)
                    if weight * 1024 // 100 != cv or not 1 <= weight <= 10000:
                        lost.append(f"linux.resources.cpu.shares: {cv} is no cpu weight "
                                    "(weight * 1024 / 100)")
                    else:
                        limits["cpu_weight"] = weight
                elif ck in ("cpus", "mems"):
                    limits[f"cpuset_{ck}"] = cv
                else:
                    lost.append(f"linux.resources.cpu.{ck}: not supported")
        elif k == "blockIO" and set(v) <= {"weight"} and v["weight"] % 5 == 0:
            limits["io_weight"] = v["weight"] // 5
        elif k == "devices":
            # runc's device cgroup (deny all, allow a few) has no counterpart: mknod is
            # bounded by CAP_MKNOD, but opening the host's device nodes is not restricted.
            lost.append("linux.resources.devices: the device cgroup is not applied")
        else:
            lost.append(f"linux.resources.{k}: not supported")
    return limits


def _size(s: str) -> int:
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if s and s[-1].lower() in mult:
        return int(s[:-1]) * mult[s[-1].lower()]
    return int(s)


def export_spec(spec, notes: "list | None" = None) -> dict:
    """Our spec as an OCI config (process, root '/', hostname, mounts, linux).  What OCI
    cannot say (nice, pdeathsig, securebits, pass_fds, a reaper as pid 1, capability-
    conditional seccomp rules) is appended to `notes` when given."""
    from . import caps as capmod
    notes = [] if notes is None else notes
    expansion = None
    if spec.filesystem is not None:
        # systemd's protections as the mounts, masks, read-only root and capability
        # drops they stand for; the rest below.
        from .filesystem import expand
        spec, expansion = expand(spec)
    d = spec.to_dict()
    proc: dict = {"args": d["argv"], "env": [f"{k}={v}" for k, v in d["env"].items()],
                  "cwd": d["cwd"], "noNewPrivileges": d["no_new_privs"]}
    if spec.cwd is None:
        proc["cwd"] = "/"           # OCI's cwd is required and absolute
        notes.append("cwd: inherited from the caller; OCI has no such cwd, exported as /")
    user = d.get("user") or {"uid": 0, "gid": 0}
    if user.get("dynamic"):
        ns = spec.namespaces
        inside = 0 if ns is not None and ns.user is not False else 65534
        user = dict(user, uid=inside, gid=inside)
        notes.append("user.dynamic: OCI has no dynamic user; exported as uid/gid 65534 "
                     "(nobody) on the host, which other services share")
    else:
        # OCI holds numbers only: names are resolved in this host's user database, as
        # wrapperd's prepare() would resolve them here (gid: the user's primary group).
        from . import creds
        uid, primary = creds.resolve_uid(user["uid"])
        gid = (creds.resolve_gid(user["gid"], "user.gid") if user.get("gid") is not None
               else primary if primary is not None and not isinstance(user["uid"], int)
               else 0)
        groups = [creds.resolve_gid(g, f"user.groups[{i}]")
                  for i, g in enumerate(user.get("groups") or [])]
        if (uid, gid, groups) != (user["uid"], user.get("gid") or 0,
                                  list(user.get("groups") or [])):
            notes.append(f"user: OCI holds numeric ids only; names resolved in this "
                         f"host's user database (uid {uid}, gid {gid}, groups {groups})")
        user = dict(user, uid=uid, gid=gid, groups=groups)
    proc["user"] = {"uid": user["uid"], "gid": user.get("gid") or 0,
                    "additionalGids": user.get("groups") or []}
    if user.get("umask"):
        proc["user"]["umask"] = int(user["umask"], 8)
    c = d.get("capabilities")
    if c is not None:
        if c.get("keep") is not None:
            bnd = c["keep"]
        else:
            bnd = [n for n in capmod.names(capmod.bounding_set())
                   if n not in (c.get("drop") or [])]
        amb = c.get("ambient")
        if amb is None:
            amb = bnd if c.get("keep") is not None and user["uid"] != 0 else []
        eff = bnd if user["uid"] == 0 else amb
        proc["capabilities"] = {"bounding": bnd, "effective": eff, "permitted": eff,
                                "inheritable": amb, "ambient": amb}
    proc["rlimits"] = [{"type": "RLIMIT_" + k, "soft": v[0], "hard": v[1]}
                       for k, v in d["rlimits"].items()]
    if d.get("oom_score_adj") is not None:
        proc["oomScoreAdj"] = d["oom_score_adj"]
    for k in ("nice", "pdeathsig"):
        if d.get(k) is not None:
            notes.append(f"{k}: OCI has no field for it")
    for k in ("securebits", "pass_fds"):
        if d.get(k):
            notes.append(f"{k}: OCI has no field for it")
    if d.get("listen"):
        notes.append("listen: OCI has no field for it (socket activation: the runtime's "
                     "caller passes listening fds, LISTEN_FDS)")
    if d.get("address_families") is not None:
        notes.append("address_families: OCI has no field for it (wrapperd loads it as a "
                     "seccomp filter of its own)")
    if d.get("landlock") is not None:
        notes.append("landlock: OCI has no field for it (wrapperd applies it in its "
                     "own landlock step)")
    if d.get("notify"):
        notes.append("notify: OCI has no field for it (a runtime's caller passes "
                     "NOTIFY_SOCKET, as runc does with systemd's)")
    if d.get("new_session") is False:
        notes.append("new_session: false: OCI has no field for it (runtimes start the "
                     "process in a new session)")
    out: dict = {"ociVersion": "1.0.2", "process": proc,
                 "root": {"path": "/", "readonly": bool(d.get("readonly_root"))},
                 "linux": {}}
    if d.get("hostname"):
        out["hostname"] = d["hostname"]
    if d.get("mounts"):
        out["mounts"] = [_export_mount(m, notes) for m in d["mounts"]]
    ns = d.get("namespaces") or {}
    rev = {v: k for k, v in _NS.items()}
    out["linux"]["namespaces"] = [
        {"type": rev[k], **({"path": v} if isinstance(v, str) else {})}
        for k, v in ns.items() if k in rev and v not in (False, None)]
    if ns.get("pid") is True and not ns.get("as_pid_1"):
        notes.append("namespaces.pid: under OCI the target is pid 1 (no reaper)")
    if isinstance(ns.get("user"), dict):
        for ours, theirs in (("uid_map", "uidMappings"), ("gid_map", "gidMappings")):
            out["linux"][theirs] = [{"containerID": m["inside"], "hostID": m["outside"],
                                     "size": m["count"]} for m in ns["user"][ours]]
    for ours, theirs in (("masked_paths", "maskedPaths"), ("readonly_paths", "readonlyPaths")):
        if d.get(ours):
            out["linux"][theirs] = list(d[ours])
    if expansion is not None:
        if expansion.read_only:
            # (runtimes' readonlyPaths may also set noexec: /usr would not run)
            notes.append("filesystem: read-only places that keep exec ("
                         f"{', '.join(expansion.read_only)}): OCI's readonlyPaths may add "
                         "noexec; not exported")
        out.setdefault("mounts", []).extend(
            {"destination": p, "type": "bind", "source": p, "options": ["rbind", "rw"]}
            for p in expansion.read_write)
        if expansion.proc_data:
            notes.append(f"filesystem: /proc's {expansion.proc_data}: OCI has no field "
                         "for it")
        if expansion.denied:
            notes.append(f"filesystem: syscalls denied ({', '.join(expansion.denied)}): "
                         "not exported (add them to linux.seccomp)")
    if spec.seccomp is not None:
        out["linux"]["seccomp"] = _export_seccomp(spec, notes)
    if d.get("cgroup"):
        cg = d["cgroup"]
        out["linux"]["cgroupsPath"] = spec.cgroup.full_path
        r: dict = {}
        if cg.get("memory_max"):
            r["memory"] = {"limit": cg["memory_max"]}
            if cg.get("memory_swap_max") is not None:
                r["memory"]["swap"] = cg["memory_max"] + cg["memory_swap_max"]
        if cg.get("pids_max"):
            r["pids"] = {"limit": cg["pids_max"]}
        cpu: dict = {}
        if cg.get("cpu_max"):
            q, p = cg["cpu_max"].split()
            cpu.update(quota=-1 if q == "max" else int(q), period=int(p))
        if cg.get("cpu_weight"):
            cpu["shares"] = cg["cpu_weight"] * 1024 // 100
        for k in ("cpus", "mems"):
            if cg.get(f"cpuset_{k}"):
                cpu[k] = cg[f"cpuset_{k}"]
        if cpu:
            r["cpu"] = cpu
        if cg.get("io_weight"):
            r["blockIO"] = {"weight": min(1000, max(10, cg["io_weight"] * 5))}
        if cg.get("memory_high"):
            notes.append("cgroup.memory_high: OCI has no field for it (v2 unified only)")
        if r:
            out["linux"]["resources"] = r
    return out


def _export_mount(m: dict, notes: list) -> dict:
    opts = [{"recursive": "rbind"}.get(o, o) for o in m.get("options") or []]
    if m["type"] == "bind":
        if "rbind" not in opts:
            opts.insert(0, "bind")
        return {"destination": m["destination"], "type": "bind", "source": m["source"],
                "options": opts}
    if m["type"] == "dev":
        # Our `dev` is a tmpfs, nosuid and nodev, mode 0755 unless given.
        opts = sorted({"nosuid", "nodev", *opts}) + [f"mode={m.get('mode') or '755'}"]
        if m.get("size"):
            opts.append(f"size={m['size']}")
        return {"destination": m["destination"], "type": "tmpfs", "source": "tmpfs",
                "options": opts}
    if m["type"] == "tmpfs":
        if m.get("size"):
            opts.append(f"size={m['size']}")
        if m.get("mode"):
            opts.append(f"mode={m['mode']}")
    return {"destination": m["destination"], "type": m["type"], "source": m["type"],
            "options": opts}


def _export_seccomp(spec, notes: list) -> dict:
    """The filter's rules in OCI form: a named profile is expanded (its @groups too)."""
    from . import seccomp
    sc = spec.seccomp
    rules = []
    default = sc.default_action
    arches = sc.architectures
    if sc.profile:
        base = seccomp.load_profile(sc.profile)
        rules += list(base.syscalls)
        default = default or base.default_action
        if tuple(arches) == ("native",):
            arches = base.architectures
    rules += list(sc.syscalls)
    out_rules = []
    for i, r in enumerate(rules):
        if r.if_caps or r.unless_caps:
            notes.append(f"seccomp rule {i} ({', '.join(r.names)}): applies only with/"
                         "without some capabilities -- OCI has no such condition; kept "
                         "unconditional")
        names = sorted({n for name in r.names for n in seccomp.expand(name)})
        # An argument the kernel reads as 32 bits is exported as wrapperd compares it
        # (seccomp.kernel_width): a runtime comparing 64 bits would let the upper half
        # walk around it.  Such a rule becomes one rule per syscall and form.
        split = [n for n in names if any(a.index in seccomp.INT_ARGS.get(n, ())
                                         for a in r.args)]
        groups = [(sorted(set(names) - set(split)), r.args)] if set(names) - set(split) \
            else []
        groups += [([n], form) for n in split
                   for form in seccomp.kernel_width(n, r.args, f"seccomp rule {i}")]
        for group_names, args in groups:
            rule = {"names": group_names, **_oci_action(r.action)}
            if args:
                rule["args"] = [{"index": a.index, "value": a.value, "valueTwo": a.value_two,
                                 "op": "SCMP_CMP_" + a.op.upper()} for a in args]
            out_rules.append(rule)
    arch = [("SCMP_ARCH_" + seccomp.resolve_arch(a).upper()) for a in arches]
    return {**{("defaultAction" if k == "action" else "defaultErrnoRet"): v
               for k, v in _oci_action(default).items() if k in ("action", "errnoRet")},
            "architectures": arch, "syscalls": out_rules}


def _oci_action(action: str) -> dict:
    from .spec import parse_action
    kind, arg = parse_action(action)
    if kind == "errno":
        return {"action": "SCMP_ACT_ERRNO", "errnoRet": arg}
    return {"action": {"allow": "SCMP_ACT_ALLOW", "log": "SCMP_ACT_LOG",
                       "trap": "SCMP_ACT_TRAP", "kill_thread": "SCMP_ACT_KILL_THREAD",
                       "kill_process": "SCMP_ACT_KILL_PROCESS"}[kind]}
