"""The OCI bridge: an OCI runtime-spec config.json's `process`, `hostname`, `mounts` and
`linux` sections to our spec, and back where the model allows.

Nothing is dropped silently: every part of the config that wrapperd cannot honour is
returned as a line naming the field and why.
"""

from __future__ import annotations

from typing import Any

from .errors import SpecError

__all__ = ["import_config", "export_spec"]

_NS = {"pid": "pid", "network": "net", "mount": "mount", "ipc": "ipc", "uts": "uts",
       "user": "user", "cgroup": "cgroup"}
_ACTIONS = {"SCMP_ACT_ALLOW": "allow", "SCMP_ACT_KILL": "kill_thread",
            "SCMP_ACT_KILL_THREAD": "kill_thread", "SCMP_ACT_KILL_PROCESS": "kill_process",
            "SCMP_ACT_TRAP": "trap", "SCMP_ACT_LOG": "log"}
_OPS = {"SCMP_CMP_EQ": "eq", "SCMP_CMP_NE": "ne", "SCMP_CMP_LT": "lt", "SCMP_CMP_LE": "le",
        "SCMP_CMP_GT": "gt", "SCMP_CMP_GE": "ge", "SCMP_CMP_MASKED_EQ": "masked_eq"}
_MOUNT_TYPES = ("bind", "tmpfs", "proc", "mqueue", "devpts")
_MOUNT_OPTS = {"ro": "ro", "rw": "rw", "nosuid": "nosuid", "nodev": "nodev",
               "noexec": "noexec", "rbind": "recursive", "noatime": "noatime"}


def _keys():
    from .spec import Spec
    return Spec.KEYS


def _action(name: str, errno_ret, where: str, lost: list) -> "str | None":
    if name == "SCMP_ACT_ERRNO":
        return f"errno:{errno_ret if errno_ret is not None else 1}"
    if name in _ACTIONS:
        return _ACTIONS[name]
    lost.append(f"{where}: action {name} is not supported")
    return None


def _seccomp(sc: dict, lost: list) -> dict:
    out: dict = {}
    act = _action(sc.get("defaultAction", ""), sc.get("defaultErrnoRet"),
                  "linux.seccomp.defaultAction", lost)
    out["default_action"] = act or "kill_process"      # fail closed on what we cannot map
    arches = [a[len("SCMP_ARCH_"):].lower() for a in sc.get("architectures") or []]
    if arches:
        out["architectures"] = arches
    for k in ("flags", "listenerPath", "listenerMetadata"):
        if sc.get(k):
            lost.append(f"linux.seccomp.{k}: not supported")
    rules = []
    for i, r in enumerate(sc.get("syscalls") or []):
        where = f"linux.seccomp.syscalls[{i}]"
        a = _action(r.get("action", ""), r.get("errnoRet"), where, lost)
        if a is None:
            continue
        args = []
        for j, arg in enumerate(r.get("args") or []):
            op = _OPS.get(arg.get("op"))
            if op is None:
                lost.append(f"{where}.args[{j}]: operator {arg.get('op')!r} is not supported")
                continue
            args.append({"index": arg.get("index"), "op": op, "value": arg.get("value", 0),
                         "value_two": arg.get("valueTwo", 0)})
        rules.append({"names": list(r.get("names") or []), "action": a, "args": args})
    out["syscalls"] = rules
    return out


