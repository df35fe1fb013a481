"""How our Python is started when it runs as root: isolated.

An init starts `/sbin/wrapperd` with the *service's* environment and often in the
service's directory.  A Python interpreter started normally would act on both before the
first line of our code runs: `PYTHONPATH`, `PYTHONHOME`, `PYTHONSTARTUP`-like variables,
`PYTHONWARNINGS`, the user site (`PYTHONUSERBASE`, `~/.local`, its `.pth` files and
`usercustomize`) and, for `python -m`, the current directory on `sys.path`.  Any of them
runs code as full root on every start of the service.  `python -I` (isolated mode)
ignores all of them, so every way into our code as root starts that way:

* the installed `wrapperd` and `sandbox` commands: the launchers this module writes (pip's
  console scripts carry no interpreter flags, so pip's own would not do; `make venv` runs
  `python3 -I -m sandbox.launchers` after the install).  `sandbox` is a `#!PYTHON -I`
  script.  `wrapperd`, which an init starts with the service's environment, is a static
  binary (launcher.c): the dynamic loader of a dynamically linked interpreter would act
  on LD_PRELOAD, LD_LIBRARY_PATH and friends before -I could help, so the launcher hands
  the environment over on a memfd and starts the interpreter with a clean one;
* `sandbox run` and `sandbox.spawn()` exec `python -I` (the lean shim `python -I -S`);
* the fork server is `python -I -S`.

A check (`require()`) makes a non-isolated start fail closed: it cannot undo what already
ran at start-up, but it turns a wrongly installed shim into one clear error on the first
start instead of a silent hole.  The target still receives its environment untouched:
isolation only changes what the interpreter itself reads.

The same run builds the static helper (helper.c) into the package's directory as
`wrapperd-helper`: what stays beside a target as its supervisor or reaper
(sandbox.supervisor), in place of a resident interpreter.  Without it (`--script`, or a
tree nobody ran this in) the Python supervisor stays instead: same guarantees, more
memory.
"""

from __future__ import annotations

import os
import sys

__all__ = ["isolated", "require", "write_launchers", "COMMANDS"]

# command name -> (module, function) its launcher calls; the same as setup.cfg's
# console_scripts, which stay so that a plain pip install still has the commands (they
# then refuse to run as root until the launchers are written).
COMMANDS = {"wrapperd": ("wrapperd.cli", "entry"), "sandbox": ("sandbox.cli", "entry")}

HOW = "start it as `python3 -I -m wrapperd`, or write isolated launchers with " \
      "`python3 -I -m sandbox.launchers`"


def isolated() -> bool:
    """True when this interpreter ignores PYTHON* variables, the user site and the
    current directory (`-I`)."""
    return bool(sys.flags.isolated)


def require() -> "str | None":
    """None if this interpreter runs isolated, else why that is an error (the message of
    step "python")."""
    if isolated():
        return None
    return ("not started isolated (-I): the caller's directory, PYTHON* variables and "
            f"user site could run code in this process; {HOW}")


def _script(python: str, module: str, func: str) -> bytes:
    # Linux passes everything after the interpreter path as one argument: "-I" alone.
    return (f"#!{python} -I\n"
            "# Written by sandbox.launchers: -I keeps the caller's directory, PYTHON*\n"
            "# variables and user site out of this interpreter, which may run as root.\n"
            "import sys\n"
            f"from {module} import {func}\n"
            f"sys.exit({func}())\n").encode()


