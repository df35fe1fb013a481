"""The fork server's own process: serve requests (protocol.py) by forking a worker each,
which runs wrapperd.shim.start() on the caller's plan -- the one start, the same steps
as the shim -- and execs the target.

Started once with a clean exec (`python -I -S`, never forked from the possibly
multithreaded caller), it imports the modules every plan's steps use (_preload) and,
with each new plan it decodes, that plan's, then serves single-threaded.  Per request
it hands the request to a spare child forked ahead of time (or forks one), opens a
pidfd for it while it is still its unreaped child, sends the pid and that pidfd back,
and closes its copies before the next request (so no child ever holds another
request's fds).  When the child exits (its pidfd polls
readable) the server reaps it and sends the wait status.

Spares: one per kind in use, idle until a request is handed to one, so the fork (and
the copy-on-write faults right after it) happen while the previous target runs, not
while a caller waits.  A kind (kind_of) is a pid namespace made ahead of time or none
(sandbox.namespaces.premade_kind): for "pid" the spare is pid 1 of a new pid namespace,
the reaper, which makes the net, ipc and uts namespaces the plan asks for
(namespaces.made_ahead) and forks the worker (pid 2) into them, and joins the others
once the worker made them (namespaces.reaper_joins); for "pid1" the spare is pid 1
and becomes the target.  Everything the server keeps is in one Server object, never a module
global: its own pid namespace to return to, the spares, the decoded plans.
"""

from __future__ import annotations

import os

from ..errors import EXIT_FAILURE, SetupError
from . import protocol

_MAX_PLANS = 16


def _preload() -> None:
    """What every child imports, once here: a forked child then pays nothing for it.
    That is the modules the steps of every plan use (shim.STEP_MODULES, as a plan with
    only the records every plan has needs them), not all of them: the others come
    with the first plan that needs them, which the server decodes before it forks the
    next spare (plan.decode imports its steps' modules), and a worker forked before
    that imports them as it decodes, before any step.  Each module held here is memory
    every fork copies and every exec tears down (the modules no plan of the bench
    needs were ~600 KB of the server's ~5 MB of anonymous memory)."""
    from wrapperd import shim

    from .. import procattr
    # A plan with only what every plan has: its per-process attributes as a spec
    # without any leaves them (a new session), and no other facility's record.
    every = shim.Plan(procattr=procattr.Prepared(
        oom_score_adj=None, nice=None, umask=None, cwd=None, pdeathsig=None,
        no_new_privs=False, new_session=True))
    for name in ("_json", "_signal", "fcntl", "socket", "sandbox._libc", "sandbox.plan",
                 "wrapperd.planned",
                 *(module for module, needed in shim.STEP_MODULES if needed(every))):
        __import__(name)
    # ctypes resolves (dlsym) and caches a libc function on first use: once here, not
    # in every child.
    import sys
    libc = sys.modules["sandbox._libc"]._libc
    for fn in ("capget", "capset", "unshare", "setns", "syscall", "mount", "umount2"):
        getattr(libc, fn, None)
    sys.modules["sandbox.caps"].last_cap()      # read once, inherited by every child


def kind_of(ns) -> "None | str | tuple":
    """The kind of spare child for a plan's namespaces record: None (a plain fork),
    "pid1", or ("pid", the kinds its reaper makes ahead, whether it joins more after)."""
    from .. import namespaces
    kind = namespaces.premade_kind(ns)
    if kind != "pid":
        return kind
    return ("pid", namespaces.made_ahead(ns), bool(namespaces.reaper_joins(ns)))


def copies_uts(kind) -> bool:
    """Whether a spare of this kind (kind_of) makes a uts namespace ahead, a copy of
    the host's names that goes stale when the host is renamed."""
    return isinstance(kind, tuple) and "uts" in kind[1]


def _uts_names() -> "tuple[str, bytes]":
    """The host's node and domain names, which a uts namespace made ahead copied."""
    from .. import procfs
    try:
        domain = procfs.read("/proc/sys/kernel/domainname")
    except OSError:
        domain = b"?"
    return os.uname().nodename, domain


