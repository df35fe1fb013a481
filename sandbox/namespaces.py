"""Namespaces: user first (id maps), then mount, net, ipc, uts, cgroup, and pid last.

prepare() checks the request against the spec and the machine without side effects;
apply() joins (setns) and creates (unshare) the namespaces in this order:

  * joined by path: with a path for `user`, that namespace is joined first (the others
    must then be owned by it); otherwise every path is joined with wrapperd's own
    privileges *before* a new user namespace is made, which would leave no privilege
    over namespaces the host owns;
  * user: the id maps of a process can only be written from outside its new namespace
    (the kernel checks the writer's capabilities in the *parent* user namespace), so a
    helper forked beforehand writes them -- directly as root, through newuidmap and
    newgidmap as an unprivileged user with more than one id to map;
  * mount, net (loopback up), ipc, uts (hostname), cgroup: unshare, one at a time so an
    error names the namespace;
  * pid: unshare(CLONE_NEWPID) only moves the *children* into the new namespace, so the
    shim forks.  By default a small reaper is pid 1 (forwards signals, reaps orphans,
    exits with the target's status) and the target is pid 2; with `as_pid_1` the target
    is pid 1.  The original shim process stays outside: the caller's one child, it
    forwards signals and exits with the target's status (128+N when killed by signal N).

apply() returns only in the process that goes on to become the target.
"""

from __future__ import annotations

import errno
import os

from . import _libc, procfs, supervisor
from ._record import field_types, frozen
from .errors import SetupError, SpecError
from .fds import read_all

__all__ = ["Prepared", "prepare", "apply", "CLONE_FLAGS", "PROC_NAMES"]

STEP = "namespaces"

# <linux/sched.h>
CLONE_FLAGS = {
    "user": 0x10000000,     # CLONE_NEWUSER
    "mount": 0x00020000,    # CLONE_NEWNS
    "pid": 0x20000000,      # CLONE_NEWPID
    "net": 0x40000000,      # CLONE_NEWNET
    "ipc": 0x08000000,      # CLONE_NEWIPC
    "uts": 0x04000000,      # CLONE_NEWUTS
    "cgroup": 0x02000000,   # CLONE_NEWCGROUP
}
# The names under /proc/PID/ns/.
PROC_NAMES = {"user": "user", "mount": "mnt", "pid": "pid", "net": "net", "ipc": "ipc",
              "uts": "uts", "cgroup": "cgroup"}
# After user: the order they are created in; pid is last because it forks.
ORDER = ("mount", "net", "ipc", "uts", "cgroup", "pid")


# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

MAX_USER_NS = "/proc/sys/user/max_user_namespaces"
# Debian kernels before 6.x had this switch; it is gone upstream.
USERNS_CLONE = "/proc/sys/kernel/unprivileged_userns_clone"
MAX_MAP_LINES = 340      # the kernel's limit on lines in uid_map/gid_map (4.15+)


@frozen
class Prepared:
    join: tuple                  # ((kind, path), ...) in the order to setns
    new: tuple                   # kinds to unshare, user first, pid last
    uid_map: tuple = ()          # ((inside, outside, count), ...) for a new user ns
    gid_map: tuple = ()
    map_via: str = "write"       # "write": the helper writes the maps; "newidmap"
    deny_setgroups: bool = False
    newuidmap: str = ""
    newgidmap: str = ""
    hostname: "str | None" = None
    as_pid_1: bool = False
    caller_uid_inside: "int | None" = None   # what the shim's uid becomes in a new user ns

    __record_types__ = field_types(join=tuple[tuple[str, str], ...], new=tuple[str, ...],
                                   uid_map=tuple[tuple[int, int, int], ...],
                                   gid_map=tuple[tuple[int, int, int], ...], map_via=str,
                                   deny_setgroups=bool, newuidmap=str, newgidmap=str,
                                   hostname=str | None, as_pid_1=bool,
                                   caller_uid_inside=int | None)

    @property
    def forks(self) -> bool:
        return "pid" in self.new or any(k == "pid" for k, _ in self.join)

    def target_is_root(self, creds_prepared) -> bool:
        """Will the target be root (in its own user namespace) at execve?"""
        from . import caps, creds
        if "user" not in self.new:
            # A joined user namespace: its maps are not ours to know; judge as the host.
            return creds.target_is_root(creds_prepared)
        if creds_prepared is not None:
            return creds_prepared.uid == 0 and \
                not creds_prepared.securebits & caps.SECBIT_NOROOT
        return self.caller_uid_inside == 0


