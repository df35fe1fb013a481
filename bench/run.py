"""make bench: launch /bin/true under an equivalent sandbox with each tool, many times,
and print median and spread per launch, with ratios computed within this one run.

The sandbox: drop CAP_SYS_ADMIN, no_new_privs, seccomp `default`, and new pid+ipc+uts
namespaces -- where the tool has each (the table says what each row applied).
Speed goals are ratios (README, issue 10), never timed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRUE = "/bin/true"


def timeit(fn, n: int, warmup: int = 3) -> "list[float]":
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def spawn_wait(argv, pass_fds=()):
    """posix_spawn + waitpid: the cheapest way Python can launch a process."""
    if pass_fds:
        p = subprocess.Popen(argv, pass_fds=pass_fds)
        rc = p.wait()
    else:
        pid = os.posix_spawn(argv[0], argv, {})
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if rc != 0:
        raise SystemExit(f"bench: {argv[:3]}... exited {rc}")


def features() -> dict:
    """What wrapperd applies in this build (steps that are not implemented are refused)."""
    sys.path.insert(0, ROOT)
    from wrapperd import shim
    return {"seccomp": "seccomp" not in shim.NOT_YET,
            "namespaces": "namespaces" not in shim.NOT_YET}


def bench_spec(feat: dict) -> dict:
    spec = {"argv": [TRUE], "env": {"PATH": "/usr/bin:/bin"},
            "capabilities": {"drop": ["CAP_SYS_ADMIN"]}, "no_new_privs": True}
    if feat["seccomp"]:
        spec["seccomp"] = {"profile": "default"}
    if feat["namespaces"]:
        spec["namespaces"] = {"pid": True, "ipc": True, "uts": True}
    return spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="launches per row (default 200)")
    a = ap.parse_args()
    feat = features()
    spec = bench_spec(feat)
    tmp = tempfile.mkdtemp(prefix="wrapperd-bench-")
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    py = sys.executable
    rows = []

    def row(name, applied, fn):
        try:
            samples = timeit(fn, a.n)
        except (OSError, SystemExit) as e:
            print(f"  {name}: skipped ({e})", file=sys.stderr)
            return
        rows.append((name, applied, samples))
        print(f"  {name}: {statistics.median(samples) * 1e3:.2f} ms", file=sys.stderr)

    print(f"bench: {a.n} launches of {TRUE} per row", file=sys.stderr)
    row("bare posix_spawn", "-", lambda: spawn_wait([TRUE]))
    row("python3 -I -S -c pass", "-", lambda: spawn_wait([py, "-I", "-S", "-c", "pass"]))
    setpriv = shutil.which("setpriv")
    if setpriv:
        row("setpriv", "caps, nnp", lambda: spawn_wait(
            [setpriv, "--bounding-set=-sys_admin", "--no-new-privs", "--", TRUE]))
    bwrap = shutil.which("bwrap")
    if bwrap:
        bw = [bwrap, "--dev-bind", "/", "/", "--cap-drop", "CAP_SYS_ADMIN"]
        applied = "caps, nnp"
        if feat["namespaces"]:
            bw += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
            applied += ", pid+ipc+uts"
        row("bwrap", applied, lambda: spawn_wait(bw + ["--", TRUE]))
    applied = "caps, nnp" + (", seccomp" if feat["seccomp"] else "") + \
        (", pid+ipc+uts" if feat["namespaces"] else "")
    row("wrapperd --spec FILE", applied,
        lambda: spawn_wait([py, "-I", "-m", "wrapperd", "--spec", spec_path]))
    shutil.rmtree(tmp, ignore_errors=True)

    base = {name: statistics.median(s) for name, _a, s in rows}
    print(f"\n{'launcher':<26} {'applied':<28} {'median':>9} {'p10-p90 (ms)':>15} "
          f"{'x bare':>7} {'x py -S':>8} {'x bwrap':>8}")
    for name, applied, s in rows:
        q = statistics.quantiles(s, n=10)
        med = statistics.median(s)

        def ratio(ref):
            return f"{med / base[ref]:.2f}" if ref in base else "-"
        print(f"{name:<26} {applied:<28} {med * 1e3:>7.2f}ms {q[0] * 1e3:>6.2f}-{q[-1] * 1e3:<7.2f} "
              f"{ratio('bare posix_spawn'):>7} {ratio('python3 -I -S -c pass'):>8} "
              f"{ratio('bwrap'):>8}")
    print(f"\nmachine: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} cpus, "
          f"python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
