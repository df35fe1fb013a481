"""wrapperd: the exec shim.  Reads a spawn spec, applies it to itself in a fixed order,
then execs the target, so the target is born confined.  See wrapperd.shim for the order."""

import os as _os

# The parent as this interpreter first saw it, for pdeathsig's "did the parent already
# exit?" check: read at the earliest point, not when the plan is made, so a parent that
# exits while the shim starts up is noticed.  (Entry points of a fresh wrapperd process
# use it; the fork server's children have the server as their parent instead.)
PPID_AT_START = _os.getppid()
