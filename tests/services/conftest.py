import os

import pytest

from tests.conftest import mark_every_test_under, needs_host_root, skip_or_fail


def pytest_collection_modifyitems(items):
    """Every test here is `services` (pyproject's marker): `-m "not services"` runs the
    rest without starting a daemon."""
    mark_every_test_under(__file__, items, pytest.mark.services)


@pytest.fixture(autouse=True)
def _need_root():
    # The daemons bind the host's loopback, their directories are the host's /run,
    # /var/lib and /var/log, sshd logs in a user made for the test: host root only.
    needs_host_root("real daemons in the host's /run, /var/lib, /var/log and users")
    if os.geteuid() != 0:
        skip_or_fail("needs real root")


@pytest.fixture(scope="session", autouse=True)
def _private_bases():
    """The directories of a dynamic user's service directories (BASE/private, made by
    the directories step where missing) go again if this run made them and left them
    empty."""
    bases = [f"{b}/private" for b in ("/run", "/var/lib", "/var/log", "/var/cache")]
    before = {b for b in bases if os.path.lexists(b)}
    yield
    for b in set(bases) - before:
        try:
            os.rmdir(b)
        except OSError:
            pass            # not empty: a parallel run's, or not made at all
