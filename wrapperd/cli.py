"""wrapperd's command line: Talos's five flags (flags mode: Talos's shim, step for step),
plus a spec, a status fd and --dry-run.

Exit codes: 125 wrapperd failed (bad input or a setup step), 126 the target could not be
executed, 127 the target was not found.  Errors are one stderr line,
``wrapperd: <step>: <what failed>[: <strerror>]``, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from sandbox.errors import EXIT_FAILURE, SandboxError, SetupError, SpecError
from sandbox.fds import read_all
from wrapperd import talos
from wrapperd.planned import report
from wrapperd.talos import initial_environ

USAGE = """wrapperd [--spec PATH | --spec - | --spec-fd N] [--profile NAME] [--status-fd N]
                [--name NAME] [--dropped-caps CAP,...] [--cgroup-path PATH]
                [--oom-score N] [--uid N] [--dry-run] [--] ARGV..."""

DESCRIPTION = """\
Apply a spawn spec to this process in a fixed order -- oom score, nice, rlimits, cgroup,
dynamic user, service directories, listening sockets, namespaces, mounts, session
(setsid; a group leader forks once and supervises), fds, identity, capabilities, cwd,
no_new_privs, landlock, signals, seccomp -- then exec ARGV, so the target is born confined.
If any step fails the target never runs: one line on stderr, a JSON record on the status
fd, exit 125 (126: found but not executable, 127: not found).

Flags mode (no --spec, --spec-fd or --profile) is Talos's /sbin/wrapperd, step for
step: oom_score_adj only when -oom-score is non-zero; RLIMIT_NOFILE 1048576 soft and
hard (where the host forbids that hard limit: the soft limit raised to the hard one,
and a warning line); join -cgroup-path; drop -dropped-caps from the bounding set;
setuid only when -uid > 0, the gid and supplementary groups unchanged; exec ARGV with
the caller's environment byte for byte, in the caller's working directory, session and
terminal, without no_new_privs.  Unlike Talos's, the caps are dropped even when
kernel.kexec_load_disabled is set.  Go's flag forms work: -uid=65534, -uid 65534,
--uid=65534, lowercase cap names, an empty -dropped-caps=.

The safer behaviour is one flag away: with --spec or --profile the spec's defaults
apply (no_new_privs, a new session, cwd /, gid and groups from the user database, no
NOFILE change) and the target gets exactly the spec's `env` (a profile alone: the
caller's).  `--profile talos` is Talos's cap drop with a new session, cwd / and the
user's own gid and groups (no_new_privs stays off: the profile says so).  Flags
override the spec's fields; ARGV, when given, replaces the spec's argv."""

EPILOG = """\
examples:
  wrapperd -name=svc -dropped-caps=cap_sys_boot,cap_sys_module -oom-score=0 \
           -uid=65534 /bin/true
  wrapperd --profile talos --uid 65534 -- /bin/true
  wrapperd --spec service.json --status-fd 3
  wrapperd --profile service --dry-run -- /bin/sleep 60

The library's entry point (sandbox.spawn starts it as `python -I -S`):
  wrapperd --plan-fd N [--status-fd M] [--parent-pid P] [--in-new-pidns]
runs a spec the caller already prepared (sandbox.plan) through the same steps.

wrapperd runs as root: it starts only as an isolated interpreter (the installed command
is a static launcher that starts `python3 -I -S` on it; else run `python3 -I -m
wrapperd` yourself), so
neither the working directory nor PYTHON* variables reach it; otherwise exit 125 before
anything runs.