# --------------------------------------------------------------------------- prepare

_read_int = procfs.read_int


def _inside(ranges, i: int) -> bool:
    return any(inside <= i < inside + count for inside, _o, count in ranges)


_to_inside = procfs.to_inside


def _check_ranges(ranges, path: str) -> None:
    if not ranges:
        raise SpecError("must map at least one range", path)
    if len(ranges) > MAX_MAP_LINES:
        raise SpecError(f"more than {MAX_MAP_LINES} ranges", path)
    for which, idx in (("inside", 0), ("outside", 1)):
        spans = sorted((r[idx], r[2]) for r in ranges)
        for (a, n), (b, _m) in zip(spans, spans[1:], strict=False):
            if a + n > b:
                raise SpecError(f"{which} ranges overlap at {b}", path)
    for i, (inside, outside, count) in enumerate(ranges):
        if inside + count > 2**32 - 1 or outside + count > 2**32 - 1:
            raise SpecError("range runs past 4294967294", f"{path}[{i}]")


def _find_tool(name: str) -> str:
    for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return ""


def prepare(spec, creds_prepared=None) -> "Prepared | None":
    """Check namespaces, hostname and the mount fields' need for namespaces.  None when
    the spec asks for no namespace at all."""
    ns = spec.namespaces
    wants_mount_ns = bool(spec.mounts or getattr(spec, "masked_paths", ()) or
                          getattr(spec, "readonly_paths", ()) or
                          getattr(spec, "readonly_root", False))
    if ns is None or not ns.any():
        if spec.hostname is not None:
            raise SpecError("needs a new uts namespace (namespaces.uts: true)", "hostname")
        if wants_mount_ns:
            raise SpecError("mounts need a new mount namespace (namespaces.mount: true)",
                            "namespaces.mount")
        if ns is not None and ns.as_pid_1:
            raise SpecError("needs a new pid namespace (namespaces.pid: true)",
                            "namespaces.as_pid_1")
        return None
    if spec.hostname is not None and ns.uts is not True:
        raise SpecError("needs a new uts namespace (namespaces.uts: true)", "hostname")
    if wants_mount_ns and ns.mount is not True:
        raise SpecError("mounts, masked_paths, readonly_paths and readonly_root need a new "
                        "mount namespace (true, not a path: the host's would change)",
                        "namespaces.mount")
    if ns.as_pid_1 and ns.pid is not True:
        raise SpecError("needs a new pid namespace (namespaces.pid: true)",
                        "namespaces.as_pid_1")

    join, new = [], []
    user = ns.user
    for kind in ("user",) + ORDER:
        v = getattr(ns, kind)
        if isinstance(v, str):
            try:
                os.stat(v)
            except OSError as e:
                raise SpecError(f"cannot join {v}: {e.strerror}", f"namespaces.{kind}") \
                    from None
            join.append((kind, v))
        elif v is True or (kind == "user" and isinstance(v, dict)):
            new.append(kind)
    # With a new user namespace, paths are joined before it (see the module comment);
    # with a joined one, it comes first -- both fall out of this order.
    kw = {}
    if "user" in new:
        kw = _prepare_user(user, spec)
        _check_creds(creds_prepared, kw["uid_map"], kw["gid_map"], kw["deny_setgroups"])
        if creds_prepared is None:
            _check_caller_mapped(kw["uid_map"], kw["gid_map"])
    return Prepared(join=tuple(join), new=tuple(new), hostname=spec.hostname,
                    as_pid_1=ns.as_pid_1, **kw)


