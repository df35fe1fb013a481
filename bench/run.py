"""make bench: launch /bin/true under an equivalent sandbox with each tool, many times,
and print median and spread per launch, with ratios computed within this one run.

The sandbox: drop CAP_SYS_ADMIN, no_new_privs, seccomp `default`, and new pid+ipc+uts
namespaces -- where the tool has each (the table says what each row applied).
Speed goals are ratios (docs/performance.md), never timed tests.

Rows: bare posix_spawn; `python -I -S -c pass` (the interpreter's own start); setpriv;
bwrap; `wrapperd --spec FILE` (the installed command: spec model, seccomp from its
cache after the first run); `wrapperd` flags mode (machined's command line: drop
CAP_SYS_ADMIN, uid 65534); `sandbox.spawn()` (the spec prepared once in this process, the lean shim
per launch); the fast path (sandbox.ForkServer: a fork per launch; its one-time start
is reported separately); and, not the sandbox, the fast path with an empty spec: its
own floor.  Rows are interleaved, one launch of each per round, so load
on the machine hits them alike.  Then throughput: 100 launches from 4 threads (fast
path, spawn()) against 100 sequential bwrap launches.
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


def spawn_wait(argv, pass_fds=(), open_fds=(), env=None, quiet=False):
    """posix_spawn + waitpid: the cheapest way Python can launch a process.  open_fds:
    ((fd, path), ...) opened read-only at those numbers in the child; quiet: stderr to
    /dev/null."""
    if pass_fds:
        p = subprocess.Popen(argv, pass_fds=pass_fds, env=env or {})
        rc = p.wait()
    else:
        actions = [(os.POSIX_SPAWN_OPEN, fd, path, os.O_RDONLY, 0) for fd, path in open_fds]
        if quiet:
            actions.append((os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0))
        pid = os.posix_spawn(argv[0], argv, env or {}, file_actions=actions)
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if rc != 0:
        raise SystemExit(f"bench: {argv[:3]}... exited {rc}")


def measure(todo, n: int, warmup: int = 3) -> list:
    """Time every row n times, interleaved (one launch of each row per round), so that
    a load change on the machine hits every row alike and the ratios stay fair."""
    live = []
    for name, applied, fn in todo:
        try:
            for _ in range(warmup):
                fn()
        except (OSError, SystemExit) as e:
            print(f"  {name}: skipped ({e})", file=sys.stderr)
            continue
        live.append((name, applied, fn, []))
    for _ in range(n):
        for _name, _applied, fn, samples in live:
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    for name, _applied, _fn, samples in live:
        print(f"  {name}: {statistics.median(samples) * 1e3:.2f} ms", file=sys.stderr)
    return [(name, applied, samples) for name, applied, _fn, samples in live]


def throughput(n: int, fast, plain, bwrap, rounds: int = 3) -> dict:
    """Wall time of n launches: from 4 threads (fast path, plain spawn) and sequential
    (bwrap); the three alternate, `rounds` times, and the median round is reported.
    {name: (launches, seconds)}."""
    from concurrent.futures import ThreadPoolExecutor
    walls: dict = {}

    def threaded(fn):
        with ThreadPoolExecutor(4) as ex:
            for f in [ex.submit(fn) for _ in range(4)]:       # warm the threads
                f.result()
            t = time.perf_counter()
            for f in [ex.submit(fn) for _ in range(n)]:
                f.result()
            return time.perf_counter() - t

    def sequential(fn):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t

    for _ in range(rounds):
        walls.setdefault("fast path, 4 threads", []).append(threaded(fast))
        walls.setdefault("sandbox.spawn() prepared, 4 threads", []).append(threaded(plain))
        if bwrap:
            walls.setdefault("bwrap, sequential", []).append(sequential(bwrap))
    return {name: (n, statistics.median(w)) for name, w in walls.items()}


def compiled_filter(spec: dict) -> bytes:
    sys.path.insert(0, ROOT)
    from sandbox.spec import Spec
    from wrapperd import shim
    return shim.prepare(Spec.from_dict(spec)).seccomp.program


def bench_spec(pid: bool) -> dict:
    return {"argv": [TRUE], "env": {"PATH": "/usr/bin:/bin"},
            "capabilities": {"drop": ["CAP_SYS_ADMIN"]}, "no_new_privs": True,
            "seccomp": {"profile": "default"},
            "namespaces": {"pid": pid, "ipc": True, "uts": True}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="launches per row (default 200)")
    ap.add_argument("--no-pidns", action="store_true",
                    help="leave out the pid namespace, in every row (to see its cost)")
    a = ap.parse_args()
    spec = bench_spec(pid=not a.no_pidns)
    tmp = tempfile.mkdtemp(prefix="wrapperd-bench-")
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    py = sys.executable
    todo = []                          # (name, applied, fn), measured together below

    def row(name, applied, fn):
        todo.append((name, applied, fn))

    print(f"bench: {a.n} launches of {TRUE} per row, rows interleaved", file=sys.stderr)
    row("bare posix_spawn", "-", lambda: spawn_wait([TRUE]))
    row("python3 -I -S -c pass", "-", lambda: spawn_wait([py, "-I", "-S", "-c", "pass"]))
    setpriv = shutil.which("setpriv")
    if setpriv:
        row("setpriv", "caps, nnp", lambda: spawn_wait(
            [setpriv, "--bounding-set=-sys_admin", "--no-new-privs", "--", TRUE]))
    bwrap = shutil.which("bwrap")
    pidns = not a.no_pidns
    applied = "caps, nnp, seccomp, " + ("pid+ipc+uts" if pidns else "ipc+uts")
    if bwrap:
        bw = [bwrap, "--dev-bind", "/", "/", "--cap-drop", "CAP_SYS_ADMIN"]
        bw += (["--unshare-pid"] if pidns else []) + ["--unshare-ipc", "--unshare-uts"]
        # The very program wrapperd loads for this spec (`sandbox seccomp compile`),
        # given to bwrap on fd 3.
        bpf = os.path.join(tmp, "filter.bpf")
        with open(bpf, "wb") as f:
            f.write(compiled_filter(spec))
        bw += ["--seccomp", "3"]
        row("bwrap", applied, lambda: spawn_wait(bw + ["--", TRUE], open_fds=((3, bpf),)))
    # Its seccomp cache in our temporary directory, not the machine's /var/cache.
    cache = os.path.join(tmp, "cache")
    os.mkdir(cache, 0o700)
    # The installed command (the static launcher, sandbox/launcher.c), as an init runs it.
    wrapperd = os.path.join(os.path.dirname(py), "wrapperd")
    if not os.access(wrapperd, os.X_OK):
        raise SystemExit(f"bench: no {wrapperd}: run `make venv`")
    row("wrapperd --spec FILE", applied,
        lambda: spawn_wait([wrapperd, "--spec", spec_path], env={"WRAPPERD_CACHE_DIR": cache}))
    # machined's command line (flags mode: Talos's shim); stderr quiet: where the host
    # forbids NOFILE 1048576 it warns on every start.
    row("wrapperd flags mode", "caps, uid", lambda: spawn_wait(
        [wrapperd, "-dropped-caps=cap_sys_admin", "-uid=65534", "--", TRUE], quiet=True))

    # The library: the same spec, prepared once in this process (names resolved, BPF
    # compiled), then the lean shim (python -I -S) per launch -- and the fork server.
    sys.path.insert(0, ROOT)
    import sandbox
    from sandbox.forkserver import ForkServer
    sspec = sandbox.Spec.from_dict(spec)

    def lib_spawn():
        rc = sandbox.spawn(sspec).wait()
        if rc != 0:
            raise SystemExit(f"bench: sandbox.spawn exited {rc}")

    row("sandbox.spawn() prepared", applied, lib_spawn)
    t = time.perf_counter()
    server = ForkServer().start()
    warmup = time.perf_counter() - t

    def fast_spawn():
        rc = server.spawn(sspec).wait()
        if rc != 0:
            raise SystemExit(f"bench: fast path exited {rc}")

    row("fast path (ForkServer)", applied, fast_spawn)
    # Not the sandbox: the fast path's own floor (request, fork, steps, exec, status),
    # to read against bare posix_spawn.
    empty = sandbox.Spec.from_dict({"argv": [TRUE], "env": spec["env"]})
    row("fast path, empty spec", "- (new session only)",
        lambda: server.spawn(empty).wait())
    try:
        rows = measure(todo, a.n)
        through = throughput(100, fast_spawn, lib_spawn, bwrap and (
            lambda: spawn_wait(bw + ["--", TRUE], open_fds=((3, bpf),))))
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)

    base = {name: statistics.median(s) for name, _a, s in rows}
    print(f"\n{'launcher':<26} {'applied':<36} {'median':>9} {'p10-p90 (ms)':>15} "
          f"{'x bare':>7} {'x py -S':>8} {'x bwrap':>8}")
    for name, applied, s in rows:
        q = statistics.quantiles(s, n=10)
        med = statistics.median(s)

        def ratio(ref, med=med):
            return f"{med / base[ref]:.2f}" if ref in base else "-"
        print(f"{name:<26} {applied:<36} {med * 1e3:>7.2f}ms "
              f"{q[0] * 1e3:>6.2f}-{q[-1] * 1e3:<7.2f} "
              f"{ratio('bare posix_spawn'):>7} {ratio('python3 -I -S -c pass'):>8} "
              f"{ratio('bwrap'):>8}")
    # The speed goals (docs/performance.md), as ratios from this one run.
    print("\ngoals (ratios of medians, this run):")
    for name, ref, goal in (("wrapperd flags mode", "python3 -I -S -c pass", 2.0),
                            ("wrapperd --spec FILE", "python3 -I -S -c pass", 3.0),
                            ("sandbox.spawn() prepared", "python3 -I -S -c pass", 2.0),
                            ("fast path (ForkServer)", "bwrap", 1.5)):
        if name in base and ref in base:
            r = base[name] / base[ref]
            print(f"  {name}: {r:.2f}x {ref} (goal <= {goal}x: "
                  f"{'met' if r <= goal else 'NOT met'})")
    print(f"\nfork server warm-up, once: {warmup * 1e3:.1f} ms (interpreter start and imports)")
    print(f"\n{'throughput':<48} {'launches':>8} {'wall':>9} {'per second':>11} {'x bwrap':>8}")
    ref = through.get("bwrap, sequential")
    for name, (count, wall) in through.items():
        r = f"{(count / wall) / (ref[0] / ref[1]):.2f}" if ref else "-"
        print(f"{name:<48} {count:>8} {wall * 1e3:>7.0f}ms {count / wall:>11.1f} {r:>8}")
    print(f"\nmachine: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} cpus, "
          f"python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
