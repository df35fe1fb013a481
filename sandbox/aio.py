"""asyncio: aspawn(), wait_any(), and a process whose wait, stop and pipes are awaited,
in the manner of asyncio.create_subprocess_exec.

The target's exit is seen through its pidfd (loop.add_reader: readable once it has
exited), so waiting costs no thread and no polling; where the kernel has no pidfds a
wait runs in the loop's executor.  spawn() itself blocks for a few tens of ms (the
shim's setup), so aspawn() runs it in the executor; cancelled meanwhile, it stops and
cleans up what that spawn() started as soon as it returns: nothing is left running.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess

from .errors import SandboxError

__all__ = ["aspawn", "wait_any", "AsyncProcess"]


class AsyncProcess:
    """A confined target, awaited.  `pid`, `spec`, `returncode`, `exit_reason`;
    `stdin` (asyncio.StreamWriter), `stdout`/`stderr` (asyncio.StreamReader) where
    PIPE was asked; `process`: the sandbox.Process underneath (stats(), processes(),
    verify, inspect).  `async with` waits for the target on exit (stops it if the block
    raised), then cleans up, as Process does."""

    def __init__(self, proc):
        self.process = proc
        self.pid = proc.pid
        self.spec = proc.spec
        self.stdin: "asyncio.StreamWriter | None" = None
        self.stdout: "asyncio.StreamReader | None" = None
        self.stderr: "asyncio.StreamReader | None" = None
        self._exited: "asyncio.Future | None" = None

    async def _connect(self) -> "AsyncProcess":
        loop = asyncio.get_running_loop()
        p = self.process
        for name in ("stdout", "stderr"):
            f = getattr(p, name)
            if f is not None:
                reader = asyncio.StreamReader(loop=loop)
                protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                await loop.connect_read_pipe(functools.partial(_same, protocol), f)
                setattr(self, name, reader)
        if p.stdin is not None:
            transport, proto = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop=loop), p.stdin)
            self.stdin = asyncio.StreamWriter(transport, proto, None, loop)
        return self

    def __repr__(self) -> str:
        return f"<sandbox.aio.AsyncProcess {self.process!r}>"

    # ------------------------------------------------------------------ state
    @property
    def returncode(self) -> "int | None":
        return self.process.returncode

    @property
    def exit_reason(self):
        return self.process.exit_reason

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    # ------------------------------------------------------------------ waiting
    def _exit(self) -> "asyncio.Future":
        """A future done once the target has exited (not yet reaped)."""
        if self._exited is None:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            fd = self.process.pidfd
            if fd is None:
                def waited(_w) -> None:
                    if not fut.done():
                        fut.set_result(None)
                loop.run_in_executor(None, self.process.wait).add_done_callback(waited)
            else:
                def readable() -> None:
                    loop.remove_reader(fd)
                    if not fut.done():
                        fut.set_result(None)
                loop.add_reader(fd, readable)
            self._exited = fut
        return self._exited

    async def wait(self, group: bool = False) -> int:
        """Until the target exits; its returncode (and, group=True, until its cgroup
        is empty: Process.wait's).  Cancelling the wait leaves the target running."""
        if self.process.returncode is None:
            await asyncio.shield(self._exit())
        rc = self.process.wait(0)       # exited: reaps at once
        if group:
            if self.spec.cgroup is None:
                raise SandboxError("wait(group=True) needs the spec's cgroup")
            while self.process.processes():
                await asyncio.sleep(0.02)   # v1 cgroups have nothing to await on
        return rc

    async def stop(self, grace: float = 10.0) -> int:
        """SIGTERM to the whole sandbox, SIGKILL to all of it after `grace` seconds;
        its returncode.  Many at once: asyncio.gather(*(p.stop() for p in procs))
        takes one grace period."""
        p = self.process
        if p.returncode is None:
            p._signal_all(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), grace)
            except TimeoutError:
                p.kill()
        rc = await self.wait()
        if p.spec.cgroup is not None and p.processes():
            p._kill_cgroup()
        return rc

    async def communicate(self, input: "bytes | None" = None
                          ) -> "tuple[bytes | None, bytes | None]":
        """As asyncio.subprocess.Process.communicate: (stdout, stderr) of the pipes."""
        if input is not None and self.stdin is not None:
            self.stdin.write(input)
            await self.stdin.drain()
        if self.stdin is not None:
            self.stdin.close()
        out, err = await asyncio.gather(
            self.stdout.read() if self.stdout is not None else _none(),
            self.stderr.read() if self.stderr is not None else _none())
        await self.wait()
        return out, err

    def close(self) -> None:
        """Process.close(): what the sandbox holds (stopping a target still running)."""
        self.process.close()

    async def __aenter__(self) -> "AsyncProcess":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                await self.stop(self.process.exit_grace)
            else:
                await self.wait()
        finally:
            self.close()


def _same(x):
    return x


async def _none() -> None:
    return None


async def aspawn(target=None, *, stdin=None, stdout=None, stderr=None, **fields):
    """sandbox.spawn(), awaited: an AsyncProcess once the target has been exec'd.
    Raises what spawn() raises.  Cancelled while the shim sets up, the target that
    spawn() then starts is killed and cleaned up: nothing is left running."""
    from .spawning import spawn
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, functools.partial(
        spawn, target, stdin=stdin, stdout=stdout, stderr=stderr, **fields))
    try:
        proc = await asyncio.shield(fut)
    except asyncio.CancelledError:
        def cleanup(f) -> None:
            if not f.cancelled() and f.exception() is None:
                p = f.result()
                p.kill()
                p.close()
        fut.add_done_callback(cleanup)
        raise
    return await AsyncProcess(proc)._connect()


async def wait_any(procs) -> "AsyncProcess":
    """The first of procs (AsyncProcess) to exit, reaped; the others keep running."""
    procs = list(procs)
    if not procs:
        raise ValueError("wait_any() of no processes")
    tasks = {asyncio.ensure_future(p.wait()): p for p in procs}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
    first = next(iter(done))
    first.result()                      # its error, if any
    return tasks[first]


# subprocess's names, for callers that import them from here
PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
