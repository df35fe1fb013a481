"""make demo: a real service launched with sandbox.spawn() twice -- unconfined, then
under a profile -- and each time what the kernel says it can really do
(sandbox.inspect), its exposure score, verify(), then the service stopped and its
cgroup removed."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request

import sandbox
from sandbox import cgroups
from sandbox.spawning import DEVNULL, build_spec


def free_low_port() -> int:
    for port in range(880, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("demo: no free port below 1024 on 127.0.0.1")


def show(info: dict) -> None:
    print(f"  pid {info['pid']} ({info['name']})")
    print(f"  uids {list(info['uids'].values())}  gids {list(info['gids'].values())}  "
          f"groups {info['groups']}")
    for k, v in info["capabilities"].items():
        print(f"  cap {k:<11} {', '.join(v) if len(v) < 8 else f'{len(v)} caps'}" if v
              else f"  cap {k:<11} -")
    print(f"  no_new_privs {info['no_new_privs']}  seccomp {info['seccomp']}")
    print(f"  oom_score_adj {info['oom_score_adj']}  NOFILE {info['rlimits']['NOFILE']}")
    for line in info["cgroup"]:
        if "memory" in line or "pids" in line or line.startswith("0::"):
            print(f"  cgroup {line}")
    print(f"  fds {sorted(info['fds'])}  env {info['env_keys']}")


def serve(spec: dict, port: int, label: str) -> int:
    """Spawn the service under spec, wait until it answers, show what the kernel says
    it can do and its exposure score; stop() ends it and the context manager removes its
    cgroup.  Returns the exposure score x 10 (for the summary)."""
    with sandbox.spawn(spec, stderr=DEVNULL) as proc:
        for _ in range(200):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"demo: the service exited with {proc.returncode}")
                time.sleep(0.05)
        else:
            raise SystemExit("demo: the service never answered")
        print(f"  GET http://127.0.0.1:{port}/ -> {len(body)} bytes   (pid {proc.pid})")
        print(f"\n  What /proc says the {label} service can really do:")
        show(sandbox.inspect(proc.pid))   # wrapperd exec'd the service: same pid
        report = sandbox.exposure.score(proc)
        print(f"\n  Exposure ({label}), worst checks first:")
        for line in report.format().splitlines()[:6]:
            print("    " + line)
        print(f"  → {report.score:.1f} {report.band}")
        diffs = sandbox.verify(proc)
        print("  verify(): " + ("the kernel shows exactly what the spec asked" if not diffs
                                else "; ".join(map(str, diffs))))
        st = proc.stats()
        print(f"  stats(): {st['pids']} process(es), rss {st['rss'] >> 10} KiB")
        proc.stop(5).wait()     # SIGTERM to its cgroup, SIGKILL after 5 s
    print(f"  stopped (exit status {proc.returncode})")
    return report.score


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (wrapperd drops privileges; it needs some to drop)")
        return 1
    port = free_low_port()
    cg = f"/wrapperd-demo-{os.getpid()}"
    argv = ["/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1",
            "--directory", "/usr/share/doc"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    before = {"name": "web", "argv": argv, "env": env, "no_new_privs": False}
    after = {
        "name": "web",
        "profile": "network-service",        # nobody, only CAP_NET_BIND_SERVICE (ambient)
        "argv": argv, "env": env,
        "rlimits": {"NOFILE": [1024, 1024]},
        "oom_score_adj": 500,
        "cgroup": {"path": cg, "memory_max": 128 << 20, "pids_max": 64},
    }
    print(f"$ sandbox exposure --profile {after['profile']}   # offline, before running it")
    offline = sandbox.exposure.score(sandbox.Spec.from_dict(after))
    print(f"  {offline.score:.1f} {offline.band}  (unconfined spec: "
          f"{sandbox.exposure.score(sandbox.Spec.from_dict(before)).score:.1f})")
    resolved = build_spec(after)
    print("  resolved: " + json.dumps({k: v for k, v in resolved.to_dict().items()
                                       if k in ("user", "capabilities", "no_new_privs")}))

    print(f"\n== BEFORE: sandbox.spawn(python3 -m http.server {port}), no confinement")
    score_before = serve(before, port, "unconfined")
    print(f"\n== AFTER: the same service, profile {after['profile']}, cgroup {cg}")
    score_after = serve(after, port, "confined")
    left = [h.mountpoint + cg for h in cgroups.hierarchies()
            if os.path.isdir(h.mountpoint + cg)]
    print(f"\nexposure {score_before:.1f} -> {score_after:.1f}; "
          f"cgroup {cg} {'LEFT BEHIND: ' + ', '.join(left) if left else 'removed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