def import_config(config: Any) -> "tuple[Any, list[str]]":
    """Return (Spec, lines naming what could not be honoured)."""
    from .spec import Spec
    if not isinstance(config, dict):
        raise SpecError("an OCI config must be a JSON object")
    keys = _keys()
    lost: list = []
    d: dict = {}
    proc = config.get("process") or {}
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
        d["capabilities"] = {"keep": bnd, "ambient": list(caps.get("ambient") or [])}
        is_root = d["user"]["uid"] == 0
        for s in ("effective", "permitted"):
            want = set(caps.get(s) or [])
            have = set(bnd) if is_root else set(caps.get("ambient") or [])
            if want != have:
                lost.append(f"process.capabilities.{s}: {sorted(want)} differs from what "
                            f"execve gives this target ({sorted(have)})")
        if set(caps.get("inheritable") or []) != set(caps.get("ambient") or []):
            lost.append("process.capabilities.inheritable: wrapperd sets inheritable = ambient")
    rl = {}
    for i, r in enumerate(proc.get("rlimits") or []):
        rl[str(r.get("type", ""))] = [r.get("soft"), r.get("hard")]
    if rl:
        d["rlimits"] = rl
    d["no_new_privs"] = bool(proc.get("noNewPrivileges", False))
    if proc.get("oomScoreAdj") is not None:
        d["oom_score_adj"] = proc["oomScoreAdj"]
    for k in ("terminal", "apparmorProfile", "selinuxLabel", "consoleSize", "ioPriority",
              "scheduler", "execCPUAffinity"):
        if proc.get(k):
            lost.append(f"process.{k}: not supported")
    root = config.get("root") or {}
    if root.get("path") not in (None, "/"):
        lost.append(f"root.path: {root.get('path')!r} -- wrapperd keeps the host's root "
                    "(mounts apply on top of it)")
    if root.get("readonly"):
        if "readonly_root" in keys:
            d["readonly_root"] = True
        else:
            lost.append("root.readonly: not supported")
    if config.get("hostname"):
        d["hostname"] = config["hostname"]
    for k in ("domainname", "hooks", "annotations"):
        if config.get(k):
            lost.append(f"{k}: not supported")
    mounts = []
    for i, m in enumerate(config.get("mounts") or []):
        t = m.get("type") or ("bind" if "bind" in (m.get("options") or []) or
                              "rbind" in (m.get("options") or []) else None)
        opts = m.get("options") or []
        if t not in _MOUNT_TYPES:
            lost.append(f"mounts[{i}]: {m.get('destination')} of type {t!r} is not supported")
            continue
        mine = {"type": t, "destination": m.get("destination")}
        if t == "bind":
            mine["source"] = m.get("source")
        kept = []
        for o in opts:
            if o in _MOUNT_OPTS:
                kept.append(_MOUNT_OPTS[o])
            elif t == "tmpfs" and o.startswith("size="):
                mine["size"] = _size(o[5:])
            elif t == "tmpfs" and o.startswith("mode="):
                mine["mode"] = o[5:]
            elif o not in ("bind", "private", "rprivate", "strictatime", "relatime"):
                lost.append(f"mounts[{i}]: option {o!r} on {m.get('destination')} ignored")
        mine["options"] = sorted(set(kept))
        mounts.append(mine)
    if mounts:
        d["mounts"] = mounts
    linux = config.get("linux") or {}
    ns: dict = {}
    for i, n in enumerate(linux.get("namespaces") or []):
        kind = _NS.get(n.get("type"))
        if kind is None:
            lost.append(f"linux.namespaces[{i}]: type {n.get('type')!r} is not supported")
            continue
        ns[kind] = n.get("path") or True
    if linux.get("uidMappings") or linux.get("gidMappings"):
        conv = lambda ms: [{"inside": m["containerID"], "outside": m["hostID"],  # noqa: E731
                            "count": m["size"]} for m in ms or []]
        ns["user"] = {"uid_map": conv(linux.get("uidMappings")),
                      "gid_map": conv(linux.get("gidMappings"))}
    if ns:
        d["namespaces"] = ns
    if linux.get("seccomp"):
        d["seccomp"] = _seccomp(linux["seccomp"], lost)
    if linux.get("cgroupsPath"):
        p = linux["cgroupsPath"]
        if ":" in p:
            lost.append(f"linux.cgroupsPath: systemd form {p!r} is not supported")
        else:
            d["cgroup"] = {"path": p}
    res = linux.get("resources") or {}
    limits = {}
    if (res.get("memory") or {}).get("limit") is not None:
        limits["memory_max"] = res["memory"]["limit"]
    if (res.get("pids") or {}).get("limit") is not None:
        limits["pids_max"] = res["pids"]["limit"]
    cpu = res.get("cpu") or {}
    if cpu.get("quota") is not None and "cpu_max" in _cgroup_keys():
        limits["cpu_max"] = [cpu["quota"], cpu.get("period") or 100000]
    for k, v in res.items():
        if k not in ("memory", "pids", "cpu") or (k == "cpu" and "cpu_max" not in limits):
            if k == "devices" and all(not dv.get("allow") for dv in v or []):
                continue   # deny-all device rules: the host's /dev is used; nothing to allow
            if v:
                lost.append(f"linux.resources.{k}: not supported")
    if limits:
        if "cgroup" not in d:
            lost.append("linux.resources: limits without linux.cgroupsPath are not applied")
        else:
            d["cgroup"].update(limits)
    for key, mine in (("maskedPaths", "masked_paths"), ("readonlyPaths", "readonly_paths")):
        if linux.get(key):
            if mine in keys:
                d[mine] = list(linux[key])
            else:
                lost.append(f"linux.{key}: not supported")
    for k in ("sysctl", "devices", "intelRdt", "personality", "mountLabel", "rootfsPropagation",
              "timeOffsets"):
        if linux.get(k):
            lost.append(f"linux.{k}: not supported")
    return Spec.from_dict(d), lost


def _cgroup_keys():
    from .spec import Cgroup
    return Cgroup.KEYS


def _size(s: str) -> int:
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if s and s[-1].lower() in mult:
        return int(s[:-1]) * mult[s[-1].lower()]
    return int(s)


def export_spec(spec) -> dict:
    """Our spec as an OCI config (process, hostname, mounts, linux), root '/'."""
    from . import caps as capmod
    d = spec.to_dict()
    proc: dict = {"args": d["argv"], "env": [f"{k}={v}" for k, v in d["env"].items()],
                  "cwd": d["cwd"], "noNewPrivileges": d["no_new_privs"]}
    user = d.get("user") or {"uid": 0, "gid": 0}
    if not isinstance(user["uid"], int) or not isinstance(user.get("gid") or 0, int):
        raise SpecError("export needs numeric uid/gid", "user")
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
    out: dict = {"ociVersion": "1.0.2", "process": proc, "root": {"path": "/"}, "linux": {}}
    if d.get("hostname"):
        out["hostname"] = d["hostname"]
    ns = d.get("namespaces") or {}
    rev = {v: k for k, v in _NS.items()}
    out["linux"]["namespaces"] = [
        {"type": rev[k], **({"path": v} if isinstance(v, str) else {})}
        for k, v in ns.items() if k in rev and v not in (False, None)]
    if d.get("cgroup"):
        out["linux"]["cgroupsPath"] = spec.cgroup.full_path
        r = {}
        if d["cgroup"].get("memory_max"):
            r["memory"] = {"limit": d["cgroup"]["memory_max"]}
        if d["cgroup"].get("pids_max"):
            r["pids"] = {"limit": d["cgroup"]["pids_max"]}
        if r:
            out["linux"]["resources"] = r
    return out