class Server:
    """The server's state.  Children forked from it read their copy of `plans`."""

    def __init__(self, fault: "str | None"):
        # (decoded plan, kind_of it) by the plan's encoded bytes, most recent last
        # (plan_for).
        self.plans: dict = {}
        # Spare children by kind: (pid, pidfd, our end of its channel).
        self.spares: dict = {}
        # The server's own pid namespace, to return to after making one for a spare;
        # -1: premade pid namespaces cannot be made here (plain children only).
        self.own_pidns = -1
        # wrapperd.shim.Context.fault for every child (the hardening tests' setting).
        self.fault = fault
        # The static helper every premade reaper becomes (supervisor.open_helper, -1:
        # none), opened once at start: a reaper then only execs it.
        self.helper = -1

    # ------------------------------------------------------------------ plans
    def plan_for(self, plan_fd: int) -> "tuple[object, object]":
        """The request's plan and its kind of spare child (kind_of), both worked out
        once per distinct plan and kept: a child forked after that -- the next spare --
        has the plan decoded already.  (None, None) when it does not decode (the child
        then decodes it again and reports why, as the shim would)."""
        try:
            data = _read_plan(plan_fd)
        except OSError:
            return None, None
        known = self.plans.pop(data, None)
        if known is None:
            from .. import plan as plan_mod
            try:
                plan = plan_mod.decode(data)
            except Exception:          # noqa: BLE001 -- the child reports it
                return None, None
            known = plan, kind_of(plan.namespaces)
            while len(self.plans) >= _MAX_PLANS:
                del self.plans[next(iter(self.plans))]
        self.plans[data] = known       # most recent last
        return known

    def premade_kind(self, kind) -> "None | str | tuple":
        """The kind of spare child for a plan of this kind (plan_for), None where pid
        namespaces cannot be made ahead here.  The worker moves its reaper into the
        spec's cgroup and gives it the oom score too, as the shim's own reaper, forked
        after those steps, would have them (wrapperd.shim)."""
        return None if self.own_pidns < 0 else kind

    # ------------------------------------------------------------------ spares
    def prefork(self, kind, uts) -> "tuple[int, int, object, object]":
        """Fork a spare child of this kind: (pid, pidfd, our end of its channel, uts).
        uts: when the child makes a uts namespace (copies_uts), the host's names
        (_uts_names) read before this fork -- the copy is made just after -- else None.

        For a pid namespace: unshare(CLONE_NEWPID) moves only the children made after
        it into the new namespace, so this server forks the spare there and then
        returns to its own namespace for every later child (setns)."""
        import socket

        from .. import _libc, namespaces
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A reaper's socket to its worker, made here rather than in the reaper: what
        # the reaper runs of Python before its exec is paid in copy-on-write faults.
        pair = _socketpair() if isinstance(kind, tuple) else None
        try:
            if kind is not None:
                try:
                    _libc.unshare(namespaces.CLONE_FLAGS["pid"])
                except OSError:
                    self._no_premade()     # not allowed here: plain children from now on
                    raise
            try:
                pid = os.fork()
            except BaseException:
                if kind is not None:
                    self._own_pidns()
                raise
        except BaseException:
            ours.close()
            theirs.close()
            for fd in pair or ():
                os.close(fd)
            raise
        if pid and kind is not None:
            self._own_pidns()
        if pid == 0:
            if pair is not None:
                _reaper_spare(self, theirs.fileno(), kind, pair)      # never returns
            _spare(self, theirs.fileno(), kind)          # never returns
        theirs.close()
        for fd in pair or ():
            os.close(fd)
        return pid, os.pidfd_open(pid), ours, uts

    def _no_premade(self) -> None:
        if self.own_pidns >= 0:
            os.close(self.own_pidns)
            self.own_pidns = -1

    def _own_pidns(self) -> None:
        """Back to the server's own pid namespace for its later children."""
        from .. import _libc, namespaces
        try:
            _libc.setns(self.own_pidns, namespaces.CLONE_FLAGS["pid"])
        except OSError:
            # Every later child would be born in that namespace: stop rather than serve
            # anything from here (the caller's next spawn starts a new server).
            os._exit(70)

    def start(self, msg: bytes, fds: list, layout, kind, uts) -> "tuple[int, int]":
        """Hand the request to the spare child of its kind (or make one now); (pid,
        pidfd).  uts: the host's names now, for a kind that copies them (prefork).  A
        plain child forked here, when no premade pid namespace can be made, runs the
        shim's own namespaces step (supervisor, reaper) instead."""
        import socket
        spare = self.spares.pop(kind, None)
        if spare is not None and spare[3] != uts:
            _discard(spare)            # the host was renamed since: its copy is stale
            spare = None
        if spare is None and kind is not None:
            try:
                spare = self.prefork(kind, uts)   # made now: still no reaper forked after a request
            except OSError:
                spare = None           # a plain fork below: its steps make the namespace
        if spare is not None:
            pid, pidfd, chan, _uts = spare
            try:
                chan.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      protocol.fd_array(fds))])
                chan.close()
                return pid, pidfd
            except OSError:            # it died: reap it, fork instead
                _discard(spare)
        pid = os.fork()
        if pid == 0:
            _child(self, fds, layout, None)      # never returns
        return pid, os.pidfd_open(pid)  # still our unreaped child: it is this process

    # ------------------------------------------------------------------ requests
    def serve_one(self, ctl, children: dict, poller) -> bool:
        import select
        import socket
        try:
            msg, fds, truncated = protocol.recv_with_fds(ctl, protocol.MAX_FDS)
        except ConnectionError:
            return False
        if not msg:
            for fd in fds:
                os.close(fd)
            return False
        try:
            layout = protocol.parse_request(msg, len(fds))
            if truncated:
                raise ValueError("fds truncated")
        except ValueError:
            for fd in fds:
                os.close(fd)           # the caller sees EOF on its reply socket
            return True
        reply = socket.socket(fileno=fds[0])
        kind = self.premade_kind(self.plan_for(fds[1])[1])
        # Read once, before any fork of this request (see prefork).
        uts = _uts_names() if copies_uts(kind) else None
        try:
            pid, pidfd = self.start(msg, fds, layout, kind, uts)
        except OSError:                # fork failed (EAGAIN, ENOMEM): refuse this one;
            reply.close()              # the caller sees no pid and raises
            return True
        finally:
            for fd in fds[1:]:
                os.close(fd)
        try:
            reply.sendmsg([protocol.pid_reply(pid)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, protocol.fd_array([pidfd]))])
        except OSError:
            pass                       # the caller is gone; the child still gets reaped
        children[pidfd] = (pid, reply)
        poller.register(pidfd, select.POLLIN)
        if kind not in self.spares:
            try:
                self.spares[kind] = self.prefork(kind, uts)   # for the next request, now
            except OSError:
                pass                   # the next request forks for itself
        return True