def _prepare_user(user, spec) -> dict:
    path = "namespaces.user"
    max_ns = _read_int(MAX_USER_NS)
    if max_ns == 0:
        raise SetupError(STEP, 0, f"user: {MAX_USER_NS} is 0: user namespaces are disabled")
    euid, egid = os.geteuid(), os.getegid()
    if os.geteuid() != 0 and _read_int(USERNS_CLONE) == 0:
        raise SetupError(STEP, 0, f"user: {USERNS_CLONE} is 0: unprivileged user "
                         "namespaces are disabled")
    uid_map: "tuple[tuple[int, int, int], ...]"
    gid_map: "tuple[tuple[int, int, int], ...]"
    if user is True:
        uid_map, gid_map = ((0, euid, 1),), ((0, egid, 1),)
    else:
        uid_map = tuple((m.inside, m.outside, m.count) for m in user["uid_map"])
        gid_map = tuple((m.inside, m.outside, m.count) for m in user["gid_map"])
        _check_ranges(uid_map, f"{path}.uid_map")
        _check_ranges(gid_map, f"{path}.gid_map")
    kw = {"uid_map": uid_map, "gid_map": gid_map, "caller_uid_inside": _to_inside(uid_map, euid)}
    if euid == 0:
        return dict(kw, map_via="write", deny_setgroups=False)
    # Unprivileged: the kernel lets a process map only its own uid and gid, one id each,
    # and the gid only once setgroups(2) is denied (else a dropped group could be shed).
    if uid_map == ((uid_map[0][0], euid, 1),) and gid_map == ((gid_map[0][0], egid, 1),):
        return dict(kw, map_via="write", deny_setgroups=True)
    tools = {t: _find_tool(t) for t in ("newuidmap", "newgidmap")}
    for t, p in tools.items():
        if not p:
            raise SetupError(STEP, 0, f"user: {t} is missing (Debian package uidmap): it "
                             "is needed to map more than the caller's own id unprivileged")
    # newgidmap denies setgroups itself unless the range comes from /etc/subgid.
    return dict(kw, map_via="newidmap", deny_setgroups=False, **tools)


def _check_creds(cp, uid_map, gid_map, deny_setgroups) -> None:
    if cp is None:
        return
    if not _inside(uid_map, cp.uid):
        raise SpecError(f"{cp.uid} is not mapped in the new user namespace "
                        "(namespaces.user.uid_map)", "user.uid")
    if not _inside(gid_map, cp.gid):
        raise SpecError(f"{cp.gid} is not mapped in the new user namespace "
                        "(namespaces.user.gid_map)", "user.gid")
    for i, g in enumerate(cp.groups):
        if not _inside(gid_map, g):
            raise SpecError(f"{g} is not mapped in the new user namespace", f"user.groups[{i}]")
    if deny_setgroups:
        raise SpecError("an unprivileged user namespace mapping only the caller's own ids "
                        "denies setgroups(2), which the identity step needs: leave 'user' "
                        "out (the target runs as the mapped caller)", "user")


def _check_caller_mapped(uid_map, gid_map) -> None:
    """Without `user`, the target keeps wrapperd's own ids.  An id the maps leave out
    shows inside as the overflow id (65534), but the kernel still checks files against
    the real, host id: a root wrapperd's target would read /etc/shadow and write /root
    as "nobody".  Refused: map wrapperd's ids, or give `user`."""
    for kind, own, ranges in (("uid", os.geteuid(), uid_map), ("gid", os.getegid(), gid_map)):
        if _to_inside(ranges, own) is None:
            raise SpecError(f"wrapperd's own {kind} {own} is not mapped, and without 'user' "
                            f"the target keeps it: it would still act as host {kind} {own} "
                            "(shown as the overflow id inside); map it, or give 'user'",
                            f"namespaces.user.{kind}_map")


