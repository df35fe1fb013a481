"""wrapperd's command line: Talos's flags, errors as one line and exit 125."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_wrapperd, wrapperd_cmd
from wrapperd.cli import split_argv


@pytest.mark.parametrize("args, opts, argv", [
    (["--uid", "5", "--", "a", "-b"], ["--uid", "5"], ["a", "-b"]),
    (["-name", "x", "/bin/true", "--uid"], ["-name", "x"], ["/bin/true", "--uid"]),
    (["--dry-run", "true"], ["--dry-run"], ["true"]),
    (["--spec", "-"], ["--spec", "-"], []),
    # machined's process runner: -flag=value, an empty list, no '--' before ARGV.
    (["-name=svc", "-dropped-caps=", "-cgroup-path=/system/svc", "-oom-score=0", "-uid=0",
      "/usr/bin/svc", "-flag"],
     ["-name=svc", "-dropped-caps=", "-cgroup-path=/system/svc", "-oom-score=0", "-uid=0"],
     ["/usr/bin/svc", "-flag"]),
    (["-oom-score", "-500", "-uid", "7", "svc"], ["-oom-score", "-500", "-uid", "7"],
     ["svc"]),
])
def test_split_argv(args, opts, argv):
    assert split_argv(args) == (opts, argv)


def dry(*args, spec=None):
    p = run_wrapperd(spec, "--dry-run", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_talos_flags_map_to_spec_fields():
    d = dry("-name", "svc", "-dropped-caps", "cap_sys_boot,CAP_SYS_MODULE", "-cgroup-path",
            "/system/svc", "-oom-score", "-500", "-uid", "65534", "--", "/bin/true")
    assert d["name"] == "svc"
    assert d["capabilities"]["drop"] == ["CAP_SYS_BOOT", "CAP_SYS_MODULE"]
    assert d["cgroup"]["path"] == "/system/svc"
    assert d["oom_score_adj"] == -500
    assert d["user"]["uid"] == 65534
    assert d["argv"] == ["/bin/true"]


@pytest.mark.parametrize("flags", [
    ["-name=svc", "-dropped-caps=", "-cgroup-path=/system/svc", "-oom-score=0", "-uid=0"],
    ["-name", "svc", "-dropped-caps", "", "-cgroup-path", "/system/svc", "-oom-score", "0",
     "-uid", "0"],
    ["--name=svc", "--dropped-caps=", "--cgroup-path=/system/svc", "--oom-score=0",
     "--uid=0"],
])
def test_machined_flags_as_talos_s_shim(flags):
    d = dry(*flags, "/bin/true")
    assert d["name"] == "svc" and d["cgroup"]["path"] == "/system/svc"
    assert d["capabilities"] is None            # empty -dropped-caps=: nothing dropped
    assert d["oom_score_adj"] is None           # -oom-score=0: not written
    assert d["user"] is None                    # -uid=0: no setuid
    assert d["argv"] == ["/bin/true"]
    # Talos's shim: the caller's cwd, session and terminal, no no_new_privs, NOFILE.
    assert d["cwd"] == "inherit" and d["new_session"] is False
    assert d["no_new_privs"] is False and set(d["rlimits"]) == {"NOFILE"}


def test_flags_mode_setuid_keeps_gid_and_groups():
    d = dry("-uid=65534", "/bin/true")
    assert d["user"]["uid"] == 65534
    assert d["user"]["gid"] == os.getegid()
    assert sorted(d["user"]["groups"]) == sorted(os.getgroups())


def test_a_spec_or_profile_keeps_the_spec_defaults():
    for d in (dry("-uid=65534", spec={"argv": ["/bin/true"]}),
              dry("--profile", "talos", "-uid=65534", "-oom-score=0", "--", "/bin/true")):
        assert d["cwd"] == "/" and d["new_session"] is True
        assert d["user"] == {"uid": 65534, "gid": None, "groups": [], "umask": None,
                             "dynamic": False}
        assert d["rlimits"] == {}
    assert d["oom_score_adj"] == 0 and d["no_new_privs"] is False    # the profile's
    assert dry(spec={"argv": ["/bin/true"]})["no_new_privs"] is True


def test_without_spec_the_callers_environment_is_used_as_talos_did():
    import os
    d = dry("--", "/bin/true")
    assert d["env"].get("PATH") == os.environ.get("PATH")


def test_with_spec_the_environment_is_exactly_the_specs():
    d = dry(spec={"argv": ["/bin/true"], "env": {"A": "1"}})
    assert d["env"] == {"A": "1"}


def test_argv_replaces_spec_argv_and_flags_override():
    d = dry("--uid", "7", "--", "/bin/echo", "hi",
            spec={"argv": ["/bin/true"], "user": {"uid": 1}})
    assert d["argv"] == ["/bin/echo", "hi"] and d["user"]["uid"] == 7


def test_profile_is_merged_and_spec_wins():
    d = dry("--profile", "service", spec={"argv": ["/bin/true"], "user": {"uid": 1000}})
    assert d["profile"] == "service"
    assert d["user"]["uid"] == 1000            # the spec beats the profile
    assert d["user"]["umask"] == "0027"        # the profile fills the rest
    assert d["capabilities"]["keep"] == []


@pytest.mark.parametrize("args, stdin, message", [
    (["--bogus"], None, "unrecognized arguments"),
    (["--uid", "x", "--", "true"], None, "invalid int value"),
    (["--spec", "-"], "{", "malformed JSON"),
    (["--spec", "-"], '{"argv": []}', "argv: must not be empty"),
    (["--spec", "/nonexistent/spec.json"], None, "cannot read spec"),
    (["--profile", "nope", "--", "true"], None, "unknown profile 'nope'"),
    (["--dropped-caps", "CAP_FOO", "--", "true"], None, "unknown capability 'CAP_FOO'"),
    (["--spec", "-"], '{"argv": ["/bin/true"], "user": {"uid": "no-such-user-x"}}',
     "unknown user 'no-such-user-x'"),
    (["--spec", "-"], '{"argv": ["/bin/true"], "user": {"uid": 1, "gid": "no-such-grp"}}',
     "unknown group 'no-such-grp'"),
    (["--status-fd", "99", "--", "true"], None, "--status-fd 99"),
])
def test_bad_input_is_one_line_and_exit_125(args, stdin, message):
    p = subprocess.run(wrapperd_cmd(*args), input=(stdin or "").encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 125, err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("wrapperd: ")
    assert "Traceback" not in err
    assert p.stdout == b""


def test_not_found_is_127_and_not_executable_is_126(tmp_path):
    p = run_wrapperd({"argv": ["/nonexistent/prog"]})
    assert p.returncode == 127 and b"wrapperd: exec:" in p.stderr
    p = run_wrapperd({"argv": ["no-such-program-x"], "env": {"PATH": "/usr/bin"}})
    assert p.returncode == 127
    f = tmp_path / "noexec"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    p = run_wrapperd({"argv": [str(f)]})
    assert p.returncode == 126, p.stderr


def test_status_fd_gets_one_json_record_on_failure():
    import os
    r, w = os.pipe()
    p = run_wrapperd({"argv": ["/bin/true"], "rlimits": {"NOFILE": [1, 2**40]}},
                     "--status-fd", str(w), pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        lines = f.read().splitlines()
    assert p.returncode == 125
    rec = json.loads(lines[0])
    assert rec["step"] == "rlimits" and rec["errno"] == 1 and "NOFILE" in rec["message"]
    assert len(lines) == 1


def test_status_fd_is_empty_on_success():
    import os
    r, w = os.pipe()
    p = run_wrapperd({"argv": ["/bin/true"]}, "--status-fd", str(w), pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        assert f.read() == ""
    assert p.returncode == 0


def test_help_documents_the_talos_flags():
    p = subprocess.run(wrapperd_cmd("--help"), stdout=subprocess.PIPE, timeout=30)
    out = p.stdout.decode()
    assert p.returncode == 0
    for flag in ("--name", "--dropped-caps", "--cgroup-path", "--oom-score", "--uid",
                 "--spec-fd", "--status-fd", "--dry-run", "125"):
        assert flag in out


def _sandbox(*args, stdout=subprocess.PIPE):
    code = "from sandbox.cli import entry; entry()"
    return subprocess.run([sys.executable, "-I", "-c", code, *args], stdout=stdout,
                          stderr=subprocess.PIPE, timeout=60)


def test_sandbox_reader_gone_ends_quietly():
    r, w = os.pipe()
    os.close(r)                 # `sandbox inspect PID | head` after head has exited
    try:
        p = _sandbox("inspect", str(os.getpid()), stdout=w)
    finally:
        os.close(w)
    assert p.returncode == 141
    assert p.stderr == b""


def test_sandbox_names_a_missing_file_and_its_reason(tmp_path):
    p = _sandbox("check", str(tmp_path / "missing.json"))
    assert p.returncode == 125
    assert p.stderr.decode() == f"sandbox: {tmp_path / 'missing.json'}: " \
                                "No such file or directory\n"


def test_sandbox_usage_errors_are_bad_input():
    p = _sandbox("no-such-verb")
    assert p.returncode == 125
    assert b"sandbox: usage:" in p.stderr


def test_sandbox_help_documents_every_argument_and_the_exit_status():
    from sandbox import cli
    assert b"exit status:" in _sandbox("--help").stdout
    sub = next(a for a in cli.parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"sandbox {name}: {action.dest} has no help"


def test_sandbox_inspect_escapes_what_the_target_controls():
    # A name the target chose (a link's name it was exec'd through, or its own comm)
    # holding terminal escapes and a byte that is not UTF-8: printed raw, it would
    # clear and retitle the admin's terminal.
    comm = b"\x1b[2J\x1b]0;T\x07\xff"
    code = ("import sys\n"
            f"open('/proc/self/comm', 'wb').write({comm!r})\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        with open(f"/proc/{child.pid}/comm", "rb") as f:
            assert f.read() == comm + b"\n"         # the kernel keeps it as written
        p = _sandbox("inspect", str(child.pid))
        j = _sandbox("inspect", "--json", str(child.pid))
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == \
        f"pid {child.pid} (\\x1b[2J\\x1b]0;T\\x07\\xff)".encode()
    for out in (p.stdout, j.stdout):
        assert not set(out) & (set(range(0x20)) - {0x0a} | {0x7f}), out
    assert j.returncode == 0, j.stderr
    assert json.loads(j.stdout)["name"] == os.fsdecode(comm)
