"""sandbox: spawn specs, the facilities that apply them, and process inspection.

Public names are loaded on first use so that the shim, which imports parts of this
package, pays only for what its spec needs.
"""

from __future__ import annotations

__all__ = ["Spec", "SandboxError", "SpecError", "SetupError", "ExecError", "inspect"]

_LAZY = {
    "Spec": ("sandbox.spec", "Spec"),
    "SandboxError": ("sandbox.errors", "SandboxError"),
    "SpecError": ("sandbox.errors", "SpecError"),
    "SetupError": ("sandbox.errors", "SetupError"),
    "ExecError": ("sandbox.errors", "ExecError"),
    "inspect": ("sandbox.inspection", "inspect"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
