"""How our Python is started when it runs as root: isolated.

An init starts `/sbin/wrapperd` with the *service's* environment and often in the
service's directory.  A Python interpreter started normally would act on both before the
first line of our code runs: `PYTHONPATH`, `PYTHONHOME`, `PYTHONSTARTUP`-like variables,
`PYTHONWARNINGS`, the user site (`PYTHONUSERBASE`, `~/.local`, its `.pth` files and
`usercustomize`) and, for `python -m`, the current directory on `sys.path`.  Any of them
runs code as full root on every start of the service.  `python -I` (isolated mode)
ignores all of them, so every way into our code as root starts that way:

* the installed `wrapperd` and `sandbox` commands: the launchers this module writes, whose
  first line is `#!PYTHON -I` (pip's console scripts carry no interpreter flags, so pip's
  own would not do; `make venv` runs `python3 -I -m sandbox.launchers` after the install);
* `sandbox run` and `sandbox.spawn()` exec `python -I` (the lean shim `python -I -S`);
* the fork server is `python -I -S`.

A check (`require()`) makes a non-isolated start fail closed: it cannot undo what already
ran at start-up, but it turns a wrongly installed shim into one clear error on the first
start instead of a silent hole.  The target still receives its environment untouched:
isolation only changes what the interpreter itself reads.
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


def _launcher(python: str, module: str, func: str) -> str:
    # Linux passes everything after the interpreter path as one argument: "-I" alone.
    return (f"#!{python} -I\n"
            "# Written by sandbox.launchers: -I keeps the caller's directory, PYTHON*\n"
            "# variables and user site out of this interpreter, which may run as root.\n"
            "import sys\n"
            f"from {module} import {func}\n"
            f"sys.exit({func}())\n")


def write_launchers(bindir: str, python: str) -> "list[str]":
    """Write (atomically replace) the isolated launchers in bindir; their paths."""
    if " " in python or "\t" in python or "\n" in python:
        raise ValueError(f"{python!r}: an interpreter path with white space cannot be "
                         "a #! line")
    out = []
    for name, (module, func) in COMMANDS.items():
        path = os.path.join(bindir, name)
        tmp = f"{path}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        try:
            os.write(fd, _launcher(python, module, func).encode())
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        out.append(path)
    return out


def main(argv: "list[str] | None" = None) -> int:
    import argparse
    import sysconfig
    p = argparse.ArgumentParser(
        prog="python3 -I -m sandbox.launchers",
        description="Write the `wrapperd` and `sandbox` commands as launchers that start "
                    "this interpreter isolated (#!PYTHON -I), replacing pip's console "
                    "scripts of the same names.")
    p.add_argument("bindir", nargs="?", default=sysconfig.get_path("scripts"),
                   help="where to write them (default: this interpreter's scripts "
                        "directory, %(default)s)")
    a = p.parse_args(argv)
    if not isolated():
        print(f"sandbox.launchers: python: {require()}", file=sys.stderr)
        return 125
    try:
        for path in write_launchers(a.bindir, sys.executable):
            print(path)
    except (OSError, ValueError) as e:
        print(f"sandbox.launchers: {e}", file=sys.stderr)
        return 125
    return 0


if __name__ == "__main__":
    sys.exit(main())
