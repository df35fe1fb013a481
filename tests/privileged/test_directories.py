"""Service directories (systemd's RuntimeDirectory= and friends), seen from both sides:
the target writes into them under a read-only root and reads its environment; the host
stats owners, modes and where the files went.  Every name is unique to the test and
everything made under /run, /var/lib, /var/cache, /var/log and /etc is removed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid

import pytest

import sandbox
from sandbox import directories
from tests.conftest import TARGET_ENV, needs_host_root, run_wrapperd

NOBODY = 65534
REPORT = r"""
import json, os, sys
out = {"env": {k: v for k, v in os.environ.items() if k.endswith("_DIRECTORY")},
       "uid": os.getuid(), "wrote": {}, "root_rw": None}
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, "f"), "w") as f:
            f.write("x")
        out["wrote"][d] = "ok"
    except OSError as e:
        out["wrote"][d] = e.strerror
try:                        # (made and removed at once: nothing left on the host)
    probe = "/var/lib/wrapperd-root-rw-test-%d" % os.getpid()
    open(probe, "w").close()
    os.unlink(probe)
    out["root_rw"] = "ok"
except OSError as e:
    out["root_rw"] = e.strerror
print(json.dumps(out))
"""


@pytest.fixture
def name():
    """A unique directory name, and everything made with it (and an emptied
    BASE/private this test made) removed afterwards."""
    needs_host_root("makes directories under /run, /var/lib, /var/cache, /var/log, /etc")
    n = f"wrapperd-test-{uuid.uuid4().hex[:8]}"
    had_private = {b: os.path.isdir(f"{b}/private") for b in directories.BASES.values()}
    yield n
    for base in directories.BASES.values():
        for p in (f"{base}/{n}", f"{base}/private/{n}"):
            if os.path.islink(p) or os.path.isfile(p):
                os.unlink(p)
            else:           # (of any depth: shutil.rmtree recurses)
                directories._remove_tree(os.path.dirname(p), os.path.basename(p))
        if not had_private[base]:
            try:
                os.rmdir(f"{base}/private")
            except OSError:
                pass


def spec_for(name, *dirs, **fields):
    spec = {"argv": ["/usr/bin/python3", "-I", "-c", REPORT, *dirs], "env": dict(TARGET_ENV),
            "name": name}
    spec.update(fields)
    return spec


def run(spec):
    p = run_wrapperd(spec)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_made_owned_and_writable_under_a_read_only_root(name):
    dirs = {"runtime": [name], "state": [{"path": name, "mode": "0750"}], "cache": [name],
            "logs": [name], "configuration": [name]}
    paths = [f"/run/{name}", f"/var/lib/{name}", f"/var/cache/{name}", f"/var/log/{name}"]
    r = run(spec_for(name, *paths, f"/etc/{name}", user={"uid": NOBODY, "gid": NOBODY},
                     namespaces={"mount": True}, readonly_root=True, directories=dirs))
    assert r["uid"] == NOBODY
    assert r["env"] == {"RUNTIME_DIRECTORY": f"/run/{name}",
                        "STATE_DIRECTORY": f"/var/lib/{name}",
                        "CACHE_DIRECTORY": f"/var/cache/{name}",
                        "LOGS_DIRECTORY": f"/var/log/{name}",
                        "CONFIGURATION_DIRECTORY": f"/etc/{name}"}
    assert r["wrote"] == {**{p: "ok" for p in paths}, f"/etc/{name}": "Read-only file system"}
    assert r["root_rw"] == "Read-only file system"       # the rest stayed read-only
    for p in paths:
        assert owner(p) == (NOBODY, NOBODY, 0o750 if p.startswith("/var/lib/") else 0o755)
        assert owner(f"{p}/f")[:2] == (NOBODY, NOBODY)
    assert owner(f"/etc/{name}") == (0, 0, 0o755)         # configuration stays root's
    assert not os.path.exists(f"/etc/{name}/f")
    # wrapperd execs the target and keeps nothing: the runtime directory is the
    # caller's to remove (spawn() does, below).
    assert os.path.isdir(f"/run/{name}")


def test_a_dynamic_users_directories_are_private_and_reowned(name):
    # Left by an earlier holder of the name (another id): its files are re-owned, root's
    # are not, and a symlink it planted is not followed.
    src = f"/var/lib/private/{name}"
    os.makedirs(f"{src}/sub", exist_ok=True)
    os.chmod("/var/lib/private", 0o700)
    outside = f"/var/lib/{name}-outside"
    with open(outside, "w"):
        pass
    try:
        for p in (src, f"{src}/sub"):
            os.chown(p, 12345, 12345)
        with open(f"{src}/sub/old", "w"):
            pass
        os.chown(f"{src}/sub/old", 12345, 12345)
        with open(f"{src}/roots", "w"):
            pass
        os.chown(outside, 12345, 12345)
        os.symlink(outside, f"{src}/link")
        os.lchown(f"{src}/link", 12345, 12345)
        r = run(spec_for(name, f"/var/lib/{name}", f"/run/{name}", profile="strict",
                         directories={"state": [name], "runtime": [name]}))
        uid = r["uid"]
        assert 61184 <= uid <= 65519 and r["wrote"] == {f"/var/lib/{name}": "ok",
                                                         f"/run/{name}": "ok"}
        for p in (src, f"{src}/sub", f"{src}/sub/old", f"{src}/link", f"{src}/f",
                  f"/run/private/{name}"):
            assert owner(p)[:2] == (uid, uid), p
        assert owner(f"{src}/roots")[:2] == (0, 0)
        assert owner(outside)[:2] == (12345, 12345)        # not followed
        # On the host: the data behind a root-only directory, an empty mount point.
        for base in ("/var/lib", "/run"):
            assert owner(f"{base}/private") == (0, 0, 0o700)
            assert owner(f"{base}/{name}")[:2] == (0, 0)
            assert os.listdir(f"{base}/{name}") == []
    finally:
        os.unlink(outside)


def test_spawn_removes_runtime_directories_unless_preserved(name):
    spec = spec_for(name, f"/run/{name}", user={"uid": NOBODY, "gid": NOBODY},
                    directories={"runtime": [name], "state": [name]})
    with sandbox.spawn(spec, stdout=subprocess.PIPE) as p:
        out, _ = p.communicate(timeout=30)
    assert json.loads(out)["wrote"] == {f"/run/{name}": "ok"}
    assert not os.path.lexists(f"/run/{name}")
    assert os.path.isdir(f"/var/lib/{name}")               # state stays
    spec["directories"]["preserve_runtime"] = True
    with sandbox.spawn(spec, stdout=subprocess.PIPE) as p:
        p.communicate(timeout=30)
    assert os.path.isfile(f"/run/{name}/f")
    # A dynamic user's: the private directory and the mount point both go.
    spec = spec_for(name, f"/run/{name}-dyn", profile="service",
                    directories={"runtime": [f"{name}-dyn"]})
    try:
        with sandbox.spawn(spec, stdout=subprocess.PIPE) as p:
            out, _ = p.communicate(timeout=30)
        assert json.loads(out)["wrote"] == {f"/run/{name}-dyn": "ok"}
        assert not os.path.lexists(f"/run/private/{name}-dyn")
        assert not os.path.lexists(f"/run/{name}-dyn")
    finally:
        shutil.rmtree(f"/run/private/{name}-dyn", ignore_errors=True)
        shutil.rmtree(f"/run/{name}-dyn", ignore_errors=True)


def test_a_symlink_in_place_of_a_directory_is_refused(name, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, f"/var/log/{name}")
    marker = tmp_path / "ran"
    spec = {"argv": ["/usr/bin/touch", str(marker)], "env": dict(TARGET_ENV),
            "user": {"uid": NOBODY, "gid": NOBODY}, "directories": {"logs": [name]}}
    p = run_wrapperd(spec)
    assert p.returncode == 125
    assert p.stderr.decode().startswith(f"wrapperd: directories: make /var/log/{name}")
    assert not marker.exists()
    assert owner(str(target))[:2] == (0, 0)


@pytest.mark.parametrize("dirs, fields, match", [
    ({"state": ["a/b"]}, {}, "directories.state[0]: 'a/b' is not a directory name"),
    ({"logs": [".."]}, {}, "directories.logs[0]: '..' is not a directory name"),
    ({"runtime": ["/run/x"]}, {}, "directories.runtime[0]: '/run/x' is not a directory"),
    ({"cache": [{"path": "x", "mode": "999"}]}, {},
     "directories.cache[0].mode: '999' is not an octal mode"),
    ({"runtime": ["x", "x"]}, {}, "directories.runtime: a directory is listed twice"),
    ({"tmp": ["x"]}, {}, "directories.tmp: unknown key"),
    ({"state": ["NAME"]}, {"user": {"dynamic": True}},
     "directories.state: a dynamic user's directories live under /var/lib/private"),
])
def test_bad_input_is_one_line_and_nothing_is_made(name, dirs, fields, match):
    dirs = json.loads(json.dumps(dirs).replace("NAME", name))
    spec = {"argv": ["/bin/true"], "env": dict(TARGET_ENV), "directories": dirs, **fields}
    p = run_wrapperd(spec)
    err = p.stderr.decode()
    assert p.returncode == 125 and err.count("\n") == 1 and match in err, err
    for base in directories.BASES.values():
        assert not os.path.lexists(f"{base}/{name}")


def test_a_mask_or_a_read_only_place_below_a_writable_one_stays(name):
    # A writable bind (a service directory, read_write_paths) goes on before what lies
    # below it (outside review: it used to cover the mask and the read-only place).
    state, srv = f"/var/lib/{name}", f"/var/lib/{name}-srv"
    for d in (f"{state}/keys", f"{srv}/conf"):
        os.makedirs(d)
    with open(f"{state}/keys/k", "w") as f:
        f.write("secret")
    try:
        def attempt(**fields):
            script = ("import os\nfor op in ('read', 'write'):\n"
                      "    try:\n"
                      f"        open('{state}/keys/k').read() if op == 'read' else "
                      f"open('{srv}/conf/x', 'w')\n"
                      "        print(op, 'ok')\n"
                      "    except OSError as e:\n"
                      "        print(op, e.strerror)\n")
            spec = {"argv": ["/usr/bin/python3", "-I", "-c", script], "env": dict(TARGET_ENV),
                    "namespaces": {"mount": True}, **fields}
            p = run_wrapperd(spec)
            assert p.returncode == 0, p.stderr.decode()
            return p.stdout.decode().split("\n")[:2]
        fs = {"inaccessible_paths": [f"{state}/keys"], "read_only_paths": [f"{srv}/conf"]}
        assert attempt(filesystem=fs) == ["read No such file or directory",
                                          "write Read-only file system"]      # control
        fs["read_write_paths"] = [srv]
        assert attempt(filesystem=fs, directories={"state": [name]}) == \
            ["read No such file or directory", "write Read-only file system"]
    finally:
        shutil.rmtree(srv, ignore_errors=True)


def test_deep_trees_and_root_owned_files_are_handled(name):
    # An earlier holder's tree deeper than Python's recursion limit is re-owned and
    # removed; a directory that is root's (any group) has nothing below re-owned.
    top = f"/run/{name}"
    os.makedirs(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cur = os.dup(fd)
        for _ in range(1200):
            os.fchown(cur, 12345, 12345)
            try:
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
            except FileNotFoundError:
                os.mkdir("d", dir_fd=cur)
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
            os.close(cur)
            cur = nxt
        os.close(cur)
    finally:
        os.close(fd)
    os.makedirs(f"/var/lib/{name}")
    os.chown(f"/var/lib/{name}", 0, 12345)
    with open(f"/var/lib/{name}/roots", "w"):
        pass
    spec = spec_for(name, user={"uid": NOBODY, "gid": NOBODY},
                    directories={"runtime": [name], "state": [name]})
    with sandbox.spawn(spec, stdout=subprocess.PIPE) as p:
        p.communicate(timeout=60)
    assert p.returncode == 0
    assert not os.path.lexists(top)                     # re-owned, then removed, whole
    assert owner(f"/var/lib/{name}")[:2] == (NOBODY, NOBODY)
    assert owner(f"/var/lib/{name}/roots")[:2] == (0, 0)
