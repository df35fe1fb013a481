"""The `sandbox` command: the verbs that do not exec -- inspect, profiles, check -- and run.

Exit codes follow wrapperd's: 125 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import SandboxError, SpecError


def _printable(text: str) -> str:
    """text with every character that is not printable shown as an escape, as ps shows
    a command: a terminal escape sequence, a control character, a bidirectional
    override; a surrogate standing for a byte that was not UTF-8 as that byte (\\xff)."""
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
            continue
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:                   # os.fsdecode's surrogateescape
            o -= 0xDC00
        out.append(f"\\x{o:02x}" if o < 0x100 else
                   f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def _helper_role(name: str) -> "str | None":
    """What a wrapperd helper calls itself (supervisor.REAPER_COMM ...), else None."""
    from .supervisor import REAPER_COMM, SUPERVISOR_COMM
    return {REAPER_COMM: "reaper (pid 1 of the target's pid namespace)",
            SUPERVISOR_COMM: "supervisor (it forwards signals to the target and "
                             "exits with its status)"}.get(name)


def _cmd_inspect(a) -> int:
    from .inspection import inspect
    try:
        info = inspect(a.pid)
    except FileNotFoundError:
        raise SpecError(f"no process {a.pid}") from None
    except PermissionError as e:
        raise SpecError(f"cannot read /proc/{a.pid}: {e.strerror}") from None
    from . import exposure
    report = exposure.of_process(info, read_proc=True)
    if a.json:
        print(json.dumps({**info, "exposure": report.to_dict()}, indent=2))
        return _gate(report, a.threshold)
    # Text the target controls (its name, its cgroup's path) goes to the admin's
    # terminal: never as raw control characters, a newline included (the JSON above
    # is escaped by json.dumps: ensure_ascii).
    def say(line: str) -> None:
        print(_printable(line))

    say(f"pid {info['pid']} ({info['name']})")
    helper = _helper_role(info["name"])
    if helper is not None:
        from .process import _children
        kids = sorted(_children(info["pid"]))
        say(f"  this is wrapperd's {helper}, not a target: the target is "
            + (", ".join(f"pid {k}" for k in kids) if kids else "gone") +
            " (sandbox inspect that pid)")
    say("  uids      " + " ".join(f"{k}={v}" for k, v in info["uids"].items()))
    say("  gids      " + " ".join(f"{k}={v}" for k, v in info["gids"].items()))
    say(f"  groups    {info['groups']}")
    dyn = info.get("dynamic_user")
    if dyn is not None:
        name = "an unnamed spec" if dyn["name"] is None else repr(dyn["name"])
        say(f"  dynamic user {dyn['uid']}, allocated for {name}")
    for k, v in info["capabilities"].items():
        shown = "all" if len(v) > 30 else (", ".join(v) or "-")
        say(f"  cap {k:<11} {shown}")
    say(f"  no_new_privs {info['no_new_privs']}   seccomp {info['seccomp']} "
        f"({info['seccomp_filters']} filters)   landlock {info.get('landlock', 'unknown')}")
    own = [n for n, v in info["namespaces"].items()
           if not (v["caller"] if v.get("host") is None else v["host"])]
    say(f"  namespaces not the host's: {', '.join(own) or 'none'}")
    for line in info["cgroup"]:
        say(f"  cgroup    {line}")
    say(f"  oom_score_adj {info['oom_score_adj']}   nice {info['nice']}")
    if info["fds"] is not None:
        say(f"  fds       {sorted(info['fds'])}")
    say("exposure:")
    for line in report.format().split("\n"):
        say("  " + line)
    return _gate(report, a.threshold)


EXIT_ABOVE_THRESHOLD = 1


def _gate(report, threshold) -> int:
    """--threshold: a non-zero exit when the exposure score is above it (CI gating)."""
    if threshold is not None and report.score > threshold:
        print(f"sandbox: exposure {report.score:.1f} is above the threshold "
              f"{threshold:.1f}", file=sys.stderr)
        return EXIT_ABOVE_THRESHOLD
    return 0


def _cmd_exposure(a) -> int:
    from . import exposure, profile
    from .spec import Spec, loads_strict
    if a.spec is None and a.profile is None:
        raise SpecError("usage: sandbox exposure SPEC|- [--profile NAME]")
    # A profile alone is scored as `profiles show` resolves it: named after itself, so
    # a profile with cgroup limits has the cgroup path a spec's name would give it.
    d = {"name": a.profile} if a.spec is None else {}
    if a.spec is not None:
        if a.spec == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(a.spec, "rb") as f:
                raw = f.read()
        d = loads_strict(raw)
        if not isinstance(d, dict):
            raise SpecError("the spec must be a JSON object")
    spec = Spec.from_dict(profile.apply_profile(d, a.profile))
    report = exposure.of_spec(spec)
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return _gate(report, a.threshold)


def _cmd_profiles(a) -> int:
    from . import profile
    if a.action == "show":
        if not a.name:
            raise SpecError("usage: sandbox profiles show NAME")
        from .spec import Spec
        # A profile's cgroup takes its path from the spec's name: show it with this one.
        d = profile.apply_profile({"name": a.name}, a.name)
        print(Spec.from_dict(d).to_json())
        return 0
    for name in profile.names():
        data = profile.load(name)
        base = f"(extends {data['extends']}) " if data.get("extends") else ""
        print(f"{name:<20} {base}{data.get('description', '')}")
    return 0


NOT_HONOURED_EXIT = 125


def _cmd_oci(a) -> int:
    """import: an OCI config.json as our spec (stdout), what cannot be honoured on
    stderr, one line each; export: our spec as an OCI config."""
    from . import oci
    from .spec import Spec, loads_strict
    with open(a.file, "rb") as f:
        doc = loads_strict(f.read())
    notes: list = []
    if a.action == "import":
        spec, notes = oci.import_config(doc)
        out = spec.to_json()
    else:
        from . import profile
        if not isinstance(doc, dict):
            raise SpecError("the spec must be a JSON object")
        spec = Spec.from_dict(profile.apply_profile(doc))
        out = json.dumps(oci.export_spec(spec, notes), indent=2)
    print(out)
    for n in notes:
        print(f"sandbox: not honoured: {n}", file=sys.stderr)
    return NOT_HONOURED_EXIT if notes and a.strict else 0


def _cmd_check(a) -> int:
    from . import profile
    from .spec import Spec, loads_strict
    with open(a.spec, "rb") as f:
        d = loads_strict(f.read())
    if not isinstance(d, dict):
        raise SpecError("the spec must be a JSON object")
    spec = Spec.from_dict(profile.apply_profile(d))
    from wrapperd import shim

    from . import notify
    # `notify` checked as sandbox.spawn() runs it, with a socket of its own (none made).
    shim.prepare(spec, notify_socket=notify.placeholder())
    print(f"{a.spec}: ok")
    return 0


def _cmd_seccomp(a) -> int:
    from . import seccomp
    if a.action == "list":
        for name in seccomp.profile_names():
            print(f"{name:<20} {seccomp.profile_description(name)}")
        for name in seccomp.group_names():
            print(f"{name:<20} {len(seccomp.expand(name))} syscalls")
        return 0
    if a.action == "import":
        # OCI linux.seccomp / Docker profile JSON -> our spec's seccomp section.
        if not a.spec:
            raise SpecError("usage: sandbox seccomp import PROFILE.json [-o FILE]")
        from . import seccomp_oci
        from .spec import Seccomp, loads_strict
        with open(a.spec, "rb") as f:
            section, notes = seccomp_oci.import_profile(loads_strict(f.read()))
        Seccomp.load(section, "seccomp")          # what we emit must load as a spec field
        text = json.dumps({"seccomp": section}, indent=2) + "\n"
        if a.output and a.output != "-":
            with open(a.output, "w") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
        for n in notes:
            print(f"sandbox: not honoured: {n}", file=sys.stderr)
        return 0
    # compile: the filter exactly as wrapperd would load it for this spec's target.
    if not a.spec or not a.output:
        raise SpecError("usage: sandbox seccomp compile SPEC -o FILE.bpf")
    from wrapperd import shim

    from . import profile
    from .spec import Spec, loads_strict
    with open(a.spec, "rb") as f:
        d = loads_strict(f.read())
    if not isinstance(d, dict):
        raise SpecError("the spec must be a JSON object")
    spec = Spec.from_dict(profile.apply_profile(d))
    if spec.seccomp is None:
        raise SpecError("the spec has no seccomp filter", "seccomp")
    # wrapperd's own prepare (ids, user namespace, capabilities, check_execve), but for
    # a target that need not exist on this machine.
    plan = shim.prepare(spec, find_target=False)
    prepared = plan.seccomp
    assert prepared is not None             # the spec has a filter: prepare compiled it
    if plan.dynamic_user is not None:
        print("sandbox: the spec's dynamic user also loads a filter of its own "
              "(restrict_suid_sgid), not written here", file=sys.stderr)
    if a.output == "-":
        sys.stdout.buffer.write(prepared.program)
    else:
        with open(a.output, "wb") as f:
            f.write(prepared.program)
    for why in prepared.skipped:
        print(f"sandbox: skipped {why}", file=sys.stderr)
    print(f"sandbox: {prepared.instructions} BPF instructions, {prepared.syscalls} syscalls "
          f"with rules, default {prepared.default_action}, ABIs "
          f"{', '.join(prepared.architectures)}", file=sys.stderr)
    return 0


_CLEAN_PATH = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _cmd_landlock(a) -> int:
    from . import landlock
    r = landlock.abi_report()
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    lowered = f" (lowered from {r['kernel_abi']} by {landlock.ENV_ABI})" \
        if r["abi"] != r["kernel_abi"] else ""
    print(f"Landlock ABI {r['abi']}{lowered}" if r["abi"] else "Landlock: not available")
    print(f"  fs     {', '.join(r['fs']) or '-'}")
    print(f"  net    {', '.join(r['net']) or '-'}")
    print(f"  scope  {', '.join(r['scope']) or '-'}")
    for what, need in r["missing"].items():
        print(f"  needs ABI {need}: {what}")
    return 0


def _cmd_run(a) -> int:
    # wrapperd runs as root.  -I: neither this directory nor PYTHON* may reach it.  And
    # an environment of PATH and the WRAPPERD_* settings only, as the static launcher
    # gives it (sandbox/launcher.c): LD_PRELOAD, LD_LIBRARY_PATH, GCONV_PATH ... would
    # act in the interpreter's dynamic loader and libc before -I or any of our code.
    # Nothing is lost: with a spec, the target's environment is the spec's `env`.
    # (This command's own interpreter saw them: an admin's tool, run in the admin's
    # environment.)
    cmd = [sys.executable, "-I", "-m", "wrapperd", "--spec", a.spec, "--", *a.argv]
    env = {b"PATH": _CLEAN_PATH}
    env.update((k, v) for k, v in os.environb.items() if k.startswith(b"WRAPPERD_"))
    if b"NOTIFY_SOCKET" in os.environb:     # what a spec's `notify` passes on
        env[b"NOTIFY_SOCKET"] = os.environb[b"NOTIFY_SOCKET"]
    os.execve(sys.executable, cmd, env)


def entry() -> None:
    """The `sandbox` command (setup.cfg, sandbox.launchers).  As root it must run
    isolated (see sandbox.launchers); unprivileged, the caller's environment is its own."""
    from . import launchers
    why = launchers.require()
    if why is not None and os.geteuid() == 0:
        print(f"sandbox: python: {why}", file=sys.stderr)
        sys.exit(125)
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # `sandbox inspect PID | head`: the reader is gone; nothing left to say.  Point
        # stdout at /dev/null so the interpreter's own flush at exit is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141          # 128 + SIGPIPE, as a shell reports a writer killed by it
    sys.exit(code)


