"""frozen: a small immutable-record decorator for the facilities' Prepared classes.

Why not attrs here: the shim imports every facility module it applies, and importing
attrs costs about 20 ms (it pulls in inspect, ast, typing ...) -- more than the whole
interpreter start the lean shim is allowed.  The spec model (sandbox/spec.py) stays
attrs: validation is the library's job, done once in the caller.  A Prepared class only
carries already-resolved values, so it needs what this gives and nothing more:
keyword/positional __init__ from the annotated fields (with class-level defaults),
immutability, equality, hashing and a repr -- the subset of `attrs.frozen` the
facilities used.  `__record_fields__` lists the field names, in order (sandbox.plan
encodes and decodes records through it).

A record a plan may carry also declares `__record_types__ = field_types(...)`: each
field's type as a runtime object (`int`, `str | None`, `tuple[str, ...]`,
`dict[str, str]`, another record class), which sandbox.plan checks a decoded value
against.  Not the annotations: under `from __future__ import annotations` those are
strings, and the shim does not parse them.  frozen() checks that it names exactly the
fields, in order.  A record whose values must also hold together (an argv that is not
empty) says what is wrong with itself in a `__record_check__(self) -> str | None`
method, which sandbox.plan calls on every record it decodes.
"""

from __future__ import annotations

__all__ = ["frozen", "field", "fields", "field_types", "is_record"]

_MISSING = object()


class _Field:
    __slots__ = ("default", "repr")

    def __init__(self, default=_MISSING, repr=None):
        self.default = default
        self.repr = repr


def field(*, default=_MISSING, repr=None):
    """A field with a custom repr function (as attrs.field(repr=fn))."""
    return _Field(default, repr)


def fields(cls) -> tuple:
    return cls.__record_fields__


def field_types(**types) -> dict:
    """A record's __record_types__: field name -> type, in the fields' order."""
    return types


def is_record(obj) -> bool:
    return hasattr(type(obj), "__record_fields__")


def replace(record, **changes):
    """A copy of record with these fields changed (dataclasses.replace)."""
    return type(record)(**{n: changes.pop(n, getattr(record, n))
                           for n in record.__record_fields__}, **changes)


def frozen(cls):
    names = tuple(k for k in cls.__dict__.get("__annotations__", {}))
    defaults, reprs = {}, {}
    for n in names:
        v = cls.__dict__.get(n, _MISSING)
        if isinstance(v, _Field):
            if v.repr is not None:
                reprs[n] = v.repr
            v = v.default
        if v is not _MISSING:
            defaults[n] = v
        elif defaults:
            raise TypeError(f"{cls.__name__}.{n}: a field without a default follows one "
                            "with a default")
    types = cls.__dict__.get("__record_types__")
    if types is not None and tuple(types) != names:
        raise TypeError(f"{cls.__name__}.__record_types__ must name the fields "
                        f"{names}, in order")
    ns = {k: v for k, v in cls.__dict__.items()
          if k not in names and k not in ("__dict__", "__weakref__")}
    ns["__slots__"] = names
    ns["__record_fields__"] = names

    def __init__(self, *args, **kw):
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional "
                            f"arguments ({len(args)} given)")
        values = dict(zip(names, args, strict=False))
        for k, v in kw.items():
            if k not in names:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {k!r}")
            if k in values:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {k!r}")
            values[k] = v
        for n in names:
            if n in values:
                v = values[n]
            elif n in defaults:
                v = defaults[n]
            else:
                raise TypeError(f"{cls.__name__}() missing required argument {n!r}")
            object.__setattr__(self, n, v)

    def __setattr__(self, name, value):
        raise AttributeError(f"{cls.__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"{cls.__name__} is frozen: cannot delete {name!r}")

    def _values(self):
        return tuple(getattr(self, n) for n in names)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _values(self) == _values(other)

    def __hash__(self):
        return hash((self.__class__.__qualname__,) + _values(self))

    def __repr__(self):
        parts = ", ".join(
            f"{n}={(reprs.get(n) or repr)(getattr(self, n))}" for n in names)
        return f"{cls.__name__}({parts})"

    ns.update(__init__=__init__, __setattr__=__setattr__, __delattr__=__delattr__,
              __eq__=__eq__, __hash__=__hash__, __repr__=__repr__)
    return type(cls)(cls.__name__, cls.__bases__, ns)
