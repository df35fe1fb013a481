"""The prepared form of a spec: what wrapperd.shim.prepare() worked out, as JSON.

The library compiles a spec once -- names resolved, seccomp BPF built, executable found,
everything validated through the attrs model -- and hands the shim this document
(`wrapperd --plan-fd N`, or the fork server's children).  The shim then needs neither
the spec model (attrs), nor libseccomp, nor the profile files: it decodes the plan into
the facilities' own Prepared records and runs the same STEPS, in the same order.

The plan is trusted exactly as much as the spec it came from (same author, same fd
discipline: an inherited pipe or memfd, never argv or the environment).  It is still
checked: a document that is not what encode() writes -- bad JSON, unknown version,
unknown record type, a missing or extra field, a value of the wrong type -- is refused
with SpecError (exit 125) before any step runs.

Format (version 4), one JSON object: "wrapperd_plan": 4, and one member per attribute
of wrapperd.shim.Plan (PLAN_FIELDS), each holding that facility's record or null:
  {"wrapperd_plan": 4, "procattr": ..., "fds": ..., "target": ..., "rlimits": ...,
   "cgroup": ..., "dynamic_user": ..., "directories": ..., "listen": ..., "creds": ...,
   "caps": ..., "namespaces": ..., "mounts": ..., "seccomp": ..., "restrictions": ...,
   "landlock": ...}
Values: JSON scalars; lists (decoded as tuples); {"@bytes": hex}; {"@dict": [[key,
value], ...]}; {"@": "module.Class", "f": {field: value}} for a record of RECORDS (a
class made with sandbox._record.frozen, named by the facility sandbox.<module> that
defines it -- or, for a package, exports it: cgroups.Hierarchy is defined in
sandbox.cgroups.hierarchy).  Decoding is mechanical: a record's fields must be exactly
its __record_fields__, each value of the type its __record_types__ declares, and what a
record's __record_check__ says is wrong is refused; each member must hold the record
PLAN_FIELDS names, or null where allowed.

Decoding imports only the modules of the records present (and _json, ctypes through
them): no json package, no re, no attrs, no typing.
"""

from __future__ import annotations

from .errors import SpecError

__all__ = ["FORMAT", "PLAN_FIELDS", "RECORDS", "encode", "decode"]

FORMAT = 4
MAX_PLAN_BYTES = 8 << 20
# The largest spec wrapperd reads (here, not in sandbox.spec, for readers without the
# spec model: wrapperd.cached).
MAX_SPEC_BYTES = 1 << 20
# The attributes of wrapperd.shim.Plan: the record each holds ("module.Class" under
# sandbox), and whether every plan has one (the others are null when their facility
# has nothing to do).
PLAN_FIELDS = {
    "procattr": ("procattr.Prepared", True),
    "fds": ("fds.Prepared", True),
    "target": ("execution.Prepared", True),
    "rlimits": ("rlimits.Prepared", False),
    "cgroup": ("cgroups.Prepared", False),
    "dynamic_user": ("dynamicuser.Prepared", False),
    "directories": ("directories.Prepared", False),
    "listen": ("listen.Prepared", False),
    "creds": ("creds.Prepared", False),
    "caps": ("caps.Prepared", True),
    "namespaces": ("namespaces.Prepared", False),
    "mounts": ("mounts.Prepared", False),
    "seccomp": ("seccomp_filter.Prepared", False),
    "restrictions": ("seccomp_filter.Restrictions", False),
    "landlock": ("landlock.Prepared", False),
}
# Every record type a plan may hold, at any depth.
RECORDS = (*(tag for tag, _required in PLAN_FIELDS.values()),
           "mounts.Mount", "cgroups.Target", "cgroups.Hierarchy", "directories.Directory",
           "listen.Socket", "landlock.Rule")


# --------------------------------------------------------------------------- encode

