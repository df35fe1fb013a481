"""A cache of prepared plans, so a repeated `wrapperd --spec FILE` start -- an init starting
the same service again -- skips argparse, the spec model (attrs), the profiles (tomllib)
and prepare(), and runs the plan as the lean shim does (docs/internals.md#plan-cache).

An entry is found by a key: a SHA-256 of everything prepare() reads or depends on, so
that a change to any of it is another key (and so a miss, never a stale plan):
  * the invocation: every argument, the spec file's bytes, the caller's environment
    (a profile hands it to the target), the working directory;
  * wrapperd itself: the identity (device, inode, size, mtime, ctime) of every file of
    the sandbox and wrapperd packages and of every profile directory, so an upgrade or
    an edited profile is a new key;
  * this process: its real, effective and saved uid and gid, its groups, the capability
    sets, NoNewPrivs and Seccomp of /proc/self/status, /proc/self/limits, its user
    namespace's id maps, its cgroup, its WRAPPERD_* settings and PATH;
  * the machine: the kernel's release and architecture, cap_last_cap, the user
    namespace sysctls, the cgroup mounts of /proc/self/mountinfo, and the identity of
    /etc/passwd, /etc/group, /etc/nsswitch.conf, /etc/subuid, /etc/subgid.
The entry's file name covers the invocation only (name()): one entry per service, which
a miss rewrites.  It holds the target's environment, as the spec file does.
Two things no key can capture are checked again on every hit, with the very functions
prepare() uses: the ids the spec's user resolves to (the user database may answer from
elsewhere than files: NSS), which must be the plan's -- a stale plan never runs with the
wrong uid -- and the target's executable, found again in the plan's PATH.  What
prepare() only checks for existence (mount sources, namespace paths) the steps open
again, and fail closed if it is gone.

Trust is sandbox.bpfcache's: the same root-owned 0700 directory (WRAPPERD_CACHE_DIR,
default /var/cache/wrapperd; empty disables both), used only by a root wrapperd of the
initial user namespace (usable()); an entry only if it is a root-owned regular file no
group or other may access, whose header repeats the key and the plan's SHA-256, and
whose plan decodes (sandbox.plan.decode checks every record).  Anything else is a miss:
the full path runs and writes the entry again.  A plan that fails in a step after a hit
is removed (forget()).
"""

from __future__ import annotations

import os
import stat

__all__ = ["usable", "name", "key", "load", "store", "forget", "FORMAT", "MAX_SPEC_BYTES"]

from .plan import MAX_PLAN_BYTES, MAX_SPEC_BYTES

FORMAT = b"wrapperd-plan-cache 1\n"
MAX_ENTRY = MAX_PLAN_BYTES + (64 << 10)     # a plan and its header

_IDENTITY_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/subuid",
                   "/etc/subgid")
_CONTENT_FILES = ("/proc/self/uid_map", "/proc/self/gid_map",
                  "/proc/self/cgroup", "/proc/self/limits", "/proc/sys/kernel/cap_last_cap",
                  "/proc/sys/user/max_user_namespaces",
                  "/proc/sys/kernel/unprivileged_userns_clone")
_STATUS_LINES = (b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:",
                 b"NoNewPrivs:", b"Seccomp:")


def usable() -> bool:
    """Only a root wrapperd of the initial user namespace uses the cache: in another one
    "owned by root" means that namespace's root, and a cache directory shared between
    containers of one host user would let one plant a plan for another."""
    from . import procfs
    try:
        return os.geteuid() == 0 and procfs.in_initial_user_ns()
    except (OSError, ValueError):
        return False


def _identity(st) -> bytes:
    return b"%d %d %d %d %d %o" % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                    st.st_ctime_ns, st.st_mode)


