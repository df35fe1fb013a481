"""Named profiles: TOML files of spec fields that a spec builds on.

Layers, bottom to top: the profile a profile `extends` (recursively), the profile itself,
then the spec.  How a field of an upper layer combines with the layer below:

  * objects (TOML tables) merge key by key, recursively;
  * scalars replace; `null` in a spec means "not set", so the layer below stays;
  * lists follow a rule -- `replace` (the default), `append` (below + this), `union`
    (below + what is new here, no duplicates) or `keyed` (an entry replaces the entry
    below with the same key -- `destination` for `mounts` -- in place; others append).
    Built-in rules (DEFAULT_RULES): capabilities.drop union, mounts keyed, masked_paths
    and readonly_paths union, securebits union, seccomp.syscalls append.  A profile may
    declare its own in a `[merge]` table, `"field.path" = "rule"`, for how *its* values
    combine with the layer below; `replace` also works on a whole object.
  * capabilities.keep and capabilities.drop are alternatives: a `keep` replaces
    whatever is below; a `drop` over a `keep` removes those caps from the kept list
    (the result is never less confined than either layer); a `drop` over a `drop`
    follows the drop rule (union).  An `ambient` inherited from below is cut to what
    the new layer still allows.
  * user.uid and user.dynamic are alternatives: a layer giving `uid` drops a `dynamic`
    from below (a spec's own uid beats its profile's dynamic user), and a layer setting
    `dynamic` drops the `uid`, `gid` and `groups` from below.
  * a `cgroup` without a `path` (profiles set limits, never a shared path) gets the
    spec's `name` as its path, relative to `cgroup.root` (default /wrapperd); neither
    given is an error naming cgroup.path.

The spec itself is the top layer and uses the built-in rules: every field it sets beats
the profile, except that lists with a union/append/keyed rule add to the profile's
(a spec drops *more* capabilities, mounts *more*; to keep fewer caps it says `keep`).
Profiles are looked up in /etc/wrapperd/profiles first, then in the shipped ones.
"""

from __future__ import annotations

import json
import os

from .errors import SpecError

__all__ = ["search_path", "names", "load", "resolve", "merge", "apply_profile", "chain",
           "spec_layer", "DEFAULT_RULES", "RULES"]

META_KEYS = ("description", "extends", "merge")
# Data files that live beside the profiles but are not profiles (seccomp @groups).
NOT_PROFILES = ("syscalls",)

RULES = ("replace", "append", "union", "keyed")
# The key that identifies an entry of a list merged with the `keyed` rule.
KEY_FIELDS = {"mounts": "destination"}
DEFAULT_RULES = {
    "capabilities.drop": "union",      # dropping more is always allowed
    "mounts": "keyed",                 # a layer adds mounts or replaces one by destination
    "masked_paths": "union",
    "readonly_paths": "union",
    "securebits": "union",
    "seccomp.syscalls": "append",      # later rules win for the syscalls they name
    "filesystem.read_write_paths": "union",
    "filesystem.read_only_paths": "union",
    "filesystem.inaccessible_paths": "union",
}


def search_path() -> "list[str]":
    here = os.path.dirname(os.path.abspath(__file__))
    return ["/etc/wrapperd/profiles",
            os.path.join(here, "profiles"),                      # installed wheel
            os.path.join(os.path.dirname(here), "profiles")]     # source tree / editable


def _find(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") \
            or name in NOT_PROFILES:
        raise SpecError(f"bad profile name {name!r}", "profile")
    for d in search_path():
        p = os.path.join(d, name + ".toml")
        if os.path.isfile(p):
            return p
    raise SpecError(f"unknown profile {name!r} (see 'sandbox profiles list')", "profile")


def names() -> "list[str]":
    out: "set[str]" = set()
    for d in search_path():
        if os.path.isdir(d):
            out.update(f[:-5] for f in os.listdir(d) if f.endswith(".toml"))
    return sorted(out - set(NOT_PROFILES))


def load(name: str) -> dict:
    """The profile's own TOML, as a dict (meta keys included)."""
    import tomllib
    path = _find(name)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"profile {name!r} ({path}) is unreadable: {e}", "profile") from None


