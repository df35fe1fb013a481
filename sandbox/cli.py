"""The `sandbox` command: the verbs that do not exec -- inspect, profiles, check -- and run.

Exit codes follow wrapperd's: 125 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import SandboxError, SpecError


def _cmd_inspect(a) -> int:
    from .inspection import inspect
    try:
        info = inspect(a.pid)
    except FileNotFoundError:
        raise SpecError(f"no process {a.pid}") from None
    except PermissionError as e:
        raise SpecError(f"cannot read /proc/{a.pid}: {e.strerror}") from None
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"pid {info['pid']} ({info['name']})")
    print("  uids      " + " ".join(f"{k}={v}" for k, v in info["uids"].items()))
    print("  gids      " + " ".join(f"{k}={v}" for k, v in info["gids"].items()))
    print(f"  groups    {info['groups']}")
    for k, v in info["capabilities"].items():
        shown = "all" if len(v) > 30 else (", ".join(v) or "-")
        print(f"  cap {k:<11} {shown}")
    print(f"  no_new_privs {info['no_new_privs']}   seccomp {info['seccomp']} "
          f"({info['seccomp_filters']} filters)")
    own = [n for n, v in info["namespaces"].items() if not v["host"]]
    print(f"  namespaces not the host's: {', '.join(own) or 'none'}")
    for line in info["cgroup"]:
        print(f"  cgroup    {line}")
    print(f"  oom_score_adj {info['oom_score_adj']}   nice {info['nice']}")
    if info["fds"] is not None:
        print(f"  fds       {sorted(info['fds'])}")
    return 0


def _cmd_profiles(a) -> int:
    from . import profile
    if a.action == "show":
        if not a.name:
            raise SpecError("usage: sandbox profiles show NAME")
        from .spec import Spec
        d = profile.apply_profile({}, a.name)
        print(Spec.from_dict(d).to_json())
        return 0
    for name in profile.names():
        desc = profile.load(name).get("description", "")
        print(f"{name:<20} {desc}")
    return 0


def _cmd_check(a) -> int:
    from . import profile
    from .spec import Spec, loads_strict
    with open(a.spec, "rb") as f:
        d = loads_strict(f.read())
    if not isinstance(d, dict):
        raise SpecError("the spec must be a JSON object")
    spec = Spec.from_dict(profile.apply_profile(d))
    from wrapperd import shim
    shim.prepare(spec)
    print(f"{a.spec}: ok")
    return 0


def _cmd_run(a) -> int:
    cmd = [sys.executable, "-m", "wrapperd", "--spec", a.spec, "--", *a.argv]
    os.execv(sys.executable, cmd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sandbox", description="Inspect processes, list "
                                "profiles, check and run spawn specs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("inspect", help="show a process's real privilege state")
    s.add_argument("pid", type=int)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=_cmd_inspect)
    s = sub.add_parser("profiles", help="list profiles, or show one fully resolved")
    s.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    s.add_argument("name", nargs="?")
    s.set_defaults(fn=_cmd_profiles)
    s = sub.add_parser("check", help="validate a spec without running anything")
    s.add_argument("spec")
    s.set_defaults(fn=_cmd_check)
    s = sub.add_parser("run", help="run ARGV under SPEC (execs wrapperd)")
    s.add_argument("spec")
    s.add_argument("argv", nargs=argparse.REMAINDER)
    s.set_defaults(fn=_cmd_run)
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except (SandboxError, OSError) as e:
        msg = getattr(e, "message", None) or str(e)
        print(f"sandbox: {msg}", file=sys.stderr)
        return 125
