"""stdio paths are opened by the caller (root): never through anything a less privileged
user could have planted.  The attack is tried for real: a service's log directory owned
by another user, holding a link to a root-owned file, a FIFO, or a file another user
owns in a sticky directory; the root file's bytes and the caller's fds are the judge."""

import os
import pathlib
import struct
import subprocess
import threading

import pytest

import sandbox
from sandbox import SetupError, SpecError
from sandbox.forkserver import ForkServer
from tests.conftest import SYSTEM_PYTHON, TARGET_ENV

# The less privileged user: not 65534, which a user namespace also shows for files of
# unmapped owners (the host's root), trusted there (sandbox.stdio._trusted_uids).
OTHER = 4243
SH = "/bin/sh"


@pytest.fixture(scope="module")
def server():
    with ForkServer() as fs:
        yield fs


@pytest.fixture
def root_file(tmp_path):
    """A root-owned file outside the service's directory: what the link points to."""
    d = tmp_path / "root-only"
    d.mkdir(mode=0o700)
    f = d / "precious"
    f.write_bytes(b"root:x:0:0\n")
    os.chmod(f, 0o644)
    return f


@pytest.fixture
def service_dir(tmp_path):
    """A log directory the service's user owns, as a service's own is."""
    d = tmp_path / "svc-logs"
    d.mkdir(mode=0o755)
    os.chown(d, OTHER, OTHER)
    return d


def _starts(mode, server):
    if mode == "fast":
        return server.spawn
    return sandbox.spawn


def _no_new_fds(before):
    return set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_link_planted_in_the_services_log_dir_is_refused(mode, server, root_file,
                                                         service_dir):
    link = service_dir / "out.log"
    os.symlink(root_file, link)
    os.lchown(link, OTHER, OTHER)             # as the service would have made it
    before = set(os.listdir("/proc/self/fd"))
    for where in ("stdout", "stderr"):
        with pytest.raises(SetupError) as e:
            _starts(mode, server)([SH, "-c", "echo pwned; echo pwned >&2"],
                                  env=TARGET_ENV, **{where: str(link)})
        assert e.value.step == "spawn" and str(link) in str(e.value)
    assert root_file.read_bytes() == b"root:x:0:0\n"
    assert _no_new_fds(before)


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_final_symlink_is_refused_even_in_a_root_directory(mode, server, root_file,
                                                            tmp_path):
    link = tmp_path / "out.log"
    os.symlink(root_file, link)
    with pytest.raises(SetupError) as e:
        _starts(mode, server)([SH, "-c", "echo pwned"], env=TARGET_ENV, stdout=str(link))
    assert "symbolic link" in str(e.value)
    assert root_file.read_bytes() == b"root:x:0:0\n"


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_fifo_does_not_block_the_caller_and_is_refused(mode, server, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    result = []

    def start(where):
        try:
            _starts(mode, server)(["/bin/true"], env=TARGET_ENV, **{where: str(fifo)})
            result.append("started")
        except SetupError as e:
            result.append(e)

    for where in ("stdin", "stdout"):
        t = threading.Thread(target=start, args=(where,), daemon=True)
        t.start()
        t.join(20)
        if t.is_alive():                         # unblock it, then fail
            fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            t.join(20)
            os.close(fd)
            pytest.fail(f"{where}: opening a FIFO blocked the caller")
        assert isinstance(result[-1], SetupError), result
        assert "not a regular file" in str(result[-1])


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_file_another_user_owns_in_a_sticky_directory_is_refused(mode, server,
                                                                   tmp_path):
    sticky = tmp_path / "shared"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    theirs = sticky / "out.log"
    theirs.write_bytes(b"")
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(SetupError):
        _starts(mode, server)([SH, "-c", "echo x"], env=TARGET_ENV, stdout=str(theirs))
    assert theirs.read_bytes() == b""
    # A sticky directory another user owns: its owner may replace any entry.
    their_sticky = tmp_path / "their-sticky"
    their_sticky.mkdir()
    os.chmod(their_sticky, 0o1777)
    root_owned = their_sticky / "out.log"
    root_owned.write_bytes(b"")
    os.chown(their_sticky, OTHER, OTHER)
    with pytest.raises(SetupError, match="may be written by another user"):
        _starts(mode, server)([SH, "-c", "echo x"], env=TARGET_ENV,
                              stdout=str(root_owned))
    assert root_owned.read_bytes() == b""
    # Control: a file root creates there itself is fine, and so is a root-owned
    # directory reached through a root-owned symlink.
    mine = sticky / "mine.log"
    _starts(mode, server)([SH, "-c", "echo ok"], env=TARGET_ENV,
                          stdout=str(mine)).wait()
    os.symlink(tmp_path, tmp_path / "via")
    _starts(mode, server)([SH, "-c", "echo again"], env=TARGET_ENV,
                          stdout=str(tmp_path / "via" / "shared" / "mine.log")).wait()
    assert mine.read_bytes() == b"ok\nagain\n"
    assert os.stat(mine).st_uid == 0


# The POSIX ACL xattr (acl(5); the kernel's posix_acl_xattr.h): a version-2 header, then
# (tag, perm, id) entries sorted by tag, then id.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def _set_acl(path, user_perm: int) -> None:
    """setfacl -m u:OTHER:<user_perm> path, on a 0775/0755 directory: the mask is the
    named entry's permission, as setfacl computes it."""
    entries = [(ACL_USER_OBJ, 7, ACL_UNDEFINED_ID), (ACL_USER, user_perm, OTHER),
               (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID), (ACL_MASK, user_perm | 5,
                                                      ACL_UNDEFINED_ID),
               (ACL_OTHER, 5, ACL_UNDEFINED_ID)]
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, "system.posix_acl_access", blob)


