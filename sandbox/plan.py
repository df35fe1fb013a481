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

Format (version 1), one JSON object:
  {"wrapperd_plan": 1, "executable": str,
   "spec": {"argv", "env", "cwd", "umask", "oom_score_adj", "nice", "pdeathsig",
            "no_new_privs", "new_session", "pass_fds"},
   "rlimits" | "cgroup" | "dynamic_user" | "creds" | "caps" | "namespaces" | "mounts" |
   "seccomp": value}
Values: JSON scalars; lists (decoded as tuples); {"@bytes": hex}; {"@": "module.Class",
"f": {field: value}} for a facility record; {"@": "rec", "f": {...}} for a spec-model
object a step reads attributes of (such as spec.Mount), decoded as a plain record.

Decoding imports only the modules of the records present (and _json, ctypes through
them): no json package, no re, no attrs.
"""

from __future__ import annotations

from .errors import SpecError

__all__ = ["FORMAT", "SPEC_FIELDS", "PLAN_FIELDS", "encode", "decode", "Rec"]

FORMAT = 1
MAX_PLAN_BYTES = 8 << 20
# The spec fields the steps read (plan.spec.X in wrapperd/shim.py; a unit test checks
# that no step reads any other), and the Plan attributes holding Prepared records.
SPEC_FIELDS = ("argv", "env", "cwd", "umask", "oom_score_adj", "nice", "pdeathsig",
               "no_new_privs", "new_session", "pass_fds")
PLAN_FIELDS = ("rlimits", "cgroup", "dynamic_user", "creds", "caps", "namespaces", "mounts",
               "seccomp")
# The facility record types a plan may hold: "module.Class" under sandbox.
RECORDS = ("caps.Prepared", "creds.Prepared", "dynamicuser.Prepared", "seccomp.Prepared",
           "namespaces.Prepared",
           "mounts.Prepared", "cgroups.Prepared", "cgroups.Target", "cgroups.Hierarchy")


class Rec:
    """A read-only attribute bag: a decoded spec-model object, or the plan's spec."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __setattr__(self, name, value):
        raise AttributeError(f"plan record is read-only: {name}")

    def __repr__(self) -> str:
        return f"Rec({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


# --------------------------------------------------------------------------- encode

def _field_names(obj) -> "tuple[str, ...] | None":
    names = getattr(type(obj), "__record_fields__", None)
    if names is not None:
        return names
    attrs_fields = getattr(type(obj), "__attrs_attrs__", None)
    if attrs_fields is not None:
        return tuple(a.name for a in attrs_fields)
    return None


