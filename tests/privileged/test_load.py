"""Load: 1,000 sequential and 200 concurrent spawns (the lean path sandbox.spawn() takes
by default; every tenth one in a cgroup of its own under the test's cgroup root) leave
the caller as they found it: the same open fds (/proc/self/fd), no new children and no
zombies (/proc/*/stat), no cgroup directory left in any hierarchy."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import sandbox
from sandbox.spawning import DEVNULL
from tests.conftest import TARGET_ENV
from tests.privileged.test_spawn import leaf_dirs, zombie_children

TRUE = "/bin/true"


def _fds() -> dict:
    out = {}
    for n in os.listdir("/proc/self/fd"):
        try:
            out[n] = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            pass                        # the directory fd listdir itself used
    return out


def _children() -> set:
    me, out = os.getpid(), set()
    for tid in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                out |= {int(x) for x in f.read().split()}
        except OSError:
            pass
    return out


def _one(i: int, cgroup_root: str) -> int:
    fields = {"cgroup": f"{cgroup_root}/s{i}"} if i % 10 == 0 else {}
    with sandbox.spawn([TRUE], env=TARGET_ENV, stdin=DEVNULL, stdout=DEVNULL,
                       **fields) as p:
        return p.wait(30)


def _check_clean(fds_before: dict, children_before: set, cgroup_root: str) -> None:
    assert zombie_children() == []
    assert _children() == children_before
    assert leaf_dirs(cgroup_root) == []
    assert _fds() == fds_before


@pytest.mark.slow
def test_1000_sequential_spawns_leave_nothing_behind(cgroup_root):
    fds_before, children_before = _fds(), _children()
    start = time.monotonic()
    codes = [_one(i, cgroup_root) for i in range(1000)]
    elapsed = time.monotonic() - start
    assert codes == [0] * 1000
    _check_clean(fds_before, children_before, cgroup_root)
    print(f"1000 sequential spawns: {elapsed:.1f} s")


@pytest.mark.slow
def test_200_concurrent_spawns_leave_nothing_behind(cgroup_root):
    fds_before, children_before = _fds(), _children()
    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda i: _one(i, cgroup_root), range(200)))
    assert codes == [0] * 200
    _check_clean(fds_before, children_before, cgroup_root)
