"""make bench: what a confined service keeps alive beside its target, in memory.

Starts N services (default 50) side by side of the bench's sandbox (bench/run.py
bench_spec: drop CAP_SYS_ADMIN, no_new_privs, seccomp `default`, new pid+ipc+uts
namespaces) with `/bin/sleep 600` as the target, one way of starting at a time: bwrap
(the same namespaces and the very BPF program), `wrapperd --spec FILE`,
`sandbox.spawn()` and the fast path (ForkServer).  Once every target runs, it sums the
Pss of /proc/PID/smaps_rollup over each service's helpers -- every process of the
service's tree but the target -- and prints the mean per service and the ratio
against bwrap's.  PSS divides a page shared by several processes among them, so the
50 side by side share what they can, as on a host running many services.  The fork
server itself is one per caller, not per service: it is shown on its own line, and
divided by N.  Everything started is killed and reaped afterwards, by pid (pidfds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from run import bench_spec, compiled_filter  # noqa: E402

SLEEP = "/bin/sleep"


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise OSError(f"no Pss in /proc/{pid}/smaps_rollup")


def children(pid: int) -> "list[int]":
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def tree(top: int) -> "list[int]":
    out, todo = [], [top]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            todo += children(pid)
        except OSError:
            pass
    return out


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def is_target(pid: int, sleep: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == sleep
    except OSError:
        return False


class Service:
    """One started service: the top of its tree (our child, or the fork server's) and
    how to reap it."""

    def __init__(self, top: int, reap):
        self.top, self.reap = top, reap
        self.pidfds: "list[int]" = []

    def split(self, sleep: str) -> "tuple[list[int], list[int]] | None":
        """(helpers, targets) once the target runs, else None."""
        pids = tree(self.top)
        targets = [p for p in pids if is_target(p, sleep)]
        if not targets:
            return None
        return [p for p in pids if p not in targets], targets

    def kill(self) -> None:
        for pid in tree(self.top):
            try:
                self.pidfds.append(os.pidfd_open(pid))
            except OSError:
                pass
        for fd in self.pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        self.reap()
        for fd in self.pidfds:
            os.close(fd)


def measure(name: str, start, n: int, sleep: str, extra=None) -> dict:
    services: "list[Service]" = []
    try:
        for _ in range(n):
            services.append(start())
        deadline = time.monotonic() + 60
        while True:
            split = [s.split(sleep) for s in services]
            if all(split):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {name}: targets not running after 60 s")
            time.sleep(0.05)
        time.sleep(0.5)                # the helpers settle (bwrap's outer one waits)
        split = [s.split(sleep) for s in services]
        per_service, names = [], set()
        for helpers, _targets in split:
            per_service.append(sum(pss_kb(p) for p in helpers))
            names.add(" + ".join(sorted(comm(p) for p in helpers)))
        out = {"name": name, "pss_kb": per_service, "helpers": sorted(names)}
        if extra is not None:
            out.update(extra())
        return out
    finally:
        for s in services:
            s.kill()
        for s in services:
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="services side by side (default 50)")
    ap.add_argument("--json", action="store_true", help="the numbers as JSON")
    a = ap.parse_args()
    spec = dict(bench_spec(pid=True), argv=[SLEEP, "600"])
    sleep = os.path.realpath(SLEEP)
    tmp = tempfile.mkdtemp(prefix="wrapperd-resident-")
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    cache = os.path.join(tmp, "cache")
    os.mkdir(cache, 0o700)
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    rows = []
    try:
        bwrap = shutil.which("bwrap")
        if bwrap:
            bpf = os.path.join(tmp, "filter.bpf")
            with open(bpf, "wb") as f:
                f.write(compiled_filter(spec))
            bw = [bwrap, "--dev-bind", "/", "/", "--cap-drop", "CAP_SYS_ADMIN",
                  "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--seccomp", "3",
                  "--", SLEEP, "600"]

            def start_bwrap():
                actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                           (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                           (os.POSIX_SPAWN_OPEN, 3, bpf, os.O_RDONLY, 0)]
                pid = os.posix_spawn(bw[0], bw, {}, file_actions=actions)
                return Service(pid, lambda: os.waitpid(pid, 0))
            rows.append(measure("bwrap", start_bwrap, a.n, sleep))
        else:
            print("bench: no bwrap: no reference row", file=sys.stderr)

        launcher = os.path.join(os.path.dirname(sys.executable), "wrapperd")
        cli = [launcher] if os.access(launcher, os.X_OK) else \
            [sys.executable, "-I", "-m", "wrapperd"]

        def start_cli():
            p = subprocess.Popen(cli + ["--spec", spec_path], **quiet,
                                 env={"PATH": "/usr/bin:/bin", "WRAPPERD_CACHE_DIR": cache})
            return Service(p.pid, p.wait)
        rows.append(measure("wrapperd --spec FILE", start_cli, a.n, sleep))

        import sandbox
        from sandbox.forkserver import ForkServer
        from sandbox.spawning import DEVNULL
        sspec = sandbox.Spec.from_dict(spec)

        def start_lib(spawn):
            def start():
                p = spawn(sspec, stdin=DEVNULL, stdout=DEVNULL)
                return Service(p.pid, lambda: (p.wait(), p.close()))
            return start
        rows.append(measure("sandbox.spawn()", start_lib(sandbox.spawn), a.n, sleep))
        with ForkServer() as server:
            def server_pss():
                return {"server_pss_kb": pss_kb(server.pid)}
            rows.append(measure("fast path (ForkServer)", start_lib(server.spawn), a.n,
                                sleep, server_pss))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    ref = next((statistics.mean(r["pss_kb"]) for r in rows if r["name"] == "bwrap"), None)
    print(f"\nresident cost: {a.n} services side by side, target {SLEEP} 600; Pss of "
          "every process of a service's tree but the target (/proc/PID/smaps_rollup)")
    print(f"{'launcher':<24} {'helpers per service':<36} {'PSS per service':>16} "
          f"{'min-max (MB)':>13} {'x bwrap':>8}")
    for r in rows:
        mean = statistics.mean(r["pss_kb"])
        ratio = f"{mean / ref:.2f}" if ref else "-"
        print(f"{r['name']:<24} {'; '.join(r['helpers']):<36} {mean / 1024:>13.2f} MB "
              f"{min(r['pss_kb']) / 1024:>6.2f}-{max(r['pss_kb']) / 1024:<6.2f} {ratio:>8}")
        if "server_pss_kb" in r:
            share = r["server_pss_kb"] / a.n
            ratio = f"{(mean + share) / ref:.2f}" if ref else "-"
            server = f"(the server: {r['server_pss_kb'] / 1024:.1f} MB, one per caller)"
            print(f"{'  + the fork server / N':<24} {server:<36} "
                  f"{(mean + share) / 1024:>13.2f} MB {'':>13} {ratio:>8}")
    print(f"\nmachine: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} cpus, "
          f"python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
