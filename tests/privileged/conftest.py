import os

import pytest

from tests.conftest import skip_or_fail


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        skip_or_fail("needs real root")


@pytest.fixture
def low_port():
    """A loopback TCP port below ip_unprivileged_port_start that is free right now:
    binding it needs CAP_NET_BIND_SERVICE, and a web server on the host (port 80) or a
    parallel run does not make the test fail.  Found by trying candidates in a random
    order (we are root here, so a bind fails only if the port is taken), then released
    for the target to bind."""
    import random
    import socket
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    if start <= 1:
        skip_or_fail("every port is unprivileged here (ip_unprivileged_port_start)")
    candidates = list(range(max(1, start - 400), start))
    random.shuffle(candidates)
    for port in candidates:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except PermissionError:
            # No CAP_NET_BIND_SERVICE over this network namespace (a rootless run): it
            # cannot be checked, and the tests that need the port free need host root.
            return port
        except OSError:
            continue
        finally:
            s.close()
        return port
    skip_or_fail("no free port below ip_unprivileged_port_start")