def _rules_of(name: str, data: dict) -> dict:
    declared = data.get("merge") or {}
    if not isinstance(declared, dict):
        raise SpecError(f"profile {name!r}: 'merge' must be a table", "profile")
    rules = dict(DEFAULT_RULES)
    for path, rule in declared.items():
        if rule not in RULES:
            raise SpecError(f"profile {name!r}: merge.{path}: unknown rule {rule!r} "
                            f"(expected one of: {', '.join(RULES)})", "profile")
        if rule == "keyed" and path not in KEY_FIELDS:
            raise SpecError(f"profile {name!r}: merge.{path}: 'keyed' only applies to "
                            f"{', '.join(KEY_FIELDS)}", "profile")
        rules[path] = rule
    return rules


def _cap(n):
    from . import caps
    try:
        return caps.normalize(n) if isinstance(n, str) else n
    except SpecError:
        return n                     # left as given: the spec's validation names it


def _combine(rule: str, old: list, new: list, path: str) -> list:
    if rule == "append":
        return old + new
    if rule == "union":
        norm = _cap if path.startswith("capabilities.") else (lambda x: x)
        out = [norm(x) for x in old]
        for x in new:
            if norm(x) not in out:
                out.append(norm(x))
        return out
    if rule == "keyed":
        key = KEY_FIELDS[path]
        out = list(old)
        for item in new:
            k = item.get(key) if isinstance(item, dict) else None
            at = [i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == k]
            if k is not None and at:
                out[at[0]] = item
            else:
                out.append(item)
        return out
    return new


def _merge_caps(old: dict, new: dict, rules: dict) -> dict:
    out = dict(old)
    keep, drop = new.get("keep"), new.get("drop")
    if keep is not None and drop is not None:
        raise SpecError("give either 'drop' or 'keep', not both", "capabilities")
    if keep is not None:
        out["keep"] = keep
        out.pop("drop", None)
    elif drop is not None:
        if out.get("keep") is not None:
            gone = {_cap(c) for c in drop}
            out["keep"] = [c for c in out["keep"] if _cap(c) not in gone]
        elif out.get("drop") is not None:
            out["drop"] = _combine(rules.get("capabilities.drop", "replace"),
                                   out["drop"], drop, "capabilities.drop")
        else:
            out["drop"] = drop
    if new.get("ambient") is not None:
        out["ambient"] = (_combine(rules["capabilities.ambient"], out.get("ambient") or [],
                                   new["ambient"], "capabilities.ambient")
                          if "capabilities.ambient" in rules else new["ambient"])
    elif out.get("ambient") and (keep is not None or drop is not None):
        # An ambient set from below is cut to what this layer still allows.
        if out.get("keep") is not None:
            allowed = {_cap(c) for c in out["keep"]}
            out["ambient"] = [c for c in out["ambient"] if _cap(c) in allowed]
        else:
            gone = {_cap(c) for c in out.get("drop") or []}
            out["ambient"] = [c for c in out["ambient"] if _cap(c) not in gone]
    for k, v in new.items():          # unknown keys reach validation, which names them
        if k not in ("keep", "drop", "ambient"):
            out[k] = v
    return out


def _user_below(old: dict, new: dict) -> dict:
    """The user table below, without what the new layer's choice of identity replaces."""
    if new.get("uid") is not None:
        return {k: x for k, x in old.items() if k != "dynamic"}
    if new.get("dynamic") is True:
        return {k: x for k, x in old.items() if k not in ("uid", "gid", "groups")}
    return old


