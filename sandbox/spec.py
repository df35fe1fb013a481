"""The spawn spec: one frozen, typed description of how a target must run.

Pure data.  Loading validates every field and names a bad one by its path
(``capabilities.drop[2]: unknown capability 'CAP_FOO'``); nothing here touches the
kernel.  Names (users, groups) are resolved later, in each facility's prepare().

JSON is strict: duplicate keys, unknown keys, NaN/Infinity, and a bool where a number
is expected (or the reverse) are errors, never coerced.

A string is bytes in UTF-8.  A byte that is not UTF-8 is written as a lone surrogate
U+DC80-U+DCFF (Python's surrogateescape, what os.fsdecode gives for argv, environment
and paths) and means that byte; any other lone surrogate is a SpecError naming the
field.  Everything that turns a spec string into bytes uses os.fsencode (or JSON's
ASCII escapes), so a loaded spec never raises UnicodeEncodeError.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import attrs

from .errors import SpecError
from .plan import MAX_SPEC_BYTES

__all__ = ["Spec", "User", "Capabilities", "Seccomp", "SeccompRule", "SeccompArg",
           "Namespaces", "IdMap", "Mount", "Cgroup", "Rlimit", "Listen", "Landlock",
           "MAX_SPEC_BYTES",
           "MAX_ID", "RLIMIT_NAMES", "SPEC_VERSION"]

SPEC_VERSION = 1
MAX_ID = 2**32 - 2          # (uid_t)-1 means "leave unchanged" to the kernel: never an id
RLIM_INFINITY = "unlimited"
NGROUPS_MAX = 65536          # <linux/limits.h>: setgroups(2) refuses more
RLIMIT_NAMES = ("AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "MEMLOCK", "MSGQUEUE",
                "NICE", "NOFILE", "NPROC", "RSS", "RTPRIO", "RTTIME", "SIGPENDING", "STACK")


# --------------------------------------------------------------------------- checkers
# Each takes the raw JSON value and its path, and returns the value for the model.

def _type_name(v: Any) -> str:
    return {bool: "a bool", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def _int(v: Any, path: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if type(v) is not int:          # bool is an int subclass: refuse it explicitly
        raise SpecError(f"expected an integer, got {_type_name(v)}", path)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SpecError(f"{v} is out of range [{lo}, {hi}]", path)
    return v


def _bool(v: Any, path: str) -> bool:
    if type(v) is not bool:
        raise SpecError(f"expected true or false, got {_type_name(v)}", path)
    return v


def _str(v: Any, path: str, nonempty: bool = False) -> str:
    if type(v) is not str:
        raise SpecError(f"expected a string, got {_type_name(v)}", path)
    if "\0" in v:
        raise SpecError("contains a NUL byte", path)
    try:
        v.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise SpecError(f"a lone surrogate {v[e.start]!r} that stands for no byte (only "
                        "U+DC80-U+DCFF, a non-UTF-8 byte, may appear)", path) from None
    if nonempty and not v:
        raise SpecError("must not be empty", path)
    return v


def _abspath(v: Any, path: str) -> str:
    s = _str(v, path, nonempty=True)
    if not s.startswith("/"):
        raise SpecError(f"{s!r} is not an absolute path", path)
    return s


# The spec's spelling of "no chdir: the caller's working directory" (Talos's wrapperd
# kept it).  Not a path (paths are absolute), and not null, which in a spec means "not
# set" (the profile's value, else "/").
CWD_INHERIT = "inherit"


def _cwd(v: Any) -> "str | None":
    return None if v == CWD_INHERIT else _abspath(v, "cwd")


def _list(v: Any, path: str, item, *a, **kw) -> tuple:
    if type(v) is not list:
        raise SpecError(f"expected a list, got {_type_name(v)}", path)
    return tuple(item(x, f"{path}[{i}]", *a, **kw) for i, x in enumerate(v))


def _obj(v: Any, path: str, allowed: "tuple[str, ...]") -> dict:
    if type(v) is not dict:
        raise SpecError(f"expected an object, got {_type_name(v)}", path)
    for k in v:
        if k not in allowed:
            where = f"{path}.{k}" if path else k
            raise SpecError(f"unknown key (expected one of: {', '.join(allowed)})", where)
    return v


def _id(v: Any, path: str) -> Union[int, str]:
    """A uid or gid: a number in [0, 2^32-2] or a name resolved later."""
    if type(v) is str:
        return _str(v, path, nonempty=True)
    return _int(v, path, 0, MAX_ID)


def _opt(d: dict, key: str, fn, path: str, *a, **kw):
    v = d.get(key)
    return None if v is None else fn(v, f"{path}.{key}" if path else key, *a, **kw)


def _capname(v: Any, path: str) -> str:
    from . import caps  # light: a table and a few helpers
    s = _str(v, path)
    try:
        return caps.normalize(s)
    except SpecError as e:
        raise SpecError(e.message, path) from None


# --------------------------------------------------------------------------- models

def _field(doc: str, **kw):
    return attrs.field(metadata={"doc": doc}, **kw)


@attrs.frozen
class User:
    """Who the target runs as.  Set in the order setgroups, setresgid, setresuid, so the
    real, effective, saved and filesystem ids all change."""

    uid: Optional[Union[int, str]] = _field(
        "uid or user name: real, effective, saved and fs uid; required unless dynamic",
        default=None)
    gid: Optional[Union[int, str]] = _field(
        "gid or group name; default: the user's primary group from /etc/passwd, else the uid",
        default=None)
    groups: tuple = _field("supplementary groups (ids or names); default: none", default=())
    umask: Optional[str] = _field("octal umask, e.g. '0022'; default: inherited", default=None)
    dynamic: bool = _field("a uid (= gid, no groups) of its own from 61184-65519, the same "
                           "for the same spec name while any process holds it; with a new "
                           "user namespace, the host id its one mapped id stands for",
                           default=False)

    KEYS = ("uid", "gid", "groups", "umask", "dynamic")

    @classmethod
    def load(cls, v: Any, path: str) -> "User":
        d = _obj(v, path, cls.KEYS)
        dynamic = _opt(d, "dynamic", _bool, path) or False
        if dynamic:
            # The id is picked at run time: an id, a group or a group list given beside
            # it would be ignored or shared, so it is refused.
            for k in ("uid", "gid"):
                if d.get(k) is not None:
                    raise SpecError(f"cannot be given with dynamic: true (the {k} is "
                                    "picked at run time)", f"{path}.{k}")
            if d.get("groups"):
                raise SpecError("cannot be given with dynamic: true (a dynamic user has "
                                "no supplementary groups)", f"{path}.groups")
        elif d.get("uid") is None:
            raise SpecError("missing required key 'uid' (or dynamic: true)", path)
        umask = _opt(d, "umask", _str, path)
        if umask is not None:
            if not (1 <= len(umask) <= 4 and all(c in "01234567" for c in umask)):
                raise SpecError(f"{umask!r} is not an octal umask like '0022'", f"{path}.umask")
        groups = _opt(d, "groups", _list, path, _id) or ()
        if len(groups) > NGROUPS_MAX:
            raise SpecError(f"more than {NGROUPS_MAX} groups (the kernel's NGROUPS_MAX)",
                            f"{path}.groups")
        return cls(uid=_opt(d, "uid", _id, path), gid=_opt(d, "gid", _id, path),
                   groups=groups, umask=umask, dynamic=dynamic)

    def dump(self) -> dict:
        return {"uid": self.uid, "gid": self.gid, "groups": list(self.groups),
                "umask": self.umask, "dynamic": self.dynamic}


@attrs.frozen
class Capabilities:
    """Capability sets of the target.  `drop` removes these from every set and keeps the
    rest; `keep` removes all others.  A non-root target holds caps only through the
    ambient set: with `keep`, the kept caps are raised in ambient unless `ambient` is
    given explicitly."""

    drop: Optional[tuple] = _field("caps removed from all five sets", default=None)
    keep: Optional[tuple] = _field("the only caps left in any set", default=None)
    ambient: Optional[tuple] = _field("caps a non-root target keeps across execve",
                                      default=None)

    KEYS = ("drop", "keep", "ambient")

    @classmethod
    def load(cls, v: Any, path: str) -> "Capabilities":
        d = _obj(v, path, cls.KEYS)
        if d.get("drop") is not None and d.get("keep") is not None:
            raise SpecError("give either 'drop' or 'keep', not both", path)
        return cls(**{k: _opt(d, k, _list, path, _capname) for k in cls.KEYS})

    def dump(self) -> dict:
        return {k: None if getattr(self, k) is None else list(getattr(self, k))
                for k in self.KEYS}


SECCOMP_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "masked_eq")


@attrs.frozen
class SeccompArg:
    """One argument condition, OCI-shaped: for masked_eq, `value` is the mask and
    `value_two` the expected result."""

    index: int = _field("argument number, 0-5")
    op: str = _field("one of eq ne lt le gt ge masked_eq")
    value: int = _field("64-bit operand")
    value_two: int = _field("second operand (masked_eq)", default=0)

    KEYS = ("index", "op", "value", "value_two")

    @classmethod
    def load(cls, v: Any, path: str) -> "SeccompArg":
        d = _obj(v, path, cls.KEYS)
        for k in ("index", "op", "value"):
            if k not in d:
                raise SpecError(f"missing required key {k!r}", path)
        op = _str(d["op"], f"{path}.op")
        if op not in SECCOMP_OPS:
            raise SpecError(f"unknown operator {op!r} (expected one of: "
                            f"{', '.join(SECCOMP_OPS)})", f"{path}.op")
        return cls(index=_int(d["index"], f"{path}.index", 0, 5), op=op,
                   value=_int(d["value"], f"{path}.value", 0, 2**64 - 1),
                   value_two=_int(d.get("value_two", 0), f"{path}.value_two", 0, 2**64 - 1))

    def dump(self) -> dict:
        return {"index": self.index, "op": self.op, "value": self.value,
                "value_two": self.value_two}


SECCOMP_ACTIONS = ("allow", "errno:NAME|N", "kill_process", "kill_thread", "trap", "log")


def parse_action(s: str) -> "tuple[str, int]":
    """'errno:EPERM' -> ('errno', 1); 'allow' -> ('allow', 0).  ValueError if unknown."""
    kind, _, arg = s.partition(":")
    if kind == "errno":
        import errno as _errno
        if arg.isdigit() and 0 <= int(arg) <= 4095:
            return kind, int(arg)
        num = getattr(_errno, arg, None) if arg.isidentifier() else None
        if not isinstance(num, int):
            raise ValueError(f"unknown errno {arg!r} in action {s!r}")
        return kind, num
    if arg or kind not in ("allow", "kill_process", "kill_thread", "trap", "log"):
        raise ValueError(f"unknown action {s!r} (expected one of: "
                         f"{', '.join(SECCOMP_ACTIONS)})")
    return kind, 0


def _action(v: Any, path: str) -> str:
    s = _str(v, path, nonempty=True)
    try:
        parse_action(s)
    except ValueError as e:
        raise SpecError(str(e), path) from None
    return s


def _address_families(v: Any) -> tuple:
    from .seccomp import ADDRESS_FAMILIES
    names = _list(v, "address_families", _str, nonempty=True)
    for i, n in enumerate(names):
        if n not in ADDRESS_FAMILIES:
            raise SpecError(f"unknown address family {n!r} (expected AF_UNIX, AF_INET, "
                            "AF_INET6, AF_NETLINK, AF_PACKET, ... as in <sys/socket.h>)",
                            f"address_families[{i}]")
    if len(set(names)) != len(names):
        raise SpecError("a family is listed twice", "address_families")
    return names


def _unknown_action(v: Any, path: str) -> str:
    if v == "default_action":
        return v
    s = _action(v, path)
    if s.partition(":")[0] in ("allow", "log"):
        raise SpecError(f"{s} would let through syscalls the filter cannot name; give an "
                        "errno, trap or kill action, or 'default_action'", path)
    return s


@attrs.frozen
class ServiceDirectory:
    path: str = _field("a name under the kind's base directory (one component: no '/')")
    mode: Optional[str] = _field("octal mode, e.g. '0750'; default 0755", default=None)

    KEYS = ("path", "mode")

    @classmethod
    def load(cls, v: Any, path: str) -> "ServiceDirectory":
        if type(v) is str:
            d: dict = {"path": v}
        else:
            d = _obj(v, path, cls.KEYS)
            if "path" not in d:
                raise SpecError("missing required key 'path'", path)
        where = path if type(v) is str else f"{path}.path"
        name = _str(d["path"], where, nonempty=True)
        if "/" in name or name in (".", "..") or "\0" in name:
            raise SpecError(f"{name!r} is not a directory name (one component, no '/', "
                            "not '.' or '..')", where)
        mode = _opt(d, "mode", _str, path)
        if mode is not None and not (1 <= len(mode) <= 4 and
                                     all(c in "01234567" for c in mode)):
            raise SpecError(f"{mode!r} is not an octal mode like '0750'", f"{path}.mode")
        return cls(path=name, mode=mode)

    def dump(self) -> dict:
        return {"path": self.path, "mode": self.mode}


DIRECTORY_KINDS = ("runtime", "state", "cache", "logs", "configuration")


@attrs.frozen
class Directories:
    """systemd's RuntimeDirectory=, StateDirectory=, CacheDirectory=, LogsDirectory=,
    ConfigurationDirectory=: see sandbox.directories."""

    runtime: tuple = _field("under /run, removed when the sandbox ends", default=())
    state: tuple = _field("under /var/lib", default=())
    cache: tuple = _field("under /var/cache", default=())
    logs: tuple = _field("under /var/log", default=())
    configuration: tuple = _field("under /etc, root's and read-only", default=())
    preserve_runtime: bool = _field("keep the runtime directories when the sandbox ends",
                                    default=False)

    KEYS = (*DIRECTORY_KINDS, "preserve_runtime")

    @classmethod
    def load(cls, v: Any, path: str) -> "Directories":
        d = _obj(v, path, cls.KEYS)
        out = {k: _opt(d, k, _list, path, ServiceDirectory.load) or ()
               for k in DIRECTORY_KINDS}
        for k in DIRECTORY_KINDS:
            names = [e.path for e in out[k]]
            if len(set(names)) != len(names):
                raise SpecError("a directory is listed twice", f"{path}.{k}")
            if "private" in names and k != "configuration":
                raise SpecError("'private' is where a dynamic user's directories live",
                                f"{path}.{k}")
        return cls(**out, preserve_runtime=_opt(d, "preserve_runtime", _bool, path)
                   or False)

    def dump(self) -> dict:
        return {**{k: [e.dump() for e in getattr(self, k)] for k in DIRECTORY_KINDS},
                "preserve_runtime": self.preserve_runtime}


PROTECT_SYSTEM = (False, True, "full", "strict")
PROTECT_HOME = (False, True, "read-only", "tmpfs")
PROTECT_PROC = ("default", "invisible", "ptraceable", "noaccess")
PROC_SUBSET = ("all", "pid")


def _choice(v: Any, path: str, choices: tuple) -> Any:
    for c in choices:
        if v is c or (type(v) is str and v == c):
            return c
    shown = ", ".join(json.dumps(c) for c in choices)
    raise SpecError(f"{json.dumps(v) if _jsonable(v) else _type_name(v)} is not one of "
                    f"{shown}", path)


def _jsonable(v: Any) -> bool:
    return v is None or type(v) in (bool, int, str)


def _fs_path(v: Any, path: str) -> str:
    """An absolute, normal path; a leading '-' (systemd's) means "skip it if missing"."""
    s = _str(v, path, nonempty=True)
    p = s[1:] if s.startswith("-") else s
    if not p.startswith("/") or "\0" in p or p != "/" and \
            any(c in ("", ".", "..") for c in p[1:].split("/")):
        raise SpecError(f"{s!r} is not a normal absolute path (no '.' or '..' component, "
                        "no '//' or trailing '/'; a leading '-': skipped if missing)", path)
    return s


@attrs.frozen
class Filesystem:
    """systemd's filesystem protections, by systemd's names (man systemd.exec): each
    expanded by prepare into mounts, masks, capability drops and seccomp rules (see
    sandbox.filesystem)."""

    protect_system: Any = _field("false, true (/usr, /boot, /efi read-only), \"full\" "
                                 "(and /etc), \"strict\" (all of it)", default=False)
    protect_home: Any = _field("false, true (/home, /root, /run/user inaccessible), "
                               "\"read-only\", \"tmpfs\"", default=False)
    private_tmp: bool = _field("a private /tmp and /var/tmp", default=False)
    private_devices: bool = _field("a minimal /dev; no CAP_MKNOD, CAP_SYS_RAWIO, @raw-io",
                                   default=False)
    read_write_paths: tuple = _field("writable even under protect_system", default=())
    read_only_paths: tuple = _field("made read-only", default=())
    inaccessible_paths: tuple = _field("hidden", default=())
    protect_kernel_tunables: bool = _field("/proc/sys, /sys, ... read-only", default=False)
    protect_kernel_modules: bool = _field("no module loading: CAP_SYS_MODULE, @module, "
                                          "/usr/lib/modules", default=False)
    protect_kernel_logs: bool = _field("no kernel log: CAP_SYSLOG, syslog(2), /proc/kmsg, "
                                       "/dev/kmsg", default=False)
    protect_control_groups: bool = _field("/sys/fs/cgroup read-only", default=False)
    protect_proc: str = _field("/proc's hidepid: default, invisible, ptraceable, noaccess",
                               default="default")
    proc_subset: str = _field("all, or pid: /proc shows processes only", default="all")

    KEYS = ("protect_system", "protect_home", "private_tmp", "private_devices",
            "read_write_paths", "read_only_paths", "inaccessible_paths",
            "protect_kernel_tunables", "protect_kernel_modules", "protect_kernel_logs",
            "protect_control_groups", "protect_proc", "proc_subset")
    BOOLS = ("private_tmp", "private_devices", "protect_kernel_tunables",
             "protect_kernel_modules", "protect_kernel_logs", "protect_control_groups")
    PATHS = ("read_write_paths", "read_only_paths", "inaccessible_paths")

    @classmethod
    def load(cls, v: Any, path: str) -> "Filesystem":
        d = _obj(v, path, cls.KEYS)
        out: "dict[str, Any]" = {}
        for k, choices in (("protect_system", PROTECT_SYSTEM), ("protect_home", PROTECT_HOME),
                           ("protect_proc", PROTECT_PROC), ("proc_subset", PROC_SUBSET)):
            if d.get(k) is not None:
                out[k] = _choice(d[k], f"{path}.{k}", choices)
        for k in cls.BOOLS:
            if d.get(k) is not None:
                out[k] = _bool(d[k], f"{path}.{k}")
        for k in cls.PATHS:
            out[k] = _opt(d, k, _list, path, _fs_path) or ()
        return cls(**out)

    def dump(self) -> dict:
        return {k: list(getattr(self, k)) if k in self.PATHS else getattr(self, k)
                for k in self.KEYS}


LISTEN_TYPES = ("stream", "datagram", "seqpacket")


@attrs.frozen
class Listen:
    """A socket the caller's side makes for the target (systemd's ListenStream=,
    ListenDatagram=, ListenSequentialPacket=): see sandbox.listen."""

    address: str = _field("IPV4:PORT, [IPV6]:PORT, an absolute unix socket path or "
                          "@ABSTRACT")
    type: str = _field("stream (TCP, a unix stream socket), datagram (UDP, a unix "
                       "datagram socket) or seqpacket (unix only); default stream",
                       default="stream")
    name: Optional[str] = _field("its LISTEN_FDNAMES entry (systemd's "
                                 "FileDescriptorName=); default 'unknown'", default=None)
    backlog: Optional[int] = _field("listen(2)'s backlog (stream, seqpacket); default as "
                                    "many as net.core.somaxconn allows", default=None)

    KEYS = ("type", "address", "name", "backlog")

    @classmethod
    def load(cls, v: Any, path: str) -> "Listen":
        from . import listen
        d = _obj(v, path, cls.KEYS)
        if d.get("address") is None:
            raise SpecError("missing required key 'address'", path)
        t = _choice(d["type"], f"{path}.type", LISTEN_TYPES) \
            if d.get("type") is not None else "stream"
        address = _str(d["address"], f"{path}.address", nonempty=True)
        try:
            family, _host, _port = listen.parse_address(address)
        except SpecError as e:
            raise SpecError(e.message, f"{path}.address") from None
        if t == "seqpacket" and family != "unix":
            raise SpecError("a seqpacket socket is a unix socket (a path or @NAME)",
                            f"{path}.type")
        name = _opt(d, "name", _str, path)
        if name is not None:
            wrong = listen.check_name(name)
            if wrong:
                raise SpecError(wrong, f"{path}.name")
        backlog = _opt(d, "backlog", _int, path, 0, 2**31 - 1)
        if backlog is not None and t == "datagram":
            raise SpecError("a datagram socket does not listen: no backlog",
                            f"{path}.backlog")
        return cls(type=t, address=address, name=name, backlog=backlog)

    def dump(self) -> dict:
        return {"type": self.type, "address": self.address, "name": self.name,
                "backlog": self.backlog}


@attrs.frozen
class LandlockPath:
    """A path and the access allowed beneath it: see sandbox.landlock."""

    path: str = _field("an absolute path, opened in the target's view by the landlock step")
    access: tuple = _field("groups (read, write, execute, create, remove, truncate, "
                           "ioctl_dev, refer) or the kernel's right names (read_file, "
                           "make_reg, ...)")
    follow: bool = _field("open through a final symlink (default: a symlink is refused)",
                          default=False)

    KEYS = ("path", "access", "follow")

    @classmethod
    def load(cls, v: Any, path: str) -> "LandlockPath":
        from . import landlock
        d = _obj(v, path, cls.KEYS)
        for k in ("path", "access"):
            if d.get(k) is None:
                raise SpecError(f"missing required key {k!r}", path)
        p = _fs_path(d["path"], f"{path}.path")
        if p.startswith("-"):
            raise SpecError(f"{p!r} is not an absolute path", f"{path}.path")
        known = (*landlock.GROUPS, *landlock.FS_RIGHTS)
        access = _list(d["access"], f"{path}.access", _choice, known)
        if not access:
            raise SpecError("must not be empty", f"{path}.access")
        if len(set(access)) != len(access):
            raise SpecError("an access is listed twice", f"{path}.access")
        return cls(path=p, access=access,
                   follow=_opt(d, "follow", _bool, path) or False)

    def dump(self) -> dict:
        return {"path": self.path, "access": list(self.access), "follow": self.follow}


def _port(v: Any, path: str) -> int:
    return _int(v, path, 0, 65535)


@attrs.frozen
class LandlockNet:
    """TCP ports the target may bind and connect to; any other is EACCES."""

    bind: tuple = _field("TCP ports bind(2) may use (0: an ephemeral port)", default=())
    connect: tuple = _field("TCP ports connect(2) may reach", default=())

    KEYS = ("bind", "connect")

    @classmethod
    def load(cls, v: Any, path: str) -> "LandlockNet":
        d = _obj(v, path, cls.KEYS)
        out = {}
        for k in cls.KEYS:
            ports = _opt(d, k, _list, path, _port) or ()
            if len(set(ports)) != len(ports):
                raise SpecError("a port is listed twice", f"{path}.{k}")
            out[k] = ports
        return cls(**out)

    def dump(self) -> dict:
        return {"bind": list(self.bind), "connect": list(self.connect)}


@attrs.frozen
class Landlock:
    """Landlock rules: everything not allowed is denied by the kernel (see
    sandbox.landlock)."""

    fs: Optional[tuple] = _field("paths and what is allowed beneath them; given (even []): "
                                 "every other filesystem access the ABI knows is denied",
                                 default=None)
    net: Optional[LandlockNet] = _field("given: TCP bind and connect only to these ports",
                                        default=None)
    scope: tuple = _field("abstract_unix_socket, signal: no reaching outside the domain",
                          default=())
    compatibility: str = _field("hard_requirement (default: exit 125 if the ABI lacks a "
                                "rule's need) or best_effort (dropped, reported)",
                                default="hard_requirement")
    spec_paths: bool = _field("with fs: the places the spec itself makes writable (its "
                              "directories, filesystem.read_write_paths, writable mounts, "
                              "/dev, /proc) get the rights to use them", default=False)

    KEYS = ("fs", "net", "scope", "compatibility", "spec_paths")

    @classmethod
    def load(cls, v: Any, path: str) -> "Landlock":
        from . import landlock
        d = _obj(v, path, cls.KEYS)
        fs = _opt(d, "fs", _list, path, LandlockPath.load)
        net = _opt(d, "net", LandlockNet.load, path)
        scope = _opt(d, "scope", _list, path, _choice, tuple(landlock.SCOPES)) or ()
        if len(set(scope)) != len(scope):
            raise SpecError("a scope is listed twice", f"{path}.scope")
        if fs is None and net is None and not scope:
            raise SpecError("restricts nothing: give fs, net or scope", path)
        compat = _choice(d["compatibility"], f"{path}.compatibility",
                         landlock.COMPATIBILITY) \
            if d.get("compatibility") is not None else "hard_requirement"
        spec_paths = _bool(d["spec_paths"], f"{path}.spec_paths") \
            if d.get("spec_paths") is not None else False
        if spec_paths and fs is None:
            raise SpecError("spec_paths adds filesystem rules: give fs too", f"{path}.spec_paths")
        return cls(fs=fs, net=net, scope=scope, compatibility=compat, spec_paths=spec_paths)

    def dump(self) -> dict:
        return {"fs": None if self.fs is None else [r.dump() for r in self.fs],
                "net": None if self.net is None else self.net.dump(),
                "scope": list(self.scope), "compatibility": self.compatibility,
                "spec_paths": self.spec_paths}


def _listen(v: Any) -> tuple:
    from . import listen
    out = _list(v, "listen", Listen.load)
    seen: dict = {}
    for i, e in enumerate(out):
        family, host, port = listen.parse_address(e.address)
        # One unix address holds one socket whatever its type; TCP and UDP ports are
        # apart.
        key = (family, host, port, e.type == "datagram" if family != "unix" else None)
        if key in seen:
            raise SpecError(f"{e.address!r} is listed twice (also listen[{seen[key]}])",
                            f"listen[{i}].address")
        seen[key] = i
    return out


@attrs.frozen
class SeccompRule:
    names: tuple = _field("syscall names, or @group names from profiles/syscalls.toml")
    action: str = _field("allow, errno:NAME|N, kill_process, kill_thread, trap, log")
    args: tuple = _field("conditions, all of which must hold", default=())
    if_caps: tuple = _field("apply only when the target keeps all these caps", default=())
    unless_caps: tuple = _field("apply only when the target keeps none of these caps",
                                default=())
    replace_profile_rules: bool = _field(
        "replace the seccomp profile's rules for these syscalls (else they still apply, "
        "and the stricter action wins)", default=False)

    KEYS = ("names", "action", "args", "if_caps", "unless_caps", "replace_profile_rules")

    @classmethod
    def load(cls, v: Any, path: str) -> "SeccompRule":
        d = _obj(v, path, cls.KEYS)
        for k in ("names", "action"):
            if k not in d:
                raise SpecError(f"missing required key {k!r}", path)
        names = _list(d["names"], f"{path}.names", _str, nonempty=True)
        if not names:
            raise SpecError("must name at least one syscall", f"{path}.names")
        return cls(names=names, action=_action(d["action"], f"{path}.action"),
                   args=_opt(d, "args", _list, path, SeccompArg.load) or (),
                   if_caps=_opt(d, "if_caps", _list, path, _capname) or (),
                   unless_caps=_opt(d, "unless_caps", _list, path, _capname) or (),
                   replace_profile_rules=_opt(d, "replace_profile_rules", _bool, path)
                   or False)

    def dump(self) -> dict:
        return {"names": list(self.names), "action": self.action,
                "args": [a.dump() for a in self.args], "if_caps": list(self.if_caps),
                "unless_caps": list(self.unless_caps),
                "replace_profile_rules": self.replace_profile_rules}


@attrs.frozen
class Seccomp:
    """A seccomp filter, loaded last, right before execve.  Either a named `profile`
    (profiles/seccomp/*.toml) or explicit rules; `syscalls` given with a profile are added
    to it: for a syscall both name, a call gets the stricter of the two actions, unless
    the rule (or this section) says replace_profile_rules."""

    profile: Optional[str] = _field("named seccomp profile", default=None)
    default_action: Optional[str] = _field("action for syscalls no rule names", default=None)
    architectures: tuple = _field("ABIs allowed; 'native' is the default. Any other ABI "
                                  "is killed", default=("native",))
    syscalls: tuple = _field("rules, in order", default=())
    replace_profile_rules: bool = _field(
        "every rule here replaces the profile's rules for the syscalls it names",
        default=False)
    unknown_syscalls_action: Optional[str] = _field(
        "action for a syscall numbered above every one the filter can name on its ABI (a "
        "syscall newer than libseccomp), where default_action denies; 'default_action' "
        "gives those the default action.  None: the profile's, else errno:ENOSYS, which "
        "libc falls back from", default=None)

    KEYS = ("profile", "default_action", "architectures", "syscalls",
            "replace_profile_rules", "unknown_syscalls_action")

    @classmethod
    def load(cls, v: Any, path: str) -> "Seccomp":
        d = _obj(v, path, cls.KEYS)
        profile = _opt(d, "profile", _str, path, nonempty=True)
        default_action = _opt(d, "default_action", _action, path)
        if profile is None and default_action is None:
            raise SpecError("give a 'profile' or a 'default_action'", path)
        arches = _opt(d, "architectures", _list, path, _str, nonempty=True)
        return cls(profile=profile, default_action=default_action,
                   architectures=arches if arches else ("native",),
                   syscalls=_opt(d, "syscalls", _list, path, SeccompRule.load) or (),
                   replace_profile_rules=_opt(d, "replace_profile_rules", _bool, path)
                   or False,
                   unknown_syscalls_action=_opt(d, "unknown_syscalls_action",
                                                _unknown_action, path))

    def dump(self) -> dict:
        return {"profile": self.profile, "default_action": self.default_action,
                "architectures": list(self.architectures),
                "syscalls": [r.dump() for r in self.syscalls],
                "replace_profile_rules": self.replace_profile_rules,
                "unknown_syscalls_action": self.unknown_syscalls_action}


@attrs.frozen
class IdMap:
    inside: int = _field("first id inside the user namespace")
    outside: int = _field("first id outside")
    count: int = _field("how many ids")

    KEYS = ("inside", "outside", "count")

    @classmethod
    def load(cls, v: Any, path: str) -> "IdMap":
        d = _obj(v, path, cls.KEYS)
        for k in cls.KEYS:
            if k not in d:
                raise SpecError(f"missing required key {k!r}", path)
        return cls(inside=_int(d["inside"], f"{path}.inside", 0, MAX_ID),
                   outside=_int(d["outside"], f"{path}.outside", 0, MAX_ID),
                   count=_int(d["count"], f"{path}.count", 1, MAX_ID + 1))

    def dump(self) -> dict:
        return {"inside": self.inside, "outside": self.outside, "count": self.count}


NAMESPACE_KINDS = ("user", "mount", "pid", "net", "ipc", "uts", "cgroup")


def _ns_value(v: Any, path: str):
    """false: the host's; true: a new one; a path: join that namespace (setns)."""
    if type(v) is bool:
        return v
    return _abspath(v, path)


@attrs.frozen
class Namespaces:
    """Namespaces of the target: false (share the caller's), true (a new one) or the
    path of one to join, like /proc/PID/ns/net.  `user` may instead be an object with
    uid_map/gid_map ranges.  `as_pid_1`: with a new pid namespace the target itself is
    pid 1 (it must reap orphans and handle signals); otherwise a small reaper is pid 1."""

    user: Any = _field("false, true (map the caller to root inside), a path, or maps",
                       default=False)
    mount: Any = _field("false, true or a path", default=False)
    pid: Any = _field("false, true or a path", default=False)
    net: Any = _field("false, true (only loopback, up) or a path", default=False)
    ipc: Any = _field("false, true or a path", default=False)
    uts: Any = _field("false, true or a path", default=False)
    cgroup: Any = _field("false, true or a path", default=False)
    as_pid_1: bool = _field("make the target pid 1 of a new pid namespace", default=False)

    KEYS = NAMESPACE_KINDS + ("as_pid_1",)

    @classmethod
    def load(cls, v: Any, path: str) -> "Namespaces":
        d = _obj(v, path, cls.KEYS)
        out: "dict[str, Any]" = {}
        for k in NAMESPACE_KINDS:
            val = d.get(k)
            if val is None:
                out[k] = False
            elif k == "user" and type(val) is dict:
                m = _obj(val, f"{path}.user", ("uid_map", "gid_map"))
                out[k] = {mk: _opt(m, mk, _list, f"{path}.user", IdMap.load) or ()
                          for mk in ("uid_map", "gid_map")}
            else:
                out[k] = _ns_value(val, f"{path}.{k}")
        out["as_pid_1"] = _opt(d, "as_pid_1", _bool, path) or False
        return cls(**out)

    def dump(self) -> dict:
        d = {}
        for k in NAMESPACE_KINDS:
            v = getattr(self, k)
            if isinstance(v, dict):
                v = {mk: [m.dump() for m in maps] for mk, maps in v.items()}
            d[k] = v
        d["as_pid_1"] = self.as_pid_1
        return d

    def any(self) -> bool:
        return any(getattr(self, k) is not False for k in NAMESPACE_KINDS)


MOUNT_TYPES = ("bind", "tmpfs", "proc", "mqueue", "devpts", "dev")
MOUNT_OPTIONS = ("ro", "rw", "nosuid", "nodev", "noexec", "recursive", "noatime",
                 "strictatime")


@attrs.frozen
class Mount:
    type: str = _field("bind, tmpfs, proc, mqueue, devpts or dev (a minimal /dev)")
    destination: str = _field("normal absolute path inside, no symlink in it")
    source: Optional[str] = _field("host path (bind)", default=None)
    options: tuple = _field("ro rw nosuid nodev noexec recursive noatime strictatime",
                            default=())
    size: Optional[int] = _field("tmpfs (or dev) size in bytes", default=None)
    mode: Optional[str] = _field("tmpfs (or dev) mode, octal", default=None)

    KEYS = ("type", "destination", "source", "options", "size", "mode")

    @classmethod
    def load(cls, v: Any, path: str) -> "Mount":
        d = _obj(v, path, cls.KEYS)
        for k in ("type", "destination"):
            if k not in d:
                raise SpecError(f"missing required key {k!r}", path)
        t = _str(d["type"], f"{path}.type")
        if t not in MOUNT_TYPES:
            raise SpecError(f"unknown mount type {t!r}", f"{path}.type")
        opts = _opt(d, "options", _list, path, _str) or ()
        for i, o in enumerate(opts):
            if o not in MOUNT_OPTIONS:
                raise SpecError(f"unknown option {o!r}", f"{path}.options[{i}]")
        src = _opt(d, "source", _abspath, path)
        if t == "bind" and src is None:
            raise SpecError("a bind mount needs a 'source'", path)
        mode = _opt(d, "mode", _str, path)
        if mode is not None and not (mode and all(c in "01234567" for c in mode)):
            raise SpecError(f"{mode!r} is not an octal mode", f"{path}.mode")
        return cls(type=t, destination=_abspath(d["destination"], f"{path}.destination"),
                   source=src, options=opts, size=_opt(d, "size", _int, path, 1, 2**63 - 1),
                   mode=mode)

    def dump(self) -> dict:
        return {"type": self.type, "destination": self.destination, "source": self.source,
                "options": list(self.options), "size": self.size, "mode": self.mode}


@attrs.frozen
class Cgroup:
    """The cgroup the shim creates (if needed), configures and joins before exec, so the
    target is never outside it.  `path` is absolute within the cgroup mount, or relative
    to `root`."""

    path: str = _field("cgroup path, no '..'")
    version: Union[str, int] = _field("'auto', 1 or 2", default="auto")
    root: str = _field("where relative paths start", default="/wrapperd")
    create: bool = _field("create missing directories (else they must exist)", default=True)
    memory_max: Optional[int] = _field("bytes: v2 memory.max / v1 memory.limit_in_bytes",
                                       default=None)
    pids_max: Optional[int] = _field("v2/v1 pids.max", default=None)
    memory_high: Optional[int] = _field(
        "bytes: v2 memory.high, reclaim/throttle above it (no v1 equivalent)", default=None)
    memory_swap_max: Optional[int] = _field(
        "bytes of swap: v2 memory.swap.max / v1 memory.memsw.limit_in_bytes (memory+swap, "
        "so memory_max is required there)", default=None)
    cpu_max: Optional[str] = _field(
        "'QUOTA PERIOD' or 'max PERIOD' in us (or [quota, period]): v2 cpu.max / v1 "
        "cpu.cfs_quota_us + cpu.cfs_period_us", default=None)
    cpu_weight: Optional[int] = _field("1-10000: v2 cpu.weight / v1 cpu.shares (converted)",
                                       default=None)
    io_weight: Optional[int] = _field("1-10000: v2 io.weight / v1 blkio.weight (converted)",
                                      default=None)
    cpuset_cpus: Optional[str] = _field("CPU list, e.g. '0-1,3': cpuset.cpus", default=None)
    cpuset_mems: Optional[str] = _field("NUMA node list, e.g. '0': cpuset.mems", default=None)
    named: tuple = _field("v1 named hierarchies (mounted with name=X, e.g. 'systemd') to "
                          "join as well, by plain file writes", default=())

    KEYS = ("path", "version", "root", "create", "memory_max", "pids_max", "memory_high",
            "memory_swap_max", "cpu_max", "cpu_weight", "io_weight", "cpuset_cpus",
            "cpuset_mems", "named")

    @classmethod
    def load(cls, v: Any, path: str) -> "Cgroup":
        d = _obj(v, path, cls.KEYS)
        if "path" not in d:
            raise SpecError("missing required key 'path'", path)
        p = _cgpath(d["path"], f"{path}.path")
        version = d.get("version", "auto")
        if version not in ("auto", 1, 2) or type(version) is bool:
            raise SpecError(f"expected 'auto', 1 or 2, got {version!r}", f"{path}.version")
        root = _cgpath(d.get("root", "/wrapperd"), f"{path}.root")
        if not root.startswith("/"):
            raise SpecError("must be absolute", f"{path}.root")
        return cls(path=p, version=version, root=root,
                   create=_bool(d.get("create", True), f"{path}.create"),
                   memory_max=_opt(d, "memory_max", _int, path, 1, 2**63 - 1),
                   pids_max=_opt(d, "pids_max", _int, path, 1, 2**31 - 1),
                   memory_high=_opt(d, "memory_high", _int, path, 1, 2**63 - 1),
                   memory_swap_max=_opt(d, "memory_swap_max", _int, path, 0, 2**63 - 1),
                   cpu_max=_opt(d, "cpu_max", _cpu_max, path),
                   cpu_weight=_opt(d, "cpu_weight", _int, path, 1, 10000),
                   io_weight=_opt(d, "io_weight", _int, path, 1, 10000),
                   cpuset_cpus=_opt(d, "cpuset_cpus", _cpulist, path),
                   cpuset_mems=_opt(d, "cpuset_mems", _cpulist, path),
                   named=_named(d.get("named", []), f"{path}.named"))

    def dump(self) -> dict:
        return {k: list(v) if type(v) is tuple else v
                for k, v in ((k, getattr(self, k)) for k in self.KEYS)}

    @property
    def full_path(self) -> str:
        """The path within the cgroup mount, always absolute."""
        if self.path.startswith("/"):
            return self.path
        return self.root.rstrip("/") + "/" + self.path


def _cpu_max(v: Any, path: str) -> str:
    """cpu.max's own format, 'QUOTA PERIOD' or 'max PERIOD' (microseconds), or a list."""
    if type(v) is list:
        if len(v) != 2:
            raise SpecError("expected [quota, period]", path)
        quota, period = v
    else:
        parts = _str(v, path).split()
        if len(parts) != 2:
            raise SpecError(f"expected 'QUOTA PERIOD' or 'max PERIOD', got {v!r}", path)
        quota, period = parts
        period = int(period) if period.isdigit() else period
        quota = int(quota) if quota.isdigit() else quota
    if quota != "max":
        # the kernel refuses a quota under 1 ms and a period outside [1 ms, 1 s]
        quota = _int(quota, f"{path}[0]", 1000, 2**63 - 1)
    period = _int(period, f"{path}[1]", 1000, 1000000)
    return f"{quota} {period}"


def _named(v: Any, path: str) -> tuple:
    if type(v) is not list:
        raise SpecError(f"expected a list of names, got {_type_name(v)}", path)
    out = []
    for i, x in enumerate(v):
        s = _str(x, f"{path}[{i}]", nonempty=True)
        if s.startswith("name="):
            s = s[5:]
        if not s or not all(c.isalnum() or c in "_-." for c in s):
            raise SpecError(f"{x!r} is not a hierarchy name", f"{path}[{i}]")
        if s in out:
            raise SpecError(f"{s!r} given twice", f"{path}[{i}]")
        out.append(s)
    return tuple(out)


def _cpulist(v: Any, path: str) -> str:
    s = _str(v, path, nonempty=True).strip()
    for part in s.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise SpecError(f"{s!r} is not a list like '0-3,5'", path)
    return s


def _cgpath(v: Any, path: str) -> str:
    s = _str(v, path, nonempty=True)
    parts = [p for p in s.split("/") if p]
    if any(p in ("..", ".") for p in parts):
        raise SpecError(f"{s!r} must not contain '.' or '..'", path)
    if not parts and s != "/":
        raise SpecError(f"{s!r} is not a cgroup path", path)
    return ("/" if s.startswith("/") else "") + "/".join(parts)


@attrs.frozen
class Rlimit:
    soft: Union[int, str] = _field("soft limit, or 'unlimited'")
    hard: Union[int, str] = _field("hard limit, or 'unlimited'")

    @classmethod
    def load(cls, v: Any, path: str) -> "Rlimit":
        if type(v) is not list or len(v) != 2:
            raise SpecError("expected [soft, hard]", path)
        vals = []
        for i, x in enumerate(v):
            if x == RLIM_INFINITY:
                vals.append(x)
            else:
                vals.append(_int(x, f"{path}[{i}]", 0, 2**64 - 2))
        soft, hard = vals
        if _rlim_num(soft) > _rlim_num(hard):
            raise SpecError(f"soft limit {soft} is above hard limit {hard}", path)
        return cls(soft, hard)

    def dump(self) -> list:
        return [self.soft, self.hard]


def _rlim_num(v) -> int:
    return 2**64 - 1 if v == RLIM_INFINITY else v


def _rlimit_name(k: str, path: str) -> str:
    name = k.upper()
    if name.startswith("RLIMIT_"):
        name = name[len("RLIMIT_"):]
    if name not in RLIMIT_NAMES:
        raise SpecError(f"unknown resource {k!r} (expected one of: {', '.join(RLIMIT_NAMES)})",
                        path)
    return name


SECUREBIT_NAMES = ("noroot", "noroot_locked", "no_setuid_fixup", "no_setuid_fixup_locked",
                   "keep_caps", "keep_caps_locked", "no_cap_ambient_raise",
                   "no_cap_ambient_raise_locked")


def _securebit(v: Any, path: str) -> str:
    s = _str(v, path)
    if s not in SECUREBIT_NAMES:
        raise SpecError(f"unknown securebit {s!r} (expected one of: "
                        f"{', '.join(SECUREBIT_NAMES)})", path)
    return s


def _signal(v: Any, path: str) -> int:
    import signal
    if isinstance(v, signal.Signals):       # signal.SIGKILL from a library caller
        v = int(v)
    if type(v) is str:
        name = v.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        sig = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if sig is None:
            raise SpecError(f"unknown signal {v!r}", path)
        return int(sig)
    return _int(v, path, 1, signal.NSIG - 1)


@attrs.frozen
class Spec:
    """A whole spawn spec.  Every field is applied by the shim before execve."""

    argv: tuple = _field("the target's argv; argv[0] is looked up in env PATH if it has "
                         "no '/'", default=())
    version: int = _field("spec format version, 1", default=SPEC_VERSION)
    name: Optional[str] = _field("service name, used in messages; a dynamic user's key",
                                 default=None)
    profile: Optional[str] = _field("named profile merged under this spec", default=None)
    env: dict = _field("the target's whole environment: nothing is inherited",
                       factory=dict)
    cwd: Optional[str] = _field("working directory of the target; None (JSON \"inherit\"): "
                                "the caller's, no chdir", default="/")
    user: Optional[User] = _field("identity of the target; default: unchanged",
                                  default=None)
    capabilities: Optional[Capabilities] = _field("capability sets; default: unchanged",
                                                  default=None)
    securebits: tuple = _field("securebits to set (and lock), see capabilities(7)",
                               default=())
    no_new_privs: bool = _field("PR_SET_NO_NEW_PRIVS: execve never grants privileges",
                                default=True)
    pdeathsig: Optional[int] = _field("signal sent to the target when its parent dies",
                                      default=None)
    new_session: bool = _field("setsid(2): the target leads a new session and process "
                               "group, with no controlling terminal (so TIOCSTI cannot "
                               "reach the caller's); a shim that already leads its group "
                               "forks once, staying outside as a supervisor",
                               default=True)
    seccomp: Optional[Seccomp] = _field("seccomp filter, loaded last", default=None)
    namespaces: Optional[Namespaces] = _field("namespaces to create or join", default=None)
    hostname: Optional[str] = _field("hostname in a new uts namespace", default=None)
    mounts: tuple = _field("mounts in a new mount namespace", default=())
    cgroup: Optional[Cgroup] = _field("cgroup to join before exec", default=None)
    rlimits: dict = _field("resource limits, NAME: [soft, hard]", factory=dict)
    oom_score_adj: Optional[int] = _field("/proc/self/oom_score_adj, -1000..1000",
                                          default=None)
    nice: Optional[int] = _field("scheduling priority, -20..19", default=None)
    pass_fds: tuple = _field("fds, besides 0-2, that reach the target", default=())
    masked_paths: tuple = _field("hidden in the new mount namespace: /dev/null over a "
                                 "file, an empty read-only tmpfs over a directory",
                                 default=())
    readonly_paths: tuple = _field("made read-only (recursively) in the new mount "
                                   "namespace", default=())
    readonly_root: bool = _field("/ and every mount below it made read-only in the new "
                                 "mount namespace (the spec's mounts go on top)",
                                 default=False)
    filesystem: Optional[Filesystem] = _field(
        "systemd's filesystem protections (protect_system, protect_home, private_tmp, "
        "...), expanded by prepare into mounts, masks, capability drops and seccomp rules",
        default=None)
    directories: Optional[Directories] = _field(
        "service directories under /run, /var/lib, /var/cache, /var/log, /etc, made and "
        "owned for the target before it runs (systemd's RuntimeDirectory= ...)",
        default=None)
    listen: tuple = _field(
        "sockets made, bound and listening before the namespaces, in the caller's "
        "network namespace, handed to the target at fd 3, 4, ... with LISTEN_FDS, "
        "LISTEN_FDNAMES and LISTEN_PID (systemd's socket activation)", default=())
    address_families: Optional[tuple] = _field(
        "socket families the target may create (systemd's RestrictAddressFamilies=), "
        "e.g. AF_UNIX, AF_INET, AF_INET6: socket(2) and socketpair(2) of any other fail "
        "with EAFNOSUPPORT; [] allows none; None: no restriction", default=None)
    notify: bool = _field(
        "readiness notification (sd_notify): the target gets NOTIFY_SOCKET, a datagram "
        "socket sandbox.spawn() makes (wrapperd alone: the caller's NOTIFY_SOCKET), "
        "bound into its mount namespace; see sandbox.notify", default=False)
    landlock: Optional[Landlock] = _field(
        "Landlock: paths, TCP ports and scopes the target keeps; everything else the "
        "kernel's Landlock ABI handles is denied (see sandbox.landlock)", default=None)
    # Not a field of the format: with a profile, the dict the spec was loaded from, so
    # the profile can be merged under exactly the fields given (to_dict() fills in
    # defaults, which would beat the profile).  See profile.spec_layer().
    source: Optional[dict] = attrs.field(default=None, eq=False, repr=False)

    KEYS = ("version", "name", "profile", "argv", "env", "cwd", "user", "capabilities",
            "securebits", "no_new_privs", "pdeathsig", "new_session", "seccomp",
            "namespaces",
            "hostname", "mounts", "cgroup", "rlimits", "oom_score_adj", "nice", "pass_fds",
            "masked_paths", "readonly_paths", "readonly_root", "filesystem", "directories",
            "listen", "address_families", "notify", "landlock")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, v: Any) -> "Spec":
        d = _obj(v, "", cls.KEYS)
        version = d.get("version", SPEC_VERSION)
        if type(version) is not int or version != SPEC_VERSION:
            raise SpecError(f"unsupported spec version {version!r} (this is version "
                            f"{SPEC_VERSION})", "version")
        env = {}
        if d.get("env") is not None:
            if type(d["env"]) is not dict:
                raise SpecError(f"expected an object, got {_type_name(d['env'])}", "env")
            for k, val in d["env"].items():
                key = _str(k, "env", nonempty=True)
                if "=" in key:
                    raise SpecError(f"variable name {key!r} contains '='", "env")
                env[key] = _str(val, f"env.{key}")
        rlimits = {}
        if d.get("rlimits") is not None:
            if type(d["rlimits"]) is not dict:
                raise SpecError(f"expected an object, got {_type_name(d['rlimits'])}",
                                "rlimits")
            for k, val in d["rlimits"].items():
                name = _rlimit_name(k, f"rlimits.{k}")
                if name in rlimits:
                    raise SpecError("given twice", f"rlimits.{k}")
                rlimits[name] = Rlimit.load(val, f"rlimits.{k}")
        pass_fds = _opt(d, "pass_fds", _list, "", _int, 3, 2**31 - 1) or ()
        if len(set(pass_fds)) != len(pass_fds):
            raise SpecError("an fd is listed twice", "pass_fds")
        listen = _listen(d["listen"]) if d.get("listen") is not None else ()
        for fd in pass_fds:
            if 3 <= fd < 3 + len(listen):
                # sd_listen_fds(3): the listening sockets are fds 3, 4, ...
                raise SpecError(f"fd {fd} is where listen[{fd - 3}] goes (the "
                                f"listening sockets are fds 3-{2 + len(listen)}, as "
                                f"systemd passes them): give pass_fds from "
                                f"{3 + len(listen)} up", "pass_fds")
        hostname = _opt(d, "hostname", _str, "", nonempty=True)
        if hostname is not None and len(os.fsencode(hostname)) > 64:
            raise SpecError("longer than 64 bytes", "hostname")
        return cls(
            version=version,
            name=_opt(d, "name", _str, "", nonempty=True),
            profile=_opt(d, "profile", _str, "", nonempty=True),
            argv=_opt(d, "argv", _list, "", _str) or (),
            env=env,
            cwd=_cwd(d["cwd"]) if d.get("cwd") is not None else "/",
            user=_opt(d, "user", User.load, ""),
            capabilities=_opt(d, "capabilities", Capabilities.load, ""),
            securebits=_opt(d, "securebits", _list, "", _securebit) or (),
            no_new_privs=_bool(d["no_new_privs"], "no_new_privs")
            if d.get("no_new_privs") is not None else True,
            pdeathsig=_opt(d, "pdeathsig", _signal, ""),
            new_session=_bool(d["new_session"], "new_session")
            if d.get("new_session") is not None else True,
            seccomp=_opt(d, "seccomp", Seccomp.load, ""),
            namespaces=_opt(d, "namespaces", Namespaces.load, ""),
            hostname=hostname,
            mounts=_opt(d, "mounts", _list, "", Mount.load) or (),
            cgroup=_opt(d, "cgroup", Cgroup.load, ""),
            rlimits=rlimits,
            oom_score_adj=_opt(d, "oom_score_adj", _int, "", -1000, 1000),
            nice=_opt(d, "nice", _int, "", -20, 19),
            pass_fds=pass_fds,
            masked_paths=_opt(d, "masked_paths", _list, "", _abspath) or (),
            readonly_paths=_opt(d, "readonly_paths", _list, "", _abspath) or (),
            readonly_root=_bool(d["readonly_root"], "readonly_root")
            if d.get("readonly_root") is not None else False,
            filesystem=_opt(d, "filesystem", Filesystem.load, ""),
            directories=_opt(d, "directories", Directories.load, ""),
            listen=listen,
            address_families=_address_families(d["address_families"])
            if d.get("address_families") is not None else None,
            notify=_bool(d["notify"], "notify") if d.get("notify") is not None else False,
            landlock=_opt(d, "landlock", Landlock.load, ""),
            source=json.loads(json.dumps(d)) if d.get("profile") else None,
        )

    @classmethod
    def from_json(cls, text: "str | bytes") -> "Spec":
        return cls.from_dict(loads_strict(text))

    @classmethod
    def from_file(cls, path: str) -> "Spec":
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SPEC_BYTES + 1)
        except OSError as e:
            raise SpecError(f"cannot read spec {path!r}: {e.strerror}") from None
        return cls.from_json(data)

    @classmethod
    def from_oci(cls, config: Any) -> "Spec":
        """An OCI runtime-spec config (a dict, as json.load gives it) as our spec; a
        SpecError listing every part of it wrapperd cannot honour (sandbox.oci), if any:
        nothing is dropped silently.  sandbox.oci.import_config gives spec and list."""
        from .oci import import_config
        spec, lost = import_config(config)
        if lost:
            raise SpecError("cannot be honoured: " + "; ".join(lost), "oci")
        return spec

    # ------------------------------------------------------------------ dumping
    def to_dict(self) -> dict:
        def dump(v):
            if v is None or isinstance(v, (bool, int, str)):
                return v
            if isinstance(v, tuple):
                return [dump(x) for x in v]
            return v.dump()
        d: "dict[str, Any]" = {}
        for k in self.KEYS:
            v = getattr(self, k)
            if k == "env":
                d[k] = dict(v)
            elif k == "cwd":
                d[k] = CWD_INHERIT if v is None else v
            elif k == "rlimits":
                d[k] = {name: r.dump() for name, r in v.items()}
            else:
                d[k] = dump(v)
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def check_runnable(self) -> None:
        """What a spec needs before the shim may run it (a profile alone need not)."""
        if not self.argv:
            raise SpecError("must not be empty: nothing to run", "argv")
        if not self.argv[0]:
            raise SpecError("the program name must not be empty", "argv[0]")


def _no_dups(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise SpecError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _no_constants(name):
    raise SpecError(f"{name} is not a number JSON allows")


def loads_strict(text: "str | bytes") -> Any:
    """json.loads, refusing duplicate keys, NaN/Infinity, over-large and non-UTF-8 input."""
    if isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))
    else:
        size = len(text)
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"spec is larger than {MAX_SPEC_BYTES} bytes")
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(f"spec is not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_dups, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise SpecError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    except RecursionError:
        raise SpecError("malformed JSON: nested too deeply") from None
