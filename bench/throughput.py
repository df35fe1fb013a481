"""make bench: what a launch costs the machine when launches overlap.

bench/run.py's throughput rows count launches per second, which move with whatever
else the machine does.  This counts CPU instead: the busy time of every CPU
(/proc/stat: user, nice, system, irq, softirq, steal -- so work the kernel defers to
its own threads, such as freeing namespaces, is counted too) over N launches of the
bench's sandbox (bench/run.py bench_spec) from 4 threads, divided by N.  The fast path
(ForkServer) and sandbox.spawn() alternate, `--rounds` times, and the median round is
printed; a short idle wait after each round lets deferred work land in it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def busy_ticks() -> int:
    """Busy clock ticks of all CPUs so far (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]


def one_round(fn, n: int) -> "tuple[float, float]":
    """(launches per second, busy CPU seconds per launch) of n launches from 4 threads."""
    with ThreadPoolExecutor(4) as ex:
        for f in [ex.submit(fn) for _ in range(8)]:       # warm the threads
            f.result()
        before, t = busy_ticks(), time.perf_counter()
        for f in [ex.submit(fn) for _ in range(n)]:
            f.result()
        wall = time.perf_counter() - t
        time.sleep(0.3)                                   # deferred work lands here
        busy = busy_ticks() - before
    return n / wall, busy / os.sysconf("SC_CLK_TCK") / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="launches per round (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    from run import bench_spec

    import sandbox
    from sandbox.forkserver import ForkServer
    spec = sandbox.Spec.from_dict(bench_spec(pid=True))

    def check(rc: "int | None", what: str) -> None:
        if rc != 0:
            raise SystemExit(f"bench: {what} exited {rc}")

    server = ForkServer().start()
    rows = {"fast path, 4 threads": lambda: check(server.spawn(spec).wait(), "fast path"),
            "sandbox.spawn() prepared, 4 threads":
                lambda: check(sandbox.spawn(spec).wait(), "sandbox.spawn")}
    got: dict = {name: [] for name in rows}
    try:
        for _ in range(a.rounds):
            for name, fn in rows.items():
                got[name].append(one_round(fn, a.n))
    finally:
        server.close()
    print(f"\n{'overlapping launches (median round)':<44} {'per second':>11} "
          f"{'busy CPU per launch':>20}")
    for name, rounds in got.items():
        rate = statistics.median(r for r, _ in rounds)
        cpu = statistics.median(c for _, c in rounds)
        print(f"{name:<44} {rate:>11.1f} {cpu * 1e3:>17.2f} ms")
    print(f"\n{a.rounds} rounds of {a.n} launches each; machine: {os.cpu_count()} cpus")
    return 0


if __name__ == "__main__":
    sys.exit(main())
