import os
import subprocess
import uuid

import pytest

from sandbox import _libc
from tests.conftest import free_low_port, host_dir_root, mark_every_test_under, skip_or_fail


def pytest_collection_modifyitems(items):
    """Every test here is `privileged` (pyproject's marker): `-m "not privileged"` runs
    the rest."""
    mark_every_test_under(__file__, items, pytest.mark.privileged)


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        skip_or_fail("needs real root")


@pytest.fixture
def host_tmpfs():
    """A tmpfs of our own, mounted on the host at a unique directory (host_dir_root;
    mode 1777: any uid may write there unless the mount is read-only); unmounted and
    removed after, even when the test fails."""
    d = f"{host_dir_root()}/wrapperd-test-{uuid.uuid4().hex[:10]}"
    os.mkdir(d, 0o755)
    try:
        _libc.mount("tmpfs", d, "tmpfs", 0, "size=1m,mode=1777")
        try:
            yield d
        finally:
            subprocess.run(["umount", "--lazy", d], check=True)
    finally:
        os.rmdir(d)


@pytest.fixture
def host_shm():
    """A file in the host's /dev/shm as another service leaves it (owned by nobody, and
    mode 0666 so that only the mount flags and a private /dev/shm stand in the way of a
    target of any uid -- the control under `service` writes it), and a unique name
    nothing may create there; both removed after."""
    tag = uuid.uuid4().hex[:10]
    victim = f"/dev/shm/wrapperd-test-victim-{tag}"
    new = f"/dev/shm/wrapperd-test-new-{tag}"
    fd = os.open(victim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"host")
    os.close(fd)
    try:
        os.chown(victim, 65534, 65534)
        os.chmod(victim, 0o666)
        yield victim, new
    finally:
        for p in (victim, new):
            if os.path.lexists(p):
                os.unlink(p)


@pytest.fixture
def low_port():
    """A loopback TCP port below ip_unprivileged_port_start that is free right now:
    binding it needs CAP_NET_BIND_SERVICE, and a web server on the host (port 80) or a
    parallel run does not make the test fail.  Found by trying candidates in a random
    order (we are root here, so a bind fails only if the port is taken), then released
    for the target to bind."""
    import socket

    def free(port: int) -> bool:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except PermissionError:
            # No CAP_NET_BIND_SERVICE over this network namespace (a rootless run): it
            # cannot be checked, and the tests that need the port free need host root.
            return True
        except OSError:
            return False
        finally:
            s.close()
        return True
    return free_low_port(free)