def _enc(v, where: str):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, (bytes, bytearray)):
        return {"@bytes": bytes(v).hex()}
    if isinstance(v, (tuple, list)):
        return [_enc(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {"@dict": [[_enc(k, where), _enc(x, f"{where}.{k}")] for k, x in v.items()]}
    names = _field_names(v)
    if names is None:
        raise TypeError(f"plan: {where}: cannot encode a {type(v).__name__}")
    mod = type(v).__module__
    tag = f"{mod.rpartition('.')[2]}.{type(v).__qualname__}"
    if tag not in RECORDS:
        if mod != "sandbox.spec":
            raise TypeError(f"plan: {where}: {tag} is not a known plan record")
        tag = "rec"                      # spec-model data: attributes only
    return {"@": tag, "f": {n: _enc(getattr(v, n), f"{where}.{n}") for n in names}}


def encode(plan) -> bytes:
    """The plan wrapperd.shim.prepare() returned, as the bytes `--plan-fd` reads."""
    import json
    s = plan.spec
    doc = {"wrapperd_plan": FORMAT, "executable": plan.executable,
           "spec": {"argv": list(s.argv), "env": dict(s.env), "cwd": s.cwd,
                    "umask": s.user.umask if s.user is not None else None,
                    "oom_score_adj": s.oom_score_adj, "nice": s.nice,
                    "pdeathsig": s.pdeathsig, "no_new_privs": bool(s.no_new_privs),
                    "new_session": bool(s.new_session),
                    "pass_fds": list(s.pass_fds)}}
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


_TYPES = {"int": int, "bool": bool, "str": str, "tuple": tuple, "bytes": bytes,
          "None": type(None), "dict": dict}


def _check_type(cls, name: str, value, where: str) -> None:
    """Check value against the field's annotation, where it is a simple one."""
    ann = cls.__dict__.get("__annotations__", {}).get(name)
    if not isinstance(ann, str):
        return
    ok = []
    import sys
    module = sys.modules[cls.__module__]
    for part in ann.strip("'\"").split("|"):
        part = part.strip()
        t = _TYPES.get(part) or getattr(module, part, None)
        if not isinstance(t, type):
            return                      # an annotation this check does not understand
        ok.append(t)
    if bool in ok or int not in ok:
        good = isinstance(value, tuple(ok))
    else:
        good = isinstance(value, tuple(ok)) and (bool in ok or not isinstance(value, bool))
    if not good:
        raise _Bad(f"{where}: expected {ann}, got {type(value).__name__}")


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
    values = {k: _dec(x, f"{where}.{k}") for k, x in f.items()}
    if tag == "rec":
        return Rec(**values)
    if tag not in RECORDS:
        raise _Bad(f"{where}: unknown record type {tag!r}")
    cls = _record_class(tag)
    names = getattr(cls, "__record_fields__", None)
    if names is None:                   # still an attrs class
        names = tuple(a.name for a in cls.__attrs_attrs__)
    if set(values) != set(names):
        raise _Bad(f"{where}: {tag} fields {sorted(values)} != {sorted(names)}")
    for k, x in values.items():
        _check_type(cls, k, x, f"{where}.{k}")
    return cls(**values)


def _need(d: dict, key: str, types, where: str):
    v = d.get(key)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in
                                    (types if isinstance(types, tuple) else (types,))):
        raise _Bad(f"{where}{key}: missing or of the wrong type")
    return v


def _decode_spec(s) -> Rec:
    if not isinstance(s, dict) or set(s) != set(SPEC_FIELDS):
        raise _Bad("spec: expected exactly the fields " + ", ".join(SPEC_FIELDS))
    argv = _need(s, "argv", list, "spec.")
    env = _need(s, "env", dict, "spec.")
    if not argv or not all(isinstance(a, str) for a in argv):
        raise _Bad("spec.argv: a non-empty list of strings expected")
    if not all(isinstance(v, str) for v in env.values()):
        raise _Bad("spec.env: string values expected")
    pass_fds = _need(s, "pass_fds", list, "spec.")
    if not all(isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0
               for fd in pass_fds):
        raise _Bad("spec.pass_fds: non-negative integers expected")
    _need(s, "cwd", (str, type(None)), "spec.")       # None: inherited, no chdir
    _need(s, "no_new_privs", bool, "spec.")
    _need(s, "new_session", bool, "spec.")
    _need(s, "umask", (str, type(None)), "spec.")
    for k in ("oom_score_adj", "nice", "pdeathsig"):
        _need(s, k, (int, type(None)), "spec.")
    return Rec(argv=tuple(argv), env=env, cwd=s["cwd"],
               user=Rec(umask=s["umask"]), oom_score_adj=s["oom_score_adj"],
               nice=s["nice"], pdeathsig=s["pdeathsig"], no_new_privs=s["no_new_privs"],
               new_session=s["new_session"], pass_fds=tuple(pass_fds))


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
        extra = set(doc) - {"wrapperd_plan", "executable", "spec", *PLAN_FIELDS}
        if extra or not set(PLAN_FIELDS) <= set(doc):
            raise _Bad(f"unknown or missing fields {sorted(extra ^ (set(PLAN_FIELDS) - set(doc)))}")
        executable = _need(doc, "executable", str, "")
        spec = _decode_spec(doc["spec"])
        plan = shim.Plan(spec)
        plan.executable = executable
        for name in PLAN_FIELDS:
            setattr(plan, name, _dec(doc[name], name))
        _check_plan(plan)
    except _Bad as e:
        raise SpecError(f"malformed plan: {e}") from None
    except (ValueError, TypeError, RecursionError, KeyError) as e:
        raise SpecError(f"malformed plan: {type(e).__name__}: {e}") from None
    shim.import_step_modules(plan)
    return plan


def _check_plan(plan) -> None:
    expect = {"cgroup": "cgroups.Prepared", "creds": "creds.Prepared",
              "dynamic_user": "dynamicuser.Prepared",
              "caps": "caps.Prepared", "namespaces": "namespaces.Prepared",
              "mounts": "mounts.Prepared", "seccomp": "seccomp.Prepared"}
    for name, tag in expect.items():
        v = getattr(plan, name)
        if v is not None and not isinstance(v, _record_class(tag)):
            raise _Bad(f"{name}: expected a {tag}")
    if plan.caps is None:
        raise _Bad("caps: missing (every plan has the capability sets)")
    r = plan.rlimits
    if r is not None:
        if not isinstance(r, tuple) or not all(
                isinstance(x, tuple) and len(x) == 4 and isinstance(x[0], str) and
                all(isinstance(n, int) and not isinstance(n, bool) for n in x[1:])
                for x in r):
            raise _Bad("rlimits: expected ((name, resource, soft, hard), ...)")
