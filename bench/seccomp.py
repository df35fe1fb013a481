"""Seccomp cost: ns per syscall, unfiltered and under an allow-all filter, `default` and
`strict`, with the ratio to allow-all (what the rules themselves add to the kernel's
fixed cost of running any filter).  Not a test: run it and read the table.

getppid and read/write are allowed without conditions, so since Linux 5.11 the kernel's
per-syscall action cache skips the program for them; ioctl has argument rules in both
profiles, so every call runs the BPF program -- that column is the program's own cost.

    .venv/bin/python bench/seccomp.py [--loops N] [--repeat R]

Each cell is the best of R runs of tests/seccomp_probe.c (raw syscalls, built with gcc)
started through wrapperd, so the filter is exactly the one wrapperd loads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = (
    ("unfiltered", None),
    ("allow-all filter", {"default_action": "allow"}),
    ("default", {"profile": "default"}),
    ("strict", {"profile": "strict"}),
)


def build(tmp: str) -> str:
    out = os.path.join(tmp, "seccomp_probe")
    subprocess.run(["gcc", "-O2", "-o", out, os.path.join(ROOT, "tests", "seccomp_probe.c")],
                   check=True)
    return out


def measure(probe: str, sc, loops: int) -> "tuple[int, int, int]":
    spec = {"argv": [probe, f"getppid:{loops}", f"rw:{loops}", f"ioctl:{loops}"],
            "env": {"PATH": "/usr/bin:/bin"}}
    if sc is not None:
        spec["seccomp"] = sc
    # WRAPPERD_CACHE_DIR empty: no seccomp cache written to the machine's /var/cache.
    p = subprocess.run([sys.executable, "-I", "-m", "wrapperd", "--spec", "-"],
                       input=json.dumps(spec).encode(), capture_output=True, cwd=ROOT,
                       check=False, env={**os.environ, "WRAPPERD_CACHE_DIR": ""})
    if p.returncode != 0:
        raise SystemExit(f"wrapperd failed ({p.returncode}): {p.stderr.decode().strip()}")
    (ppid, e1), (rw, e2), (ioctl, e3) = json.loads(p.stdout)["results"]
    if e1 or e2 or e3 not in (0, 9):          # ioctl(-1, ...) is EBADF
        raise SystemExit(f"probe reported errno {e1 or e2 or e3}")
    return ppid, rw, ioctl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is needed to build the probe")
    sys.path.insert(0, ROOT)
    from sandbox import seccomp
    from sandbox.spec import Seccomp
    with tempfile.TemporaryDirectory() as tmp:
        probe = build(tmp)
        best = {}
        for _ in range(a.repeat):                     # interleaved: drift hits every case
            for name, sc in CASES:
                got = measure(probe, sc, a.loops)
                best[name] = tuple(min(x, y) for x, y in zip(best.get(name, got), got, strict=True))
    base = best["allow-all filter"]
    print(f"{a.loops} calls each, best of {a.repeat}, {os.uname().release}, "
          f"{os.cpu_count()} CPUs\n")
    print("| filter | BPF insns | getppid ns | ratio | read/write ns | ratio | ioctl ns "
          "| ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, sc in CASES:
        insns = "-" if sc is None else str(seccomp.prepare(Seccomp.load(sc, "seccomp"))
                                           .instructions)
        row = "".join(f" {v} | {v / b:.2f} |" for v, b in zip(best[name], base, strict=True))
        print(f"| {name} | {insns} |{row}")


if __name__ == "__main__":
    main()
