"""`wrapperd --spec FILE` runs a plan cached by an earlier start (sandbox.plancache), and
never a plan that no longer holds: what the target gets is read from its /proc."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from sandbox import plan as plan_mod
from sandbox import plancache
from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, needs_host_root, probe_spec, wrapperd_cmd


@pytest.fixture
def cache(tmp_path):
    if not plancache.usable():
        needs_host_root("the plan cache is used only in the initial user namespace")
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    return str(d)


def start(spec_path, cache_dir, *args, env_extra=None):
    env = {"PATH": TARGET_ENV["PATH"], "WRAPPERD_CACHE_DIR": cache_dir, **(env_extra or {})}
    return subprocess.run(wrapperd_cmd("--spec", str(spec_path), *args),
                          capture_output=True, timeout=60, env=env)


def entries(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.endswith(".plan"))


def write_spec(path, spec):
    path.write_text(json.dumps(spec))
    return path


def rewrite_entry(cache_dir, name, change):
    """Give the cached plan's target other arguments (change(argv) -> argv), with a
    header that matches: what a hit runs is then visibly the cache's."""
    with open(os.path.join(cache_dir, name), "rb") as f:
        data = f.read()
    head, _, body = data[len(plancache.FORMAT):].partition(b"\n")
    p = plan_mod.decode(body)
    from sandbox._record import replace
    p = replace(p, target=replace(p.target, argv=tuple(change(list(p.target.argv)))))
    body = plan_mod.encode(p)
    h = json.loads(head)
    h["sha256"] = plancache._sha(body)
    fd = os.open(os.path.join(cache_dir, name), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, plancache.FORMAT + json.dumps(h).encode() + b"\n" + body)
    os.close(fd)


def test_a_repeated_start_runs_the_cached_plan(tmp_path, cache, probe):
    spec = write_spec(tmp_path / "s.json", probe_spec(
        probe, user={"uid": 65534, "gid": 65534}, no_new_privs=True,
        capabilities={"drop": ["CAP_SYS_ADMIN"]}, seccomp={"profile": "default"}))
    first = start(spec, cache)
    assert first.returncode == 0, first.stderr
    [name] = entries(cache)
    st = os.stat(os.path.join(cache, name))
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    second = start(spec, cache)
    assert second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    for key in ("Uid", "Gid", "Groups", "CapBnd", "CapEff", "NoNewPrivs", "Seccomp"):
        assert a["status"][key] == b["status"][key], key
    assert b["status"]["Uid"].split()[0] == "65534" and b["status"]["Seccomp"] == "2"
    # That second start ran the cache's plan: an entry changed (with a header that
    # matches) is what runs.
    rewrite_entry(cache, name, lambda argv: [SYSTEM_PYTHON, "-c", "print('from the cache')"])
    third = start(spec, cache)
    assert third.returncode == 0 and third.stdout == b"from the cache\n", third.stderr


def test_an_edited_spec_is_another_key(tmp_path, cache):
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/echo", "one"],
                                            "env": TARGET_ENV})
    assert start(spec, cache).stdout == b"one\n"
    write_spec(spec, {"argv": ["/bin/echo", "two"], "env": TARGET_ENV})
    assert start(spec, cache).stdout == b"two\n"
    assert len(entries(cache)) == 2


@pytest.mark.parametrize("how", ["mode", "owner", "symlink", "truncated", "header"])
def test_an_entry_that_cannot_be_trusted_is_a_miss(tmp_path, cache, how):
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/echo", "spec"], "env": TARGET_ENV})
    assert start(spec, cache).returncode == 0
    [name] = entries(cache)
    rewrite_entry(cache, name, lambda argv: ["/bin/echo", "planted"])
    path = os.path.join(cache, name)
    if how == "mode":
        os.chmod(path, 0o644)
    elif how == "owner":
        os.chown(path, 65534, 65534)
    elif how == "symlink":
        os.rename(path, path + ".real")
        os.symlink(path + ".real", path)
    elif how == "truncated":
        os.truncate(path, os.stat(path).st_size - 3)
    else:
        with open(path, "r+b") as f:
            data = f.read().replace(b'"sha256": "', b'"sha256": "0', 1)
            f.seek(0)
            f.write(data)
    p = start(spec, cache)
    assert p.returncode == 0 and p.stdout == b"spec\n", p.stderr


def test_a_cached_plan_whose_executable_is_gone_is_not_run(tmp_path, cache):
    exe = tmp_path / "prog"
    exe.write_text("#!/bin/sh\necho prog\n")
    exe.chmod(0o755)
    spec = write_spec(tmp_path / "s.json", {"argv": [str(exe)], "env": TARGET_ENV})
    assert start(spec, cache).stdout == b"prog\n"
    exe.unlink()
    p = start(spec, cache)
    assert p.returncode == 127 and b"not found" in p.stderr


