"""make demo: a real service launched through wrapperd under a profile, then what the
kernel says it can really do, then the service stopped and its cgroup removed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from sandbox import cgroups
from sandbox.inspection import inspect


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


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (wrapperd drops privileges; it needs some to drop)")
        return 1
    port = free_low_port()
    cg = f"/wrapperd-demo-{os.getpid()}"
    spec = {
        "name": "web",
        "profile": "network-service",        # nobody, only CAP_NET_BIND_SERVICE (ambient)
        "argv": ["/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", "/usr/share/doc"],
        "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        "rlimits": {"NOFILE": [1024, 1024]},
        "oom_score_adj": 500,
        "cgroup": {"path": cg, "memory_max": 128 << 20, "pids_max": 64},
    }
    print(f"$ wrapperd --spec - --dry-run   # {spec['profile']} profile, merged and resolved")
    cmd = [sys.executable, "-m", "wrapperd", "--spec", "-"]
    resolved = subprocess.run(cmd + ["--dry-run"], input=json.dumps(spec).encode(),
                              stdout=subprocess.PIPE, check=True).stdout
    print("  " + json.dumps({k: v for k, v in json.loads(resolved).items()
                             if k in ("user", "capabilities", "no_new_privs", "cgroup")}))
    print(f"\n$ wrapperd --spec -   # python3 -m http.server {port} (a port below 1024)")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    try:
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    print(f"demo: the service exited with {proc.returncode}")
                    return 1
                time.sleep(0.05)
        else:
            print("demo: the service never answered")
            return 1
        print(f"  GET http://127.0.0.1:{port}/ -> {len(body)} bytes")
        print("\nWhat /proc says the service can really do:")
        show(inspect(proc.pid))   # wrapperd exec'd the service: same pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for h in cgroups.hierarchies():
            try:
                os.rmdir(h.mountpoint + cg)
            except OSError:
                pass
    print(f"\nstopped (exit status {proc.returncode}); cgroup {cg} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
