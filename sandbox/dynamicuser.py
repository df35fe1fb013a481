"""Dynamic users: a uid of its own for each sandbox (systemd's DynamicUser=).

A target that shares its uid with another -- every service running as nobody -- can
read the other's /proc/PID/environ, write its /proc/PID/mem, ptrace it and signal it:
the kernel's check for all of these is "same uid" (and dumpable), nothing more.  With
`user.dynamic` the target gets an id from DYNAMIC_RANGE (systemd's, 61184-65519), uid
== gid, no supplementary groups:

  * the same spec `name` gets the same id while any process holds it; two names never
    share one; a spec without a name gets a fresh id for its run;
  * skipped: ids in the user or group database (NSS: with libnss-systemd that includes
    systemd's own dynamic users), ids in systemd's registry (/run/systemd/dynamic-uid),
    ids not mapped in our user namespace (/proc/self/uid_map, gid_map), and ids some
    process runs with (its real, effective, saved or fs uid or gid);
  * the first candidate for a name is a hash of it into the range (stable across
    restarts, as systemd's), then the range is probed upwards, wrapping around.

The registry (REGISTRY_DIR, WRAPPERD_DYNAMIC_USER_DIR to move it) is a directory owned
by root with mode 0700 -- anything else (a symlink, another owner, a wider mode) is
refused -- holding `lock` (flock'ed for the whole pick, so concurrent wrapperd, spawn()
and fork-server starts never pick the same id) and one file per allocated id: the name,
and the host pid and start time (/proc/PID/stat field 22) of each process that took it.
A record is released lazily: the next allocation finds it stale when none of its pids
runs any more (with that start time) AND no process runs with the id; it is then
reused or removed.  Nothing runs at a sandbox's exit.

apply() runs as a shim step (wrapperd.shim), before the namespaces step: while /run and
/proc are still the host's and this process's pid is the host's (the process that goes
on to become the target, or its supervisor, which lives as long as the target).
"""

from __future__ import annotations

import errno
import os

from . import procfs
from ._record import field, field_types, frozen, replace
from .errors import SetupError, SpecError

__all__ = ["Prepared", "prepare", "apply", "lookup", "registry_dir", "DYNAMIC_RANGE",
           "REGISTRY_DIR", "ENV"]

STEP = "dynamic_user"
DYNAMIC_RANGE = (61184, 65519)      # systemd's DYNAMIC_UID_MIN, DYNAMIC_UID_MAX
REGISTRY_DIR = "/run/wrapperd/dynamic-users"
ENV = "WRAPPERD_DYNAMIC_USER_DIR"
SYSTEMD_REGISTRY = "/run/systemd/dynamic-uid"
LOCK = "lock"


@frozen
class Prepared:
    name: "str | None"           # the spec's name; None: a fresh id for this run
    user_ns: bool                # the id stands for the one id mapped in a new user ns
    suid_filter: bytes = field(repr=lambda b: f"<{len(b) // 8} BPF instructions>",
                               default=b"")   # seccomp.restrict_suid_sgid, loaded too
    # The registry directory, decided with the rest of the plan (registry_dir()): the
    # step reads no environment of its own.
    registry: str = REGISTRY_DIR

    __record_types__ = field_types(name=str | None, user_ns=bool, suid_filter=bytes,
                                   registry=str)


def prepare(spec, suid_filter: bytes = b"") -> "Prepared | None":
    """Check that the spec's dynamic user can be honoured; no side effects.
    suid_filter: the program the seccomp step loads for it (restrict_suid_sgid)."""
    user = spec.user
    if user is None or not user.dynamic:
        return None
    # Not refused here when we are not root: `sandbox check` validates a spec as
    # anyone.  A non-root shim fails at its dynamic_user step (the registry must be
    # root's), before any id changes.
    # A file capability outlives the id as a setuid bit would (anyone running it gets
    # the capabilities); CAP_SYS_ADMIN mounts past the filter that keeps those off.
    c = spec.capabilities
    for which in ("keep", "ambient"):
        for i, cap in enumerate(getattr(c, which, None) or ()):
            if cap in ("CAP_SETFCAP", "CAP_SYS_ADMIN"):
                raise SpecError(f"{cap} cannot be kept by a dynamic user: files it makes "
                                "outlive its id (a file capability, a mount's setuid "
                                "file)", f"capabilities.{which}[{i}]")
    ns = spec.namespaces
    userns = getattr(ns, "user", False) if ns is not None else False
    if isinstance(userns, str):
        raise SpecError("cannot be used with a joined user namespace: its maps are not "
                        "ours to choose", "user.dynamic")
    if isinstance(userns, dict):
        # The dynamic id takes the place of the one outside id each map gives: more
        # than one id would have to come from somewhere else, shared.
        for k in ("uid_map", "gid_map"):
            ranges: tuple = userns.get(k) or ()
            if len(ranges) != 1 or ranges[0].count != 1:
                raise SpecError("with dynamic: true, a user namespace maps exactly one id "
                                "(count 1), which the dynamic id stands for outside",
                                f"namespaces.user.{k}")
    return Prepared(name=spec.name, user_ns=userns is not False, suid_filter=suid_filter,
                    registry=registry_dir())


