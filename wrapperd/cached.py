"""`wrapperd --spec FILE` the fast way: a plan prepared by an earlier start of the same
service, from sandbox.plancache (which says what the key covers and what is checked
again), run as the lean shim runs a plan -- without argparse, the spec model or prepare.

Only a plain invocation takes it: --spec with a file path, and otherwise only options
that are part of the key (--profile, Talos's flags) or that the lean path handles itself
(--status-fd, --parent-pid).  Anything else (--dry-run, --help, --spec-fd, a spec on
stdin) goes to the full command line, as does every miss: wrapperd.cli then prepares
the spec from the very bytes the key was computed over and stores the plan.
"""

from __future__ import annotations

import os

from wrapperd import talos


class Miss:
    """What a miss hands the full command line: the entry and key to store under, and
    the spec and environment bytes they cover (read once: a file changed since must not
    be stored under them)."""

    def __init__(self, entry: str, key: str, spec: bytes, environ: bytes):
        self.entry, self.key, self.spec, self.environ = entry, key, spec, environ


def _plain(args: "list[str]") -> "tuple[str, int | None, int | None] | None":
    """(spec path, status fd, parent pid) of a plain invocation, else None."""
    optargs, _argv = talos.split_argv(args, talos.CLI_WITH_VALUE)
    spec = status_fd = parent_pid = None
    i = 0
    while i < len(optargs):
        a = optargs[i]
        if a in talos.CLI_WITH_VALUE:
            if i + 1 >= len(optargs):
                return None
            v = optargs[i + 1]
            i += 2
            if a == "--spec-fd" or (a == "--spec" and spec is not None):
                return None
            if a == "--spec":
                spec = v
            elif a in ("--status-fd", "--parent-pid"):
                if not (v.isascii() and v.isdigit()) or len(v) > 9:
                    return None
                if a == "--status-fd":
                    status_fd = int(v)
                else:
                    parent_pid = int(v)
            continue
        name, eq, _v = a.lstrip("-").partition("=")
        if not eq or a.startswith("---") or name not in talos.FLAGS or \
                name == "status-fd":
            return None                # --dry-run, --help, anything else
        i += 1
    if spec is None or spec == "-" or not spec:
        return None
    return spec, status_fd, parent_pid


def run(args: "list[str]", environ: "bytes | None") -> "int | Miss | None":
    """Run a cached plan (never returns, or, when a step failed, has reported it: the
    exit code), or say why not: None (not a plain invocation, or the cache cannot be
    used: the full command line decides everything), or a Miss for the full command
    line to store its plan under."""
    if os.geteuid() != 0:
        return None                    # the cache is root's only (sandbox.bpfcache)
    plain = _plain(args)
    if plain is None:
        return None
    path, status_fd, parent_pid = plain
    from sandbox import plancache, procfs
    from sandbox.fds import read_all
    try:
        if not plancache.usable():
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            spec = read_all(fd, plancache.MAX_SPEC_BYTES)
        finally:
            os.close(fd)
        if len(spec) > plancache.MAX_SPEC_BYTES:
            return None
        if environ is None:
            environ = procfs.read("/proc/self/environ")
        entry = plancache.name(args, spec, environ)
        k = plancache.key(args, spec, environ)
        hit = plancache.load(entry, k)
    except (OSError, ValueError):
        # Whatever keeps the cache from being used (a working directory that is gone,
        # /proc unreadable) leaves the start to the full command line: the cache never
        # makes wrapperd fail where it would otherwise run.
        return None
    if hit is None:
        return Miss(entry, k, spec, environ)
    plan, _header = hit
    if not talos.may_start(status_fd):
        return None
    import wrapperd
    from sandbox.errors import SandboxError, SetupError
    from wrapperd import shim
    from wrapperd.planned import report
    ctx = shim.Context(status_fd, wrapperd.PPID_AT_START if parent_pid is None
                       else parent_pid, fault=os.environ.get(shim.FAULT_ENV))
    try:
        shim.start(plan, ctx)
    except SandboxError as e:
        # A cached plan that fails in a step is not kept: the next start prepares again
        # (what failed may be what prepare would now decide otherwise).
        plancache.forget(entry)
        # Reported here: the fds step may have moved the status fd (ctx says where).
        return report(e, ctx.status_fd)
    except BaseException as e:         # never a traceback: name it and fail closed
        return report(SetupError("internal", 0, f"{type(e).__name__}: {e}"),
                      ctx.status_fd)
    return 125                         # unreachable: start() execs or raises
