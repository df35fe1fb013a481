"""wrapperd: the exec shim.  Reads a spawn spec, applies it to itself in a fixed order,
then execs the target, so the target is born confined.  See wrapperd.shim for the order."""
