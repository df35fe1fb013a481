import gc
import sys

# A shim lives until it execs the target (or reports and exits): the cyclic collector
# has nothing to reclaim in that time, and ran on every ~700 allocations of the imports
# and the plan (~0.4 ms of a spawn() shim's start).  The Python supervisor that may stay
# beside a target allocates next to nothing.
gc.disable()

args = sys.argv[1:]
environ_fd = None
if args[:1] == ["--environ-fd"] and len(args) > 1 and args[1].isdigit() and \
        int(args[1]) > 2:       # never stdin, stdout or stderr: those are the target's
    # The static launcher (sandbox/launcher.c) hands over the caller's environment on
    # this fd; this interpreter itself started with a clean one.
    environ_fd = int(args[1])
    args = args[2:]

if args[:1] == ["--plan-fd"]:
    # A prepared plan (sandbox.plan): the lean entry point, without argparse or attrs.
    if environ_fd is not None:
        import os
        os.close(environ_fd)            # a plan carries its environment
    from wrapperd.planned import main
    sys.exit(main(args))

# Flags mode takes the lean way when it can (wrapperd.talos), else the full command line.
from wrapperd import talos  # noqa: E402

sys.exit(talos.main(args, environ_fd))
