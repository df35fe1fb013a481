"""sandbox: spawn specs, the facilities that apply them, and process inspection.

Public names are loaded on first use so that the shim, which imports parts of this
package, pays only for what its spec needs.
"""

from __future__ import annotations

__all__ = ["Spec", "SandboxError", "SpecError", "SetupError", "ExecError", "inspect",
           "spawn", "run", "Process", "Completed", "ForkServer", "verify", "exposure",
           "reap", "aspawn", "wait_any", "PIPE", "DEVNULL", "STDOUT"]

_LAZY = {
    "Spec": ("sandbox.spec", "Spec"),
    "SandboxError": ("sandbox.errors", "SandboxError"),
    "SpecError": ("sandbox.errors", "SpecError"),
    "SetupError": ("sandbox.errors", "SetupError"),
    "ExecError": ("sandbox.errors", "ExecError"),
    "inspect": ("sandbox.inspection", "inspect"),
    "spawn": ("sandbox.spawning", "spawn"),
    "run": ("sandbox.spawning", "run"),
    "Completed": ("sandbox.spawning", "Completed"),
    "Process": ("sandbox.process", "Process"),
    "ForkServer": ("sandbox.forkserver", "ForkServer"),
    "verify": ("sandbox.verification", "verify"),
    "exposure": ("sandbox.exposure", None),     # the module: exposure.score(...)
    "reap": ("sandbox.reaping", "reap"),
    "aspawn": ("sandbox.aio", "aspawn"),
    "wait_any": ("sandbox.aio", "wait_any"),
    "PIPE": ("sandbox.spawning", "PIPE"),
    "DEVNULL": ("sandbox.spawning", "DEVNULL"),
    "STDOUT": ("sandbox.spawning", "STDOUT"),
}


# Type checkers see the real names (mypy knows TYPE_CHECKING by name); at run time
# nothing is imported here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import exposure
    from .aio import aspawn, wait_any
    from .errors import ExecError, SandboxError, SetupError, SpecError
    from .forkserver import ForkServer
    from .inspection import inspect
    from .process import Process
    from .reaping import reap
    from .spawning import DEVNULL, PIPE, STDOUT, Completed, run, spawn
    from .spec import Spec
    from .verification import verify


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        module = importlib.import_module(mod)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
