"""Fuzz wrapperd's command line: every input either runs the target or is one line on
stderr with exit 125/126/127 -- no traceback, no hang, and the target never runs."""

import os
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOKENS = st.sampled_from([
    "--spec", "-", "--spec-fd", "--status-fd", "--profile", "--profile=service",
    "--profile=talos", "--profile=nope",
    "--uid", "-uid", "65534", "0", "-1", "x", "--dropped-caps", "CAP_SYS_ADMIN",
    "sys_boot,CAP_FOO", "--oom-score", "-oom-score", "1000", "-2000", "--name", "-name",
    "--dry-run", "--", "--help-not", "3", "999", "",
])
SPECS = st.sampled_from([
    "", "{", "[]", "null", '{"argv": []}', '{"user": {"uid": "no-such-user-x"}}',
    '{"capabilities": {"keep": ["CAP_KILL"], "drop": []}}', '{"nice": true}',
    '{"rlimits": {"NOFILE": [10, 1]}}', '{"env": {"A": "\\u0000"}}',
    '{"user": {"uid": 65534}, "no_new_privs": true}', '{"pass_fds": [3]}',
    '{"a": 1, "a": 1}', '{"version": 1}',
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS | st.text(max_size=8), max_size=6), SPECS)
def test_cli_fuzz(tmp_path_factory, tokens, spec_text):
    d = tmp_path_factory.mktemp("fuzz")
    os.chmod(d, 0o1777)
    marker = d / "ran"
    args = [t for t in tokens if "\0" not in t]
    cmd = [sys.executable, "-I", "-m", "wrapperd", *args, "--", "/bin/sh", "-c", f"touch {marker}"]
    p = subprocess.run(cmd, input=spec_text.encode(), capture_output=True, timeout=20)
    err = p.stderr.decode("utf-8", "replace")
    # Flags mode's NOFILE warning (where the host forbids Talos's limit) is no error.
    err = "".join(x for x in err.splitlines(keepends=True)
                  if not x.startswith("wrapperd: rlimits: warning: "))
    assert "Traceback" not in err
    if p.returncode == 0 and not marker.exists() and "--dry-run" in args:
        # A dry run (it ran nothing): what it says on stderr are notes (`wrapperd:
        # filesystem: ...`, `wrapperd: listen: ...`), not errors.
        return
    if not err.startswith("wrapperd: "):
        # wrapperd said nothing: it exec'd a target (the fuzzed argv may name a real
        # program, like '['), whose exit status is its own.
        assert p.returncode not in (125, 126, 127) or marker.exists() or err, err
        return
    assert p.returncode in (125, 126, 127), (p.returncode, err)
    assert err.count("\n") == 1, err
    assert not marker.exists()