def merge(base: dict, top: dict, rules: "dict | None" = None, _path: str = "") -> dict:
    """`top` over `base` by the compose rules (module docstring); neither is changed."""
    rules = DEFAULT_RULES if rules is None else rules
    out = dict(base)
    for k, v in top.items():
        path = f"{_path}.{k}" if _path else k
        old = out.get(k)
        rule = rules.get(path)
        if v is None:
            continue                  # null: not set, the layer below stays
        if rule == "replace" or old is None:
            out[k] = v
        elif path == "capabilities" and isinstance(v, dict) and isinstance(old, dict):
            out[k] = _merge_caps(old, v, rules)
        elif path == "user" and isinstance(v, dict) and isinstance(old, dict):
            out[k] = merge(_user_below(old, v), v, rules, path)
        elif isinstance(v, dict) and isinstance(old, dict):
            out[k] = merge(old, v, rules, path)
        elif isinstance(v, list) and isinstance(old, list) and rule is not None:
            out[k] = _combine(rule, old, v, path)
        else:
            out[k] = v
    return out


def _chain(name: str, _seen: "tuple[str, ...]" = ()) -> "list[tuple[str, dict]]":
    if name in _seen:
        raise SpecError(f"profile {name!r} extends itself ({' -> '.join(_seen + (name,))})",
                        "profile")
    data = load(name)
    parent = data.get("extends")
    if parent is None:
        return [(name, data)]
    if not isinstance(parent, str):
        raise SpecError(f"profile {name!r}: 'extends' must be a name", "profile")
    return _chain(parent, _seen + (name,)) + [(name, data)]


def chain(name: str) -> "list[str]":
    """The profile and what it extends, bottom first: ['service', 'network-service']."""
    return [n for n, _ in _chain(name)]


def resolve(name: str) -> dict:
    """The profile with everything it extends merged in, meta keys removed."""
    out: dict = {}
    for layer, data in _chain(name):
        out = merge(out, {k: v for k, v in data.items() if k not in META_KEYS},
                    _rules_of(layer, data))
    return out


def spec_layer(spec) -> dict:
    """A Spec object as the top layer over its profile: the fields it was given.

    A Spec loaded from a dict with a profile keeps that dict (`source`); it is used when
    it still loads to this very spec (not after attrs.evolve).  Otherwise the spec's
    to_dict() without its unset (None) fields -- where a default (readonly_root false,
    a namespace false) then beats the profile's value."""
    from .spec import Spec
    src = getattr(spec, "source", None)
    if isinstance(src, dict):
        try:
            if Spec.from_dict(src) == spec:
                return json.loads(json.dumps(src))
        except SpecError:
            pass
    return _drop_none(spec.to_dict())


def _drop_none(v):
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def _check_seccomp_profile(base: dict, spec_dict: dict, name: str) -> None:
    """A spec naming another seccomp profile than its profile's would swap the whole
    filter (`default` over `strict`: ~150 more syscalls): a loosening, which as any
    other takes `replace_profile_rules: true` (sandbox.seccomp)."""
    t, o = base.get("seccomp"), spec_dict.get("seccomp")
    theirs: dict = t if isinstance(t, dict) else {}
    ours: dict = o if isinstance(o, dict) else {}
    if ours.get("profile") is None or theirs.get("profile") is None or \
            ours["profile"] == theirs["profile"] or ours.get("replace_profile_rules") is True:
        return
    raise SpecError(f"{ours['profile']!r} replaces the seccomp profile "
                    f"{theirs['profile']!r} of profile {name!r}; give "
                    "replace_profile_rules: true to replace it", "seccomp.profile")


def apply_profile(spec_dict: dict, name: "str | None" = None) -> dict:
    """Merge the spec (a raw dict) over its profile; the profile name stays recorded."""
    name = name or spec_dict.get("profile")
    if not name:
        return spec_dict
    if not isinstance(name, str):
        raise SpecError("expected a string", "profile")
    base = resolve(name)
    _check_seccomp_profile(base, spec_dict, name)
    merged = merge(base, spec_dict)
    merged["profile"] = name
    cg = merged.get("cgroup")
    if isinstance(cg, dict) and "path" not in cg:
        # Profiles give limits, not a path two services would share: the spec's name is.
        if not isinstance(merged.get("name"), str) or not merged["name"]:
            raise SpecError(f"profile {name!r} sets cgroup limits: give the spec a "
                            "cgroup.path or a name (the cgroup is then cgroup.root/NAME)",
                            "cgroup.path")
        merged["cgroup"] = dict(cg, path=merged["name"])
    return merged