def inside_ids(namespaces) -> "tuple[int, int]":
    """With a new user namespace: the (uid, gid) the target has inside it."""
    userns = namespaces.user
    if isinstance(userns, dict):
        return userns["uid_map"][0].inside, userns["gid_map"][0].inside
    return 0, 0                      # user: true maps root inside


# --------------------------------------------------------------------------- registry

def registry_dir() -> str:
    return os.environ.get(ENV) or REGISTRY_DIR


def _outside_owner(uid: int) -> bool:
    """In a user namespace other than the host's (a rootless container), the host's root
    -- owner of /, /run, /tmp -- is unmapped and shows as the overflow uid: accepted as
    the owner of a directory on the way (never of the registry itself, which must be
    our own root's).  The host's user namespace maps every id: there, never."""
    try:
        return not procfs.in_initial_user_ns() and uid == procfs.overflow_uid()
    except (OSError, ValueError):
        return False


def _open_dir(path: str, create: bool) -> int:
    """The registry directory, opened component by component without following a
    symlink.  Each directory on the way must be root's (or, in a rootless container,
    the host's: _outside_owner) and not writable by others (unless sticky, like
    /tmp); the last one root's with mode 0700 exactly."""
    import stat
    if not path.startswith("/"):
        raise SetupError(STEP, 0, f"{ENV}={path!r}: not an absolute path")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    parts = [p for p in path.split("/") if p]
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part in (".", ".."):
                raise SetupError(STEP, 0, f"registry {path}: '.' or '..' in the path")
            where = "/" + "/".join(parts[:i + 1])
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):    # O_NOFOLLOW said no
                    raise SetupError(STEP, e.errno, f"registry {where}: a symlink or not "
                                     "a directory") from None
                if not isinstance(e, FileNotFoundError) or not create:
                    raise
                try:
                    os.mkdir(part, 0o700 if last else 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if st.st_uid != 0 and (last or not _outside_owner(st.st_uid)):
                raise SetupError(STEP, 0, f"registry {where}: not owned by root")
            if last:
                if stat.S_IMODE(st.st_mode) != 0o700:
                    raise SetupError(STEP, 0, f"registry {where}: mode "
                                     f"{stat.S_IMODE(st.st_mode):04o}, not 0700")
            elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise SetupError(STEP, 0, f"registry {where}: writable by others")
        return fd
    except OSError as e:
        os.close(fd)
        if isinstance(e, SetupError):
            raise
        raise SetupError(STEP, e.errno or 0, f"registry {path}") from None
    except BaseException:
        os.close(fd)
        raise


def _start_time(pid) -> "int | None":
    try:
        return procfs.start_time(pid)
    except (OSError, IndexError, ValueError):
        return None


def _host_pid() -> int:
    # Not getpid(): in a pid namespace made ahead (spawn's, the fork server's) that is
    # the namespace's number; /proc here is still the host's.
    return int(os.readlink("/proc/self"))


def _encode(name: "str | None", holders) -> bytes:
    # The name in hex: any text a spec allows (newlines too) stays one line.
    head = b"-" if name is None else \
        b"name " + name.encode("utf-8", "surrogateescape").hex().encode()
    return head + b"\n" + b"".join(b"%d %d\n" % h for h in holders)


def _decode(data: bytes) -> "tuple[str | None, list] | None":
    try:
        lines = data.decode("ascii").split("\n")
        head = lines[0]
        if head == "-":
            name = None
        elif head.startswith("name "):
            name = bytes.fromhex(head[5:]).decode("utf-8", "surrogateescape")
        else:
            return None
        holders = [tuple(int(x) for x in ln.split()) for ln in lines[1:] if ln]
        if any(len(h) != 2 for h in holders):
            return None
        return name, holders
    except (UnicodeDecodeError, ValueError):
        return None


def _read_records(dfd: int) -> dict:
    """{id: (name, holders) or None for an unreadable record}."""
    out = {}
    for entry in os.listdir(dfd):
        if not entry.isdigit() or str(int(entry)) != entry:
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            continue
        try:
            data = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        out[int(entry)] = _decode(data)
    return out


def _write_record(dfd: int, uid: int, name, holders) -> None:
    tmp = f"{uid}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        data = _encode(name, holders)
        if os.write(fd, data) != len(data):
            raise OSError(28, "short write")
    finally:
        os.close(fd)
    os.rename(tmp, str(uid), src_dir_fd=dfd, dst_dir_fd=dfd)   # readers see all or none


def _ids_in_use() -> set:
    """Every uid and gid some process runs with (real, effective, saved, fs) or holds
    as a supplementary group: any of them reaches files of that id."""
    used: "set[int]" = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = procfs.status(entry)
            used.update(int(x) for x in
                        st["Uid"].split() + st["Gid"].split() + st["Groups"].split())
        except (OSError, ValueError, KeyError):
            continue            # gone meanwhile
    return used


def _live(holders) -> list:
    return [(pid, start) for pid, start in holders if _start_time(pid) == start]


def _mapped(path: str) -> list:
    try:
        with open(path, "rb") as f:
            return [tuple(int(x) for x in ln.split()) for ln in f if ln.strip()]
    except OSError:
        return [(0, 0, 2**32 - 1)]


def _in_map(ranges, i: int) -> bool:
    return any(inside <= i < inside + count for inside, _o, count in ranges)


def _in_databases(i: int) -> bool:
    import grp
    import pwd
    try:
        pwd.getpwuid(i)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(i)
        return True
    except KeyError:
        pass
    return os.path.lexists(f"{SYSTEMD_REGISTRY}/{i}")


def first_candidate(name: "str | None") -> int:
    """Where probing starts: a hash of the name (FNV-1a: stable, no import), else random."""
    lo, hi = DYNAMIC_RANGE
    if name is None:
        h = int.from_bytes(os.urandom(4), "little")
    else:
        h = 0x811C9DC5
        for b in name.encode("utf-8", "surrogateescape"):
            h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return lo + h % (hi - lo + 1)


def allocate(name: "str | None", registry: "str | None" = None) -> int:
    """Pick (or share, for a name that holds one) an id and record this process as a
    holder, in registry (default: registry_dir()).  Raises SetupError when none is free
    or the registry is unsound."""
    import fcntl
    me = _host_pid()
    me_start = _start_time(me)
    if me_start is None:
        raise SetupError(STEP, 0, "cannot read our own /proc/PID/stat")
    registry = registry or registry_dir()
    dfd = _open_dir(registry, create=True)
    try:
        lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                       dir_fd=dfd)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)       # released by close, or by our death
            return _allocate_locked(dfd, name, (me, me_start))
        finally:
            os.close(lock)
    except SetupError:
        raise
    except OSError as e:
        raise SetupError(STEP, e.errno or 0, f"registry {registry}") from None
    finally:
        os.close(dfd)


