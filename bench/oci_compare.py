"""Run one OCI config.json through an OCI runtime (runc, or crun where the host's cgroup
mode allows it) and through wrapperd, with the probe (tests/probe.py) as the process,
and print what each probe saw side by side.  Not a test: read the table.

    .venv/bin/python bench/oci_compare.py [CONFIG.json] [--runtime runc|crun]
                                          [--keep-args] [--json]

Without CONFIG a small sample is used (caps, rlimits, seccomp, every namespace).  The
config's `process.args` are replaced by the probe (unless --keep-args: then the program
must print the probe's JSON itself).  Its `root` becomes a throw-away bundle root, an
empty directory with /usr, /lib, /lib64, /bin, /sbin, /etc and the probe's directory
bound read-only, and `/proc` and a tmpfs `/dev` are mounted there if the config has none;
wrapperd runs the imported spec (sandbox.oci) on the host's root, without the bundle's
mounts (they only build the runtime's rootfs).  What the import cannot honour is listed
first.  Exit status: 0 when every compared field agrees, 1 otherwise.  Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sandbox.oci import import_config  # noqa: E402

PYTHON = "/usr/bin/python3"
HOST_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]
FIELDS = ("CapBnd", "CapPrm", "CapEff", "CapInh", "CapAmb", "NoNewPrivs", "Seccomp",
          "Seccomp_filters", "Uid", "Gid", "Groups")

SAMPLE = {
    "ociVersion": "1.0.2",
    "process": {"user": {"uid": 65534, "gid": 65534, "additionalGids": [4242]},
                "args": [], "env": ENV, "cwd": "/", "noNewPrivileges": True,
                "capabilities": {s: ["CAP_NET_BIND_SERVICE"] for s in
                                 ("bounding", "effective", "permitted", "inheritable",
                                  "ambient")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}],
                "oomScoreAdj": 200},
    "root": {"path": "rootfs"},
    "hostname": "oci-compare",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "network",
                                                   "mount", "cgroup")],
              "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                          "architectures": ["SCMP_ARCH_X86_64"],
                          "syscalls": [{"names": ["unshare", "setns", "ptrace"],
                                        "action": "SCMP_ACT_ERRNO"}]}},
}


def make_bundle(tmp: str, config: dict, probe_dir: str) -> None:
    rootfs = os.path.join(tmp, "rootfs")
    for d in HOST_DIRS + (probe_dir, "/tmp", "/proc", "/dev"):
        if os.path.islink(d):
            os.makedirs(os.path.dirname(rootfs + d), exist_ok=True)
            os.symlink(os.readlink(d), rootfs + d)
        elif os.path.isdir(d):
            os.makedirs(rootfs + d, exist_ok=True)
    config["root"] = {"path": "rootfs", "readonly": bool((config.get("root") or {})
                                                         .get("readonly"))}
    mounts = list(config.get("mounts") or [])
    have = {m.get("destination") for m in mounts}
    if "/proc" not in have:
        mounts.insert(0, {"destination": "/proc", "type": "proc", "source": "proc"})
    if "/dev" not in have:
        mounts.insert(1, {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]})
    mounts += [{"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}
               for d in HOST_DIRS + (probe_dir,) if os.path.isdir(d)
               and not os.path.islink(d) and d not in have]
    config["mounts"] = mounts
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f)


def run_runtime(runtime: str, bundle: str) -> "dict | str":
    cid = f"oci-compare-{uuid.uuid4().hex[:8]}"
    try:
        p = subprocess.run([runtime, "run", "--bundle", bundle, cid], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)
    finally:
        subprocess.run([runtime, "delete", "--force", cid], capture_output=True)
    if p.returncode != 0:
        return f"exit {p.returncode}: {p.stderr.decode().strip()}"
    return json.loads(p.stdout)


def run_wrapperd(config: dict) -> "tuple[dict | str, list]":
    spec, lost = import_config(config)
    d = spec.to_dict()
    d["mounts"] = []            # they build the runtime's rootfs; wrapperd keeps the host's
    p = subprocess.run([sys.executable, "-I", "-m", "wrapperd", "--spec", "-"],
                       input=json.dumps(d).encode(), capture_output=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "WRAPPERD_CACHE_DIR": ""})
    if p.returncode != 0:
        return f"exit {p.returncode}: {p.stderr.decode().strip()}", lost
    return json.loads(p.stdout), lost


def view(report: dict) -> dict:
    own = {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}
    st = report["status"]
    limits = {}
    for line in report["limits"].splitlines()[1:]:
        parts = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
        limits[f"rlimit {parts[0]}"] = f"{parts[1]} / {parts[2]}"
    return {**{k: (st.get(k) or "").replace("\t", " ") for k in FIELDS},
            "new namespaces": " ".join(sorted(n for n, v in report["ns"].items()
                                              if v != own.get(n))) or "-",
            "pid is 1": report["pid"] == 1, "hostname": report["hostname"],
            "oom_score_adj": report["oom_score_adj"], **limits}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", help="an OCI config.json (default: a sample)")
    ap.add_argument("--runtime", default="runc", help="runc (default) or crun")
    ap.add_argument("--keep-args", action="store_true",
                    help="keep process.args (it must print the probe's JSON)")
    ap.add_argument("--json", action="store_true", help="print both views as JSON")
    a = ap.parse_args(argv)
    runtime = shutil.which(a.runtime)
    if runtime is None:
        print(f"oci_compare: {a.runtime} is not installed", file=sys.stderr)
        return 2
    if a.config:
        with open(a.config) as f:
            config = json.load(f)
    else:
        config = json.loads(json.dumps(SAMPLE))
    with tempfile.TemporaryDirectory(prefix="oci-compare-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        probe_dir = os.path.join(tmp, "probe")
        os.makedirs(probe_dir)
        os.chmod(probe_dir, 0o755)
        probe = os.path.join(probe_dir, "probe.py")
        shutil.copy(os.path.join(ROOT, "tests", "probe.py"), probe)
        os.chmod(probe, 0o644)
        if not a.keep_args:
            config.setdefault("process", {})["args"] = [PYTHON, "-I", probe]
            config["process"].setdefault("env", ENV)
        make_bundle(tmp, config, probe_dir)
        theirs = run_runtime(runtime, tmp)
        ours, lost = run_wrapperd(config)
    for line in lost:
        print(f"not honoured: {line}")
    if isinstance(theirs, str) or isinstance(ours, str):
        print(f"{a.runtime}: {theirs if isinstance(theirs, str) else 'ok'}")
        print(f"wrapperd: {ours if isinstance(ours, str) else 'ok'}")
        return 1
    t, o = view(theirs), view(ours)
    if a.json:
        print(json.dumps({a.runtime: t, "wrapperd": o}, indent=2))
    else:
        w = max(len(k) for k in t)
        print(f"{'field':<{w}}  {a.runtime:<24}  {'wrapperd':<24}")
        for k in t:
            mark = "" if t[k] == o.get(k) else "   <-- differs"
            print(f"{k:<{w}}  {str(t[k]):<24}  {str(o.get(k)):<24}{mark}")
    return 0 if t == o else 1


if __name__ == "__main__":
    sys.exit(main())
