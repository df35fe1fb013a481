"""Our Python as root runs isolated from the caller's directory and PYTHON* variables.

An init starts wrapperd with the service's environment, often in the service's
directory.  Planted modules (on PYTHONPATH, in the working directory, as sitecustomize)
write a marker file if they are ever imported; the tests assert from the outside that no
marker appeared, that the target ran, and that the target's environment is the one it
was given, byte for byte, PYTHON* variables included.  The commands are the installed
launchers (`make venv` writes them with sandbox.launchers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import run_with_status_fd, skip_or_fail

BIN = sysconfig.get_path("scripts")
PLANTED = ("re", "argparse", "json", "sitecustomize", "usercustomize", "encodings")


def _launcher(name: str) -> str:
    path = os.path.join(BIN, name)
    if not os.access(path, os.X_OK):
        skip_or_fail(f"no installed {name} command in {BIN} (make venv writes it)")
    return path


@pytest.fixture
def planted(tmp_path):
    """A directory of modules that each leave a marker when imported; (dir, markers)."""
    d = tmp_path / "planted"
    d.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    for mod in PLANTED:
        (d / f"{mod}.py").write_text(
            f"open({str(marks / mod)!r}, 'w').close()\n"
            "raise ImportError('planted module')\n")
    # A package too, in case anything imports wrapperd or sandbox from the path first.
    for pkg in ("wrapperd", "sandbox"):
        (d / pkg).mkdir()
        (d / pkg / "__init__.py").write_text(
            f"open({str(marks / pkg)!r}, 'w').close()\n")
    os.chmod(tmp_path, 0o755)
    return d, marks


@pytest.fixture
def preload(tmp_path):
    """A library that appends "euid cmdline" to a log each time it is loaded; (its path,
    the log).  Only root may write the log (0644 in a 0755 directory)."""
    log = tmp_path / "loads"
    src = tmp_path / "preload.c"
    src.write_text(
        '#include <fcntl.h>\n#include <stdio.h>\n#include <unistd.h>\n'
        '__attribute__((constructor)) static void planted(void) {\n'
        '  char cmd[4096]; ssize_t n = 0; int fd = open("/proc/self/cmdline", O_RDONLY);\n'
        '  if (fd >= 0) { n = read(fd, cmd, sizeof cmd - 1); close(fd); }\n'
        '  if (n < 0) n = 0;\n'
        '  for (ssize_t i = 0; i < n; i++) if (!cmd[i]) cmd[i] = \' \';\n'
        '  cmd[n] = 0;\n'
        f'  FILE *f = fopen("{log}", "a");\n'
        '  if (f) { fprintf(f, "%u %s\\n", (unsigned)geteuid(), cmd); fclose(f); }\n}\n')
    so = tmp_path / "preload.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True,
                   timeout=120)
    os.chmod(tmp_path, 0o755)
    return so, log


def _loads(log, euid: "int | None" = None) -> list:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [ln for ln in lines if euid is None or ln.split(" ", 1)[0] == str(euid)]


def _ran(marks) -> list:
    return sorted(os.listdir(marks))


def test_the_launchers_start_python_isolated():
    from tests.unit.test_launchers import static_elf
    with open(_launcher("sandbox"), "rb") as f:
        first = f.readline()
    assert first == f"#!{sys.executable} -I\n".encode()
    # wrapperd: no dynamic loader, which would read LD_* before -I could help.
    assert static_elf(_launcher("wrapperd"))


def test_ld_variables_do_not_reach_root_python(preload):
    # The dynamic loader acts on LD_PRELOAD before any interpreter flag can help.  The
    # library logs every load into a root process: the target (uid 65534, which gets
    # the variable as its environment says) loads it but cannot write the log.
    so, log = preload
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(so),
           "LD_LIBRARY_PATH": str(so.parent)}
    r = subprocess.run([_launcher("wrapperd"), "--uid", "65534", "--", "/bin/sh", "-c",
                        'echo "$LD_PRELOAD"'], env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{so}\n".encode()
    assert _loads(log, euid=0) == []


def test_the_environment_fd_does_not_reach_the_target():
    r = subprocess.run([_launcher("wrapperd"), "--uid", "65534", "--", "/bin/sh", "-c",
                        'for f in /proc/$$/fd/*; do readlink "$f"; done; true'],
                       env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"memfd" not in r.stdout


def test_python_variables_do_not_reach_root_python(planted):
    d, marks = planted
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(d),
           "PYTHONWARNINGS": "error", "PYTHONSTARTUP": str(d / "re.py"),
           "PYTHONUSERBASE": str(d), "PYTHONINSPECT": "1"}
    r = subprocess.run([_launcher("wrapperd"), "--uid", "65534", "--",
                        "/bin/sh", "-c", "echo ran"], env=env, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ran\n"
    assert _ran(marks) == []


def test_a_bogus_pythonhome_still_runs_the_target_or_reports(tmp_path):
    # A PYTHONHOME that cannot start Python at all once made the shim exit 1 with an
    # empty status fd, which the status contract reads as "exec happened".
    env = {"PATH": "/usr/bin:/bin", "PYTHONHOME": str(tmp_path / "nowhere")}
    p, status = run_with_status_fd([_launcher("wrapperd"), "--status-fd", "{status_fd}",
                                    "--", "/bin/sh", "-c", "echo ran"], env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"ran\n"
    assert status == b""


def test_sandbox_run_ignores_the_callers_directory(planted, tmp_path):
    d, marks = planted
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"env": {"PATH": "/usr/bin:/bin"},
                                "user": {"uid": 65534, "gid": 65534}}))
    r = subprocess.run([_launcher("sandbox"), "run", str(spec), "/bin/sh", "-c",
                        "echo ran"], cwd=d, env={"PATH": "/usr/bin:/bin"},
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ran\n"
    assert _ran(marks) == []


def test_flags_mode_passes_the_environment_byte_for_byte(planted):
    # LANG=C (no LC_ALL): Python's locale coercion would add LC_CTYPE=C.UTF-8 to
    # os.environ; a value that is not UTF-8 must survive as bytes; PYTHON* variables
    # are the service's and reach it.
    d, marks = planted
    env = {b"PATH": b"/usr/bin:/bin", b"LANG": b"C", b"NOT_UTF8": b"\xff\x80x",
           b"EMPTY": b"", b"PYTHONPATH": str(d).encode(), b"PYTHONHOME": b"/nowhere",
           b"SECRET_TOKEN": b"s3cr=t"}
    r = subprocess.run([_launcher("wrapperd"), "--uid", "65534", "--",
                        "/bin/cat", "/proc/self/environ"], env=env, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"".join(k + b"=" + v + b"\0" for k, v in env.items())
    assert _ran(marks) == []


@pytest.mark.parametrize("how", ["cli", "plan"])
def test_a_python_not_started_isolated_fails_closed(tmp_path, how):
    marker = tmp_path / "target-ran"
    args = ["--status-fd", "{status_fd}"]
    if how == "plan":
        args = ["--plan-fd", "0", *args]
    p, status = run_with_status_fd([sys.executable, "-m", "wrapperd", *args, "--",
                                    "/bin/touch", str(marker)], stdin=subprocess.DEVNULL)
    assert p.returncode == 125
    assert p.stderr.decode().startswith("wrapperd: python: not started isolated")
    assert json.loads(status)["step"] == "python"
    assert not marker.exists()


def test_sandbox_run_keeps_ld_variables_from_root_wrapperd(tmp_path, preload):
    # The `sandbox` command is a `#!python -I` script: its own interpreter is the
    # admin's tool in the admin's environment and sees LD_PRELOAD (the control below).
    # What it execs as root -- python -I -m wrapperd, the same pid -- must not.  Every
    # load of the library appends "euid cmdline" to a file.
    so, log = preload
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"env": {"PATH": "/usr/bin:/bin"},
                                "user": {"uid": 65534, "gid": 65534}}))
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(so)}
    r = subprocess.run([_launcher("sandbox"), "run", str(spec), "--", "/bin/sh", "-c",
                        'echo "ran:$LD_PRELOAD"'], env=env, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ran:\n"               # the spec's environment, as before
    loads = _loads(log)
    # The control: the sandbox command's own interpreter loaded it (the test works).
    assert any(line.startswith("0 ") and " run " in line and "-m wrapperd" not in line
               for line in loads), loads
    assert not [line for line in loads if "-m wrapperd" in line], loads
    # The WRAPPERD_* settings are the caller's to give, as through the launcher.
    env["WRAPPERD_FAULT"] = "fail:fds"
    r = subprocess.run([_launcher("sandbox"), "run", str(spec), "--", "/bin/true"],
                       env=env, capture_output=True, timeout=60)
    assert r.returncode == 125
    assert b"fault injected (WRAPPERD_FAULT)" in r.stderr


def test_a_closed_stdin_stays_closed_and_the_launcher_still_runs():
    # memfd_create gives the lowest free fd: with stdin closed by the caller that is 0,
    # which wrapperd never takes as --environ-fd.  The launcher moves it up; the
    # target's stdin stays closed, as the caller gave it.
    r = subprocess.run(["/bin/sh", "-c", 'exec 0<&-; exec "$0" --uid 65534 -- /bin/sh -c '
                        '"[ -e /proc/\\$\\$/fd/0 ] && echo open || echo closed"',
                        _launcher("wrapperd")], capture_output=True,
                       env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"closed\n"