def _as_other(dir_path, code: str) -> None:
    """Run code as OTHER (no supplementary groups) with `d`, an fd of dir_path, so the
    kernel judges the permissions (its ancestors under pytest's 0700 directory need no
    search permission for an *at() call on the fd)."""
    fd = os.open(dir_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-I", "-c", f"import os, sys\nd = {fd}\n{code}"],
                           user=OTHER, group=OTHER, extra_groups=[], pass_fds=(fd,),
                           capture_output=True, timeout=60)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def root_only(tmp_path):
    """A directory only root may enter: where a planted link leads (standing for /etc)."""
    d = tmp_path / "root-only"
    d.mkdir(mode=0o700)
    return d


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_link_swapped_in_through_an_acl_writable_directory_is_refused(
        mode, server, tmp_path, root_only):
    # A root-owned 0775 directory of root's group: by its mode only root may write it.
    # An ACL entry lets the service write it too (shown only as the group bits).
    logs = tmp_path / "logs"
    (logs / "app").mkdir(parents=True)
    os.chmod(logs, 0o775)
    _set_acl(logs, 7)
    st = os.stat(logs)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o775)
    # The service swaps app for a link, for real: the kernel grants it through the ACL.
    _as_other(logs, "os.rename('app', 'app.old', src_dir_fd=d, dst_dir_fd=d)\n"
              f"os.symlink({str(root_only)!r}, 'app', dir_fd=d)")
    assert os.readlink(logs / "app") == str(root_only)
    before = set(os.listdir("/proc/self/fd"))
    target = str(logs / "app" / "pwned")
    for where in ("stdout", "stderr"):
        with pytest.raises(SetupError) as e:
            _starts(mode, server)([SH, "-c", "echo pwned; echo pwned >&2"],
                                  env=TARGET_ENV, **{where: target})
        assert e.value.step == "spawn" and target in str(e.value)
    assert os.listdir(root_only) == []
    assert _no_new_fds(before)


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_an_acl_without_write_for_others_is_not_shared(mode, server, tmp_path):
    # Control: an ACL that lets the service read and search, not write.
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    _set_acl(logs, 5)
    out = logs / "out.log"
    _starts(mode, server)([SH, "-c", "echo ok"], env=TARGET_ENV, stdout=str(out)).wait()
    assert out.read_bytes() == b"ok\n"


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_link_is_followed_only_if_trusted_and_in_a_directory_only_they_write(
        mode, server, tmp_path, root_only):
    # (1) Another user's link in a root directory (left there by a chown, or from when
    # the directory was theirs): refused, though no one else may write the directory.
    theirs = tmp_path / "theirs"
    os.symlink(root_only, theirs)
    os.lchown(theirs, OTHER, OTHER)
    # (2) Root's own link in a sticky directory others write: refused.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.symlink(root_only, sticky / "roots")
    # (3) Root's link in a root directory, leading into a directory the service may
    # write through an ACL: the walk goes on under the same rules there.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    _set_acl(shared, 7)
    os.symlink(shared, tmp_path / "via")
    for path in (theirs / "pwned", sticky / "roots" / "pwned",
                 tmp_path / "via" / "pwned"):
        with pytest.raises(SetupError) as e:
            _starts(mode, server)([SH, "-c", "echo pwned"], env=TARGET_ENV,
                                  stdout=str(path))
        assert e.value.step == "spawn" and str(path) in str(e.value)
    assert os.listdir(root_only) == [] and os.listdir(shared) == []
    # Control: root's link in a root directory to a root directory is followed.
    os.symlink(root_only, tmp_path / "fine")
    _starts(mode, server)([SH, "-c", "echo ok"], env=TARGET_ENV,
                          stdout=str(tmp_path / "fine" / "out.log")).wait()
    assert (root_only / "out.log").read_bytes() == b"ok\n"


class _PathLike:
    def __init__(self, p):
        self.p = p

    def __fspath__(self):
        return self.p


@pytest.mark.parametrize("mode", ["spawn", "fast"])
def test_a_path_no_file_can_have_is_a_spec_error_naming_the_argument(mode, server,
                                                                     tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    bad = [str(tmp_path / "x\ud800"), _PathLike(str(tmp_path / "x\udfff")),
           str(tmp_path / "a\0b"), os.fsencode(tmp_path / "a\0b")]
    for path in bad:
        for where in ("stdin", "stdout", "stderr"):
            with pytest.raises(SpecError) as e:
                _starts(mode, server)([SH, "-c", "echo ran"], env=TARGET_ENV,
                                      **{where: path})
            assert str(e.value).startswith(f"{where}: "), str(e.value)
    assert os.listdir(tmp_path) == []
    assert _no_new_fds(before)
    # Control: bytes that are not UTF-8, and the same as a str (surrogateescape) or a
    # PathLike, name one file.
    raw = os.fsencode(tmp_path) + b"/out-\xff.log"
    for path in (raw, os.fsdecode(raw), _PathLike(os.fsdecode(raw)), pathlib.Path(
            os.fsdecode(raw))):
        _starts(mode, server)([SH, "-c", "echo ok"], env=TARGET_ENV, stdout=path).wait()
    assert os.listdir(tmp_path) == ["out-\udcff.log"]
    with open(raw, "rb") as f:
        assert f.read() == b"ok\n" * 4