def serve(ctl_fd: int) -> None:
    import select
    import socket
    _preload()
    from wrapperd import shim

    from .. import procattr
    server = Server(fault=os.environ.get(shim.FAULT_ENV))
    # The server stays alive beside its targets, and every reaper it forks is one's
    # pid 1: none keeps an environment to show (see procattr.erase_environment).  What
    # the steps need of wrapperd's settings came with the plan or is in `server`.
    procattr.erase_environment("spawn")
    try:
        server.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        server.own_pidns = -1          # no premade pid namespaces, then
    from .. import supervisor
    server.helper = supervisor.open_helper()
    # Non-dumpable, as each child forked from here is until its exec (a reaper made
    # ahead, a worker before its dumpable step): not ptraceable, its /proc/PID/mem and
    # exe not reachable, by a target without CAP_SYS_PTRACE -- inherited, so no child
    # need say so itself before it can act.
    procattr.set_dumpable(False)
    # Every object now in memory stays out of the collector's reach (gc.freeze), and no
    # collection runs in the server or its children: a collection walks every object,
    # and in a forked child each page it writes to is copied (copy-on-write).
    import gc
    gc.collect()
    gc.freeze()
    gc.disable()
    ctl = socket.socket(fileno=ctl_fd)
    ctl.setblocking(True)
    ctl.send(protocol.READY)
    children: dict = {}                # pidfd -> (pid, reply socket)
    poller = select.poll()
    poller.register(ctl_fd, select.POLLIN)
    while True:
        for fd, _ev in poller.poll():
            if fd == ctl_fd:
                if not server.serve_one(ctl, children, poller):
                    return             # the caller closed the socket (or died): stop
            else:
                pid, reply = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                try:
                    reply.send(protocol.exit_reply(status))
                except OSError:
                    pass               # the caller is gone
                reply.close()