def test_what_the_cache_skips_never_runs(tmp_path, cache):
    # A hit imports neither argparse nor the spec model: the fast start is real.
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/true"], "env": TARGET_ENV})
    # As the static launcher starts it (sandbox/launcher.c), with -X importtime.
    from sandbox import launchers
    cmd = [wrapperd_cmd()[0], "-I", "-S", "-X", "importtime", "-c",
           "import sys; sys.path += sys.argv.pop(1).split(':'); import wrapperd.__main__",
           launchers._site_path(wrapperd_cmd()[0]), "--spec", str(spec)]
    env = {"PATH": TARGET_ENV["PATH"], "WRAPPERD_CACHE_DIR": cache}
    miss = subprocess.run(cmd, capture_output=True, env=env, timeout=60)
    hit = subprocess.run(cmd, capture_output=True, env=env, timeout=60)
    assert miss.returncode == hit.returncode == 0, hit.stderr

    def imported(p):
        return {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert {"attrs", "argparse", "sandbox.spec"} <= imported(miss)
    assert not {"attrs", "attr", "argparse", "sandbox.spec", "tomllib", "pyseccomp",
                "json", "typing"} & imported(hit)


def test_no_entry_for_a_dry_run_a_spec_on_stdin_or_an_unwritable_cache(tmp_path, cache):
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/true"], "env": TARGET_ENV})
    assert start(spec, cache, "--dry-run").returncode == 0
    p = subprocess.run(wrapperd_cmd("--spec", "-"), input=spec.read_bytes(),
                       capture_output=True, env={"PATH": TARGET_ENV["PATH"],
                                                 "WRAPPERD_CACHE_DIR": cache})
    assert p.returncode == 0 and entries(cache) == []
    os.chmod(cache, 0o755)             # not 0700: not trusted, neither read nor written
    assert start(spec, cache).returncode == 0 and entries(cache) == []


def test_a_service_has_one_entry_which_a_miss_rewrites(tmp_path, cache):
    # wrapperd's own bounding set is part of the key, not of the invocation (the entry's
    # name): a change is a miss, whose plan replaces the entry -- the cache does not grow.
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/true"], "env": TARGET_ENV})
    env = {"PATH": TARGET_ENV["PATH"], "WRAPPERD_CACHE_DIR": cache}
    heads = []
    for prefix in ([], ["setpriv", "--bounding-set=-sys_boot", "--"], []):
        p = subprocess.run(prefix + wrapperd_cmd("--spec", str(spec)), capture_output=True,
                           timeout=60, env=env)
        assert p.returncode == 0, p.stderr
        [name] = entries(cache)
        with open(os.path.join(cache, name), "rb") as f:
            heads.append(json.loads(f.read()[len(plancache.FORMAT):].split(b"\n")[0])["key"])
    assert heads[0] != heads[1] and heads[2] == heads[0]


def test_no_plan_cache_in_a_user_namespace(tmp_path):
    # There "owned by root" is that namespace's root: the cache is neither read nor
    # written.  Here a user namespace mapping root to root (unshare --map-root-user),
    # so the directory is still its root's; in the rootless run, that run's own.
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/true"], "env": TARGET_ENV})
    env = {"PATH": TARGET_ENV["PATH"], "WRAPPERD_CACHE_DIR": str(d)}
    prefix = [] if not plancache.usable() else ["unshare", "--user", "--map-root-user"]
    for _ in range(2):
        p = subprocess.run(prefix + wrapperd_cmd("--spec", str(spec)), capture_output=True,
                           timeout=60, env=env)
        assert p.returncode == 0, p.stderr
    assert entries(str(d)) == []


def test_the_cache_never_fails_a_start_that_would_run(tmp_path, cache):
    # A working directory that is gone: the key cannot be made, the full path runs.
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/echo", "ran"], "env": TARGET_ENV})
    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, subprocess, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
            "sys.exit(subprocess.run(sys.argv[2:]).returncode)")
    p = subprocess.run([sys.executable, "-c", code, str(gone),
                        *wrapperd_cmd("--spec", str(spec))], capture_output=True, timeout=60,
                       env={"PATH": TARGET_ENV["PATH"], "WRAPPERD_CACHE_DIR": cache})
    assert p.returncode == 0 and p.stdout == b"ran\n", p.stderr


def test_a_cached_plan_that_fails_a_step_is_removed(tmp_path, cache):
    # A hit whose cwd step fails (the directory is gone: nothing in the key shows it):
    # the entry goes, so the next start prepares again.
    work = tmp_path / "work"
    work.mkdir()
    spec = write_spec(tmp_path / "s.json", {"argv": ["/bin/true"], "env": TARGET_ENV,
                                            "cwd": str(work)})
    assert start(spec, cache).returncode == 0
    assert len(entries(cache)) == 1
    work.rmdir()
    p = start(spec, cache)
    assert p.returncode == 125 and b"wrapperd: cwd:" in p.stderr, p.stderr
    assert entries(cache) == []
