"""Flags mode, the lean way: Talos's five flags straight to a plan, without argparse or
the spec model (attrs), so machined's `/sbin/wrapperd -name=... -uid=...` starts about as
fast as the interpreter itself (docs/performance.md).

The plan is the one wrapperd.cli would make of the same command line (cli.build_spec,
then shim.prepare), record for record -- tests/unit/test_talos_lean.py compares the two
over every flag form.  This path handles the well-formed command lines machined sends;
anything else (another option, a value that is not plainly valid, --help) returns None
and the full command line parser decides it, errors included, so no error message is
written twice.
"""

from __future__ import annotations

import os
import sys

from sandbox.errors import SandboxError, SetupError, SpecError
from sandbox.fds import read_all

# The flags, by their name after the dashes (-uid, --uid, -uid=N, --uid N): the range
# of an integer's value, or None for a string.
FLAGS: "dict[str, tuple[int, int] | None]" = {
    "name": None, "dropped-caps": None, "cgroup-path": None,
    "oom-score": (-1000, 1000), "uid": (0, 2**32 - 2), "status-fd": (0, 2**31 - 1)}


def split_argv(args: "list[str]", with_value) -> "tuple[list[str], list[str]]":
    """Options end at '--' or, as with Go's flag package, at the first non-option.
    with_value: the options that take their value as the next argument."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return args[:i], args[i + 1:]
        if not a.startswith("-") or a == "-":
            return args[:i], args[i:]
        i += 2 if a in with_value else 1
    return args, []


_WITH_VALUE = {f"{dashes}{name}" for name in FLAGS for dashes in ("-", "--")}
# The full command line's options that take their value as the next argument.
CLI_WITH_VALUE = {"--spec", "--spec-fd", "--profile", "--status-fd", "--parent-pid",
                  "--name", "-name", "--dropped-caps", "-dropped-caps", "--cgroup-path",
                  "-cgroup-path", "--oom-score", "-oom-score", "--uid", "-uid"}


def parse(args: "list[str]") -> "tuple[dict, list[str]] | None":
    """({flag: value}, argv), or None for anything this path leaves to the full parser."""
    optargs, argv = split_argv(args, _WITH_VALUE)
    opts: dict = {}
    i = 0
    while i < len(optargs):
        a = optargs[i]
        name, eq, value = a.lstrip("-").partition("=")
        if a.startswith("---") or name not in FLAGS or \
                (name == "status-fd" and not a.startswith("--")):
            return None
        if not eq:
            if i + 1 >= len(optargs):
                return None
            value = optargs[i + 1]
            i += 1
        i += 1
        limits = FLAGS[name]
        if limits is not None:
            digits = value[1:] if value.startswith("-") else value
            if not (digits.isascii() and digits.isdigit()):
                return None
            n = int(value)
            if not limits[0] <= n <= limits[1]:
                return None
            opts[name] = n            # the last one wins, as with argparse
        elif "\0" in value or not _encodes(value) or \
                (not eq and value.startswith("-")) or (name == "name" and not value):
            # argparse refuses a separate value that looks like an option; the spec
            # model, an empty name
            return None
        else:
            opts[name] = value
    if not argv or not argv[0]:
        return None
    return opts, argv


def initial_environ(raw: "bytes | None") -> "dict[str, str]":
    """The environment this process's caller started it with, as execve(2) gave it: the
    launcher's copy, or /proc/self/environ, the strings on the initial stack, which
    nothing in the interpreter rewrites.  os.environ is not that: at start-up Python's
    locale coercion (PEP 538) adds LC_CTYPE=C.UTF-8 to it when the locale is C or POSIX.
    Bytes that are not UTF-8 stay bytes (os.fsdecode).  An entry without '=' cannot be
    an environment variable of the spec and is left out; of repeated names the first
    wins, as getenv(3) finds it."""
    if raw is None:
        from sandbox import procfs
        raw = procfs.read("/proc/self/environ")
    env: "dict[str, str]" = {}
    for entry in raw.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name:
            env.setdefault(os.fsdecode(name), os.fsdecode(value))
    return env


# The largest environment the launcher may hand over (the kernel's own limit on argv
# plus envp is a quarter of the stack limit; this is well above the usual 2 MiB).
MAX_ENVIRON_BYTES = 64 << 20


def read_environ(environ_fd: "int | None") -> "bytes | None":
    """The caller's environment block from the static launcher's memfd (closed here: it
    must not reach the target); None without one (initial_environ then reads this
    process's own, only where a target gets it)."""
    if environ_fd is None:
        return None
    try:
        os.lseek(environ_fd, 0, os.SEEK_SET)
        return read_all(environ_fd, MAX_ENVIRON_BYTES)
    except OSError as e:
        raise SetupError("python", e.errno or 0,
                         f"--environ-fd {environ_fd}: cannot read it") from None
    finally:
        try:
            os.close(environ_fd)
        except OSError:
            pass


def status_fd_of(args: "list[str]") -> "int | None":
    """--status-fd N as given, without argparse: for errors found before parsing."""
    for i, a in enumerate(args[:-1]):
        if a == "--":
            break
        if a == "--status-fd" and args[i + 1].isdigit():
            return int(args[i + 1])
    return None


def _encodes(s: str) -> bool:
    try:
        s.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


def _cgroup_path(path: str) -> bool:
    """A path the spec model takes as it is: absolute, each component a plain name."""
    return path.startswith("/") and all(
        c and c not in (".", "..") for c in path[1:].split("/"))


class _View:
    """What the facilities' prepare() functions read of a spec section."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def plan(opts: dict, argv: "list[str]", env: "dict[str, str]", warnings: list):
    """The plan of cli.build_spec + shim.prepare for these flags, or None (the full path
    decides).  warnings: (step, message) pairs for stderr are appended here."""
    from sandbox import caps, creds, execution, fds, procattr, rlimits
    from wrapperd import shim
    p: dict = {}
    oom = opts.get("oom-score")
    p["procattr"] = procattr.Prepared(
        oom_score_adj=oom or None, nice=None, umask=None, cwd=None, pdeathsig=None,
        no_new_privs=False, new_session=False)     # Talos's: see cli.DESCRIPTION
    p["fds"] = fds.Prepared(())
    soft, hard, warning = rlimits.talos_nofile()
    p["rlimits"] = rlimits.prepare({"NOFILE": _View(soft=soft, hard=hard)})
    path = opts.get("cgroup-path")
    if path:
        if not _cgroup_path(path):
            return None
        from sandbox import cgroups
        p["cgroup"] = cgroups.prepare(_View(
            path=path, full_path=path, version="auto", root="/wrapperd", create=True,
            named=(), **dict.fromkeys(cgroups.LIMITS)))
    uid = opts.get("uid")
    if uid:
        # Talos's setuid(uid): the gid and supplementary groups stay as they are.
        p["creds"] = creds.prepare(_View(uid=uid, gid=os.getegid(),
                                         groups=tuple(os.getgroups()), umask=None,
                                         dynamic=False))
    try:
        drop = tuple(caps.normalize(c) for c in opts.get("dropped-caps", "").split(",")
                     if c)
    except SpecError:
        return None
    cap_view = _View(drop=drop, keep=None, ambient=None) if drop else None
    try:
        p["caps"] = caps.prepare(cap_view, creds.target_is_root(p.get("creds")), 0)
    except SpecError:
        return None
    p["target"] = execution.prepare(_View(argv=tuple(argv), env=env))
    if warning is not None:
        warnings.append(("rlimits", warning))
    return shim.Plan(**p)


def main(args: "list[str]", environ_fd: "int | None" = None) -> int:
    """`python -I -m wrapperd ARGS`: flags mode the lean way if args are a plain Talos
    command line, else the full command line (wrapperd.cli).  environ_fd: the static
    launcher's copy of the caller's environment (read here, and closed: it must not
    reach the target, whatever happens next)."""
    from wrapperd.planned import report
    try:
        environ = read_environ(environ_fd)
    except SetupError as e:
        return report(e, status_fd_of(args))
    parsed = parse(args)
    if parsed is not None:
        opts, argv = parsed
        status_fd = opts.get("status-fd")
        try:
            done = _run(opts, argv, environ, status_fd)
        except SandboxError as e:
            return report(e, status_fd)
        except BaseException as e:     # never a traceback: name it and fail closed
            return report(SetupError("internal", 0, f"{type(e).__name__}: {e}"), status_fd)
        if done:
            return 125                 # unreachable: start() execs or raises
    from wrapperd import cached
    try:
        got = cached.run(args, environ)            # a plan from an earlier start
    except SandboxError as e:
        return report(e, status_fd_of(args))
    except BaseException as e:         # never a traceback: name it and fail closed
        return report(SetupError("internal", 0, f"{type(e).__name__}: {e}"),
                      status_fd_of(args))
    if isinstance(got, int):
        return got                     # a cached plan ran, and a step failed
    from wrapperd import cli
    if isinstance(got, cached.Miss):
        return cli.main(args, got.environ, miss=got)
    return cli.main(args, environ)


def may_start(status_fd: "int | None") -> bool:
    """Before a lean path starts the steps: the interpreter runs isolated (else
    SetupError, step "python"), and the status fd becomes close-on-exec (EOF at exec =
    success); False, having done nothing, when it is not an open fd -- the full command
    line says what is wrong with it."""
    from sandbox import launchers
    why = launchers.require()
    if why is not None:
        raise SetupError("python", 0, why)
    if status_fd is not None:
        try:
            os.set_inheritable(status_fd, False)
        except OSError:
            return False
    return True


def _run(opts: dict, argv: "list[str]", environ: "bytes | None",
         status_fd: "int | None") -> bool:
    """Run the target (never returns) -- or False, having done nothing, when the full
    command line must decide."""
    if not may_start(status_fd):
        return False
    warnings: list = []
    the_plan = plan(opts, argv, initial_environ(environ), warnings)
    if the_plan is None:
        return False
    for step, why in warnings:
        print(f"wrapperd: {step}: {why}", file=sys.stderr, flush=True)
    import wrapperd
    from wrapperd import shim
    shim.start(the_plan, shim.Context(status_fd, wrapperd.PPID_AT_START,
                                      fault=os.environ.get(shim.FAULT_ENV)))
    return True