def _allocate_locked(dfd: int, name, me) -> int:
    records = _read_records(dfd)
    lo, hi = DYNAMIC_RANGE
    scanned: list = []

    def in_use() -> set:
        # The /proc scan is the costly part (a read per process): only when needed.
        if not scanned:
            scanned.append(_ids_in_use())
        return scanned[0]

    def stale(uid, rec) -> bool:
        return not (rec is not None and _live(rec[1])) and uid not in in_use()

    if name is not None:
        for uid, rec in records.items():
            if rec is not None and rec[0] == name and lo <= uid <= hi \
                    and not stale(uid, rec):
                # Held by the name already: share it.  Our pid joins the record, so it
                # stays held even if every other holder ends before we setuid.
                holders = [h for h in _live(rec[1]) if h != me] + [me]
                _write_record(dfd, uid, name, holders)
                return uid
    uid_map, gid_map = _mapped("/proc/self/uid_map"), _mapped("/proc/self/gid_map")
    start = first_candidate(name)
    size = hi - lo + 1
    for k in range(size):
        uid = lo + (start - lo + k) % size
        if uid in records and not stale(uid, records[uid]):
            continue
        if uid in in_use() or not _in_map(uid_map, uid) or not _in_map(gid_map, uid) \
                or _in_databases(uid):
            continue
        _write_record(dfd, uid, name, [me])
        return uid
    raise SetupError(STEP, errno.ENOSPC, f"no free id in {lo}-{hi}")


def reclaim() -> int:
    """Remove stale records (allocation reuses them anyway); the number removed."""
    import fcntl
    dfd = _open_dir(registry_dir(), create=False)
    n = 0
    try:
        lock = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            in_use = _ids_in_use()
            for uid, rec in _read_records(dfd).items():
                if uid not in in_use and not (rec is not None and _live(rec[1])):
                    os.unlink(str(uid), dir_fd=dfd)
                    n += 1
        finally:
            os.close(lock)
    finally:
        os.close(dfd)
    return n


def lookup(uid: int) -> "dict | None":
    """The registry's record for uid, as {"name", "holders"}; None when there is none
    (or the registry cannot be read).  Read without the lock: records are replaced by
    rename, so a reader sees a whole one."""
    try:
        dfd = _open_dir(registry_dir(), create=False)
    except (SetupError, OSError):
        return None
    try:
        rec = _read_records(dfd).get(uid)
    finally:
        os.close(dfd)
    if rec is None:
        return None
    return {"name": rec[0], "holders": [list(h) for h in rec[1]]}


# --------------------------------------------------------------------------- apply

def apply(p: Prepared, creds_prepared, ns_prepared):
    """Allocate the id; return (creds, namespaces) prepared records that use it."""
    uid = allocate(p.name, p.registry)
    if p.user_ns:
        # The target keeps its inside ids; the one id each map gives is now ours.
        return creds_prepared, replace(ns_prepared,
                                       uid_map=((ns_prepared.uid_map[0][0], uid, 1),),
                                       gid_map=((ns_prepared.gid_map[0][0], uid, 1),))
    return replace(creds_prepared, uid=uid, gid=uid, groups=()), ns_prepared