# --------------------------------------------------------------------------- apply

def _fail(what: str, e: OSError, kind: str = "") -> SetupError:
    prefix = f"{kind}: " if kind else ""
    return SetupError(STEP, e.errno or 0, f"{prefix}{what}")


def premade_kind(p: "Prepared | None") -> "str | None":
    """The pid namespace a caller may make ahead of this step (unshare(CLONE_NEWPID),
    then fork): "pid" (the target under a reaper) or "pid1" (the target is pid 1);
    None when it may not.  Only without a user namespace (a pid namespace belongs to
    the user namespace it was made in, which must be the new one) and without joining
    a pid namespace.  Nothing between the two changes: pid is the last namespace made,
    and the ones before it do not depend on it."""
    if p is None or "pid" not in p.new or "user" in p.new or \
            any(k in ("pid", "user") for k, _ in p.join):
        return None
    return "pid1" if p.as_pid_1 else "pid"


# What the reaper may be asked to join: every kind but user (never with a premade pid
# namespace) and pid (its own already).
REAPER_JOINS = ("mount", "net", "ipc", "uts", "cgroup")
# What a reaper made ahead of time makes itself, before it forks the worker, so that
# neither has anything to do for them when a request comes: the kinds a new one of
# which copies nothing that can change while a spare waits -- net and ipc start empty;
# uts copies the host's names, which the fork server compares before it uses such a
# spare (forkserver.server).  Not mount (a copy of the mount table, which can change)
# nor cgroup (rooted at the cgroup the worker joins in the cgroup step, after).
AHEAD = ("net", "ipc", "uts")


def made_ahead(p: "Prepared | None") -> "tuple[str, ...]":
    """The kinds a premade "pid" reaper makes before it forks the worker (AHEAD)."""
    if premade_kind(p) != "pid":
        return ()
    assert p is not None
    return tuple(k for k in AHEAD if k in p.new)


def reaper_joins(p: "Prepared | None") -> "tuple[str, ...]":
    """The kinds a premade "pid" reaper joins after the worker made or joined them:
    asked in the namespaces step (ask_reaper), awaited in the reaper step."""
    if premade_kind(p) != "pid":
        return ()
    assert p is not None
    ahead = made_ahead(p)
    joined = {k for k, _ in p.join}
    return tuple(k for k in REAPER_JOINS if (k in p.new or k in joined) and k not in ahead)


def parent_pid_in_proc() -> int:
    """Our parent's pid as /proc names it (PPid: in /proc/self/status): in a pid
    namespace made ahead, getppid() says 1 but /proc is still the caller's."""
    pid = int(procfs.status("self", ("PPid",)).get("PPid", "0"))
    if pid > 0:
        return pid
    raise SetupError(STEP, 0, "no parent pid in /proc/self/status")


def made_pid_ns_for_children(start):
    """Call start() -- which forks -- with the children of this thread born into a new
    pid namespace, then return this thread to the one it had for children.
    unshare(CLONE_NEWPID) changes only the calling thread's namespace for children, so
    other threads are unaffected.  None, without calling start(), when the namespace
    cannot be made here.  (A Python signal handler that forks while start() runs in
    this thread would take pid 1 first; the shim, then not pid 1, fails closed.)"""
    own = -1
    # Where this thread's children were being born: its own namespace, normally.
    for path in ("/proc/thread-self/ns/pid_for_children", "/proc/self/ns/pid"):
        try:
            own = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            break
        except OSError:
            continue
    if own < 0:
        return None
    try:
        try:
            _libc.unshare(CLONE_FLAGS["pid"])
        except OSError:
            return None
        try:
            return start()
        finally:
            try:
                _libc.setns(own, CLONE_FLAGS["pid"])
            except OSError as e:
                # Every later child of this thread would be born in that namespace.
                raise SetupError("spawn", e.errno or 0, "return to our own pid "
                                 "namespace after starting the shim") from None
    finally:
        os.close(own)


