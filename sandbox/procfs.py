"""Readers of /proc: one parser per file format, imported everywhere it is read (as
psutil's _pslinux owns every /proc parse and nsjail's mountinfo.cc owns mountinfo).

Only `os` is imported: the lean shim reads /proc through this module too.  Files are
read as bytes and names decoded with os.fsdecode, so a path or process name that is not
UTF-8 survives.  A pid is a number or "self".
"""

from __future__ import annotations

import os

__all__ = ["read", "read_int", "status", "stat", "ppid", "start_time", "unescape", "Mount",
           "parse_mountinfo", "mountinfo", "id_map", "in_initial_user_ns",
           "overflow_uid", "to_outside", "to_inside", "FULL_MAP"]

# What /proc/PID/uid_map says in the initial user namespace: every id maps to itself.
FULL_MAP = ((0, 0, 4294967295),)


def read(path: str) -> bytes:
    """A whole /proc file (they are read in one go, without Python's io layers)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: "list[bytes]" = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def read_int(path: str) -> "int | None":
    """A /proc or /proc/sys file holding one number; None if unreadable or not one."""
    try:
        return int(read(path))
    except (OSError, ValueError):
        return None


def status(pid: "int | str" = "self", keys: "tuple[str, ...] | None" = None) -> "dict[str, str]":
    """/proc/PID/status as {key: value}, values stripped; keys: only these (a step reads
    two lines of fifty-odd, on every launch)."""
    if keys is not None:
        raw = read(f"/proc/{pid}/status")
        found = {}
        for k in keys:
            i = raw.find(b"\n" + k.encode() + b":")
            if i < 0 and raw.startswith(k.encode() + b":"):
                i = -1
            elif i < 0:
                continue
            start = i + 1 + len(k) + 1
            end = raw.find(b"\n", start)
            found[k] = os.fsdecode(raw[start:end if end >= 0 else len(raw)].strip())
        return found
    out = {}
    # One decode of the whole file (a line at a time is ten times slower, and
    # spawn() reads this file on every launch: caps.prepare).
    for line in os.fsdecode(read(f"/proc/{pid}/status")).split("\n"):
        k, sep, v = line.partition(":")
        if sep:
            out[k] = v.strip()
    return out


def stat(pid: "int | str" = "self") -> "list[str]":
    """/proc/PID/stat's fields, numbered as proc(5) numbers them less one: stat()[0] is
    the pid, [1] the comm (without its parentheses), [3] the ppid, [21] the start time.
    The comm may hold spaces and ')': the fields after it follow the last ')'."""
    raw = read(f"/proc/{pid}/stat")
    head, _, tail = raw.rpartition(b")")
    pid_s, _, comm = head.partition(b" (")
    return [os.fsdecode(pid_s), os.fsdecode(comm)] + [os.fsdecode(f) for f in tail.split()]


def ppid(pid: "int | str" = "self") -> int:
    return int(stat(pid)[3])


def start_time(pid: "int | str" = "self") -> int:
    """Clock ticks after boot at which the process started (field 22): with the pid,
    what tells a process from a later one that reused its number."""
    return int(stat(pid)[21])


def unescape(field: bytes) -> str:
    """A mountinfo path: the kernel escapes space, tab, newline and backslash as \\ooo
    (octal).  Undone on the bytes, so paths that are not ASCII are not mangled."""
    if b"\\" not in field:
        return os.fsdecode(field)
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and len(field) >= i + 4 and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


class Mount(tuple):
    """One line of mountinfo (proc(5)): mount_id, parent_id, device ("major:minor"),
    root, mount_point, options (per mount), optional fields, fstype, source,
    super_options."""

    __slots__ = ()
    _fields = ("mount_id", "parent_id", "device", "root", "mount_point", "options",
               "optional", "fstype", "source", "super_options")

    mount_id = property(lambda self: self[0])
    parent_id = property(lambda self: self[1])
    device = property(lambda self: self[2])
    root = property(lambda self: self[3])
    mount_point = property(lambda self: self[4])
    options = property(lambda self: self[5])
    optional = property(lambda self: self[6])
    fstype = property(lambda self: self[7])
    source = property(lambda self: self[8])
    super_options = property(lambda self: self[9])


def parse_mountinfo(raw: bytes) -> "list[Mount]":
    out = []
    for line in raw.split(b"\n"):
        left, sep, right = line.partition(b" - ")
        if not sep:
            continue
        f = left.split(b" ")
        r = right.split(b" ") + [b"", b"", b""]
        out.append(Mount((int(f[0]), int(f[1]), os.fsdecode(f[2]), unescape(f[3]),
                          unescape(f[4]), os.fsdecode(f[5]),
                          tuple(os.fsdecode(x) for x in f[6:]), os.fsdecode(r[0]),
                          unescape(r[1]), os.fsdecode(r[2]))))
    return out


def mountinfo(pid: "int | str" = "self", path: "str | None" = None) -> "list[Mount]":
    """The mount table as pid sees it (or a mountinfo file at path)."""
    return parse_mountinfo(read(path or f"/proc/{pid}/mountinfo"))


def id_map(kind: str = "uid", pid: "int | str" = "self") -> "tuple[tuple[int, int, int], ...]":
    """/proc/PID/uid_map or gid_map: (inside, outside, count) ranges."""
    out = []
    for line in read(f"/proc/{pid}/{kind}_map").split(b"\n"):
        f = line.split()
        if len(f) == 3:
            out.append((int(f[0]), int(f[1]), int(f[2])))
    return tuple(out)


def in_initial_user_ns(pid: "int | str" = "self") -> bool:
    return id_map("uid", pid) == FULL_MAP


def overflow_uid() -> int:
    """The uid an id unmapped in a user namespace shows as there (usually 65534)."""
    return int(read("/proc/sys/kernel/overflowuid"))


def to_outside(ranges, inside: int) -> "int | None":
    """The id outside a user namespace that `inside` maps to through ranges of
    (inside, outside, count); None if unmapped."""
    for first, outside, count in ranges:
        if first <= inside < first + count:
            return outside + inside - first
    return None


def to_inside(ranges, outside_id: int) -> "int | None":
    """The inverse: the id inside that an outside id shows as; None if unmapped."""
    for inside, outside, count in ranges:
        if outside <= outside_id < outside + count:
            return inside + outside_id - outside
    return None
