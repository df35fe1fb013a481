"""The few ctypes pieces the shim uses, built directly on ctypes' C module, _ctypes.

Why: `import ctypes` costs the lean shim about 3 ms of its ~15 ms (ctypes/__init__.py
defines every C type, wintypes aliases, the CDLL/PyDLL/LibraryLoader machinery, and
imports struct and ctypes._endian), while `import _ctypes` costs about 0.4 ms.  The
definitions below are the ones ctypes/__init__.py itself makes, for just the types
sandbox._libc and sandbox.mounts need: same names, same behaviour (a value of one of
these types is accepted wherever ctypes' own type of that name is).  Anything else
should use the real ctypes.
"""

from __future__ import annotations

import _ctypes
from _ctypes import Structure, addressof, byref, get_errno, sizeof  # noqa: F401  (re-exported)


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_uint(_ctypes._SimpleCData):
    _type_ = "I"


class c_long(_ctypes._SimpleCData):
    _type_ = "l"


class c_ulong(_ctypes._SimpleCData):
    _type_ = "L"


class c_ushort(_ctypes._SimpleCData):
    _type_ = "H"


class c_uint64(_ctypes._SimpleCData):
    _type_ = "Q"


class c_char_p(_ctypes._SimpleCData):
    _type_ = "z"


c_uint32 = c_uint
c_size_t = c_ulong                  # LP64: the only data model the shim runs on


class LibC:
    """ctypes.CDLL(None, use_errno=True): the process's own symbols (libc), each
    function an int-returning cdecl function that saves errno (see get_errno)."""

    def __init__(self):
        class _FuncPtr(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int
        self._FuncPtr = _FuncPtr
        self._handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        func = self._FuncPtr((name, self))      # dlsym; AttributeError if missing
        func.__name__ = name
        setattr(self, name, func)               # resolved once
        return func