def _discard(spare) -> None:
    """Stop and reap a spare child (it holds nothing of any request)."""
    pid, pidfd, chan, _uts = spare
    chan.close()
    try:
        import _signal
        os.kill(pid, _signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass
    os.close(pidfd)


def _socketpair() -> "tuple[int, int]":
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a.detach(), b.detach()


def _read_plan(fd: int) -> bytes:
    from .. import plan as plan_mod
    size = os.fstat(fd).st_size
    return os.pread(fd, min(size, plan_mod.MAX_PLAN_BYTES + 1), 0)


# --------------------------------------------------------------------------- children
# Each runs in a process forked from the server and never returns (os._exit).

def _reaper_spare(server: Server, chan: int, kind: tuple, pair: "tuple[int, int]") -> None:
    """Pid 1 of a premade namespace: make the namespaces made ahead (kind[1]), fork the
    worker (pid 2) that takes the request into them, then become the reaper the shim's
    is (supervisor.become: the static helper, server.helper), which first joins the
    namespaces the worker's steps make when kind[2] says there are any.  pair: our
    end and the worker's of the socket between us (Server.prefork).  Non-dumpable, as
    the shim's own reaper is, since the server is (serve)."""
    import _signal as signal

    from .. import _libc, namespaces, supervisor
    try:
        helper = server.helper
        _prefix, ahead, joins = kind
        flags = 0
        for k in ahead:
            flags |= namespaces.CLONE_FLAGS[k]
        if flags:
            _libc.unshare(flags)       # the worker, forked next, is born in them
        # On this the reaper says it is ready (non-dumpable, no fd held) -- after it
        # joined, when the worker asks it to join the target's other namespaces
        # (shim.Context.reaper_channel; a reaper left in the server's would show a
        # target the host's network and mounts through /proc/1).
        ours, theirs = pair
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, supervisor.FORWARDED_SIGNALS)
        worker = os.fork()
        if worker == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ours)
            _spare(server, chan, kind, theirs)       # never returns
        # Become the static helper now (become() first closes every fd of the server's
        # but ours and the helper's binary), while the spare is idle -- no exec while a
        # caller waits: it joins the worker's namespaces when asked (as
        # namespaces.join_for_worker), with the forwarded signals still blocked
        # (queued), and closes `ours` once it is ready.
        supervisor.become(helper, worker, pid_1=True, sync=ours,
                          join=joins)                          # never returns
    except BaseException:              # noqa: B036 -- the child must never return
        pass
    finally:
        os._exit(EXIT_FAILURE)


def _warm() -> None:
    """In an idle spare: take now, not while a caller waits, the first copy-on-write
    faults the steps would take -- the ctypes calls and records they go through (a
    first call of each libc function in a fresh fork costs ~0.1 ms of page copies).
    Only reads: nothing here changes this process."""
    import _signal

    from .. import _libc, caps
    try:
        _libc.prctl(_libc.PR_GET_DUMPABLE)
        _libc.prctl(_libc.PR_CAPBSET_READ, 0)
        _libc.prctl(_libc.PR_GET_NO_NEW_PRIVS)
        _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_IS_SET, 0)
        _libc.capget()
        caps._status_masks()
        _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
    except OSError:
        pass


