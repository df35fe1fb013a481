#!/usr/bin/env python3
"""A small init on the sandbox library: three real services, each confined under the
`service` profile, supervised with a restart policy and backoff.

  cache   redis-server, ready when it says so itself (sd_notify: `notify`)
  proxy   systemd-socket-proxyd in front of it, socket-activated: this init binds the
          port (`listen`), the proxy gets it as fd 3 and runs with no capability
  worker  a job that asks the cache through the proxy every 0.2 s, and logs

Each service's stdout and stderr go to LOGDIR/NAME.log; what happens goes to
LOGDIR/events.jsonl, one JSON object a line (started, ready, exited, stopped).  SIGTERM
or SIGINT stops them all at once (SIGTERM to each cgroup, SIGKILL after the grace
period) and the init exits 0.  Run as root:

  python3 examples/init.py LOGDIR --port 6399 --cache-port 6398 --cgroup /example-init
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

import sandbox

WORKER = r"""
import socket, sys, time
while True:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        s.sendall(b"PING\r\n")
        print(time.strftime("%H:%M:%S"), s.recv(64).decode().strip(), flush=True)
    time.sleep(0.2)
"""
GRACE = 5.0


def services(a) -> dict:
    """name -> (spec, restart policy): "always" or "on-failure"."""
    base = {"profile": "service", "env": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}}
    return {
        "cache": ({**base, "name": f"{a.prefix}-cache", "notify": True,
                   "argv": ["/usr/bin/redis-server", "--port", str(a.cache_port),
                            "--bind", "127.0.0.1", "--supervised", "systemd",
                            "--daemonize", "no", "--save", "", "--dir",
                            f"/var/lib/{a.prefix}-cache"],
                   "directories": {"state": [f"{a.prefix}-cache"]}}, "always"),
        "proxy": ({**base, "name": f"{a.prefix}-proxy",
                   "argv": ["/lib/systemd/systemd-socket-proxyd",
                            f"127.0.0.1:{a.cache_port}"],
                   "listen": [{"type": "stream", "address": f"127.0.0.1:{a.port}",
                               "name": "redis"}]}, "on-failure"),
        "worker": ({**base, "name": f"{a.prefix}-worker",
                    "argv": ["/usr/bin/python3", "-I", "-c", WORKER, str(a.port)]},
                   "always"),
    }


class Init:
    def __init__(self, a):
        self.args, self.logdir = a, a.logdir
        self.table = services(a)
        self.running: "dict[str, sandbox.aio.AsyncProcess]" = {}
        self.restarts = {name: 0 for name in self.table}
        self.stopping = asyncio.Event()

    def event(self, what: str, name: str = "", **kw) -> None:
        line = json.dumps({"t": round(time.time(), 3), "event": what, "service": name, **kw})
        with open(os.path.join(self.logdir, "events.jsonl"), "a") as f:
            f.write(line + "\n")

    async def start(self, name: str) -> None:
        spec, _policy = self.table[name]
        log = os.path.join(self.logdir, f"{name}.log")
        cgroup = {"path": f"{self.args.cgroup}/{name}"}
        p = await sandbox.aspawn(dict(spec, cgroup=cgroup), stdout=log,
                                 stderr=sandbox.STDOUT)
        self.running[name] = p
        self.event("started", name, pid=p.process.target_pid)
        if spec.get("notify"):
            # Not "started" but "ready": what depends on it waits for this.
            await asyncio.wait_for(p.process.ready(), 30)
            self.event("ready", name, status=p.process.notify_status)

    async def supervise(self) -> None:
        for name in self.table:                 # in order: each after the one before
            await self.start(name)
        while not self.stopping.is_set():
            stop = asyncio.ensure_future(self.stopping.wait())
            any_exit = asyncio.ensure_future(sandbox.wait_any(self.running.values()))
            done, _ = await asyncio.wait({stop, any_exit},
                                         return_when=asyncio.FIRST_COMPLETED)
            if any_exit not in done:
                any_exit.cancel()
                break
            stop.cancel()
            p = any_exit.result()
            name = next(n for n, q in self.running.items() if q is p)
            del self.running[name]
            reason = str(p.exit_reason)
            p.close()
            self.event("exited", name, reason=reason, returncode=p.returncode)
            policy = self.table[name][1]
            if policy == "on-failure" and p.returncode == 0:
                continue
            # Backoff: 0.1 s, doubled per restart, at most 5 s; SIGTERM cuts it short.
            delay = min(5.0, 0.1 * 2 ** self.restarts[name])
            self.restarts[name] += 1
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                break
            except TimeoutError:
                pass
            await self.start(name)
        await self.stop_all()

    async def stop_all(self) -> None:
        procs = list(self.running.items())
        codes = await asyncio.gather(*(p.stop(GRACE) for _, p in procs))
        for (name, p), rc in zip(procs, codes, strict=True):
            self.event("stopped", name, reason=str(p.exit_reason), returncode=rc)
            p.close()
        self.running.clear()
        self.event("down")


def main() -> int:
    ap = argparse.ArgumentParser(description="A small init on the sandbox library.")
    ap.add_argument("logdir", help="where the services' logs and events.jsonl go")
    ap.add_argument("--port", type=int, default=6399, help="the proxy's port (default 6399)")
    ap.add_argument("--cache-port", type=int, default=6398, help="redis's port (default 6398)")
    ap.add_argument("--cgroup", default="/example-init",
                    help="the cgroup the services' cgroups go under (default /example-init)")
    ap.add_argument("--prefix", default="example-init",
                    help="the services' names (dynamic users, directories) start so")
    a = ap.parse_args()
    os.makedirs(a.logdir, exist_ok=True)

    async def run() -> None:
        init = Init(a)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, init.stopping.set)
        # Orphans a service leaves us (we may be a subreaper or pid 1): reap() keeps
        # each sandbox's own status for its Process.
        loop.add_signal_handler(signal.SIGCHLD, sandbox.reap)
        try:
            await init.supervise()
        except BaseException:
            await init.stop_all()               # nothing left behind, whatever failed
            raise
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
