"""Identity: supplementary groups, gid, securebits/keep-caps, uid -- in that order.

setgroups must come while the shim is still root, setresgid before setresuid (after it,
CAP_SETGID is gone), and all three ids of each kind change, so the target can never
switch back to a saved root id.  The filesystem ids follow the effective ids.
"""

from __future__ import annotations

import os

from . import _libc, caps
from ._record import field_types, frozen
from .errors import SetupError, SpecError

__all__ = ["Prepared", "prepare", "apply", "resolve_uid", "resolve_gid"]


def resolve_uid(v, path: str = "user.uid") -> "tuple[int, int | None]":
    """Return (uid, primary gid from the user database or None)."""
    import pwd
    try:
        pw = pwd.getpwnam(v) if isinstance(v, str) else pwd.getpwuid(v)
    except KeyError:
        if isinstance(v, str):
            raise SpecError(f"unknown user {v!r}", path) from None
        return v, None
    return pw.pw_uid, pw.pw_gid


def resolve_ids(uid, gid, groups) -> "tuple[int, int, tuple[int, ...]]":
    """The spec's user.uid, user.gid (None: the user's primary group, else the uid) and
    user.groups, as ids -- through the user database (NSS) where they are names.  Also
    what a cached plan is checked against (sandbox.plancache): NSS can answer from
    elsewhere than files, so no file's identity tells whether it still holds."""
    uid, primary = resolve_uid(uid)
    if gid is not None:
        gid = resolve_gid(gid, "user.gid")
    else:
        gid = primary if primary is not None else uid
    return uid, gid, tuple(resolve_gid(g, f"user.groups[{i}]") for i, g in enumerate(groups))


def resolve_gid(v, path: str) -> int:
    if isinstance(v, int):
        return v
    import grp
    try:
        return grp.getgrnam(v).gr_gid
    except KeyError:
        raise SpecError(f"unknown group {v!r}", path) from None


@frozen
class Prepared:
    uid: int
    gid: int
    groups: tuple
    securebits: int       # the bits the target must end with (spec's, with locks)
    keep_caps: bool       # keep the permitted set across setresuid, for the later steps

    __record_types__ = field_types(uid=int, gid=int, groups=tuple[int, ...], securebits=int,
                                   keep_caps=bool)


# The id of a dynamic user until the shim's dynamic_user step allocates it: apply()
# refuses it, so a plan that skipped the step can never setresuid(-1) ("unchanged").
UNALLOCATED = -1


def prepare(user, securebits_names=(), namespaces=None) -> "Prepared | None":
    """namespaces: the spec's, for a dynamic user (see sandbox.dynamicuser)."""
    bits = 0
    for name in securebits_names:
        bits |= caps.SECUREBITS[name]
    if user is None:
        if not bits:
            return None
        ruid, euid, suid = os.getresuid()
        rgid, egid, sgid = os.getresgid()
        if len({ruid, euid, suid}) != 1 or len({rgid, egid, sgid}) != 1:
            raise SpecError("wrapperd runs with mixed ids: give a 'user' explicitly", "user")
        return Prepared(euid, egid, tuple(os.getgroups()), bits, False)
    if getattr(user, "dynamic", False):
        userns = getattr(namespaces, "user", False) if namespaces is not None else False
        if userns is True or isinstance(userns, dict):
            from . import dynamicuser
            # The target's ids inside its user namespace; the host id is dynamic.
            uid, gid = dynamicuser.inside_ids(namespaces)
        else:
            uid = gid = UNALLOCATED
        return Prepared(uid, gid, (), bits, os.geteuid() == 0 and uid != 0)
    uid, gid, groups = resolve_ids(user.uid, user.gid, user.groups)
    # Keep permitted caps across the uid change so the capability step (which runs
    # after identity) can still shape the bounding/ambient sets.
    keep = os.geteuid() == 0 and uid != 0
    return Prepared(uid, gid, groups, bits, keep)


def target_is_root(p: "Prepared | None") -> bool:
    """Will the kernel treat the target as root at execve (full caps from bounding)?"""
    uid = os.geteuid() if p is None else p.uid
    return uid == 0 and not (p is not None and p.securebits & caps.SECBIT_NOROOT)


def apply(p: Prepared) -> None:
    step = "identity"
    if p.uid < 0 or p.gid < 0:
        raise SetupError(step, 0, "the dynamic user was not allocated")

    def call(what, fn, *a):
        try:
            fn(*a)
        except OSError as e:
            raise SetupError(step, e.errno, what) from None

    call(f"setgroups({list(p.groups)})", os.setgroups, list(p.groups))
    call(f"setresgid({p.gid})", os.setresgid, p.gid, p.gid, p.gid)
    if p.keep_caps or p.securebits:
        # keep_caps is written unlocked first and settled below: a spec may lock it off,
        # and the capability step still needs the permitted set after setresuid.
        first = p.securebits & ~caps.SECUREBITS["keep_caps_locked"]
        if p.keep_caps:
            first |= caps.SECBIT_KEEP_CAPS
        call(f"securebits {first:#x}", _libc.prctl, _libc.PR_SET_SECUREBITS, first)
    call(f"setresuid({p.uid})", os.setresuid, p.uid, p.uid, p.uid)
    if p.keep_caps or p.securebits:
        call("raise effective after setresuid", caps.raise_effective)
        call(f"securebits {p.securebits:#x}", _libc.prctl, _libc.PR_SET_SECUREBITS,
             p.securebits)
    if (os.getresuid(), os.getresgid()) != ((p.uid,) * 3, (p.gid,) * 3) or \
            sorted(os.getgroups()) != sorted(set(p.groups)):
        raise SetupError(step, 0, "the kernel reports ids other than requested")
