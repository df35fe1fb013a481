"""Stdio paths: a path the caller named for a target's stdin, stdout or stderr, opened in
the caller -- as root, for a target that may be anyone -- without following anything a
less privileged user could have planted on the way (see open_path).
"""

from __future__ import annotations

import errno as _errno
import os
import stat

from .errors import SetupError, SpecError

__all__ = ["open_path"]


def open_path(path, for_input: bool, which: str = "stdio") -> int:
    """A stdio path, opened in the caller: stdin read-only, output appended (created
    0640); never as a controlling terminal.

    The caller is usually root, and the path usually lies in a directory the target's
    user owns (its log directory).  That user could swap the file for a symlink to
    /etc/passwd or a FIFO between two starts, and root would then append to
    /etc/passwd or block.  So the path is walked one component at a time from "/" with
    O_NOFOLLOW (the kernel's view, no check-then-open race) and refused where a less
    privileged user could have planted something (see _walk_to_parent):
      * every directory on the way must be writable only by root and the caller (by
        its mode and its access ACL); a sticky directory (/tmp) of root or the caller
        that others may write is allowed, but only through an entry root or the
        caller owns (which others cannot rename or remove there), and a file there
        must not be hard-linked;
      * a symlink on the way is followed only if root or the caller owns it and it
        lies in a directory no one else may write; where it leads is walked by the
        same rules.  The final component must not be a symlink at all;
      * it must be a regular file or a character device (/dev/null, a tty): a FIFO
        could block the caller, a socket or directory is no stdio.
    Raises SetupError (step "spawn") naming the path and the reason; SpecError naming
    `which` (stdin, stdout, stderr) for a path no file can have."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError as e:
        # No byte string names it: bad input, as the spec's own strings (sandbox.spec).
        raise SpecError(f"a lone surrogate {e.object[e.start]!r} that stands for no byte "
                        "(only U+DC80-U+DCFF, a non-UTF-8 byte, may appear)",
                        which) from None
    if b"\0" in raw:
        raise SpecError("contains a NUL byte", which)
    shown = os.fsdecode(raw)
    flags = os.O_RDONLY if for_input else os.O_WRONLY | os.O_APPEND | os.O_CREAT
    flags |= os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK
    parent, name, parent_shared = -1, b"", False
    try:
        trusted = _trusted_uids()
        parent, name, parent_shared = _walk_to_parent(raw, shown, trusted)
        try:
            # A first look, for the message only (the fstat below decides): opening a
            # FIFO with no reader for writing fails ENXIO, which says nothing useful.
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            pass
        else:
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or
                    stat.S_ISLNK(st.st_mode)):
                raise SetupError("spawn", 0, f"open {shown}: not a regular file or a "
                                 "character device, refused")
        try:
            fd = os.open(name, flags, 0o640, dir_fd=parent)
        except OSError as e:
            if e.errno == _errno.ELOOP:
                raise SetupError("spawn", e.errno, f"open {shown}: a symbolic link, "
                                 "refused (a stdio path is never followed)") from None
            raise SetupError("spawn", e.errno or 0, f"open {shown}") from None
    finally:
        if parent >= 0:
            os.close(parent)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise SetupError("spawn", 0, f"open {shown}: not a regular file or a "
                             "character device, refused")
        if parent_shared and (st.st_uid not in trusted or
                              (stat.S_ISREG(st.st_mode) and st.st_nlink != 1)):
            raise SetupError("spawn", 0, f"open {shown}: in a directory others may "
                             "write, owned by another user or hard-linked, refused")
        # O_NONBLOCK was only for the open (a FIFO must not block it); the target gets a
        # blocking fd, as it would from a shell redirection.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _trusted_uids() -> set:
    """Root and the caller.  In a user namespace other than the host's (a rootless
    container) also the overflow uid: every file of an owner unmapped there -- /, /usr,
    /var/tmp of the host's root -- shows as that uid, and cannot be told apart; such a
    caller holds no more than its host uid, which is all a link could reach."""
    uids = {0, os.geteuid()}
    from . import procfs
    try:
        if not procfs.in_initial_user_ns():
            uids.add(procfs.overflow_uid())
    except (OSError, ValueError):
        pass
    return uids


_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_MASK = 0x10
_ACL_WRITE = 0o2


def _shared_dir(st, fd: int, shown: str) -> bool:
    """Whether someone other than root and the caller may create entries in this
    directory (an O_PATH fd and its stat): group- (non-root group) or world-writable by
    its mode, or carrying an access ACL whose mask grants write.  An ACL entry for
    another user shows in the mode only as group bits (the mask), with the directory's
    group, which may well be root's: the mode alone cannot tell.  Any ACL with a
    writable mask counts, whoever its entries name (fail closed: an ACL naming only
    root is not worth the parsing); one that cannot be parsed counts too."""
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0):
        return True
    try:
        acl = _acl_of(fd)
    except OSError as e:
        if e.errno in (_errno.ENODATA, _errno.ENOTSUP, _errno.EOPNOTSUPP):
            return False                 # no ACL, or a filesystem without them
        raise SetupError("spawn", e.errno or 0, f"open {shown}: cannot read the ACL "
                         "of a directory on the way") from None
    if len(acl) < 4 or (len(acl) - 4) % 8 or \
            int.from_bytes(acl[:4], "little") != _ACL_VERSION:
        return True
    for i in range(4, len(acl), 8):
        tag = int.from_bytes(acl[i:i + 2], "little")
        perm = int.from_bytes(acl[i + 2:i + 4], "little")
        if tag == _ACL_MASK and perm & _ACL_WRITE:
            return True
    return False


def _acl_of(fd: int) -> bytes:
    """The access ACL xattr of the directory an O_PATH fd holds.  fgetxattr refuses an
    O_PATH fd (EBADF); its /proc/self/fd link does not.  Without /proc (a chroot), the
    directory itself, opened for reading ("." under it: the same inode, no lookup)."""
    try:
        return os.getxattr(f"/proc/self/fd/{fd}", _ACL_XATTR)
    except FileNotFoundError:
        pass
    d = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        return os.getxattr(d, _ACL_XATTR)
    finally:
        os.close(d)


def _walk_to_parent(path: bytes, shown: str, trusted: set) -> "tuple[int, bytes, bool]":
    """(an O_PATH fd of the last directory, the final name, whether that directory is
    shared), having walked every directory of path without following a link anyone but
    root or the caller could have made.  Relative paths start at the working directory,
    whose ancestors are checked too: the walk always starts at "/"."""
    if not path:
        raise SetupError("spawn", _errno.ENOENT, "open '': an empty path")
    if not path.startswith(b"/"):
        path = os.fsencode(os.getcwd()) + b"/" + path
    opath = os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW
    todo = [c for c in path.split(b"/") if c]
    if not todo or path.endswith(b"/") or todo[-1] in (b".", b".."):
        raise SetupError("spawn", _errno.EISDIR, f"open {shown}: a directory")
    final = todo.pop()
    stack = [os.open(b"/", opath | os.O_DIRECTORY)]     # the directories so far
    links = 0
    try:
        while True:
            here = stack[-1]
            here_st = os.fstat(here)
            shared = _shared_dir(here_st, here, shown)
            # Its owner may replace any entry (sticky or not), and without the sticky
            # bit so may anyone who can write it.
            if here_st.st_uid not in trusted or (shared and
                                                 not here_st.st_mode & stat.S_ISVTX):
                raise SetupError("spawn", _errno.EPERM, f"open {shown}: a directory on "
                                 "the way may be written by another user (refused: "
                                 "they could plant a link)")
            if not todo:
                break
            name = todo.pop(0)
            if name == b".":
                continue
            if name == b"..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                fd = os.open(name, opath, dir_fd=here)
            except OSError as e:
                raise SetupError("spawn", e.errno or 0, f"open {shown}") from None
            st = os.fstat(fd)
            if shared and st.st_uid not in trusted:
                os.close(fd)
                raise SetupError("spawn", _errno.EPERM, f"open {shown}: "
                                 f"{os.fsdecode(name)} belongs to another user in a "
                                 "directory others may write (refused)")
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                # Only a link root or the caller owns, in a directory no one else may
                # write.  A shared (sticky) directory is where links get planted (the
                # kernel's protected_symlinks exists for it); it holds files, not a
                # path's structure, so none is followed there.  What a link leads to
                # is walked by the same rules (every directory at the loop's top).
                if shared or st.st_uid not in trusted:
                    raise SetupError("spawn", _errno.EPERM, f"open {shown}: "
                                     f"{os.fsdecode(name)} is a symbolic link in a "
                                     "directory others may write or owned by another "
                                     "user (refused)")
                links += 1
                if links > 40:
                    raise SetupError("spawn", _errno.ELOOP, f"open {shown}")
                target = os.readlink(name, dir_fd=here)
                if target.startswith(b"/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo[:0] = [c for c in target.split(b"/") if c]
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise SetupError("spawn", _errno.ENOTDIR, f"open {shown}")
            stack.append(fd)
        last = stack.pop()
        return last, final, shared
    finally:
        for fd in stack:
            os.close(fd)