def _code_dirs() -> "list[str]":
    """The packages' directories, every profile directory (sandbox.profile) and the
    site-packages the packages import from."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    out = [here, os.path.join(root, "wrapperd"), "/etc/wrapperd/profiles",
           os.path.join(here, "profiles"), os.path.join(root, "profiles")]
    return out + [p for p in sys.path if p.endswith("-packages") and p not in out]


def _depth(d: str) -> int:
    # A package's files and its subpackages'; of site-packages, its entries (an upgrade
    # replaces a package's directory and its dist-info).
    return 1 if d.endswith("-packages") else 2


def _sha256():
    # The C module itself: hashlib (OpenSSL) costs a start ~4 ms more.
    import _sha256  # type: ignore[import-not-found]  # CPython's builtin module
    return _sha256.sha256()


def _hasher():
    h = _sha256()

    def add(tag: bytes, data: bytes) -> None:
        h.update(b"%s %d\n" % (tag, len(data)))
        h.update(data)
    return h, add


def _invocation(add, args: "list[str]", spec: bytes, environ: bytes) -> None:
    add(b"format", FORMAT)
    add(b"args", b"\0".join(os.fsencode(a) for a in args))
    add(b"spec", spec)
    add(b"environ", environ)
    add(b"cwd", os.fsencode(os.getcwd()))
    add(b"ids", repr((os.getresuid(), os.getresgid(), sorted(os.getgroups()))).encode())


def name(args: "list[str]", spec: bytes, environ: bytes) -> str:
    """The entry's file name: this invocation alone, so a service has one entry, which a
    miss rewrites -- the cache holds one plan per service, however often what the key
    covers changes."""
    h, add = _hasher()
    _invocation(add, args, spec, environ)
    return h.hexdigest()


def key(args: "list[str]", spec: bytes, environ: bytes) -> str:
    """The cache key of this invocation (see the module docstring)."""
    from . import procfs
    h, add = _hasher()
    _invocation(add, args, spec, environ)
    status = procfs.read("/proc/self/status")
    add(b"status", b"\n".join(line for line in status.split(b"\n")
                              if line.startswith(_STATUS_LINES)))
    add(b"uname", repr(tuple(os.uname())).encode())
    # The interpreter and the libraries prepare() compiles with: an upgrade of Python,
    # of the site-packages (attrs, pyseccomp, cgroupspy: each a new dist-info) or of
    # Debian's libseccomp is a new key.
    import sys
    add(b"python", sys.version.encode() + b" " + os.fsencode(sys.executable))
    try:
        add(os.fsencode(sys.executable), _identity(os.stat(sys.executable)))
    except OSError:
        add(os.fsencode(sys.executable), b"-")
    from .bpfcache import libseccomp_identity
    add(b"libseccomp", "\n".join(libseccomp_identity()).encode())
    add(b"settings", b"\0".join(sorted(os.fsencode(f"{k}={v}") for k, v in os.environ.items()
                                       if k.startswith("WRAPPERD_") or k == "PATH")))
    # The cgroup hierarchies (cgroups.prepare reads them there); not the other mounts,
    # which on a busy host change with every container, and which prepare only checks
    # paths against (the mount step opens them again).
    add(b"cgroup mounts", b"\n".join(
        line for line in procfs.read("/proc/self/mountinfo").split(b"\n")
        if b" - cgroup2 " in line or b" - cgroup " in line))
    for path in _CONTENT_FILES:
        try:
            add(path.encode(), procfs.read(path))
        except OSError:
            add(path.encode(), b"-")
    for path in _IDENTITY_FILES:
        try:
            add(path.encode(), _identity(os.stat(path)))
        except OSError:
            add(path.encode(), b"-")
    for d in _code_dirs():
        add(b"dir " + os.fsencode(d), b"")
        _add_tree(add, d, depth=_depth(d))
    return h.hexdigest()


def _add_tree(add, d: str, depth: int) -> None:
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.name == "__pycache__":
            continue                   # bytecode follows the sources it is checked against
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            # A directory by what it is, not its times: those change whenever an entry
            # is added -- the __pycache__ an import writes below it, say -- and what it
            # holds is walked (or, at the depth limit, replaced with a new inode).
            add(os.fsencode(e.path), b"dir %d %d %o" % (st.st_dev, st.st_ino, st.st_mode))
        else:
            add(os.fsencode(e.path), _identity(st))
        if e.is_symlink():
            # What a link names is what is read (a profile linked from elsewhere):
            # its identity too, and a linked directory's files.
            try:
                add(os.fsencode(e.path) + b" ->", _identity(os.stat(e.path)))
            except OSError:
                add(os.fsencode(e.path) + b" ->", b"-")
        if depth > 1 and e.is_dir():
            _add_tree(add, e.path, depth - 1)


def _sha(data: bytes) -> str:
    h = _sha256()
    h.update(data)
    return h.hexdigest()


def load(entry: str, k: str):
    """(plan, header) if entry (name()) is trustworthy, was stored under key k and still
    holds (the user's ids, the executable), else None.  Side effects: none but reading."""
    from . import bpfcache
    from . import plan as plan_mod
    where = bpfcache.cache_dir()
    dirfd = bpfcache.open_dir(where, create=False) if where else None
    if dirfd is None:
        return None
    try:
        data = bpfcache.read_entry(dirfd, entry + ".plan", MAX_ENTRY)
    finally:
        os.close(dirfd)
    if data is None or not data.startswith(FORMAT):
        return None
    head, nl, body = data[len(FORMAT):].partition(b"\n")
    try:
        h = plan_mod._loads(head.decode("ascii"))
    except (ValueError, plan_mod._Bad):
        return None
    if not nl or not isinstance(h, dict) or h.get("key") != k or h.get("sha256") != _sha(body):
        return None
    try:
        plan = plan_mod.decode(body)
    except Exception:                  # noqa: BLE001 -- not what store() wrote: a miss
        return None
    if not _still_holds(plan, h):
        return None
    return plan, h


def _still_holds(plan, h: dict) -> bool:
    from . import creds, execution
    from .errors import SandboxError
    user = h.get("user")
    try:
        if user is not None:
            uid, gid, groups = user
            if plan.creds is None or creds.resolve_ids(uid, gid, tuple(groups)) != \
                    (plan.creds.uid, plan.creds.gid, plan.creds.groups):
                return False
        t = plan.target
        return t is not None and execution.find_executable(
            t.argv[0], t.env.get("PATH", execution.DEFAULT_PATH)) == t.executable
    except (SandboxError, OSError, ValueError, TypeError):
        return False


def forget(entry: str) -> None:
    """Remove entry (name()); errors ignored."""
    from . import bpfcache
    where = bpfcache.cache_dir()
    dirfd = bpfcache.open_dir(where, create=False) if where else None
    if dirfd is None:
        return
    try:
        os.unlink(entry + ".plan", dir_fd=dirfd)
    except OSError:
        pass
    finally:
        os.close(dirfd)


def store(entry: str, k: str, plan, spec) -> None:
    """Write entry (name()) for key k: the plan (sandbox.plan.encode) and what load()
    checks again.  spec: the spec the plan was prepared from.  Errors are ignored."""
    import json

    from . import bpfcache
    from . import plan as plan_mod
    u = spec.user
    if u is not None and u.dynamic:
        u = None                       # picked by its step at run time: nothing to check
    where = bpfcache.cache_dir()
    dirfd = bpfcache.open_dir(where) if where else None
    if dirfd is None:
        return
    try:
        body = plan_mod.encode(plan)
        head = {"key": k, "sha256": _sha(body),
                "user": None if u is None else [u.uid, u.gid, list(u.groups)]}
        bpfcache.write_entry(dirfd, entry + ".plan", FORMAT + json.dumps(
            head, ensure_ascii=True).encode() + b"\n" + body)
    finally:
        os.close(dirfd)