A repeated `--spec FILE` start runs the plan the first one prepared, unless anything it
was prepared from changed (WRAPPERD_CACHE_DIR, root only: docs/internals.md#plan-cache).

exit status: 125 wrapperd failed, 126 the target could not be executed, 127 the target
was not found; otherwise the target's own (128+N: killed by signal N).

See docs/wrapperd.md for this command and the status record, docs/spec.md for the spec
format."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # bad usage is bad input: exit 125, one line
        raise SpecError(f"usage: {message} (see 'wrapperd --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wrapperd", usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--spec", metavar="PATH", help="read the spec from PATH ('-': stdin)")
    src.add_argument("--spec-fd", metavar="N", type=int, help="read the spec from fd N")
    p.add_argument("--profile", metavar="NAME", help="merge the spec over this profile")
    p.add_argument("--status-fd", metavar="N", type=int,
                   help="write a JSON record here if setup fails; EOF means exec happened")
    p.add_argument("--parent-pid", metavar="PID", type=int,
                   help="the caller's pid: with pdeathsig, setup fails if wrapperd's parent "
                        "is no longer PID when the signal is armed (it exited early)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the fully resolved spec as JSON and exit 0")
    flags = p.add_argument_group("Talos wrapperd flags")
    flags.add_argument("--name", "-name", help="service name (spec: name)")
    flags.add_argument("--dropped-caps", "-dropped-caps", metavar="CAP,...",
                       help="capabilities to drop (spec: capabilities.drop)")
    flags.add_argument("--cgroup-path", "-cgroup-path", metavar="PATH",
                       help="cgroup to join (spec: cgroup.path)")
    flags.add_argument("--oom-score", "-oom-score", metavar="N", type=int,
                       help="oom_score_adj (spec: oom_score_adj; flags mode: 0 leaves "
                            "it unchanged)")
    flags.add_argument("--uid", "-uid", metavar="N", type=int,
                       help="uid to run as when > 0 (spec: user.uid; flags mode keeps "
                            "the gid and groups)")
    return p


def split_argv(args: "list[str]") -> "tuple[list[str], list[str]]":
    """Options end at '--' or, as with Go's flag package, at the first non-option."""
    return talos.split_argv(args, talos.CLI_WITH_VALUE)


def _read_spec(opts, data: "bytes | None" = None) -> "dict | None":
    """data: the spec file's bytes, already read (wrapperd.cached.Miss)."""
    from sandbox.spec import MAX_SPEC_BYTES, loads_strict
    if opts.spec is None and opts.spec_fd is None:
        return None
    if data is None:
        data = _read_spec_bytes(opts, MAX_SPEC_BYTES)
    doc = loads_strict(data)
    if not isinstance(doc, dict):
        raise SpecError("the spec must be a JSON object")
    return doc


def _read_spec_bytes(opts, limit: int) -> bytes:
    try:
        if opts.spec_fd is not None:
            fd = opts.spec_fd
        elif opts.spec == "-":
            fd = 0
        else:
            fd = os.open(opts.spec, os.O_RDONLY | os.O_CLOEXEC)
        data = read_all(fd, limit)
        if fd != 0:
            os.close(fd)    # the spec fd must not reach the target
        return data
    except OSError as e:
        src = f"fd {opts.spec_fd}" if opts.spec_fd is not None else opts.spec
        raise SpecError(f"cannot read spec from {src}: {e.strerror}") from None


def flags_mode(opts) -> bool:
    """No spec and no profile: wrapperd is Talos's shim (README: "Flags mode")."""
    return opts.spec is None and opts.spec_fd is None and opts.profile is None


def _talos_spec(environ: "bytes | None", warnings: list) -> dict:
    """What Talos's wrapperd did, as spec fields: the caller's environment byte for
    byte, its working directory, session and terminal, no no_new_privs, and NOFILE
    1048576 soft and hard (or, where the host forbids it, the soft limit raised to the
    hard one, with a warning)."""
    from sandbox import rlimits
    from sandbox.spec import CWD_INHERIT
    soft, hard, warning = rlimits.talos_nofile()
    if warning is not None:
        warnings.append(("rlimits", warning))
    return {"env": initial_environ(environ), "cwd": CWD_INHERIT, "no_new_privs": False,
            "new_session": False, "rlimits": {"NOFILE": [soft, hard]}}


def build_spec(opts, argv: "list[str]", environ: "bytes | None" = None,
               warnings: "list | None" = None, spec_bytes: "bytes | None" = None):
    """warnings: (step, message) pairs for stderr are appended here.  spec_bytes: the
    spec file's content, already read (wrapperd.cached.Miss)."""
    from sandbox import profile
    from sandbox.spec import Spec
    warnings = [] if warnings is None else warnings
    talos_mode = flags_mode(opts)
    d = _read_spec(opts, spec_bytes)
    if talos_mode:
        d = _talos_spec(environ, warnings)
    elif d is None:
        # A profile without a spec: the target gets wrapperd's own environment.
        d = {"env": initial_environ(environ)}
    if opts.name is not None:
        d["name"] = opts.name
    if opts.dropped_caps:
        caps = dict(d.get("capabilities") or {})
        caps["drop"] = list(caps.get("drop") or []) + \
            [c for c in opts.dropped_caps.split(",") if c]
        d["capabilities"] = caps
    if opts.cgroup_path:
        cg = dict(d.get("cgroup") or {})
        cg["path"] = opts.cgroup_path
        d["cgroup"] = cg
    if opts.oom_score is not None and not (talos_mode and opts.oom_score == 0):
        d["oom_score_adj"] = opts.oom_score     # Talos's shim wrote only a non-zero one
    if opts.uid is not None and opts.uid > 0:
        d["user"] = {"uid": opts.uid}
        if talos_mode:
            # Talos's setuid(uid): the gid and supplementary groups stay as they are.
            d["user"].update(gid=os.getegid(), groups=os.getgroups())
    if argv:
        d["argv"] = argv
    d = profile.apply_profile(d, opts.profile)
    return Spec.from_dict(d)


# One reporter for both entry points (imported now, not at failure time: after the
# identity step the shim may be unable to read the Python installation).
_report = report


def entry() -> None:
    """The `wrapperd` command (setup.cfg, sandbox.launchers)."""
    sys.exit(main())


def main(args: "list[str] | None" = None, environ: "bytes | None" = None,
         miss=None) -> int:
    """environ: the caller's environment as the static launcher handed it over
    (talos.read_environ); None: this process's own (talos.initial_environ).  miss: a
    wrapperd.cached.Miss -- the spec's bytes to use, and the key to store the plan
    under."""
    args = sys.argv[1:] if args is None else args
    status_fd = None
    ctx = None
    try:
        from sandbox import launchers
        why = launchers.require()
        if why is not None:
            status_fd = talos.status_fd_of(args)
            raise SetupError("python", 0, why)
        optargs, argv = split_argv(args)
        opts = _parser().parse_args(optargs)
        if opts.status_fd is not None and opts.status_fd == opts.spec_fd:
            # The spec fd is closed once read: the status record would go nowhere.
            raise SpecError(f"--status-fd {opts.status_fd}: the same fd as --spec-fd")
        if opts.status_fd is not None:
            status_fd = opts.status_fd
            try:
                os.set_inheritable(status_fd, False)   # EOF at exec = success
            except OSError as e:
                status_fd = None
                raise SpecError(f"--status-fd {opts.status_fd}: {e.strerror}") from None
        warnings: list = []
        spec = build_spec(opts, argv, environ, warnings,
                          miss.spec if miss is not None else None)
        from wrapperd import shim
        # `notify`: wrapperd owns no socket; the target gets the caller's NOTIFY_SOCKET.
        notify_socket = initial_environ(environ).get("NOTIFY_SOCKET") if spec.notify \
            else None
        plan = shim.prepare(spec, disk_cache=True,   # a repeated start skips the compile
                            notify_socket=notify_socket)
        if plan.landlock is not None:   # best_effort: what the ABI cannot enforce, said
            warnings += [("landlock", f"warning: best_effort: {d}")
                         for d in plan.landlock.dropped]
        for step, why in warnings:      # a step that does less than asked says so
            print(f"wrapperd: {step}: {why}", file=sys.stderr, flush=True)
        if opts.dry_run:
            # Profile seccomp rules the spec replaced (replace_profile_rules): a loosened
            # rule is never silent.
            for why in getattr(plan.seccomp, "replaced", ()):
                print(f"wrapperd: seccomp: replaced {why}", file=sys.stderr)
            unknown = getattr(plan.seccomp, "unknown_syscalls_action", None)
            if unknown:
                print("wrapperd: seccomp: syscalls above the highest libseccomp knows: "
                      f"{unknown}", file=sys.stderr)
            # The spec as the steps apply it: `filesystem` expanded into mounts, masks
            # and capability drops (the rest said on stderr).
            if spec.filesystem is not None:
                from sandbox import filesystem
                spec, expansion = filesystem.expand(spec)
                for line in filesystem.describe(expansion):
                    print(f"wrapperd: filesystem: {line}", file=sys.stderr)
            if plan.listen is not None:
                from sandbox import listen
                for line in listen.describe(plan.listen):
                    print(f"wrapperd: listen: {line}", file=sys.stderr)
            if plan.landlock is not None:
                from sandbox import landlock
                for line in landlock.describe(plan.landlock):
                    if not line.startswith("best_effort: "):    # (said above)
                        print(f"wrapperd: landlock: {line}", file=sys.stderr)
            sys.stdout.write(spec.to_json() + "\n")
            sys.stdout.flush()
            return 0
        if miss is not None and not warnings:
            from sandbox import plancache
            plancache.store(miss.entry, miss.key, plan, spec)   # the next start skips all of this
        import wrapperd
        ctx = shim.Context(status_fd, wrapperd.PPID_AT_START
                           if opts.parent_pid is None else opts.parent_pid,
                           fault=os.environ.get(shim.FAULT_ENV))
        shim.start(plan, ctx)
    except SandboxError as e:
        # (the fds step may have moved the status fd: ctx says where it is)
        return _report(e, status_fd if ctx is None else ctx.status_fd)
    except SystemExit:
        raise      # --help
    except BaseException as e:   # never a traceback: name it and fail closed
        return _report(SetupError("internal", 0, f"{type(e).__name__}: {e}"),
                       status_fd if ctx is None else ctx.status_fd)
    return EXIT_FAILURE