def forks_here(p: Prepared, premade: "str | None") -> bool:
    """Does apply() fork, leaving a supervisor or reaper (supervisor.fork) behind?"""
    return (p.forks and not premade) or premade == "reaper"


def apply(p: Prepared, premade: "str | None" = None, reaper_channel: int = -1,
          ahead: "tuple[str, ...]" = (), helper: "int | None" = None) -> int:
    """Returns in the future target: the fd a reaper forked here says it is ready on
    (supervisor.fork), for the caller to await before anything of the target's runs;
    else -1.
    premade: how this process came into a pid namespace made for it ahead of time
    (wrapperd.shim.Context): None (it did not: made here), "pid" (a fork server's
    worker, pid 2 under a reaper already there, which made the `ahead` namespaces
    before it forked us (made_ahead) and, when reaper_joins() names any, joins those
    too: asked here on reaper_channel, ask_reaper), "pid1" (pid 1, which the target
    will be), "reaper" (pid 1, which forks the target and stays as its reaper).  Then
    neither CLONE_NEWPID nor more forks than needed.
    helper: the static helper that stays beside the target (supervisor.open_helper),
    opened before any namespace here is joined; None: opened when it forks."""
    if premade is not None and \
            (premade if premade != "reaper" else "pid") != premade_kind(p):
        raise SetupError(STEP, 0, f"this process was made for a {premade!r} pid namespace, "
                         f"the plan asks for {premade_kind(p)!r}")
    if tuple(ahead) != (made_ahead(p) if premade == "pid" else ()):
        raise SetupError(STEP, 0, f"this process was born in namespaces made for "
                         f"{list(ahead)}, the plan asks for {list(made_ahead(p))}")
    # Open every path first: joining a mount namespace changes what a path names.
    fds = {}
    try:
        for kind, path in p.join:
            try:
                fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise _fail(f"open {path}", e, kind) from None
        if "user" in fds:
            _setns("user", fds.pop("user"), p)
        for kind in ORDER:
            if kind in fds:
                _setns(kind, fds.pop(kind), p)
    finally:
        for fd in fds.values():
            os.close(fd)
    if "user" in p.new:
        _new_user_ns(p)
    for kind in ORDER:
        if kind in p.new and not (kind == "pid" and premade):
            if kind not in ahead:
                try:
                    _libc.unshare(CLONE_FLAGS[kind])
                except OSError as e:
                    raise _fail(f"unshare(CLONE_NEW{kind.upper() if kind != 'mount' else 'NS'})",
                                e, kind) from None
            if kind == "net":
                _loopback_up()
        if kind == "uts" and p.hostname is not None:
            import socket
            try:
                socket.sethostname(p.hostname)
            except OSError as e:
                raise _fail(f"sethostname {p.hostname!r}", e, "uts") from None
    if premade == "pid" and reaper_joins(p):
        ask_reaper(p, reaper_channel)
    if forks_here(p, premade):
        return supervisor.fork(
            reaper=premade == "reaper" or ("pid" in p.new and not p.as_pid_1),
            outside=premade != "reaper", helper=helper)
    return -1


