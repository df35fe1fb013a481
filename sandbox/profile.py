"""Named profiles: TOML files of spec fields that a spec builds on.

A profile may `extends = "other"`; objects merge key by key, everything else (scalars
and lists) in the more specific layer replaces the one below.  The spec itself is the
top layer: a field set in the spec beats the profile.  Profiles are looked up in
/etc/wrapperd/profiles first, then in the profiles shipped with the package.
"""

from __future__ import annotations

import os

from .errors import SpecError

__all__ = ["search_path", "names", "load", "resolve", "merge"]

META_KEYS = ("description", "extends")


def search_path() -> "list[str]":
    here = os.path.dirname(os.path.abspath(__file__))
    return ["/etc/wrapperd/profiles",
            os.path.join(here, "profiles"),                      # installed wheel
            os.path.join(os.path.dirname(here), "profiles")]     # source tree / editable


def _find(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise SpecError(f"bad profile name {name!r}", "profile")
    for d in search_path():
        p = os.path.join(d, name + ".toml")
        if os.path.isfile(p):
            return p
    raise SpecError(f"unknown profile {name!r} (see 'sandbox profiles list')", "profile")


def names() -> "list[str]":
    out = set()
    for d in search_path():
        if os.path.isdir(d):
            out.update(f[:-5] for f in os.listdir(d) if f.endswith(".toml"))
    return sorted(out)


def load(name: str) -> dict:
    """The profile's own TOML, as a dict (meta keys included)."""
    import tomllib
    path = _find(name)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"profile {name!r} ({path}) is unreadable: {e}", "profile") from None


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve(name: str, _seen: "tuple[str, ...]" = ()) -> dict:
    """The profile with everything it extends merged in, meta keys removed."""
    if name in _seen:
        raise SpecError(f"profile {name!r} extends itself ({' -> '.join(_seen + (name,))})",
                        "profile")
    data = load(name)
    base = {}
    parent = data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise SpecError(f"profile {name!r}: 'extends' must be a name", "profile")
        base = resolve(parent, _seen + (name,))
    return merge(base, {k: v for k, v in data.items() if k not in META_KEYS})


def apply_profile(spec_dict: dict, name: "str | None" = None) -> dict:
    """Merge the spec (a raw dict) over its profile; the profile name stays recorded."""
    name = name or spec_dict.get("profile")
    if not name:
        return spec_dict
    if not isinstance(name, str):
        raise SpecError("expected a string", "profile")
    merged = merge(resolve(name), spec_dict)
    merged["profile"] = name
    return merged
