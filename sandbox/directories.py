"""Service directories: systemd's RuntimeDirectory=, StateDirectory=, CacheDirectory=,
LogsDirectory= and ConfigurationDirectory=, made for the target before it runs.

Each kind has a base (/run, /var/lib, /var/cache, /var/log, /etc) and the spec names
directories under it, one component each.  The `directories` step (after the dynamic
user is allocated, before the namespaces: in the host's mount namespace) creates them,
gives them their mode (default 0755) and the target's uid and gid as the host sees
them -- all but `configuration`, which stays root's -- and when the owner changed since
the last start (a dynamic user gets another id), re-owns what the old owner owned
below, walking by file descriptor without following a symlink.  The target gets
RUNTIME_DIRECTORY, STATE_DIRECTORY, ... (colon-separated when several).

With a mount namespace each directory is bound onto itself as the mounts step's last
act, read-write (configuration: read-only), so it stays writable under readonly_root,
protect_system or a read-only parent.  A dynamic user's directories live in
BASE/private/NAME (BASE/private is root's, 0700), bound onto BASE/NAME inside its
mount namespace: once the id is released and handed to another sandbox, that one
cannot reach what the first left (systemd does the same; a mount namespace is then
required).  BASE/NAME on the host is then an empty, root-owned mount point.

Runtime directories are removed when the sandbox ends (unless preserve_runtime):
sandbox.Process.close() does it for spawn(); wrapperd itself execs the target and keeps
nothing, so an init running wrapperd directly removes them (as systemd does), e.g.
with `sandbox.directories.remove_runtime`.
"""

from __future__ import annotations

import os
import stat

from ._record import field_types, frozen
from .errors import SetupError, SpecError

__all__ = ["BASES", "ENVIRONMENT", "Directory", "Prepared", "prepare", "environment",
           "apply", "binds", "remove_runtime", "STEP"]

STEP = "directories"
BASES = {"runtime": "/run", "state": "/var/lib", "cache": "/var/cache", "logs": "/var/log",
         "configuration": "/etc"}
ENVIRONMENT = {"runtime": "RUNTIME_DIRECTORY", "state": "STATE_DIRECTORY",
               "cache": "CACHE_DIRECTORY", "logs": "LOGS_DIRECTORY",
               "configuration": "CONFIGURATION_DIRECTORY"}
DEFAULT_MODE = 0o755


@frozen
class Directory:
    kind: str                   # runtime, state, cache, logs, configuration
    name: str                   # one component
    mode: int
    private: bool               # in BASE/private/NAME, bound onto BASE/NAME

    __record_types__ = field_types(kind=str, name=str, mode=int, private=bool)

    @property
    def path(self) -> str:
        """Where the target sees it."""
        return f"{BASES[self.kind]}/{self.name}"

    @property
    def source(self) -> str:
        """Where it is on the host."""
        return f"{BASES[self.kind]}/private/{self.name}" if self.private else self.path


@frozen
class Prepared:
    directories: tuple          # Directory, in the spec's order, kind by kind
    preserve_runtime: bool = False

    __record_types__ = field_types(directories=tuple[Directory, ...], preserve_runtime=bool)


def prepare(spec) -> "Prepared | None":
    """None without directories.  Checks what can be checked: no side effects."""
    d = spec.directories
    if d is None:
        return None
    from .spec import DIRECTORY_KINDS
    ns = spec.namespaces
    mount_ns = ns is not None and ns.mount is True
    dynamic = spec.user is not None and spec.user.dynamic
    userns = getattr(ns, "user", False) if ns is not None else False
    if isinstance(userns, str):
        raise SpecError("cannot be used with a joined user namespace: the owner the "
                        "target's ids stand for on the host is not known", "directories")
    out = []
    for kind in DIRECTORY_KINDS:
        for e in getattr(d, kind):
            private = dynamic and kind != "configuration"
            if private and not mount_ns:
                raise SpecError("a dynamic user's directories live under "
                                f"{BASES[kind]}/private and are bound in: they need a "
                                "mount namespace (namespaces.mount)", f"directories.{kind}")
            out.append(Directory(kind, e.path, int(e.mode, 8) if e.mode else DEFAULT_MODE,
                                 private))
    if not out:
        return None
    return Prepared(tuple(out), d.preserve_runtime)


def environment(p: "Prepared | None") -> dict:
    """RUNTIME_DIRECTORY, STATE_DIRECTORY, ...: the paths as the target sees them."""
    env: "dict[str, list[str]]" = {}
    for e in p.directories if p is not None else ():
        env.setdefault(ENVIRONMENT[e.kind], []).append(e.path)
    return {k: ":".join(v) for k, v in env.items()}


def binds(p: Prepared) -> tuple:
    """The mounts step's last binds (mounts.Prepared.late): each directory onto where
    the target sees it, read-write; configuration read-only."""
    from .mounts import Mount
    return tuple(Mount("bind", e.path, e.source,
                       ("ro",) if e.kind == "configuration" else ("rw",), None, None)
                 for e in p.directories)


# --------------------------------------------------------------------------- apply

def _fail(what: str, e: OSError) -> SetupError:
    return SetupError(STEP, e.errno or 0, what)


