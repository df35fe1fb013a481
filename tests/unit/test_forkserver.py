"""The fork server's modules: what the server process imports, and its protocol."""

import pytest

from sandbox.forkserver import protocol
from tests.conftest import imported_in_lean_python


def test_the_server_imports_neither_the_client_nor_the_spec_model():
    # Every module the server holds is copied into each worker and each spare (page by
    # page as they touch it): the client's side (threading, subprocess, the spec model)
    # has no business there.
    assert imported_in_lean_python(
        "from sandbox.forkserver import server; server._preload()",
        ("sandbox.forkserver.client", "sandbox.spawning", "sandbox.spec", "sandbox.process",
         "attrs", "attr", "threading", "subprocess", "pyseccomp", "psutil", "cgroupspy",
         "typing")) == []


def test_the_server_holds_only_what_every_plan_needs():
    # What only some plans' steps use comes with the first such plan: each module held
    # is memory every spare and worker copies and tears down.
    assert imported_in_lean_python(
        "from sandbox.forkserver import server; server._preload()",
        ("sandbox.landlock", "sandbox.cgroups", "sandbox.mounts", "sandbox.directories",
         "sandbox.listen", "sandbox.dynamicuser", "sandbox.rlimits", "sandbox.creds",
         "sandbox.seccomp_filter", "grp", "resource")) == []
    assert imported_in_lean_python(
        "from sandbox.forkserver import server; server._preload()",
        ("sandbox.caps", "sandbox.fds", "sandbox.procattr", "sandbox.execution",
         "sandbox.supervisor", "sandbox.plan", "wrapperd.shim")) == [
        "sandbox.caps", "sandbox.execution", "sandbox.fds", "sandbox.plan",
        "sandbox.procattr", "sandbox.supervisor", "wrapperd.shim"]


def test_a_request_round_trips_and_anything_else_is_refused():
    header = protocol.request([0, 2], [5, 9])
    assert protocol.parse_request(header, 3 + 2 + 2) == ((0, 2), (5, 9))
    for msg, nfds in ((header, 6),                         # an fd missing
                      (b"spawn 1 1", 5),                   # a pass_fd on a stdio number
                      (b"spawn 0 5,5", 5),                 # twice the same target
                      (b"exec 0 ", 3), (b"spawn 0", 3)):
        with pytest.raises(ValueError):
            protocol.parse_request(msg, nfds)


def test_replies_parse_only_what_the_server_sends():
    assert protocol.parse_pid_reply(protocol.pid_reply(42)) == 42
    assert protocol.parse_exit_reply(protocol.exit_reply(3 << 8)) == 3
    assert protocol.parse_exit_reply(protocol.exit_reply(9)) == -9     # killed
    for junk in (b"", b"pid", b"pid x", b"exit", b"exit -"):
        assert protocol.parse_pid_reply(junk) is None
        assert protocol.parse_exit_reply(junk) is None
