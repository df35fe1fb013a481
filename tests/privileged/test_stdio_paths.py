"""stdio paths are opened by the caller (root): never through anything a less privileged
user could have planted.  The attack is tried for real: a service's log directory owned
by another user, holding a link to a root-owned file, a FIFO, or a file another user
owns in a sticky directory; the root file's bytes and the caller's fds are the judge."""

import os
import threading

import pytest

import sandbox
from sandbox import SetupError
from sandbox.forkserver import ForkServer
from tests.conftest import TARGET_ENV

# The less privileged user: not 65534, which a user namespace also shows for files of
# unmapped owners (the host's root), trusted there (sandbox.spawning._trusted_uids).
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
