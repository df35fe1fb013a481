"""sandbox.launchers writes the commands as isolated launchers; the lean shim's path
holds only the interpreter's own site-packages."""

from __future__ import annotations

import os
import subprocess
import sys

from sandbox import launchers


def test_write_launchers_writes_isolated_commands(tmp_path):
    paths = launchers.write_launchers(str(tmp_path), sys.executable)
    assert sorted(os.path.basename(p) for p in paths) == ["sandbox", "wrapperd"]
    for p in paths:
        with open(p) as f:
            assert f.readline() == f"#!{sys.executable} -I\n"
        assert os.stat(p).st_mode & 0o777 == 0o755
    r = subprocess.run([os.path.join(tmp_path, "wrapperd"), "--help"], capture_output=True,
                       env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0 and b"usage: wrapperd" in r.stdout


def test_launchers_refuse_an_interpreter_path_with_white_space(tmp_path):
    try:
        launchers.write_launchers(str(tmp_path), "/opt/my python/bin/python3")
    except ValueError as e:
        assert "white space" in str(e)
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
