"""verify(): compare what the kernel shows for a live target with what its spec implies.

Named verification.py, not verify.py, so the module never shadows the function
`sandbox.verify`.

The expectation is computed with the facilities' own prepare() (creds, caps, cgroups):
the masks the shim set right before execve.  Then capabilities(7)'s execve rules turn
them into what /proc must show afterwards:
  * a root target (uid 0, no SECBIT_NOROOT): permitted = bounding | inheritable |
    ambient (root's "all-ones" file sets), effective = permitted; with no_new_privs the
    kernel caps permitted at what the shim held (prepared permitted);
  * any other target, exec'ing a file without file capabilities: permitted =
    effective = ambient.
verify() must run in the process that spawned the target (or one with the same
credentials): the shim inherited our sets, and prepare() reads them from us.  In a new
user namespace the expected ids are translated through its maps to the host's view
(what /proc shows us); a joined user namespace's ids are not translated.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from . import procfs

__all__ = ["Difference", "verify", "expected"]

CAP_SETS = ("bounding", "inheritable", "ambient", "permitted", "effective")


@attrs.frozen
class Difference:
    field: str
    expected: object
    actual: object

    def __str__(self) -> str:
        return f"{self.field}: expected {self.expected!r}, the kernel shows {self.actual!r}"


def _seccomp_state() -> "tuple[str, int]":
    from .inspection import SECCOMP_MODES
    st = procfs.status("self")
    return (SECCOMP_MODES.get(int(st.get("Seccomp", "0")), "unknown"),
            int(st.get("Seccomp_filters", "0")))


def _env_keys(spec) -> "list[str]":
    """The names in the target's environment: the spec's, and what facilities set over
    it -- NOTIFY_SOCKET (notify), RUNTIME_DIRECTORY and the rest (directories),
    LISTEN_FDS, LISTEN_FDNAMES and, at exec, LISTEN_PID (listen) -- each by the
    facility's own prepare."""
    keys = set(spec.env)
    if getattr(spec, "notify", False):
        keys.add("NOTIFY_SOCKET")
    if getattr(spec, "directories", None) is not None:
        from . import directories
        keys |= set(directories.environment(directories.prepare(spec)))
    if getattr(spec, "listen", None):
        from . import listen
        keys |= set(listen.environment(listen.prepare(spec))) | {"LISTEN_PID"}
    return sorted(keys)


def expected(spec) -> dict:
    """What /proc/<pid> must show for a target started under spec by this process."""
    from . import caps, creds
    from .spawning import resolve
    spec = resolve(spec)
    denied: tuple = ()
    if spec.filesystem is not None:
        # As prepare does: the presets' capability drops, mounts and denied syscalls.
        from .filesystem import expand
        spec, expansion = expand(spec)
        denied = expansion.denied if expansion is not None else ()
    cp = creds.prepare(spec.user, spec.securebits, spec.namespaces)
    nsp = None
    if spec.namespaces is not None and spec.namespaces.any():
        from . import namespaces as nsmod
        nsp = nsmod.prepare(spec, cp)          # as the shim does; no side effects
    # In a new user namespace the target is root (or not) by its uid inside it.
    root = nsp.target_is_root(cp) if nsp is not None else creds.target_is_root(cp)
    bits = cp.securebits if cp else 0
    p = caps.prepare(spec.capabilities, root, bits)
    own_nnp = _own_nnp()
    nnp = spec.no_new_privs or own_nnp
    if root:
        permitted = p.bounding | p.inheritable | p.ambient
        if nnp:
            permitted &= p.permitted | p.ambient
        effective = permitted
    else:
        permitted = effective = p.ambient
    masks = {"bounding": p.bounding, "inheritable": p.inheritable, "ambient": p.ambient,
             "permitted": permitted, "effective": effective}
    uid: "int | None"
    gid: "int | None"
    if cp is not None:
        uid, gid, groups = cp.uid, cp.gid, sorted(set(cp.groups))
        if nsp is not None and "user" in nsp.new:
            # /proc shows ids as the reader's (host) namespace sees them.  Translate
            # through the spec's own maps where it gives them, not the prepared ones:
            # an expectation derived from the code under test could not catch its bug.
            uid_map, gid_map = _spec_maps(spec, nsp)
            uid = _outside(uid_map, uid)
            gid = _outside(gid_map, gid)
            groups = sorted({_outside(gid_map, g) for g in groups})
    else:
        uid, gid, groups = os.geteuid(), os.getegid(), sorted(set(os.getgroups()))
    out: "dict[str, Any]" = {
        "uids": {k: uid for k in ("real", "effective", "saved", "fs")},
        "gids": {k: gid for k in ("real", "effective", "saved", "fs")},
        "groups": groups,
        "capabilities": {k: caps.names(v) for k, v in masks.items()},
        "no_new_privs": nnp,
        "rlimits": {name: [r.soft, r.hard] for name, r in spec.rlimits.items()},
        "env_keys": _env_keys(spec),
    }
    if spec.user is not None and spec.user.dynamic:
        # Which id is picked at run time; verify() checks it is one from the dynamic
        # range, the same for all four uids and gids, registered to the spec's name.
        del out["uids"], out["gids"]
        out["dynamic_user"] = {"name": spec.name}
    if cp is None and (os.getresuid()[0] != os.geteuid() or
                       os.getresgid()[0] != os.getegid()):
        del out["uids"], out["gids"]       # we run with mixed ids: the target too
    if spec.oom_score_adj is not None:
        out["oom_score_adj"] = spec.oom_score_adj
    if spec.nice is not None:
        out["nice"] = spec.nice
    if spec.user is not None and spec.user.umask is not None:
        out["umask"] = f"{int(spec.user.umask, 8):04o}"
    if spec.cgroup is not None:
        from . import cgroups
        pc = cgroups.prepare(spec.cgroup)
        out["cgroup"] = {_cg_key(t.hierarchy): pc.path for t in pc.targets}
    mode, count = _seccomp_state()
    # The spec's filter, and those it brings besides (wrapperd.shim.prepare): the
    # restrictions (address_families, the filesystem presets' syscalls) and a dynamic
    # user's restrict_suid_sgid.
    if spec.seccomp is not None or spec.address_families is not None or denied or \
            (spec.user is not None and spec.user.dynamic):
        out["seccomp"] = ("filter", count + 1)     # at least one more than ours
    else:
        out["seccomp"] = (mode, count)
    ns = spec.namespaces
    out["namespaces"] = {}
    from .exposure import NS_CHECKS
    for field, proc, *_ in NS_CHECKS:
        v = getattr(ns, field, False) if ns is not None else False
        if v is True or isinstance(v, dict):
            out["namespaces"][proc] = "new"
        elif v is False:
            out["namespaces"][proc] = "caller"
        else:
            out["namespaces"][proc] = v          # a path to join
    return out


