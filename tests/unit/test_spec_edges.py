"""Edge cases of the spec and of the shim's checks (see privileged/test_shim_edges.py)."""

import pytest

from sandbox import seccomp
from sandbox.errors import SpecError
from sandbox.spec import Spec


def test_more_groups_than_the_kernel_takes_is_a_spec_error():
    # setgroups(2) refuses more than NGROUPS_MAX: a SpecError naming the field, not an
    # "internal" ValueError from the identity step.
    with pytest.raises(SpecError, match="user.groups: more than 65536 groups"):
        Spec.from_dict({"argv": ["/bin/true"], "user": {"uid": 1, "groups": [1] * 65537}})
    Spec.from_dict({"argv": ["/bin/true"], "user": {"uid": 1, "groups": [1] * 65536}})


def test_rlimits_above_2_63_pass_as_twos_complement():
    from sandbox import rlimits
    spec = Spec.from_dict({"argv": ["/bin/true"],
                           "rlimits": {"CORE": [2**63, "unlimited"]}})
    ((_name, _res, soft, hard),) = rlimits.prepare(spec.rlimits).limits
    assert soft % 2**64 == 2**63 and hard == -1


@pytest.mark.parametrize("action,refused", [("kill_process", True), ("kill_thread", True),
                                            ("trap", True), ("errno:EPERM", False),
                                            ("log", False)])
def test_check_execve(action, refused):
    sc = Spec.from_dict({"argv": ["/bin/true"], "seccomp": {
        "default_action": "allow",
        "syscalls": [{"names": ["execve"], "action": action}]}}).seccomp
    program = seccomp.prepare(sc).program
    if refused:
        with pytest.raises(SpecError, match="execve"):
            seccomp.check_execve(program)
    else:
        seccomp.check_execve(program)


def test_status_fd_equal_to_spec_fd_is_refused(tmp_path):
    import json
    import os
    import subprocess
    import sys
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"argv": ["/bin/true"]}))
    fd = os.open(path, os.O_RDONLY)
    try:
        p = subprocess.run([sys.executable, "-I", "-m", "wrapperd", "--spec-fd", str(fd),
                            "--status-fd", str(fd)], pass_fds=(fd,), capture_output=True,
                           timeout=30)
    finally:
        os.close(fd)
    assert p.returncode == 125
    assert p.stderr.decode() == \
        f"wrapperd: spec: --status-fd {fd}: the same fd as --spec-fd\n"