def _tag(cls) -> str:
    """A record class's name in a plan: its facility (the module under sandbox, or the
    package, whose __init__ exports it) and the class."""
    return f"{cls.__module__.removeprefix('sandbox.').partition('.')[0]}.{cls.__qualname__}"


_PLAIN = (str, bool, int, type(None))


def _enc(v, where: str):
    """where: the plan member being encoded, named in an error (built once per member,
    not per value: encode runs for every spawn)."""
    t = type(v)
    if t in _PLAIN:
        return v
    if t is tuple or t is list:
        return [x if type(x) in _PLAIN else _enc(x, where) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return {"@bytes": bytes(v).hex()}
    if t is dict:
        return {"@dict": [[_enc(k, where), _enc(x, where)] for k, x in v.items()]}
    if isinstance(v, (str, int)):       # a subclass (an IntEnum, say): its plain value
        return str(v) if isinstance(v, str) else int(v)
    names = getattr(t, "__record_fields__", None)
    tag = _TAGS.get(t)
    if tag is None:
        tag = _TAGS[t] = _tag(t)
    if names is None or tag not in RECORDS:
        raise TypeError(f"plan: {where}: a {tag} is not a plan record")
    return {"@": tag, "f": {n: _enc(getattr(v, n), where) for n in names}}


_TAGS: dict = {}                   # record class -> _tag(): a memo


def encode(plan) -> bytes:
    """The plan wrapperd.shim.prepare() returned, as the bytes `--plan-fd` reads."""
    import json
    doc = {"wrapperd_plan": FORMAT}
    for name in PLAN_FIELDS:
        doc[name] = _enc(getattr(plan, name), name)
    # ASCII: a spec string may hold lone surrogates U+DC80-U+DCFF (bytes that are not
    # UTF-8, as os.fsdecode gives them); JSON escapes them and the decoder gives the
    # same string back, which os.fsencode turns into the same bytes at execve.
    return json.dumps(doc, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True).encode("ascii")


# --------------------------------------------------------------------------- decode

class _Bad(Exception):
    pass


def _no_constant(name):
    raise _Bad(f"{name} is not allowed")


def _no_float(text):
    raise _Bad(f"a number with a fraction ({text}) is not allowed")


def _pairs(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Bad("duplicate key")
    return d


class _Ctx:
    # What _json.make_scanner reads: CPython's own C JSON scanner, without the json
    # package (which imports re and enum: ~5 ms of a shim start).
    strict = True
    object_hook = None
    object_pairs_hook = staticmethod(_pairs)
    parse_float = staticmethod(_no_float)
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict = {}


def _loads(text: str):
    try:
        import _json
        scan = _json.make_scanner(_Ctx)  # type: ignore[arg-type]  # duck-typed context
    except (ImportError, AttributeError):   # an interpreter without the C accelerator
        import json
        return json.loads(text, object_pairs_hook=_pairs, parse_float=_no_float,
                          parse_constant=_no_constant)
    try:
        obj, end = scan(text, 0)
    except _Bad:
        raise
    except Exception:
        # The C scanner reports syntax errors through json.decoder, which it expects
        # already imported: on this (rare) path, let the json package say what is wrong.
        import json
        try:
            json.loads(text, object_pairs_hook=_pairs, parse_float=_no_float,
                       parse_constant=_no_constant)
        except ValueError as e:
            raise _Bad(f"not JSON: {e}") from None
        raise _Bad("not JSON") from None
    if text[end:].strip(" \t\r\n"):
        raise _Bad(f"extra data at offset {end}")
    return obj


def _is(value, t) -> bool:
    """Is value of the type t, as a record's __record_types__ declares it: a class, a
    union (`int | None`), `tuple[X, ...]`, `tuple[X, Y]` or `dict[K, V]`?  (Read from
    the objects themselves: neither types nor typing is imported for them.)"""
    if isinstance(t, type):
        if t is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, t)
    origin = getattr(t, "__origin__", None)
    args: tuple = getattr(t, "__args__", ())
    if origin is None:                                  # a union
        return any(_is(value, a) for a in args)
    if origin is tuple and isinstance(value, tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is(x, args[0]) for x in value)
        return len(value) == len(args) and all(map(_is, value, args))
    if origin is dict and isinstance(value, dict):
        return all(_is(k, args[0]) and _is(x, args[1]) for k, x in value.items())
    return False


def _type_name(t) -> str:
    return t.__qualname__ if isinstance(t, type) else repr(t)


def _record_class(tag: str):
    import sys
    mod, _, cls = tag.partition(".")
    __import__("sandbox." + mod)        # not importlib: one import less for the shim
    return getattr(sys.modules["sandbox." + mod], cls)


def _dec(v, where: str):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, list):
        return tuple(_dec(x, f"{where}[{i}]") for i, x in enumerate(v))
    if not isinstance(v, dict):
        raise _Bad(f"{where}: unexpected {type(v).__name__}")
    if set(v) == {"@bytes"} and isinstance(v["@bytes"], str):
        try:
            return bytes.fromhex(v["@bytes"])
        except ValueError:
            raise _Bad(f"{where}: bad hex") from None
    if set(v) == {"@dict"} and isinstance(v["@dict"], list):
        out = {}
        for item in v["@dict"]:
            if not isinstance(item, list) or len(item) != 2:
                raise _Bad(f"{where}: bad dict item")
            out[_dec(item[0], where)] = _dec(item[1], f"{where}.{item[0]}")
        return out
    if set(v) != {"@", "f"} or not isinstance(v["f"], dict):
        raise _Bad(f"{where}: not a plan value")
    tag, f = v["@"], v["f"]
    if tag not in RECORDS:
        raise _Bad(f"{where}: unknown record type {tag!r}")
    values = {k: _dec(x, f"{where}.{k}") for k, x in f.items()}
    cls = _record_class(tag)
    names = cls.__record_fields__
    if set(values) != set(names):
        raise _Bad(f"{where}: {tag} fields {sorted(values)} != {sorted(names)}")
    for k, t in cls.__record_types__.items():
        if not _is(values[k], t):
            raise _Bad(f"{where}.{k}: expected {_type_name(t)}, got "
                       f"{type(values[k]).__name__}")
    rec = cls(**values)
    check = getattr(rec, "__record_check__", None)
    wrong = check() if check is not None else None
    if wrong:
        raise _Bad(f"{where}: {wrong}")
    return rec


