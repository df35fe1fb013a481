"""Mounts in the target's own mount namespace: what the target can read and write, and
that the host's mount table never shows them."""

import json
import os
import subprocess
import uuid

import pytest

from tests.conftest import SYSTEM_PYTHON, TARGET_ENV, run_wrapperd, wrapperd_cmd

MNT = {"mount": True}
PID_MNT = {"mount": True, "pid": True}

TRY = """
import errno, json, os, sys
out = {}
for a in sys.argv[1:]:
    verb, _, path = a.partition(':')
    try:
        if verb == 'read':
            out[a] = open(path).read()
        elif verb == 'write':
            with open(path, 'w') as f:
                f.write('x')
            out[a] = 'ok'
        elif verb == 'list':
            out[a] = sorted(os.listdir(path))
        elif verb == 'flags':
            out[a] = os.statvfs(path).f_flag
        elif verb == 'size':
            st = os.statvfs(path)
            out[a] = st.f_blocks * st.f_frsize
        elif verb == 'exec':
            out[a] = os.access(path, os.X_OK)
    except OSError as e:
        out[a] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


def try_spec(*actions, **fields):
    spec = {"argv": [SYSTEM_PYTHON, "-I", "-c", TRY, *actions], "env": dict(TARGET_ENV)}
    spec.update(fields)
    return spec


def run_try(*actions, **fields):
    p = run_wrapperd(try_spec(*actions, **fields))
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file").write_text("content")
    (tmp_path / "dst").mkdir()
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "secretdir").mkdir()
    (tmp_path / "secretdir" / "key").write_text("key")
    return tmp_path


@pytest.mark.parametrize("opts,want", [(["ro"], "EROFS"), ([], "ok"),
                                       (["ro", "recursive"], "EROFS")])
def test_bind_read_only_cannot_be_written(tree, opts, want):
    r = run_try(f"write:{tree}/dst/file", f"read:{tree}/dst/file", namespaces=MNT,
                mounts=[{"type": "bind", "source": str(tree / "src"),
                         "destination": str(tree / "dst"), "options": opts}])
    assert r[f"write:{tree}/dst/file"] == want        # ([] is the control: rw writes)
    if want == "EROFS":
        assert (tree / "src" / "file").read_text() == "content"


@pytest.mark.parametrize("opts,want", [(["ro", "recursive"], "EROFS"),
                                       (["recursive"], "ok")])      # the control
def test_recursive_read_only_bind_covers_submounts(tree, opts, want):
    # A tmpfs under the source, then the source bound recursively (and read-only).
    (tree / "src" / "sub").mkdir()
    r = run_try(f"write:{tree}/dst/sub/x", namespaces=MNT, mounts=[
        {"type": "tmpfs", "destination": str(tree / "src" / "sub")},
        {"type": "bind", "source": str(tree / "src"), "destination": str(tree / "dst"),
         "options": opts}])
    assert r[f"write:{tree}/dst/sub/x"] == want


def test_bind_flags_nosuid_nodev_noexec(tree):
    r = run_try(f"flags:{tree}/dst", namespaces=MNT, mounts=[
        {"type": "bind", "source": str(tree / "src"), "destination": str(tree / "dst"),
         "options": ["nosuid", "nodev", "noexec"]}])
    flags = r[f"flags:{tree}/dst"]
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV and flags & os.ST_NOEXEC
    assert not flags & os.ST_RDONLY


def test_masked_paths_read_empty(tree):
    r = run_try(f"read:{tree}/secret", f"list:{tree}/secretdir", f"write:{tree}/secretdir/n",
                "read:/proc/timer_list", namespaces=PID_MNT,
                masked_paths=[str(tree / "secret"), str(tree / "secretdir"),
                              "/proc/timer_list", str(tree / "does-not-exist")])
    assert r[f"read:{tree}/secret"] == ""
    assert r[f"list:{tree}/secretdir"] == []
    assert r[f"write:{tree}/secretdir/n"] == "EROFS"
    assert r["read:/proc/timer_list"] == ""


def test_control_unmasked_paths_read_their_content(tree):
    r = run_try(f"read:{tree}/secret", f"list:{tree}/secretdir", "read:/proc/timer_list",
                namespaces=PID_MNT)
    assert r[f"read:{tree}/secret"] == "secret"
    assert r[f"list:{tree}/secretdir"] == ["key"]
    assert r["read:/proc/timer_list"] != ""


def test_readonly_paths_and_root(tree):
    r = run_try(f"write:{tree}/src/new", f"write:{tree}/dst/new", f"write:{tree}/secretdir/x",
                namespaces=MNT, readonly_paths=[str(tree / "src")], readonly_root=True,
                mounts=[{"type": "tmpfs", "destination": str(tree / "secretdir")}])
    assert r[f"write:{tree}/src/new"] == "EROFS"
    assert r[f"write:{tree}/secretdir/x"] == "ok"      # a mount on top keeps its own flags
    # tmp_path is on / here only if /tmp is not its own mount
    if os.statvfs(str(tree)).f_fsid == os.statvfs("/").f_fsid:
        assert r[f"write:{tree}/dst/new"] == "EROFS"
    assert not (tree / "src" / "new").exists()


def test_tmpfs_size_mode_and_created_destination(tree):
    t = tree / "dst"
    r = run_try(f"flags:{t}", f"size:{t}", f"list:{t}/a/b", f"write:{t}/a/b/f",
                namespaces=MNT,
                mounts=[{"type": "tmpfs", "destination": str(t), "size": 1 << 20,
                         "mode": "0700", "options": ["noexec"]},
                        {"type": "tmpfs", "destination": f"{t}/a/b"}])
    assert r[f"flags:{t}"] & os.ST_NOEXEC and r[f"size:{t}"] == 1 << 20
    assert r[f"list:{t}/a/b"] == [] and r[f"write:{t}/a/b/f"] == "ok"
    assert not (t / "a").exists()                   # made inside the tmpfs, not on the host


def test_minimal_dev():
    r = run_try("list:/dev", "write:/dev/null", "read:/dev/null", namespaces=PID_MNT,
                mounts=[{"type": "dev", "destination": "/dev"}])
    assert r["list:/dev"] == sorted(["full", "null", "random", "tty", "urandom", "zero",
                                     "shm", "pts", "fd", "stdin", "stdout", "stderr",
                                     "ptmx"])
    assert r["write:/dev/null"] == "ok" and r["read:/dev/null"] == ""


def test_nothing_mounted_inside_shows_on_the_host(tree):
    spec = try_spec(namespaces={"mount": True, "pid": True}, mounts=[
        {"type": "bind", "source": str(tree / "src"), "destination": str(tree / "dst")},
        {"type": "tmpfs", "destination": str(tree / "secretdir")}])
    spec["argv"] = [SYSTEM_PYTHON, "-I", "-c", "import time; print('up', flush=True); "
                    "time.sleep(20)"]
    p = subprocess.Popen(wrapperd_cmd("--spec", "-"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    p.stdin.write(json.dumps(spec).encode())
    p.stdin.close()
    try:
        assert p.stdout.readline() == b"up\n"
        with open("/proc/self/mountinfo") as f:
            host = f.read()
        assert str(tree) not in host
        # Control: the namespace's own table does show them (the shim outside shares it).
        with open(f"/proc/{p.pid}/mountinfo") as f:
            inside = f.read()
        assert f"{tree}/dst" in inside and f"{tree}/secretdir" in inside
    finally:
        p.terminate()
        p.wait(10)
    with open("/proc/self/mountinfo") as f:
        assert str(tree) not in f.read()


def test_a_mount_failure_in_the_forked_target_fails_closed(tree):
    # Binding a directory onto a file fails only in mount(2), after the pid-namespace
    # forks: the exit code, the one stderr line and the status record must still come.
    (tree / "afile").write_text("")
    marker = tree / "ran"
    r, w = os.pipe()
    try:
        spec = try_spec(namespaces=PID_MNT, mounts=[
            {"type": "bind", "source": str(tree / "src"), "destination": str(tree / "afile")}])
        spec["argv"] = ["/usr/bin/touch", str(marker)]
        p = subprocess.run(wrapperd_cmd("--spec", "-", "--status-fd", str(w)),
                           input=json.dumps(spec).encode(), capture_output=True,
                           pass_fds=(w,), timeout=30)
        os.close(w)
        w = -1
        record = os.read(r, 4096)
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    assert p.returncode == 125
    assert p.stderr.decode() == (f"wrapperd: mounts: bind {tree}/src on {tree}/afile: "
                                 "Not a directory\n")
    assert json.loads(record) == {"step": "mounts", "errno": 20,
                                  "message": f"bind {tree}/src on {tree}/afile"}
    assert not marker.exists()


def test_mounts_without_a_mount_namespace_are_refused(tree):
    p = run_wrapperd(try_spec(mounts=[{"type": "tmpfs", "destination": "/tmp"}]))
    assert p.returncode == 125 and b"namespaces.mount" in p.stderr


def test_proc_is_fresh_only_with_a_new_pid_namespace():
    r = run_try("list:/proc", namespaces=PID_MNT)
    pids = [p for p in r["list:/proc"] if p.isdigit()]
    assert sorted(pids) == ["1", "2"]
    # Control: without a pid namespace the host's pids are there.
    r = run_try("list:/proc", namespaces=MNT)
    assert str(os.getpid()) in r["list:/proc"]


def test_mqueue_and_devpts_mounts(tree):
    (tree / "mq").mkdir()
    (tree / "pts").mkdir()
    r = run_try(f"list:{tree}/pts", f"flags:{tree}/mq", namespaces={"mount": True, "ipc": True},
                mounts=[{"type": "mqueue", "destination": str(tree / "mq")},
                        {"type": "devpts", "destination": str(tree / "pts")}])
    assert r[f"list:{tree}/pts"] == ["ptmx"]                # a new, empty devpts instance
    assert r[f"flags:{tree}/mq"] & os.ST_NOSUID and r[f"flags:{tree}/mq"] & os.ST_NOEXEC
    with open("/proc/self/mountinfo") as f:
        assert str(tree) not in f.read()


@pytest.mark.parametrize("readonly_root", [True, False])      # False: the control
def test_readonly_root_covers_every_host_mount(tree, host_tmpfs, host_shm, readonly_root):
    # A host tmpfs and the host's /dev/shm are mounts of their own below /: a read-only
    # root must cover them too, while the spec's own mounts stay writable -- its tmpfs,
    # and a bind without `ro` (its source is cloned before / is made read-only).
    victim, new = host_shm
    r = run_try(f"write:{host_tmpfs}/x", f"write:{victim}", f"write:{new}",
                f"write:{tree}/secretdir/x", f"write:{tree}/dst/y", namespaces=MNT,
                readonly_root=readonly_root,
                mounts=[{"type": "tmpfs", "destination": str(tree / "secretdir")},
                        {"type": "bind", "source": str(tree / "src"),
                         "destination": str(tree / "dst")}])
    assert r[f"write:{tree}/secretdir/x"] == r[f"write:{tree}/dst/y"] == "ok"
    assert (tree / "src" / "y").read_text() == "x"
    if readonly_root:
        assert r[f"write:{host_tmpfs}/x"] == r[f"write:{victim}"] == r[f"write:{new}"] \
            == "EROFS"
        # What the host sees: nothing written, nothing created.
        assert os.listdir(host_tmpfs) == []
        assert open(victim, "rb").read() == b"host" and not os.path.lexists(new)
    else:
        assert r[f"write:{host_tmpfs}/x"] == r[f"write:{victim}"] == r[f"write:{new}"] \
            == "ok"
        assert os.listdir(host_tmpfs) == ["x"] and os.path.exists(new)


def test_dotdot_destination_is_refused_and_creates_nothing(tree):
    escape = f"/wrapperd-escape-{uuid.uuid4().hex[:10]}"
    marker = tree / "ran"
    try:
        spec = try_spec(namespaces=MNT, mounts=[
            {"type": "tmpfs", "destination": str(tree / "dst")},
            {"type": "tmpfs", "destination": f"{tree}/dst/..{escape}"},
            {"type": "tmpfs", "destination": f"/tmp/..{escape}"}])
        spec["argv"] = ["/usr/bin/touch", str(marker)]
        p = run_wrapperd(spec)
        assert p.returncode == 125
        assert p.stderr.decode() == (
            f"wrapperd: spec: mounts[1].destination: '{tree}/dst/..{escape}' is not a "
            "normal absolute path (no '.' or '..' component, no '//' or trailing '/')\n")
        assert not os.path.lexists(escape) and not os.path.lexists(tree / escape[1:])
        assert not marker.exists()
    finally:
        for p in (escape, str(tree / escape[1:])):
            if os.path.isdir(p) and not os.path.ismount(p):
                os.rmdir(p)


@pytest.fixture
def foreign(tree):
    """A directory owned by another (unprivileged) user, as one bound into a sandbox
    would be; it holds a symlink to a unique host directory."""
    shared = tree / "shared"
    shared.mkdir()
    target = tree / "target"
    target.mkdir()
    (shared / "link").symlink_to(target)
    os.lchown(shared / "link", 65534, 65534)
    os.chown(shared, 65534, 65534)
    return shared, target


@pytest.mark.parametrize("kind", ["tmpfs", "bind-file"])
def test_symlink_in_a_bound_directory_is_not_followed(tree, foreign, kind):
    # Our tmpfs at dst, the other user's directory bound at dst/shared: a destination
    # through dst/shared/link must not create anything where the link points.
    shared, target = foreign
    dest = f"{tree}/dst/shared/link/nologin"
    last = ({"type": "tmpfs", "destination": dest} if kind == "tmpfs" else
            {"type": "bind", "source": str(tree / "secret"), "destination": dest})
    spec = try_spec(namespaces=MNT, mounts=[
        {"type": "tmpfs", "destination": str(tree / "dst")},
        {"type": "bind", "source": str(shared), "destination": f"{tree}/dst/shared"},
        last])
    spec["argv"] = ["/usr/bin/touch", str(tree / "ran")]
    p = run_wrapperd(spec)
    assert os.listdir(target) == []                 # seen from the host: nothing made
    assert p.returncode == 125
    assert p.stderr.decode() == (f"wrapperd: mounts: {dest}: {tree}/dst/shared/link is a "
                                 "symlink (a destination is never followed through one): "
                                 "Too many levels of symbolic links\n")
    assert not (tree / "ran").exists()


def test_nothing_is_created_in_a_bound_host_directory(tree, foreign):
    # Lexically under our tmpfs, but dst/shared is the host's directory bound there: a
    # missing destination is made only on a filesystem the spec mounted.
    shared, _ = foreign
    spec = try_spec(namespaces=MNT, mounts=[
        {"type": "tmpfs", "destination": str(tree / "dst")},
        {"type": "bind", "source": str(shared), "destination": f"{tree}/dst/shared"},
        {"type": "tmpfs", "destination": f"{tree}/dst/shared/new"}])
    p = run_wrapperd(spec)
    assert sorted(os.listdir(shared)) == ["link"]
    assert p.returncode == 125
    assert p.stderr.decode() == (
        f"wrapperd: mounts: {tree}/dst/shared/new: {tree}/dst/shared/new does not exist "
        "(it is created only on a tmpfs this spec mounts): No such file or directory\n")


# ------------------------------------------------------------- an imported OCI /dev

def _mountinfo(pid: int) -> dict:
    """destination -> (per-mount options, super options) of the last mount there."""
    out = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            out[fields[4]] = (set(fields[5].split(",")), set(right.split()[2].split(",")))
    return out


def test_an_imported_runc_dev_has_the_options_its_config_gives():
    # What `runc spec` writes for /dev and /dev/shm: import carries every option, so the
    # kernel must show them (it once dropped /dev/shm's noexec and both size= yet said
    # "everything honoured").
    import sandbox
    from sandbox.oci import import_config
    config = {"process": {"args": ["/bin/sleep", "60"],
                          "env": [f"{k}={v}" for k, v in TARGET_ENV.items()]},
              "mounts": [
                  {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                  {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=32768k"]}],
              "linux": {"namespaces": [{"type": "mount"}]}}
    spec, lost = import_config(config)
    assert lost == []
    with sandbox.spawn(spec) as p:
        info = _mountinfo(p.target_pid)
        shm_mode = os.stat(f"/proc/{p.target_pid}/root/dev/shm").st_mode & 0o7777
        p.kill()
    dev_flags, dev_super = info["/dev"]
    assert {"nosuid", "nodev"} <= dev_flags and "relatime" not in dev_flags  # strictatime
    assert {"size=65536k", "mode=755"} <= dev_super
    shm_flags, shm_super = info["/dev/shm"]
    assert {"nosuid", "nodev", "noexec"} <= shm_flags
    assert "size=32768k" in shm_super and shm_mode == 0o1777  # (1777: tmpfs shows none)
