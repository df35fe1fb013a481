"""Read a live process's real privilege state from /proc/<pid> (sandbox.inspect()).

Named inspection.py, not inspect.py, so the module never shadows the function.

Works on any process, not only ours: capability sets by name, NoNewPrivs, seccomp mode
and filter count, the four uids and gids, groups, namespaces (and whether each is the
host's, i.e. pid 1's), a dynamic user's registered name, cgroups, rlimits,
oom_score_adj, nice, open fds and environment
keys.  Nothing here changes anything.
"""

from __future__ import annotations

import os

from . import procfs

__all__ = ["inspect", "read_limits", "NAMESPACES"]

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}


def read_limits(pid="self") -> dict:
    """{'NOFILE': [soft, hard], ...}; 'unlimited' stays a string."""
    names = {"Max cpu time": "CPU", "Max file size": "FSIZE", "Max data size": "DATA",
             "Max stack size": "STACK", "Max core file size": "CORE",
             "Max resident set": "RSS", "Max processes": "NPROC",
             "Max open files": "NOFILE", "Max locked memory": "MEMLOCK",
             "Max address space": "AS", "Max file locks": "LOCKS",
             "Max pending signals": "SIGPENDING", "Max msgqueue size": "MSGQUEUE",
             "Max nice priority": "NICE", "Max realtime priority": "RTPRIO",
             "Max realtime timeout": "RTTIME"}
    out = {}
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            for label, name in names.items():
                if line.startswith(label):
                    soft, hard = line[len(label):].split()[:2]
                    out[name] = [s if s == "unlimited" else int(s) for s in (soft, hard)]
    return out


def _ns(pid) -> "dict[str, str | None]":
    out: "dict[str, str | None]" = {}
    for n in NAMESPACES:
        try:
            out[n] = os.readlink(f"/proc/{pid}/ns/{n}")
        except OSError:
            out[n] = None
    return out


def inspect(pid) -> dict:
    """The process's privilege state, as plain data (JSON-ready)."""
    from . import caps
    st = procfs.status(pid)
    ids = lambda key: [int(x) for x in st[key].split()]   # noqa: E731
    capsets = {name: caps.names(int(st["Cap" + short], 16)) for name, short in
               (("inheritable", "Inh"), ("permitted", "Prm"), ("effective", "Eff"),
                ("bounding", "Bnd"), ("ambient", "Amb"))}
    ns = _ns(pid)
    host = _ns(1)
    mine = _ns("self")
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            oom = int(f.read())
    except OSError:
        oom = None
    try:
        nice = int(procfs.stat(pid)[18])                  # field 19
    except (OSError, IndexError, ValueError):
        nice = None
    try:
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        fds = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env_keys = sorted(e.split(b"=", 1)[0].decode("utf-8", "replace")
                              for e in f.read().split(b"\0") if e)
    except OSError:
        env_keys = None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            cgroup = [line.rstrip("\n") for line in f]
    except OSError:
        cgroup = []
    uids, gids = ids("Uid"), ids("Gid")
    from . import dynamicuser
    lo, hi = dynamicuser.DYNAMIC_RANGE
    # The registry's word on a uid of the dynamic range: which spec name holds it.
    dyn = dynamicuser.lookup(uids[0]) if lo <= uids[0] <= hi else None
    return {
        "pid": int(pid) if str(pid).isdigit() else os.getpid(),
        "name": st.get("Name"),
        "uids": dict(zip(("real", "effective", "saved", "fs"), uids, strict=True)),
        "gids": dict(zip(("real", "effective", "saved", "fs"), gids, strict=True)),
        "groups": [int(g) for g in st.get("Groups", "").split()],
        "dynamic_user": None if dyn is None else {"uid": uids[0], "name": dyn["name"]},
        "capabilities": capsets,
        "no_new_privs": st.get("NoNewPrivs") == "1",
        "seccomp": SECCOMP_MODES.get(int(st.get("Seccomp", "0")), "unknown"),
        "seccomp_filters": int(st.get("Seccomp_filters", "0")),
        # Whether it is in a Landlock domain: only if the kernel says so in status
        # (6.x does not); "unknown" otherwise.
        "landlock": st.get("Landlock", "unknown"),
        "umask": st.get("Umask"),
        # "host": the same as pid 1's (None when pid 1's cannot be read, e.g. a
        # non-dumpable pid 1); "caller": the same as the inspecting process's own.
        "namespaces": {n: {"id": v, "host": None if host.get(n) is None else
                           v == host[n], "caller": v == mine.get(n)}
                       for n, v in ns.items() if v is not None},
        "cgroup": cgroup,
        "rlimits": read_limits(pid),
        "oom_score_adj": oom,
        "nice": nice,
        "fds": fds,
        "env_keys": env_keys,
    }