def ask_reaper(p: Prepared, fd: int) -> None:
    """In a fork server's worker: ask pid 1 of our namespace, the reaper forked before
    the request, to join the namespaces just made or joined here -- else it would stay
    in the server's, and a target could read the host's network (/proc/1/net/*) and
    mount table (/proc/1/mountinfo) through it.  Sent over fd (the reaper's socket):
    their names and, by SCM_RIGHTS, an fd for each (our /proc/self/ns/*: the reaper
    knows us by our pid in the new namespace, which its /proc, the server's, does not
    show).  Only when reaper_joins(p) names any: a reaper with nothing to join says it
    is ready before the request comes (forkserver.server).
    Not waited for here: the reaper -- the static helper by then, exec'd while the
    spare was idle (supervisor.become) -- joins while this worker runs the steps up to
    the filter, and reaper_joined() -- the `reaper` step, before `seccomp` -- waits for
    its answer and then its EOF (it is non-dumpable and holds no fd), so the target
    never runs before the reaper is in its namespaces."""
    import socket
    if fd < 0:
        raise SetupError(STEP, 0, "pid: no channel to the reaper made ahead of time")
    kinds = reaper_joins(p)
    ns_fds = []
    chan = socket.socket(fileno=fd)
    try:
        for k in kinds:
            ns_fds.append(os.open(f"/proc/self/ns/{PROC_NAMES[k]}",
                                  os.O_RDONLY | os.O_CLOEXEC))
        socket.send_fds(chan, [",".join(kinds).encode()], ns_fds)
    except OSError as e:
        raise _fail("have the reaper join our namespaces", e, "pid") from None
    finally:
        chan.detach()                  # fd stays open: reaper_joined() reads the answer
        for nfd in ns_fds:
            os.close(nfd)


def reaper_joined(fd: int) -> None:
    """Wait for the reaper's answer to ask_reaper() on fd (closed here): an errno, 0 when
    it joined; then EOF (it holds no fd any more)."""
    import socket
    chan = socket.socket(fileno=fd)
    try:
        answer = chan.recv(32)
        while chan.recv(32):
            pass
    except OSError as e:
        raise _fail("have the reaper join our namespaces", e, "pid") from None
    finally:
        chan.close()
    if answer != b"0":
        err = int(answer) if answer.isdigit() else 0
        raise SetupError(STEP, err, "pid: the reaper made ahead of time could not join "
                         "the target's namespaces" + ("" if answer else " (it is gone)"))


def join_for_worker(fd: int) -> None:
    """In the reaper made ahead of time (sandbox.forkserver): wait on fd until the
    worker asks (ask_reaper), join the namespaces it sends, answer with the
    errno.  EOF instead: the worker ended without asking.  fd stays open: the worker
    goes on at its EOF, once the reaper is ready (supervisor.supervise closes it).
    The static helper does the same in C (sandbox/helper.c: join-reaper); this is its
    Python fallback."""
    import socket
    chan = socket.socket(fileno=fd)
    ns_fds: list = []
    try:
        try:
            msg, ns_fds, _flags, _addr = socket.recv_fds(chan, 64, len(REAPER_JOINS))
        except OSError:
            return
        if not msg:
            return
        kinds = [] if msg == b"-" else msg.decode("ascii", "replace").split(",")
        err = 0
        if len(kinds) != len(ns_fds) or not set(kinds) <= set(REAPER_JOINS):
            err = 22                             # EINVAL
        else:
            for kind, nfd in zip(kinds, ns_fds, strict=True):
                try:
                    # nstype: the kernel refuses an fd of another kind of namespace.
                    _libc.setns(nfd, CLONE_FLAGS[kind])
                except OSError as e:
                    err = e.errno or 1
                    break
        try:
            chan.send(b"%d" % err)
        except OSError:
            pass
    finally:
        chan.detach()
        for nfd in ns_fds:
            os.close(nfd)


def _setns(kind: str, fd: int, p: Prepared) -> None:
    path = dict(p.join)[kind]
    try:
        # nstype makes the kernel refuse a file of another kind of namespace.
        _libc.setns(fd, CLONE_FLAGS[kind])
    except OSError as e:
        raise _fail(f"setns {path}", e, kind) from None
    finally:
        os.close(fd)


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct
    fmt = "16sH22x"      # struct ifreq: the name, then ifr_flags in the union
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            got = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack(fmt, b"lo", 0))
            flags = struct.unpack(fmt, got)[1]
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(fmt, b"lo", flags | IFF_UP))
    except OSError as e:
        raise _fail("bring loopback up (SIOCSIFFLAGS)", e, "net") from None


# ------------------------------------------------------------------ user namespace