def _spare(server: Server, chan: int, kind, reaper: int = -1) -> None:
    """Wait on chan for the request, then be its worker (_child).  reaper: under a
    premade reaper, our end of the socket to it."""
    code = EXIT_FAILURE
    try:
        import socket
        # Drop every fd of the server's (its socket, other requests' reply sockets and
        # pidfds): only the channel (and the reaper's) stays.
        lo = 0
        for fd in sorted({chan, reaper} - {-1}):
            os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 1 << 20)
        if reaper >= 0 and not (isinstance(kind, tuple) and kind[2]):
            # A reaper with nothing to join says when it is ready (non-dumpable, no fd
            # held): waited for now, while idle, so no target runs beside a reaper
            # still becoming the helper.  One that joins says so after its answer
            # (namespaces.reaper_joined, in the reaper step).
            from .. import supervisor
            supervisor.await_ready(reaper, "namespaces", "the reaper made ahead of time")
            reaper = -1
        _warm()
        sock = socket.socket(fileno=chan)
        msg, fds, truncated = protocol.recv_with_fds(sock, protocol.MAX_FDS)
        if not msg or truncated:
            code = 0                   # the server closed: nothing to do
        else:
            sock.close()
            _child(server, fds, protocol.parse_request(msg, len(fds)), kind, reaper)
    except BaseException:              # noqa: B036 -- the child must never return
        pass
    finally:
        os._exit(code)


def _child(server: Server, fds: list, layout, kind, reaper: int = -1) -> None:
    """The worker: put the fds in place, decode the plan (unless the server had,
    before this child was forked), run the steps.  kind: the namespaces this child was
    born in (kind_of; Server.prefork); reaper: the socket to its reaper, if any."""
    status = None
    ctx = None
    code = EXIT_FAILURE
    try:
        from wrapperd import shim

        from .. import plan as plan_mod
        stdio, passed = layout
        _reply, plan_fd, status_src = fds[:3]
        sources = fds[3:]
        targets = dict(zip(stdio + passed, sources, strict=True))
        # Move everything above any fd number in play, then into place: a source may
        # sit on another's target number.  The status fd first, so that whatever fails
        # from here on is reported on it (EOF without a record would read "exec'd").
        high = max([*fds, *targets, 2, reaper]) + 1
        import fcntl
        status = fcntl.fcntl(status_src, fcntl.F_DUPFD_CLOEXEC, high)
        if reaper >= 0:                # out of the way of the targets too
            reaper = fcntl.fcntl(reaper, fcntl.F_DUPFD_CLOEXEC, high)
        data = _read_plan(plan_fd)
        moved = {t: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, high) for t, s in targets.items()}
        for t, s in moved.items():
            os.dup2(s, t)              # inheritable
        final = max([*targets, 2]) + 1
        if final != status:
            os.dup2(status, final, inheritable=False)
            status = final
        if reaper >= 0 and reaper != final + 1:    # just above the status fd
            os.dup2(reaper, final + 1, inheritable=False)
            reaper = final + 1
        keep = sorted({*targets, status} | ({reaper} if reaper >= 0 else set()))
        lo = 0
        for fd in keep:                # everything else goes now: the server's socket,
            if fd > lo:                # the plan memfd, every high copy
                os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 1 << 20)
        # The server's own stdio is not the caller's: a slot the caller did not give
        # (its own fd was closed) stays closed, as it would through the plain shim.
        known = server.plans.get(data)
        if known is None:
            plan = plan_mod.decode(data)
            known = plan, kind_of(plan.namespaces)
        plan, plan_kind = known
        if kind is not None and plan_kind != kind:
            raise SetupError("namespaces", 0, f"this child was born in namespaces made "
                             f"for {kind!r}, not what the plan asks for")
        premade, ahead = (kind[0], kind[1]) if isinstance(kind, tuple) else (kind, ())
        # ppid: ours, not the server's that decoded the plan.
        ctx = shim.Context(status, os.getppid(), premade, reaper, fault=server.fault,
                           ahead=ahead)
        shim.start(plan, ctx)
    except BaseException as e:         # noqa: B036 -- the child must never return
        try:
            from wrapperd import planned
            # (the fds step may have moved the status fd: ctx says where it is)
            code = planned.report(e, status if ctx is None else ctx.status_fd)
        except BaseException:          # noqa: B036
            code = EXIT_FAILURE
    finally:
        os._exit(code)