def decode(data: bytes):
    """A wrapperd.shim.Plan from encode()'s bytes.  Imports every module a step of this
    plan uses (see wrapperd/shim.py).  SpecError for anything malformed."""
    from wrapperd import shim
    try:
        if len(data) > MAX_PLAN_BYTES:
            raise _Bad(f"larger than {MAX_PLAN_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("not UTF-8") from None
        doc = _loads(text)
        if not isinstance(doc, dict):
            raise _Bad("not a JSON object")
        if doc.get("wrapperd_plan") != FORMAT or isinstance(doc.get("wrapperd_plan"), bool):
            raise _Bad(f"unknown plan format {doc.get('wrapperd_plan')!r} (expected {FORMAT})")
        odd = set(doc) ^ {"wrapperd_plan", *PLAN_FIELDS}
        if odd:
            raise _Bad(f"unknown or missing fields {sorted(odd)}")
        values = {}
        for name, (tag, required) in PLAN_FIELDS.items():
            value = values[name] = _dec(doc[name], name)
            if value is None:
                if required:
                    raise _Bad(f"{name}: missing (every plan has its {tag})")
            elif not isinstance(value, _record_class(tag)):
                raise _Bad(f"{name}: expected a {tag}")
        plan = shim.Plan(**values)
    except _Bad as e:
        raise SpecError(f"malformed plan: {e}") from None
    except (ValueError, TypeError, RecursionError, KeyError) as e:
        raise SpecError(f"malformed plan: {type(e).__name__}: {e}") from None
    shim.import_step_modules(plan)
    return plan
