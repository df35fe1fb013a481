"""A cache of compiled seccomp programs, so a repeated `wrapperd --spec FILE` start need
not import libseccomp (its import alone runs ldconfig, ~20 ms) nor compile again.

Keyed by a SHA-256 of exactly what the compiler takes: the resolved rules (profile and
@groups expanded, capability-conditional rules already decided), the default action,
the ABIs, the action for syscalls newer than libseccomp, libseccomp's files, and this
cache's format.  Editing a spec, a profile or syscalls.toml changes
the key; nothing is ever looked up by file name or time.

Trust: the directory (default /var/cache/wrapperd, WRAPPERD_CACHE_DIR to move it, empty
to disable) is used only when wrapperd runs as root and the directory is a real
directory (not a symlink) owned by root with mode 0700; each entry must be a regular
file owned by root, not group/other accessible, whose header repeats the key and the
program's SHA-256, whose length is whole instructions within the kernel's limit, and
whose last instruction is a return.  Anything else -- a wrong owner or mode, a
mismatch, a truncated or corrupt entry -- means "compile again" (and, for a sound
directory, rewrite the entry): never a weaker filter, never an error.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_DIR", "ENV", "key", "cache_dir", "open_dir", "load", "store",
           "read_entry", "write_entry"]

DEFAULT_DIR = "/var/cache/wrapperd"
ENV = "WRAPPERD_CACHE_DIR"
FORMAT = b"wrapperd-bpf 2\n"
MAX_ENTRY = 64 << 10           # 4096 instructions * 8 bytes, plus a header


def key(default: str, arches, entries, unknown: "str | None" = None) -> str:
    """The cache key of one compile: (default action, ABIs, rules as given, the action
    for syscalls above the highest libseccomp knows, libseccomp's files)."""
    import hashlib
    import json
    rules = [[e.name, e.action, [[a.index, a.op, a.value, a.value_two] for a in e.args]]
             for e in entries]
    text = json.dumps([FORMAT.decode(), default, list(arches), rules, unknown,
                       libseccomp_identity()], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def libseccomp_identity() -> "list[str]":
    """Debian's libseccomp, as its files stand (an upgrade knows other syscalls): for
    this cache's keys and the plan cache's (sandbox.plancache)."""
    out = []
    machine = os.uname().machine
    for path in (f"/usr/lib/{machine}-linux-gnu/libseccomp.so.2",
                 f"/lib/{machine}-linux-gnu/libseccomp.so.2"):
        try:
            st = os.stat(path)
            out.append(f"{path} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}")
        except OSError:
            out.append(f"{path} -")
    return out


def cache_dir() -> "str | None":
    d = os.environ.get(ENV, DEFAULT_DIR)
    return d or None


def open_dir(path: str, create: bool = True) -> "int | None":
    """An fd of the cache directory if it may be trusted, else None."""
    if os.geteuid() != 0:
        return None
    if create:
        try:
            os.mkdir(path, 0o700)
        except OSError:
            pass                        # exists (checked below) or cannot be made
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != 0 or (st.st_mode & 0o7777) != 0o700:
        os.close(fd)
        return None
    return fd


def _digest(program: bytes) -> str:
    import hashlib
    return hashlib.sha256(program).hexdigest()


def read_entry(dirfd: int, name: str, limit: int) -> "bytes | None":
    """The content of entry `name` of a cache directory (open_dir), or None if absent or
    not trustworthy: not a regular file (a symlink is not followed), not root's, group
    or other accessible, or larger than limit."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_uid != 0 or \
                st.st_mode & 0o077 or st.st_size > limit:
            return None
        from .fds import read_all
        data = read_all(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def write_entry(dirfd: int, name: str, data: bytes) -> None:
    """Write entry `name` atomically (0600, a temporary file renamed over); errors are
    ignored: a cache that cannot be written is a cache that misses."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    except OSError:
        return
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass


def load(dirfd: int, k: str, max_insns: int) -> "tuple[bytes, int] | None":
    """(program, syscalls with rules) for key k, or None if absent or not trustworthy."""
    import json
    data = read_entry(dirfd, k + ".bpf", MAX_ENTRY)
    if data is None or not data.startswith(FORMAT):
        return None
    head, nl, program = data[len(FORMAT):].partition(b"\n")
    try:
        h = json.loads(head)
    except ValueError:
        return None
    if not nl or not isinstance(h, dict) or h.get("key") != k or \
            h.get("sha256") != _digest(program) or not isinstance(h.get("syscalls"), int):
        return None
    n = len(program) // 8
    if len(program) % 8 or not 0 < n <= max_insns or program[-8] & 0x07 != 0x06:
        return None                     # not whole instructions, or not ending in a ret
    return program, h["syscalls"]


def store(dirfd: int, k: str, program: bytes, syscalls: int) -> None:
    """Write the entry for key k (write_entry: atomic, errors ignored)."""
    import json
    head = json.dumps({"key": k, "sha256": _digest(program), "syscalls": syscalls})
    write_entry(dirfd, k + ".bpf", FORMAT + head.encode() + b"\n" + program)
