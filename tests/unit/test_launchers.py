"""sandbox.launchers writes the commands as isolated launchers; the lean shim's path
holds only the interpreter's own site-packages."""

from __future__ import annotations

import os
import subprocess
import sys

from sandbox import launchers
from tests.conftest import run_with_status_fd


def static_elf(path: str) -> bool:
    """An ELF executable with no PT_INTERP program header: no dynamic loader runs."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:           # 64-bit only, as built here
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types                                 # PT_INTERP


def test_write_launchers_writes_isolated_commands(tmp_path):
    paths = launchers.write_launchers(str(tmp_path), sys.executable)
    assert sorted(os.path.basename(p) for p in paths) == ["sandbox", "wrapperd"]
    with open(tmp_path / "sandbox") as f:
        assert f.readline() == f"#!{sys.executable} -I\n"
    assert static_elf(str(tmp_path / "wrapperd"))
    for p in paths:
        assert os.stat(p).st_mode & 0o777 == 0o755
    r = subprocess.run([os.path.join(tmp_path, "wrapperd"), "--help"], capture_output=True,
                       env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0 and b"usage: wrapperd" in r.stdout


def test_write_launchers_script_only(tmp_path):
    launchers.write_launchers(str(tmp_path), sys.executable, script_only=True)
    with open(tmp_path / "wrapperd") as f:
        assert f.readline() == f"#!{sys.executable} -I\n"
    assert sorted(os.listdir(tmp_path)) == ["sandbox", "wrapperd"]


def test_a_launcher_that_cannot_exec_python_fails_closed(tmp_path):
    launchers._compile("/nonexistent/python3", "/nonexistent", str(tmp_path / "wrapperd"))
    p, status = run_with_status_fd([str(tmp_path / "wrapperd"), "--status-fd",
                                    "{status_fd}", "--", "/bin/true"])
    assert p.returncode == 125
    assert p.stderr == b"wrapperd: python: execve /nonexistent/python3: " \
                       b"No such file or directory\n"
    import json
    assert json.loads(status) == {"step": "python", "errno": 2,
                                  "message": "execve /nonexistent/python3"}


def test_launchers_refuse_an_interpreter_path_with_white_space(tmp_path):
    try:
        launchers.write_launchers(str(tmp_path), "/opt/my python/bin/python3")
    except ValueError as e:
        assert "white space" in str(e)
    else:
        raise AssertionError("accepted")
    try:
        launchers.write_launchers(str(tmp_path), '/opt/x"/python3')
    except ValueError as e:
        assert "quotes" in str(e)
    else:
        raise AssertionError("accepted")
    try:
        launchers.write_launchers(str(tmp_path), "/usr/bin/python3.0")
    except ValueError as e:
        assert "whose sys.path they know" in str(e)
    else:
        raise AssertionError("accepted")
    assert os.listdir(tmp_path) == []


def test_the_launcher_module_itself_refuses_a_non_isolated_start(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sandbox.launchers", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 125
    assert "not started isolated" in r.stderr
    assert os.listdir(tmp_path) == []


def test_lean_path_leaves_out_the_callers_pythonpath_and_user_site(tmp_path):
    planted = tmp_path / "lib" / "site-packages"
    planted.mkdir(parents=True)
    code = "from sandbox.spawning import lean_path; print(lean_path())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(planted),
                            "PYTHONUSERBASE": str(tmp_path)}, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert str(planted) not in r.stdout.split(":")
    assert str(tmp_path) not in r.stdout


def test_environ_fd_is_never_stdio(tmp_path):
    # --environ-fd 0 would read stdin as the environment and close the target's stdin:
    # taken as an argument like any other (and refused by the parser), not as the fd.
    r = subprocess.run([sys.executable, "-I", "-m", "wrapperd", "--environ-fd", "0",
                        "--", "/bin/true"], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60)
    assert r.returncode == 125
    assert b"unrecognized arguments: --environ-fd" in r.stderr
