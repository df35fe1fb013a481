"""Flags mode's lean path (wrapperd.talos) makes the very plan the full command line
makes (wrapperd.cli + the spec model + shim.prepare), and leaves everything else to it."""

import os

import pytest

from tests.conftest import imported_in_lean_python
from wrapperd import cli, shim, talos

ENV = b"PATH=/usr/bin:/bin\0LANG=C\0ODD=\xff\0"

# The forms machined uses, and Go's flag package accepts.
COMMAND_LINES = [
    ["-uid=65534", "/bin/true"],
    ["-uid", "65534", "--", "/bin/true", "-x"],
    ["--uid=65534", "-dropped-caps=cap_sys_admin,CAP_NET_RAW,sys_boot", "/bin/true"],
    ["-name=svc", "-dropped-caps=", "-oom-score=0", "-uid=0", "/bin/true"],
    ["-name", "svc", "-oom-score", "-500", "true"],
    ["-oom-score=300", "-dropped-caps", "cap_chown", "-uid=1", "/bin/true"],
    ["-cgroup-path=/wrapperd-test/lean", "-uid=65534", "/bin/true"],
    ["--status-fd", "2", "-uid=65534", "/bin/true"],
    ["-uid=5", "-uid=7", "/bin/true"],                    # the last one wins
]


def full_plan(args):
    optargs, argv = cli.split_argv(args)
    opts = cli._parser().parse_args(optargs)
    return shim.prepare(cli.build_spec(opts, argv, ENV, []))


@pytest.mark.parametrize("args", COMMAND_LINES, ids=" ".join)
def test_the_lean_path_makes_the_full_paths_plan(args):
    parsed = talos.parse(args)
    assert parsed is not None, args
    lean = talos.plan(*parsed[:2], talos.initial_environ(ENV), [])
    assert lean is not None
    assert lean == full_plan(args)


@pytest.mark.parametrize("args", [
    ["--spec", "s.json"], ["--profile", "talos", "/bin/true"], ["--dry-run", "/bin/true"],
    ["--help"], ["-uid=x", "/bin/true"], ["-uid=-1", "/bin/true"], ["-uid= 5", "/bin/true"],
    ["-uid=4294967295", "/bin/true"], ["-oom-score=1001", "/bin/true"],
    ["-name=", "/bin/true"], ["-name", "-uid=5", "/bin/true"], ["-uid=5"], ["-uid=5", "--"],
    ["-uid=5", ""], ["-status-fd=2", "/bin/true"], ["---uid=5", "/bin/true"],
    ["-dropped-caps=cap_nope", "/bin/true"], ["-cgroup-path=rel/ative", "/bin/true"],
    ["-cgroup-path=/a/../b", "/bin/true"], ["-uid", "/bin/true"], ["-u=5", "/bin/true"],
    ["--parent-pid", "1", "/bin/true"],
], ids=" ".join)
def test_anything_else_is_left_to_the_full_command_line(args):
    parsed = talos.parse(args)
    assert parsed is None or talos.plan(*parsed[:2], {}, []) is None


def test_flags_mode_imports_neither_argparse_nor_the_spec_model():
    # What machined's start costs: the lean path, in a fresh `python -I -S`, up to the
    # plan it would run.
    assert imported_in_lean_python(
        "from wrapperd import talos\n"
        "opts, argv = talos.parse(['-uid=65534', '-dropped-caps=cap_sys_admin', "
        "'-oom-score=5', '/bin/true'])\n"
        "assert talos.plan(opts, argv, {'PATH': '/bin'}, []) is not None",
        ("argparse", "attrs", "attr", "sandbox.spec", "json", "re", "typing", "enum",
         "pyseccomp", "psutil", "cgroupspy", "ctypes", "sandbox.profile", "tomllib",
         "wrapperd.cli")) == []


def test_an_unreadable_environment_fd_is_reported_with_the_status_fd(tmp_path):
    r_fd, w_fd = os.pipe()
    try:
        code = talos.main(["--status-fd", str(w_fd), "-uid=5", "/bin/true"], 1 << 19)
    finally:
        os.close(w_fd)
    record = os.read(r_fd, 4096)
    os.close(r_fd)
    assert code == 125 and b'"step": "python"' in record