def _site_path(python: str) -> str:
    """What the site module puts on sys.path for python started isolated (`-I`: no
    PYTHONPATH, no user site): its site-packages and the directories their .pth files
    name -- with this package's own directory first.  The launcher starts python with -S
    (no site module: no .pth file's code runs, and the start is the interpreter's own
    cost) and these entries instead, so it imports what `python -I -m wrapperd` would."""
    import subprocess

    from .spawning import package_root

    def path_of(*flags: str) -> "list[str]":
        r = subprocess.run([python, *flags, "-c", "import sys; print('\\0'.join(sys.path))"],
                           capture_output=True, text=True, check=True,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        return r.stdout.rstrip("\n").split("\0")

    bare = set(path_of("-I", "-S"))
    out = [package_root() or ""]
    out += [p for p in path_of("-I") if p not in bare and p not in out]
    # Only what is there: an editable install's path-hook marker names no directory.
    return ":".join(p for p in out if p and ":" not in p and os.path.exists(p))


def _compile(python: "str | None", pypath: "str | None", out: str,
             source: str = "launcher.c", what: str = "the static wrapperd launcher") -> None:
    """Build a static program of this package into out: launcher.c for python, which
    it starts with pypath as its sys.path entries (-S: no site module); helper.c."""
    import shutil
    import subprocess
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), source)
    # musl first (Debian's musl-tools), else the system's cc with glibc's static libc.
    # A static glibc program starts by asking cpuid for the caches' sizes, and every
    # cpuid traps to the hypervisor on a virtual machine; it also maps ~750 KB.  musl's
    # program asks nothing and is ~40 KB: a fork+exec of the helper, which the fast
    # path makes once per launch, went from 513 to 289 us (docs/performance.md).
    cc = shutil.which("musl-gcc") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError(f"no C compiler (cc) to build {what}; install gcc and libc6-dev, "
                      "or pass --script to accept a #!python -I launcher that leaves "
                      "LD_* variables to the dynamic loader, and the Python supervisor")
    define = [f"-DPYTHON=\"{python}\"", f"-DPYPATH=\"{pypath}\""] \
        if python is not None else []
    r = subprocess.run([cc, "-static", "-O2", "-Wall", "-Werror", *define, "-o", out, src],
                       capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if r.returncode != 0:
        raise OSError(f"building {what} failed ({cc}): "
                      f"{r.stderr.strip()}; is its static libc (libc6-dev or musl-dev) installed?")


def write_helper() -> str:
    """Build (atomically replace) the static helper that stays beside a target
    (helper.c, see sandbox.supervisor) into this package's directory; its path."""
    from .supervisor import helper_path
    path = helper_path()
    _install(path, lambda tmp: _compile(None, None, tmp, "helper.c", "the static helper"))
    return path


def _install(path: str, build) -> None:
    """Write a new file beside path with build(tmp), then rename it over path."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _write(data: bytes):
    def build(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return build


def write_launchers(bindir: str, python: str, script_only: bool = False) -> "list[str]":
    """Write (atomically replace) the launchers in bindir; their paths.  `wrapperd` is
    the static launcher (launcher.c), unless script_only: then a #!python -I script
    like `sandbox`'s, which keeps PYTHON* and the directory out but not the LD_*
    variables the dynamic loader reads."""
    if any(c in python for c in ' \t\n"\\'):
        raise ValueError(f"{python!r}: an interpreter path with white space, quotes or "
                         "backslashes cannot be a #! line or a C string")
    if python != sys.executable:
        raise ValueError(f"{python!r}: the launchers start the interpreter that writes "
                         f"them ({sys.executable}), whose sys.path they know")
    pypath = _site_path(python)
    if any(c in pypath for c in '\t\n"\\'):
        raise ValueError(f"{pypath!r}: paths with quotes, backslashes, tabs or newlines "
                         "cannot be a C string")
    out = []
    for name, (module, func) in COMMANDS.items():
        path = os.path.join(bindir, name)
        if name == "wrapperd" and not script_only:
            _install(path, lambda tmp: _compile(python, pypath, tmp))
        else:
            _install(path, _write(_script(python, module, func)))
        out.append(path)
    return out


def main(argv: "list[str] | None" = None) -> int:
    import argparse
    import sysconfig
    p = argparse.ArgumentParser(
        prog="python3 -I -m sandbox.launchers",
        description="Write the `wrapperd` and `sandbox` commands as launchers that start "
                    "this interpreter isolated, replacing pip's console scripts of the "
                    "same names: `wrapperd` a static binary (built with musl-gcc, else "
                    "cc, -static from "
                    "launcher.c) that also keeps LD_* variables from the dynamic loader, "
                    "`sandbox` a #!PYTHON -I script; and the static helper that stays "
                    "beside a target that needs a supervisor or reaper (helper.c, into "
                    "the package's directory as wrapperd-helper).")
    p.add_argument("bindir", nargs="?", default=sysconfig.get_path("scripts"),
                   help="where to write them (default: this interpreter's scripts "
                        "directory, %(default)s)")
    p.add_argument("--script", action="store_true",
                   help="no C compiler: write `wrapperd` as a #!PYTHON -I script too "
                        "(LD_PRELOAD and the like in the caller's environment then reach "
                        "the dynamic loader of root's interpreter), and build no helper "
                        "(a Python supervisor and reaper then, ~5 MB each)")
    a = p.parse_args(argv)
    if not isolated():
        print(f"sandbox.launchers: python: {require()}", file=sys.stderr)
        return 125
    try:
        for path in write_launchers(a.bindir, sys.executable, script_only=a.script):
            print(path)
        if not a.script:
            print(write_helper())
    except (OSError, ValueError) as e:
        print(f"sandbox.launchers: {e}", file=sys.stderr)
        return 125
    if a.script:
        print("sandbox.launchers: wrapperd is a script: LD_* variables of its caller "
              "reach the dynamic loader; no static helper: a Python supervisor and "
              "reaper stay beside each target that needs one", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