def _spec_maps(spec, nsp) -> "tuple[tuple, tuple]":
    """(uid_map, gid_map) as (inside, outside, count) triples: the spec's, when it lists
    them; else (user: true, a self-mapping) what the shim worked out."""
    user = spec.namespaces.user
    if isinstance(user, dict) and user.get("uid_map"):
        conv = lambda ms: tuple((m.inside, m.outside, m.count) for m in ms)  # noqa: E731
        return conv(user["uid_map"]), conv(user.get("gid_map") or ())
    return nsp.uid_map, nsp.gid_map


_outside = procfs.to_outside


def _own_nnp() -> bool:
    return procfs.status("self").get("NoNewPrivs") == "1"


def _cg_key(h) -> str:
    return "" if h.version == 2 else ",".join(h.controllers)


def verify(process, spec=None, *, seccomp: bool = False, namespaces: bool = False) -> list:
    """The differences between what the kernel shows for `process` (a Process or a pid)
    and what `spec` (default: the spec it was spawned with) implies; [] when they agree.

    Always compared: the four uids and gids (for a dynamic user: one id of the dynamic
    range, recorded in the registry for the spec's name), groups, the five capability sets exactly,
    NoNewPrivs, every rlimit the spec sets, oom_score_adj, nice, umask, the cgroup in
    every hierarchy joined, and the environment's keys.  With seccomp=True the seccomp
    mode and filter count; with namespaces=True each namespace is new, the caller's, or
    the one the spec joins."""
    from .inspection import inspect
    if spec is None:
        spec = getattr(process, "spec", None)
        if spec is None:
            raise TypeError("verify(pid) needs the spec to compare with")
    pid = getattr(process, "target_pid", None) or getattr(process, "pid", process)
    want = expected(spec)
    got = inspect(pid)
    diffs: list = []

    def cmp(field, exp, act):
        if exp != act:
            diffs.append(Difference(field, exp, act))

    for key in ("uids", "gids"):
        if key in want:
            for k, v in want[key].items():
                cmp(f"{key}.{k}", v, got[key][k])
    if "dynamic_user" in want:
        from . import dynamicuser
        uid = got["uids"]["real"]
        lo, hi = dynamicuser.DYNAMIC_RANGE
        if not lo <= uid <= hi:
            diffs.append(Difference("uids.real", f"a dynamic id in {lo}-{hi}", uid))
        for key in ("uids", "gids"):
            for k, v in got[key].items():
                cmp(f"{key}.{k}", uid, v)
        rec = dynamicuser.lookup(uid)
        cmp("dynamic_user.name", want["dynamic_user"]["name"],
            rec["name"] if rec is not None else "no record")
    cmp("groups", want["groups"], sorted(set(got["groups"])))
    for s in CAP_SETS:
        cmp(f"capabilities.{s}", want["capabilities"][s], got["capabilities"][s])
    cmp("no_new_privs", want["no_new_privs"], got["no_new_privs"])
    for name, lim in want["rlimits"].items():
        cmp(f"rlimits.{name}", lim, got["rlimits"].get(name))
    for key in ("oom_score_adj", "nice", "umask"):
        if key in want:
            cmp(key, want[key], got[key])
    cmp("env_keys", want["env_keys"], got["env_keys"])
    if "cgroup" in want:
        from . import cgroups
        have = cgroups.cgroup_of(pid)
        for key, path in want["cgroup"].items():
            hkey = "" if key == "" else tuple(key.split(","))
            cmp(f"cgroup[{key or 'v2'}]", path, have.get(hkey))
    if seccomp:
        mode, count = want["seccomp"]
        cmp("seccomp", mode, got["seccomp"])
        if mode == "filter":
            if got["seccomp_filters"] < count:
                diffs.append(Difference("seccomp_filters", f">= {count}",
                                        got["seccomp_filters"]))
        else:
            cmp("seccomp_filters", count, got["seccomp_filters"])
    if namespaces:
        for proc, kind in want["namespaces"].items():
            entry = got["namespaces"].get(proc)
            if entry is None:
                diffs.append(Difference(f"namespaces.{proc}", kind, "unreadable"))
            elif kind == "new":
                if entry["caller"]:
                    diffs.append(Difference(f"namespaces.{proc}", "a new namespace",
                                            "the caller's"))
            elif kind == "caller":
                if not entry["caller"]:
                    diffs.append(Difference(f"namespaces.{proc}", "the caller's",
                                            entry["id"]))
            else:
                try:
                    target = os.readlink(kind)
                except OSError:
                    target = None
                cmp(f"namespaces.{proc}", target, entry["id"])
    return diffs