EPILOG = """\
exit status: 0 success; 1 exposure above --threshold; 125 bad input (a bad spec, a
usage error, a file that cannot be read); `run` execs wrapperd, whose status it is.

See README.md for a tour, docs/spec.md for the spec format, docs/library.md for the
Python API."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # a usage error is bad input: 125, as wrapperd's
        self.print_usage(sys.stderr)
        print(f"sandbox: usage: {message}", file=sys.stderr)
        sys.exit(125)


def _message(e: BaseException) -> str:
    """What a user can act on: a SandboxError's message; for an OSError, the file and
    the reason ("spec.json: No such file or directory"), not Python's "[Errno 2] ..."."""
    if isinstance(e, SandboxError):
        return getattr(e, "message", None) or str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename is not None else e.strerror
    return str(e)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sandbox", description="Inspect processes, list profiles, check and "
                "run spawn specs.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    s = sub.add_parser("inspect", help="show a process's real privilege state")
    s.add_argument("pid", type=int, help="the process to inspect")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--threshold", type=float, metavar="SCORE",
                   help="exit 1 if the exposure score (0.0-10.0) is above SCORE")
    s.set_defaults(fn=_cmd_inspect)
    s = sub.add_parser("exposure", help="score a spec's exposure offline (0.0-10.0)")
    s.add_argument("spec", nargs="?", help="spec file ('-': stdin)")
    s.add_argument("--profile", metavar="NAME", help="merge the spec over this profile "
                   "(alone: score the profile)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--threshold", type=float, metavar="SCORE",
                   help="exit 1 if the score is above SCORE")
    s.set_defaults(fn=_cmd_exposure)
    s = sub.add_parser("profiles", help="list profiles, or show one fully resolved")
    s.add_argument("action", nargs="?", choices=("list", "show"), default="list",
                   help="list every profile (default), or show one")
    s.add_argument("name", nargs="?", help="the profile to show")
    s.set_defaults(fn=_cmd_profiles)
    s = sub.add_parser("oci", help="import an OCI config.json as a spec (what cannot be "
                       "honoured on stderr), or export a spec as an OCI config")
    s.add_argument("action", choices=("import", "export"),
                   help="import: OCI config.json -> spec; export: spec -> OCI config")
    s.add_argument("file", help="config.json (import) or a spec (export)")
    s.add_argument("--strict", action="store_true",
                   help=f"exit {NOT_HONOURED_EXIT} if anything cannot be honoured")
    s.set_defaults(fn=_cmd_oci)
    s = sub.add_parser("check", help="validate a spec without running anything")
    s.add_argument("spec", help="the spec file")
    s.set_defaults(fn=_cmd_check)
    s = sub.add_parser("seccomp", help="list seccomp profiles and groups, compile a "
                       "spec's filter to raw BPF (for bwrap --seccomp FD), or import an "
                       "OCI/Docker seccomp profile")
    s.add_argument("action", choices=("compile", "import", "list"),
                   help="compile a spec's filter, import a profile, or list profiles "
                        "and groups")
    s.add_argument("spec", nargs="?", help="compile: the spec; import: the OCI/Docker "
                   "seccomp profile (JSON)")
    s.add_argument("-o", "--output", metavar="FILE", help="where to write the BPF ('-': "
                   "stdout)")
    s.set_defaults(fn=_cmd_seccomp)
    s = sub.add_parser("landlock", help="the running Landlock ABI and what it supports")
    s.add_argument("action", choices=("abi",), help="abi: the ABI and its rights")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.set_defaults(fn=_cmd_landlock)
    s = sub.add_parser("run", help="run ARGV under SPEC (execs wrapperd)")
    s.add_argument("spec", help="the spec file")
    s.add_argument("argv", nargs=argparse.REMAINDER, help="the target and its arguments "
                   "(replaces the spec's argv)")
    s.set_defaults(fn=_cmd_run)
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        return a.fn(a)
    except (SandboxError, OSError) as e:
        if isinstance(e, BrokenPipeError):
            raise
        print(f"sandbox: {_message(e)}", file=sys.stderr)
        return 125
