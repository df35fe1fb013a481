"""sandbox.aspawn(), await proc.wait(), wait_any(), stop() of many at once, and a
cancelled aspawn that leaves nothing running -- with real targets."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import sandbox
from tests.conftest import TARGET_ENV, until

SH = "/bin/sh"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_aspawn_pipes_wait_and_exit_reason():
    async def main():
        p = await sandbox.aspawn([SH, "-c", "read x; echo \"got $x\"; echo oops >&2; exit 4"],
                                 env=TARGET_ENV, stdin=sandbox.PIPE, stdout=sandbox.PIPE,
                                 stderr=sandbox.PIPE)
        async with p:
            out, err = await p.communicate(b"hello\n")
            return out, err, await p.wait(), str(p.exit_reason)
    assert run(main()) == (b"got hello\n", b"oops\n", 4, "exited(4)")


def test_wait_any_returns_the_first_and_a_cancelled_wait_stops_nothing():
    async def main():
        slow = [await sandbox.aspawn(["/bin/sleep", "30"], env=TARGET_ENV) for _ in range(2)]
        quick = await sandbox.aspawn([SH, "-c", "exit 9"], env=TARGET_ENV)
        first = await sandbox.wait_any([slow[0], quick, slow[1]])
        assert first is quick and first.returncode == 9
        # A wait cancelled (timed out here) leaves its target running.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow[0].wait(), 0.2)
        assert all(p.returncode is None for p in slow)
        codes = await asyncio.gather(*(p.stop(5) for p in slow))
        for p in [*slow, quick]:
            p.close()
        return codes
    assert run(main()) == [-15, -15]


def test_stopping_many_takes_one_grace_period(cgroup_root):
    # Three targets that ignore SIGTERM: each needs its grace period, then SIGKILL.
    # Stopped together that is one period, not three (bounded, not timed: 3 x 2 s
    # is what one after the other would take at least).
    ignore = "trap '' TERM; echo ready; while :; do sleep 0.05; done"

    async def main():
        procs = [await sandbox.aspawn([SH, "-c", ignore], env=TARGET_ENV,
                                      cgroup=f"{cgroup_root}/s{i}", stdout=sandbox.PIPE)
                 for i in range(3)]
        for p in procs:
            assert await p.stdout.readline() == b"ready\n"
        t0 = time.monotonic()
        codes = await asyncio.gather(*(p.stop(2) for p in procs))
        took = time.monotonic() - t0
        left = [p.process.processes() for p in procs]
        for p in procs:
            p.close()
        return codes, took, left
    codes, took, left = run(main())
    assert codes == [-9, -9, -9] and left == [[], [], []]   # the sleeps in them too
    assert 2 <= took < 6


def test_a_cancelled_aspawn_leaves_nothing_running(cgroup_root):
    path = f"{cgroup_root}/cancelled"

    async def main():
        task = asyncio.ensure_future(sandbox.aspawn(["/bin/sleep", "30"], env=TARGET_ENV,
                                                    cgroup=path))
        await asyncio.sleep(0)          # started: spawn() runs in the executor
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(main())
    from sandbox import cgroups
    dirs = [h.mountpoint + path for h in cgroups.hierarchies()]
    # The spawn() it started finishes, then is killed and its cgroup removed.
    until(lambda: not any(os.path.exists(d) for d in dirs), 60,
          "the cancelled spawn's cgroup to be removed")
