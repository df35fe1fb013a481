"""wrapperd --plan-fd N [--status-fd M]: run a prepared plan (sandbox.plan), leanly.

The library (sandbox.spawn, the fork server) has already validated the spec, resolved
names and compiled the seccomp filter; this entry point only decodes the plan and runs
wrapperd.shim's STEPS.  It imports no argparse, json, attrs or libseccomp, so that the
shim costs little more than the interpreter's own start (`python -I -S`: see
sandbox.spawning, which starts it with LEAN_BOOT below).

Exit codes and errors as wrapperd's: 125 (a malformed plan is SpecError, step "spec"),
126/127 for execve; one stderr line; one JSON record on the status fd.  The reporter
imports nothing: after the identity step the shim may be unable to read the Python
installation (see wrapperd/shim.py).
"""

from __future__ import annotations

import os
import sys

from sandbox.errors import (
    EXIT_FAILURE,
    SandboxError,
    SetupError,
    SpecError,
    exit_code,
    status_record,
)
from sandbox.fds import read_all

# What `python -I -S -c LEAN_BOOT PATHS --plan-fd N --status-fd M` runs.  PATHS (the
# directory holding the sandbox and wrapperd packages the caller itself uses, then its
# site-packages, for what a step may import lazily -- cgroupspy for v1 limits --
# joined with os.pathsep) go at the end of sys.path: with -S nothing else is added, and
# the standard library stays first.  If even the import fails, a status record is
# written by hand -- EOF without a record would read as "exec'd".
LEAN_BOOT = """\
import gc, sys
gc.disable()                # as wrapperd/__main__.py: nothing to collect before exec
sys.path += sys.argv[1].split(":")
try:
    from wrapperd.planned import main
except BaseException as e:
    import os
    a = sys.argv
    m = ("cannot import wrapperd from " + a[1] + ": " + type(e).__name__).encode(
        "utf-8", "backslashreplace")
    if "--status-fd" in a:
        try:
            os.write(int(a[a.index("--status-fd") + 1]),
                     b'{"step":"internal","errno":0,"message":"' + m.replace(b'"', b"'") +
                     b'"}\\n')
        except Exception:
            pass
    os.write(2, b"wrapperd: internal: " + m + b"\\n")
    os._exit(125)
sys.exit(main(sys.argv[2:]))
"""


def report(err: BaseException, status_fd: "int | None") -> int:
    """One status record and one stderr line; the exit code.  Imports nothing new."""
    if not isinstance(err, SandboxError):
        err = SetupError("internal", 0, f"{type(err).__name__}: {err}")
    if status_fd is not None:
        try:
            os.write(status_fd, status_record(err))
        except OSError:
            pass
    step = getattr(err, "step", "spec")
    errno = getattr(err, "errno", 0) or 0
    line = f"wrapperd: {step}: {getattr(err, 'message', str(err))}"
    if errno:
        line += f": {os.strerror(errno)}"
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    try:
        os.write(2, line.encode("utf-8", "backslashreplace") + b"\n")
    except OSError:
        pass
    return exit_code(err)


USAGE = "usage: wrapperd --plan-fd N [--status-fd M] [--parent-pid P] [--in-new-pidns]"


def _parse(args: "list[str]") -> "tuple[int, int | None, int | None, bool]":
    plan_fd = status_fd = parent_pid = None
    in_new_pidns = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--in-new-pidns":
            in_new_pidns = True
            i += 1
        elif a in ("--plan-fd", "--status-fd", "--parent-pid") and i + 1 < len(args):
            try:
                n = int(args[i + 1])
            except ValueError:
                raise SpecError(f"usage: {a} takes a number, not {args[i + 1]!r}") from None
            if n < 0:
                raise SpecError(f"usage: {a} {n}: not an fd")
            if a == "--plan-fd":
                plan_fd = n
            elif a == "--status-fd":
                status_fd = n
            else:
                parent_pid = n
            i += 2
        else:
            raise SpecError(f"{USAGE}; unexpected {a!r}")
    if plan_fd is None:
        raise SpecError(USAGE)
    return plan_fd, status_fd, parent_pid, in_new_pidns



def _born_in_new_pidns(plan) -> str:
    """--in-new-pidns: sandbox.spawn started this shim as pid 1 of a pid namespace made
    for the plan (namespaces.made_pid_ns_for_children), saving the shim's outside
    supervisor: the shim is the reaper, or the target itself with as_pid_1.  Checked,
    not trusted: anything else fails closed before any step runs.  The Context's
    `premade`."""
    from sandbox import namespaces
    kind = namespaces.premade_kind(plan.namespaces)
    if kind is None or os.getpid() != 1 or plan.procattr.pdeathsig is not None:
        raise SetupError("namespaces", 0, "--in-new-pidns: not pid 1 of a new pid "
                         "namespace, or a plan that cannot use one made ahead")
    return "reaper" if kind == "pid" else "pid1"


def main(args: "list[str]") -> int:
    status_fd = None
    ctx = None
    try:
        # Find the status fd first, so even a usage error is reported on it.
        if "--status-fd" in args:
            try:
                status_fd = int(args[args.index("--status-fd") + 1])
                os.set_inheritable(status_fd, False)    # EOF at exec = success
            except (ValueError, IndexError, OSError):
                status_fd = None
        if not sys.flags.isolated:      # sandbox.launchers.require(), without the import
            raise SetupError("python", 0, "not started isolated (-I): the caller's "
                             "directory, PYTHON* variables and user site could run code "
                             "in this process; start it as `python3 -I -S -c ...` (see "
                             "sandbox.spawning.lean_command)")
        plan_fd, _, parent_pid, in_new_pidns = _parse(args)
        from sandbox import plan as plan_mod
        try:
            data = read_all(plan_fd, plan_mod.MAX_PLAN_BYTES)
            os.close(plan_fd)                           # never reaches the target
        except OSError as e:
            raise SpecError(f"cannot read the plan from fd {plan_fd}: {e.strerror}") \
                from None
        plan = plan_mod.decode(data)
        import wrapperd
        from wrapperd import shim
        fault = os.environ.get(shim.FAULT_ENV)
        if in_new_pidns:
            # getppid() says 0 of a parent outside our pid namespace
            ctx = shim.Context(status_fd, 0, premade=_born_in_new_pidns(plan), fault=fault)
        else:
            ctx = shim.Context(status_fd, wrapperd.PPID_AT_START if parent_pid is None
                               else parent_pid, fault=fault)
        shim.start(plan, ctx)
    except SystemExit:
        raise
    except BaseException as e:      # never a traceback: name it and fail closed
        # (the fds step may have moved the status fd: ctx says where it is)
        return report(e, status_fd if ctx is None else ctx.status_fd)
    return EXIT_FAILURE