def _open_dir(name: str, dir_fd: "int | None" = None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def _mkdir(name: str, mode: int, dir_fd: int) -> None:
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass


def apply(p: Prepared, creds, namespaces) -> None:
    """Create and own every directory (see the module docstring).  creds and namespaces:
    the plan's records after the dynamic_user step, for the target's ids on the host."""
    uid, gid = _owner(creds, namespaces)
    for e in p.directories:
        base = BASES[e.kind]
        try:
            bfd = _open_dir(base)
        except OSError as err:
            raise _fail(f"open {base}", err) from None
        try:
            parent = bfd
            if e.private:
                _mkdir(e.name, 0o755, bfd)          # the mount point, empty, root's
                _mkdir("private", 0o700, bfd)
                parent = _private(bfd, base)
            try:
                _mkdir(e.name, e.mode, parent)
                fd = _open_dir(e.name, parent)
            except OSError as err:
                raise _fail(f"make {e.source} (a symlink or a file there is refused)",
                            err) from None
            finally:
                if parent != bfd:
                    os.close(parent)
            try:
                if e.kind != "configuration":
                    _own(fd, uid, gid, e.source)
                os.fchmod(fd, e.mode)
            except OSError as err:
                raise _fail(f"own {e.source} ({uid}:{gid}, {e.mode:04o})", err) from None
            finally:
                os.close(fd)
        finally:
            os.close(bfd)


def _private(bfd: int, base: str) -> int:
    """BASE/private: root's and 0700 whatever it was (nobody else may pass it)."""
    try:
        fd = _open_dir("private", bfd)
    except OSError as e:
        raise _fail(f"open {base}/private (a symlink there is refused)", e) from None
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o700)
    except OSError as e:
        os.close(fd)
        raise _fail(f"make {base}/private root's, 0700", e) from None
    return fd


def _owner(creds, namespaces) -> "tuple[int, int]":
    """The target's uid and gid as the host sees them."""
    if creds is None:
        return os.geteuid(), os.getegid()
    uid, gid = creds.uid, creds.gid
    if namespaces is not None and "user" in namespaces.new and namespaces.uid_map:
        from .procfs import to_outside
        ou, og = to_outside(namespaces.uid_map, uid), to_outside(namespaces.gid_map, gid)
        if ou is None or og is None:
            raise SetupError(STEP, 0, f"the target's ids ({uid}:{gid}) are not mapped out "
                             "of its user namespace: nobody to own its directories")
        return ou, og
    return uid, gid


def _own(fd: int, uid: int, gid: int, where: str) -> None:
    """Give the directory open at fd to uid:gid.  When it was someone else's (not
    root's), what that owner owned below is re-owned too (a dynamic user's id changes
    between starts); what belongs to anyone else -- root's files above all -- is left
    alone.  The walk goes by directory fd and never follows a symlink, so nothing
    planted below can send a chown outside the tree."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    old_uid, old_gid = st.st_uid, st.st_gid
    if old_uid != 0:                    # root's (fresh, or an admin's): nothing below
        for dfd, name, s in _walk(fd):
            if s.st_uid == old_uid:
                os.chown(name, uid, gid if s.st_gid == old_gid else -1, dir_fd=dfd,
                         follow_symlinks=False)
    os.fchown(fd, uid, gid)


def _walk(top: int):
    """(dir fd, name, lstat) of every entry below the directory open at top, a
    directory's entry before what it holds -- depth first and iteratively (a tree of
    any depth: os.fwalk recurses, and a deep tree the target made would stop it), by
    fd, never following a symlink, with one fd open per level of the path walked."""
    stack = [(os.dup(top), os.listdir(top))]
    try:
        while stack:
            dfd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(dfd)
                continue
            name = names.pop()
            try:
                s = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue                # gone meanwhile
            yield dfd, name, s
            if stat.S_ISDIR(s.st_mode):
                try:
                    cfd = _open_dir(name, dfd)
                    stack.append((cfd, os.listdir(cfd)))
                except OSError:
                    pass                # swapped for a symlink (not followed), or too deep
    finally:
        for dfd, _ in stack:
            os.close(dfd)


def remove_runtime(p: "Prepared | None") -> None:
    """Remove the runtime directories (unless preserve_runtime), without following a
    symlink the target left in them; errors are ignored (what cannot be removed stays).
    A dynamic user's empty mount point goes too."""
    if p is None or p.preserve_runtime:
        return
    for e in p.directories:
        if e.kind != "runtime":
            continue
        try:
            _remove_tree(os.path.dirname(e.source), e.name)
        except Exception:               # noqa: BLE001  (never a reason not to close)
            pass
        if e.private:
            try:
                os.rmdir(e.path)
            except OSError:
                pass


def _remove_tree(parent: str, name: str) -> None:
    """rm -r parent/name, depth first and iteratively, each entry through its parent's
    fd (a symlink is unlinked, never followed); what cannot be removed stays."""
    try:
        pfd = _open_dir(parent)
    except OSError:
        return
    stack: "list[tuple[int, str, int, list[str]]]" = []   # (parent fd, name, fd, left)
    try:
        try:
            fd = _open_dir(name, pfd)
        except OSError:
            return
        stack.append((pfd, name, fd, os.listdir(fd)))
        while stack:
            up, dname, dfd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(dfd)
                _quiet(os.rmdir, dname, dir_fd=up)
                continue
            n = names.pop()
            try:
                s = os.stat(n, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(s.st_mode):
                _quiet(os.unlink, n, dir_fd=dfd)
                continue
            try:
                cfd = _open_dir(n, dfd)
                stack.append((dfd, n, cfd, os.listdir(cfd)))
            except OSError:
                pass                    # swapped for a symlink, or too deep: stays
    finally:
        for _up, _n, dfd, _left in stack:
            os.close(dfd)
        os.close(pfd)


def _quiet(fn, *a, **kw) -> None:
    try:
        fn(*a, **kw)
    except OSError:
        pass