def _diagnose_user_ns(e: OSError) -> str:
    why = "unshare(CLONE_NEWUSER)"
    if _read_int(MAX_USER_NS) == 0:
        why += f" ({MAX_USER_NS} is 0)"
    elif e.errno == errno.ENOSPC:
        why += f" (the limit in {MAX_USER_NS} or the nesting depth of 32 is reached)"
    elif _read_int(USERNS_CLONE) == 0:
        why += f" ({USERNS_CLONE} is 0)"
    elif e.errno == errno.EPERM and os.stat("/proc/self/root").st_ino != os.stat("/").st_ino:
        why += " (a chrooted process cannot create one)"
    return why


def _new_user_ns(p: Prepared) -> None:
    """unshare(CLONE_NEWUSER), with a helper outside writing our id maps."""
    from . import procattr
    unprivileged = os.geteuid() != 0
    if unprivileged:
        # The dumpable step made /proc/self/* root-owned; the unprivileged helper (and
        # newuidmap, which checks who owns /proc/PID) must open our map files.  Nothing is
        # exposed: the caller's own uid already controls an unprivileged shim.
        procattr.set_dumpable(True)
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    me = os.getpid()
    try:
        helper = os.fork()
    except OSError as e:
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)
        raise _fail("fork the id map helper", e, "user") from None
    if helper == 0:                     # the helper: never returns
        code = 1
        try:
            os.close(go_w)
            os.close(err_r)
            if os.read(go_r, 1) == b"1":
                _write_maps(me, p)
                code = 0
        except OSError as e:
            try:
                os.write(err_w, f"{e.errno or 0} {e.strerror or e}".encode()[:512])
            except OSError:
                pass
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(err_w)
    try:
        try:
            _libc.unshare(CLONE_FLAGS["user"])
        except OSError as e:
            raise SetupError(STEP, e.errno or 0, f"user: {_diagnose_user_ns(e)}") from None
        os.write(go_w, b"1")
        os.close(go_w)
        go_w = -1
        msg = read_all(err_r)
    finally:
        if go_w != -1:
            os.close(go_w)      # the helper reads EOF and exits without writing
        os.close(err_r)
        _, status = os.waitpid(helper, 0)
    if msg or status != 0:
        errno_s, _, text = msg.decode("utf-8", "replace").partition(" ")
        raise SetupError(STEP, int(errno_s) if errno_s.isdigit() else 0,
                         f"user: write the id maps: {text or 'helper failed'}")
    if unprivileged:
        procattr.set_dumpable(False)


def _write_file(path: str, data: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(e.errno, f"write {path}") from None    # strerror is added later


def _map_text(ranges) -> str:
    return "".join(f"{i} {o} {n}\n" for i, o, n in ranges)


def _write_maps(pid: int, p: Prepared) -> None:
    """Run in the helper, still in the parent user namespace."""
    if p.map_via == "newidmap":
        for tool, ranges in ((p.newuidmap, p.uid_map), (p.newgidmap, p.gid_map)):
            args = [tool, str(pid)] + [str(x) for r in ranges for x in r]
            _run_quiet(args)
        return
    if p.deny_setgroups:
        _write_file(f"/proc/{pid}/setgroups", "deny")
    _write_file(f"/proc/{pid}/uid_map", _map_text(p.uid_map))
    _write_file(f"/proc/{pid}/gid_map", _map_text(p.gid_map))


def _run_quiet(args) -> None:
    """Run newuidmap/newgidmap with its stderr captured: wrapperd writes one line only."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawn(args[0], args, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                             file_actions=[(os.POSIX_SPAWN_DUP2, w, 2),
                                           (os.POSIX_SPAWN_DUP2, w, 1)])
    finally:
        os.close(w)
    out = read_all(r)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        lines = out.decode("utf-8", "replace").strip().splitlines()
        raise OSError(0, f"{os.path.basename(args[0])} failed: "
                         f"{lines[-1] if lines else os.waitstatus_to_exitcode(status)}")
