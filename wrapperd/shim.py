"""The shim's steps, in the one order they run.  This file is the only place that knows
the order; tests/unit/test_order.py pins it, so a reorder is a reviewed change.

prepare() is step 1-2: validate, resolve names, read what must be read from the host's
view -- no side effects.  prepare() also imports every module a step will use: after the
identity step the shim may no longer be able to read the Python installation (it can
live under /root), and a module already in sys.modules needs no file access.  run() then
applies each step to this very process and execve()s the target.  Any failure raises
SetupError naming the step, and the target is never executed.
"""

from __future__ import annotations

import errno
import os

from sandbox._record import frozen, replace
from sandbox.errors import SetupError, SpecError

# For type checkers only (the lean shim imports no typing): the records' modules.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox import (
        caps,
        cgroups,
        creds,
        directories,
        dynamicuser,
        execution,
        fds,
        landlock,
        listen,
        mounts,
        namespaces,
        procattr,
        rlimits,
        seccomp_filter,
    )


@frozen
class Plan:
    """Everything prepare() worked out: one facility record per field (None: that
    facility has nothing to do), and each step reads its own.  The spec itself is not
    kept: what a step needs of it is in a record, which sandbox.plan carries.  Frozen,
    like the records: a step that changes what later steps read (dynamic_user) returns
    a new Plan, and start() goes on with that one."""

    procattr: "procattr.Prepared | None" = None
    fds: "fds.Prepared | None" = None
    target: "execution.Prepared | None" = None
    rlimits: "rlimits.Prepared | None" = None
    cgroup: "cgroups.Prepared | None" = None
    dynamic_user: "dynamicuser.Prepared | None" = None
    directories: "directories.Prepared | None" = None
    listen: "listen.Prepared | None" = None
    creds: "creds.Prepared | None" = None
    caps: "caps.Prepared | None" = None
    namespaces: "namespaces.Prepared | None" = None
    mounts: "mounts.Prepared | None" = None
    seccomp: "seccomp_filter.Prepared | None" = None
    restrictions: "seccomp_filter.Restrictions | None" = None
    landlock: "landlock.Prepared | None" = None


def prepare(spec, find_target: bool = True, disk_cache: bool = False,
            notify_socket: "str | None" = None,
            landlock_abi: "int | None" = None) -> Plan:
    """find_target: the spec must name a target, looked up now (so "not found" is 127
    before any step); False for a consumer that runs nothing (`sandbox seccomp
    compile`), whose spec may leave argv out: plan.target stays None.  disk_cache:
    compiled seccomp programs from and into the root-only cache (sandbox.bpfcache;
    wrapperd's command line only -- the library keeps them in memory).
    notify_socket: for a spec with `notify`, the socket the target is given
    (sandbox.notify: the library's own, or wrapperd's caller's NOTIFY_SOCKET).
    landlock_abi: the Landlock ABI to prepare for (default: the kernel's, lowered by
    WRAPPERD_LANDLOCK_ABI; see sandbox.landlock)."""
    if find_target:
        spec.check_runnable()
    expansion = None
    if spec.filesystem is not None:
        from sandbox import filesystem
        # systemd's protections, as mounts, masks and capability drops in the spec, and
        # the rest (read-only places, writable ones, /proc's options, syscalls denied).
        spec, expansion = filesystem.expand(spec)
    from sandbox import fds, procattr
    p: dict = {"procattr": procattr.prepare(spec), "fds": fds.prepare(spec)}
    if spec.rlimits:
        from sandbox import rlimits
        p["rlimits"] = rlimits.prepare(spec.rlimits)
    if spec.cgroup is not None:
        from sandbox import cgroups
        p["cgroup"] = cgroups.prepare(spec.cgroup)
    from sandbox import caps, creds
    p["creds"] = creds_p = creds.prepare(spec.user, spec.securebits, spec.namespaces)
    # namespaces also for the session step, which may fork with its supervisor.
    from sandbox import mounts, namespaces
    # Also refuses hostname/mount fields without the namespace they need.
    p["namespaces"] = ns_p = namespaces.prepare(spec, creds_p)
    p["mounts"] = mounts_p = mounts.prepare(spec, expansion)
    if mounts_p is not None and ns_p is not None and "user" in ns_p.new and \
            ns_p.caller_uid_inside is None and any(m.type == "dev" for m in mounts_p.mounts):
        # Its nodes are made on a tmpfs by this process, whose id that namespace does
        # not map: the kernel would refuse (EOVERFLOW) at the mounts step.
        raise SpecError("a minimal /dev (a `dev` mount, filesystem.private_devices) is "
                        "made with wrapperd's own id, which the new user namespace does "
                        "not map: map it, or keep the host's /dev (private_devices: "
                        "false)", "mounts")
    if spec.directories is not None:
        from sandbox import directories
        p["directories"] = dirs_p = directories.prepare(spec)
        if dirs_p is not None and mounts_p is not None:
            # Bound in last: writable under a read-only root (configuration read-only).
            p["mounts"] = replace(mounts_p, late=mounts_p.late + directories.binds(dirs_p))
    securebits = creds_p.securebits if creds_p else 0
    # In a new user namespace the target's uid is the one inside it.
    is_root = ns_p.target_is_root(creds_p) if ns_p else creds.target_is_root(creds_p)
    p["caps"] = caps_p = caps.prepare(spec.capabilities, is_root, securebits)
    seccomp_p = None
    # Loading a filter needs no_new_privs or CAP_SYS_ADMIN in the effective set; without
    # no_new_privs the shim holds only the target's caps by then.
    may_load = spec.no_new_privs or caps_p.permitted >> caps.cap_number(
        "CAP_SYS_ADMIN") & 1
    if spec.seccomp is not None:
        if not may_load:
            raise SpecError("a seccomp filter needs no_new_privs: true (or a target that "
                            "keeps CAP_SYS_ADMIN)", "seccomp")
        from sandbox import seccomp
        p["seccomp"] = seccomp_p = seccomp.prepare(spec.seccomp, caps_p,    # loaded last
                                                   disk_cache)
        seccomp.check_execve(seccomp_p.program)    # SIGSYS in execve: no status record
    arches = seccomp_p.architectures if seccomp_p is not None else ("native",)
    denied = expansion.denied if expansion is not None else ()
    if spec.address_families is not None or denied:
        from sandbox import seccomp
        # A filter of its own (see seccomp.prepare_restrictions).
        if not may_load:
            raise SpecError("needs no_new_privs: true (it is a seccomp filter)",
                            "address_families" if spec.address_families is not None
                            else "filesystem")
        p["restrictions"] = seccomp.prepare_restrictions(spec.address_families, denied,
                                                         arches)
    if spec.user is not None and spec.user.dynamic:
        from sandbox import dynamicuser, seccomp
        # Its own filter (see seccomp.restrict_suid_sgid) needs what the spec's does.
        if not may_load:
            raise SpecError("a dynamic user needs no_new_privs: true (it loads a filter "
                            "that keeps setuid and setgid bits off its files)",
                            "no_new_privs")
        p["dynamic_user"] = dynamicuser.prepare(      # allocated by its step, not here
            spec, seccomp.restrict_suid_sgid(arches))
    if spec.landlock is not None:
        # landlock_restrict_self needs no_new_privs or CAP_SYS_ADMIN, as a filter does.
        if not may_load:
            raise SpecError("Landlock needs no_new_privs: true (or a target that keeps "
                            "CAP_SYS_ADMIN)", "landlock")
        from sandbox import landlock
        p["landlock"] = landlock.prepare(spec, landlock_abi)
    if spec.listen:
        from sandbox import listen
        p["listen"] = listen.prepare(spec)
        if seccomp_p is not None:
            from sandbox import seccomp
            # LISTEN_PID is read (getpid) in the exec step, under the filter.
            seccomp.check_getpid(seccomp_p.program)
    if find_target:
        from sandbox import execution
        target = execution.prepare(spec)
        # What facilities set in the environment over the spec's own, as systemd does:
        # RUNTIME_DIRECTORY and the rest, LISTEN_FDS and LISTEN_FDNAMES (LISTEN_PID is
        # the exec step's), NOTIFY_SOCKET.
        env: "dict[str, str]" = {}
        if p.get("directories") is not None:
            from sandbox import directories
            env.update(directories.environment(p["directories"]))
        if p.get("listen") is not None:
            from sandbox import listen
            env.update(listen.environment(p["listen"]))
        if spec.notify:
            from sandbox import notify
            # No step of its own: the socket is bound in last (after the directories).
            notify_p = notify.prepare(spec, notify_socket, creds_p, ns_p)
            if notify_p is not None:
                if p["mounts"] is not None:
                    p["mounts"] = replace(p["mounts"], late=p["mounts"].late + notify_p.binds())
                env["NOTIFY_SOCKET"] = notify_p.env
        p["target"] = replace(target, env={**target.env, **env}) if env else target
    return Plan(**p)


# The facility modules the steps use, listed once: which a plan needs (its record is
# set, or the condition holds), for import_step_modules(); those every plan needs, for
# the fork server to import ahead of its forks (sandbox.forkserver.server._preload).
STEP_MODULES = (
    ("sandbox.caps", lambda plan: True),
    ("sandbox.fds", lambda plan: True),
    ("sandbox.procattr", lambda plan: True),
    # the session step may fork with the supervisor
    ("sandbox.supervisor", lambda plan: plan.procattr.new_session or
     plan.namespaces is not None),
    ("sandbox.namespaces", lambda plan: plan.namespaces is not None),
    ("sandbox.rlimits", lambda plan: plan.rlimits is not None),
    ("sandbox.cgroups", lambda plan: plan.cgroup is not None),
    ("sandbox.mounts", lambda plan: plan.mounts is not None),
    ("sandbox.creds", lambda plan: plan.creds is not None),
    ("sandbox.dynamicuser", lambda plan: plan.dynamic_user is not None),
    ("sandbox.directories", lambda plan: plan.directories is not None),
    ("sandbox.listen", lambda plan: plan.listen is not None),
    ("sandbox.landlock", lambda plan: plan.landlock is not None),
    # a dynamic user and the restrictions load a filter of their own
    ("sandbox.seccomp_filter", lambda plan: plan.seccomp is not None or
     plan.dynamic_user is not None or plan.restrictions is not None),
    ("sandbox.execution", lambda plan: True),
)


def import_step_modules(plan: Plan) -> None:
    """Import what the steps of a plan made elsewhere (sandbox.plan.decode) will use,
    as prepare() does along the way: see the module docstring."""
    for name, needed in STEP_MODULES:
        if needed(plan):
            __import__(name)


class Context:
    """How this run was started: what only its entry point knows, given to start()
    explicitly (no step keeps it in a module global).  One per process; `ppid` is
    refreshed when a step forks.

    status_fd: where a failure is reported (close-on-exec: EOF means exec'd), or None.
    ppid: the parent pdeathsig must watch (the caller's pid, or 0 for a parent outside
      a pid namespace made for us).
    premade: how this process came into a pid namespace made for it ahead of time
      (namespaces.premade_kind): None (it did not: the namespaces step makes one);
      "pid" (a fork server's worker, pid 2 under a reaper already there); "pid1" (pid
      1, which the target will be); "reaper" (pid 1, which forks the target and stays
      as its reaper: the lean shim spawn() starts with --in-new-pidns).
    reaper_channel: with premade "pid", this worker's end of a socket to that reaper
      (sandbox.forkserver.server), which joins the namespaces the worker makes: asked
      in the namespaces step, its answer read in the reaper step.
    reaper_ready: the pipe a reaper the namespaces step forked says it is ready on
      (supervisor.fork), awaited in the reaper step (in the mounts step when there are
      mounts: the reaper shares their namespace): its exec of the helper runs beside
      the steps in between, and nothing of the target's runs before it is ready.
    ahead: with premade "pid", the namespaces that reaper made before it forked this
      worker, which the namespaces step then does not make (namespaces.made_ahead).
    fault: the hardening tests' fault injection (FAULT_ENV, read by the entry point).
    helper_fd: the static helper a step that forks leaves behind (sandbox.supervisor),
      opened by the namespaces step before anything could change what its path names;
      None: not opened (the session step, with no namespaces before it, opens it when
      it forks); -1: there is none (the Python supervisor, then).
    listen_fds: the listening sockets the listen step made, which the fds step puts at
      3, 4, ...  The fds step may move status_fd, reaper_channel and reaper_ready out
      of their way: an entry point reports a failure on ctx.status_fd as it is after
      start() raised.
    """

    __slots__ = ("status_fd", "ppid", "premade", "reaper_channel", "reaper_ready", "ahead",
                 "fault", "helper_fd", "listen_fds")

    def __init__(self, status_fd: "int | None" = None, ppid: "int | None" = None,
                 premade: "str | None" = None, reaper_channel: int = -1,
                 fault: "str | None" = None, ahead: "tuple[str, ...]" = ()):
        self.status_fd = status_fd
        self.ppid = os.getppid() if ppid is None else ppid
        self.premade = premade
        self.reaper_channel = reaper_channel
        self.reaper_ready = -1
        self.ahead = ahead
        self.fault = fault
        self.helper_fd: "int | None" = None
        self.listen_fds: "tuple[int, ...]" = ()


# --------------------------------------------------------------------------- steps
# Each takes the plan and the run's context; one with nothing to do returns at once.

def _premade_reaper(ctx) -> "int | None":
    """In a fork server's worker born under a premade reaper (premade "pid"): the
    reaper's pid as /proc shows it.  The shim's own reaper is forked after the oom and
    cgroup steps and shares them; this one was forked before, so those two steps apply
    to it as well.  None otherwise."""
    if ctx.premade != "pid":
        return None
    from sandbox import namespaces
    return namespaces.parent_pid_in_proc()


def _oom_score_adj(plan, ctx):
    if plan.procattr.oom_score_adj is not None:
        from sandbox import procattr
        procattr.set_oom_score_adj(plan.procattr.oom_score_adj)
        reaper = _premade_reaper(ctx)
        if reaper is not None:
            procattr.set_oom_score_adj(plan.procattr.oom_score_adj, reaper)


def _nice(plan, ctx):
    if plan.procattr.nice is not None:
        from sandbox import procattr
        procattr.set_nice(plan.procattr.nice)


def _rlimits(plan, ctx):
    if plan.rlimits is not None:
        from sandbox import rlimits
        rlimits.apply(plan.rlimits)


def _cgroup(plan, ctx):
    if plan.cgroup is not None:
        from sandbox import cgroups
        cgroups.apply(plan.cgroup, parent_too=_premade_reaper(ctx))


def _dynamic_user(plan, ctx):
    # Before the namespaces step: the registry under /run and the host's /proc are
    # still in view, and this process (or the supervisor it becomes, which outlives
    # the target) is the one recorded as holding the id.
    if plan.dynamic_user is not None:
        from sandbox import dynamicuser
        creds, namespaces = dynamicuser.apply(plan.dynamic_user, plan.creds,
                                              plan.namespaces)
        return replace(plan, creds=creds, namespaces=namespaces)
    return None


def _directories(plan, ctx):
    # After the dynamic user (their owner) and before the namespaces: in the host's
    # mount namespace, where the mounts step then binds them in.
    if plan.directories is not None:
        from sandbox import directories
        directories.apply(plan.directories, plan.creds, plan.namespaces)


def _listen(plan, ctx):
    # Still privileged (a port below 1024 for a target with no capability) and still in
    # the caller's network and mount namespaces (the host's addresses and paths, also
    # for a target in a new network namespace); after the directories (a socket file
    # may go in a runtime directory).
    if plan.listen is not None:
        from sandbox import listen
        ctx.listen_fds = listen.apply(plan.listen)


def _before_fork(plan, ctx) -> int:
    """A step that may fork: pdeathsig's parent check must not be lost across it."""
    if plan.procattr.pdeathsig is not None and os.getppid() != ctx.ppid:
        raise SetupError("pdeathsig", 0, "the parent exited before pdeathsig was armed")
    return os.getpid()


def _after_fork(ctx, pid_before: int) -> None:
    if os.getpid() != pid_before:            # forked: the supervisor is the parent now
        ctx.ppid = os.getppid()


def _namespaces(plan, ctx):
    if plan.namespaces is not None:
        from sandbox import namespaces, supervisor
        pid = _before_fork(plan, ctx)
        # The helper that stays where this step or the session step forks, opened now:
        # a namespace joined here, and the mounts step, change what its path names.
        # (setsid forks only in a process-group leader, and this step's fork leaves none.)
        if namespaces.forks_here(plan.namespaces, ctx.premade) or \
                (plan.procattr.new_session and os.getpgrp() == os.getpid()):
            ctx.helper_fd = supervisor.open_helper()
        # may fork: returns in the future target
        # A fork server's premade reaper is asked to join here, and a reaper forked here
        # says when it is ready: both are awaited by the reaper step (ctx.reaper_channel,
        # ctx.reaper_ready stay open until then; the mounts step awaits the latter).
        ready = namespaces.apply(plan.namespaces, ctx.premade, ctx.reaper_channel,
                                 ctx.ahead, ctx.helper_fd)
        _after_fork(ctx, pid)
        # Ours until the reaper step: never on a number the target is to get (a closed
        # stdio slot, a pass_fd the fds step must find open or refuse).
        taken = {0, 1, 2, *plan.fds.pass_fds}
        held = []
        while ready in taken:
            held.append(ready)
            ready = os.dup(ready)            # the lowest free number (close-on-exec)
        for fd in held:
            os.close(fd)
        ctx.reaper_ready = ready


def _mounts(plan, ctx):
    if plan.mounts is not None:
        from sandbox import mounts
        # The reaper shares the mount namespace and reads /proc as it becomes the
        # helper: it does so in the view it was forked in, never one half-built.
        _await_reaper(ctx)
        mounts.apply(plan.mounts)


def _session(plan, ctx):
    if plan.procattr.new_session:
        from sandbox import procattr
        pid = _before_fork(plan, ctx)
        # may fork: returns in the future target
        procattr.new_session(ctx.helper_fd)
        _after_fork(ctx, pid)
    if ctx.helper_fd is not None:            # the last step that could use it
        if ctx.helper_fd >= 0:
            os.close(ctx.helper_fd)          # (close-on-exec too, and fds closes it)
        ctx.helper_fd = None


def _fds(plan, ctx):
    from sandbox import fds
    fds.check_pass_fds(plan.fds.pass_fds)
    listening: "tuple[int, ...]" = ()
    if ctx.listen_fds:
        end = fds.FIRST_LISTEN_FD + len(ctx.listen_fds)
        listening = tuple(range(fds.FIRST_LISTEN_FD, end))
        clash = [fd for fd in plan.fds.pass_fds if fd in listening]
        if clash:      # (the spec model refuses it: only a plan made elsewhere)
            raise SetupError("fds", 0, f"pass_fds: fd {clash[0]} is where a listening "
                             "socket goes")
        # As systemd passes them: the listening sockets first, at 3, 4, ...
        ctx.status_fd, ctx.reaper_channel, ctx.reaper_ready = fds.place_listening(
            ctx.listen_fds, (ctx.status_fd, ctx.reaper_channel, ctx.reaper_ready))
        ctx.listen_fds = ()
    keep = tuple(fd for fd in (ctx.status_fd, ctx.reaper_channel, ctx.reaper_ready)
                 if fd is not None and fd >= 0)
    fds.close_others(plan.fds.pass_fds + listening, keep)


def _cwd(plan, ctx):
    # After identity and capabilities: the chdir is checked with the target's own ids and
    # caps, so a directory it could not enter itself (root's 0700 home, say) never
    # becomes its cwd -- from there it could reach what lies below by relative paths.
    # None: the caller's directory, kept as Talos's wrapperd kept it (flags mode).
    cwd = plan.procattr.cwd
    if cwd is None:
        return
    try:
        os.chdir(cwd)
    except OSError as e:
        raise SetupError("cwd", e.errno, f"chdir {cwd} as the target") from None


def _umask(plan, ctx):
    if plan.procattr.umask is not None:
        os.umask(plan.procattr.umask)


def _identity(plan, ctx):
    if plan.creds is not None:
        from sandbox import creds
        creds.apply(plan.creds)


def _capabilities(plan, ctx):
    from sandbox import caps
    caps.apply(plan.caps)


def _pdeathsig(plan, ctx):
    if plan.procattr.pdeathsig is not None:
        from sandbox import procattr
        procattr.set_pdeathsig(plan.procattr.pdeathsig, ctx.ppid)


def _dumpable(plan, ctx):
    # Not ptraceable or dumpable by anyone but root while the shim still holds
    # privileges.  execve resets this for the target (to 1 for an ordinary exec), so it
    # is not a spec field: it protects the shim, not the target.
    from sandbox import procattr
    procattr.set_dumpable(False)


def _no_new_privs(plan, ctx):
    if plan.procattr.no_new_privs:
        from sandbox import procattr
        procattr.set_no_new_privs()


def _restore_signals():
    # The interpreter ignores SIGPIPE and SIGXFSZ for itself, and an ignored signal
    # stays ignored across execve: give the target the defaults (as subprocess's
    # restore_signals does).  The signal mask survives execve too: a caller that spawns
    # from a thread blocking SIGTERM must not hand the target a SIGTERM it never sees.
    # Done before the filter is loaded, so that the filter need allow nothing but
    # execve (a filter killing rt_sigaction would kill the shim before it could
    # report).  _signal, not signal: builtin, already loaded, no enum.
    import _signal
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def _signals(plan, ctx):
    _restore_signals()


def _seccomp(plan, ctx):
    if plan.dynamic_user is None and plan.restrictions is None and plan.seccomp is None:
        return
    from sandbox import seccomp_filter
    if plan.dynamic_user is not None:
        seccomp_filter.load_program(plan.dynamic_user.suid_filter, "restrict_suid_sgid")
    if plan.restrictions is not None:
        seccomp_filter.load_program(plan.restrictions.program, "restrictions")
    if plan.seccomp is not None:
        seccomp_filter.apply(plan.seccomp)


def _landlock(plan, ctx):
    # After the mounts (the paths are opened in the target's view), identity and
    # capabilities (opened with the target's ids) and no_new_privs (which an
    # unprivileged landlock_restrict_self needs); before seccomp, so the filter need not
    # allow the landlock syscalls.  Only signals, the reaper's answer, the filter and
    # execve follow: nothing of the shim's own needs a file after it.
    if plan.landlock is not None:
        from sandbox import landlock
        landlock.apply(plan.landlock)


def _await_reaper(ctx) -> None:
    """Wait until the reaper the namespaces step forked is ready (once: the mounts step
    or the reaper step, whichever comes first with it still open)."""
    if ctx.reaper_ready >= 0:
        from sandbox import supervisor
        fd, ctx.reaper_ready = ctx.reaper_ready, -1
        supervisor.await_ready(fd, "namespaces", "the reaper")


def _reaper(plan, ctx):
    # The reaper the namespaces step forked execs the helper while the steps since
    # ran; nothing of the target's may run before it is ready (non-dumpable, no fd
    # held, its signal handlers in place).  A fork server's worker: the reaper made
    # ahead of time was asked to join the target's namespaces in the namespaces step.
    # Both are awaited here, before the filter (which may not allow read or recv).
    _await_reaper(ctx)
    if ctx.reaper_channel >= 0:
        from sandbox import namespaces
        fd, ctx.reaper_channel = ctx.reaper_channel, -1
        namespaces.reaper_joined(fd)


def _exec(plan, ctx):                  # never returns
    from sandbox import execution
    target = plan.target
    if plan.listen is not None:
        from sandbox import listen
        # Only now is the pid final (the namespaces and session steps may fork); a
        # filter that would not allow getpid is refused in prepare.
        target = replace(target, env=listen.pid_env(target.env))
    execution.apply(target)


# (name, step) pairs.  No typing import: it costs the lean shim ~2 ms.
STEPS = (
    ("dumpable", _dumpable),             # first: nobody but root may ptrace the shim
    ("oom_score_adj", _oom_score_adj),   # lowering it needs CAP_SYS_RESOURCE
    ("nice", _nice),                     # a negative nice needs CAP_SYS_NICE
    ("rlimits", _rlimits),               # raising a hard limit needs CAP_SYS_RESOURCE
    ("cgroup", _cgroup),                 # joined before anything else can fork or run
    ("dynamic_user", _dynamic_user),     # allocated in the host's /run and /proc
    ("directories", _directories),       # made and owned in the host's view, for its ids
    ("listen", _listen),                 # bound while privileged, in the caller's netns
    ("namespaces", _namespaces),         # user first (id maps), then the others
    ("mounts", _mounts),                 # inside the new mount namespace
    ("session", _session),               # setsid: off the caller's tty (TIOCSTI); may fork
    ("fds", _fds),                       # 0-2, listening sockets at 3.., pass_fds; status CLOEXEC
    ("umask", _umask),
    ("identity", _identity),             # setgroups -> setresgid -> setresuid
    ("capabilities", _capabilities),     # bounding -> inheritable -> ambient -> permitted
    ("cwd", _cwd),                       # as the target: it must be able to enter it
    ("pdeathsig", _pdeathsig),           # re-armed: a credential change clears it
    ("no_new_privs", _no_new_privs),
    ("landlock", _landlock),             # in the target's view, as the target; needs nnp
    ("signals", _signals),               # default dispositions, empty mask (survive exec)
    ("reaper", _reaper),                 # the reaper is ready (a premade one has joined)
    ("seccomp", _seccomp),               # last: the filter need allow nothing the shim does
    ("exec", _exec),
)


# Fault injection for the hardening tests: WRAPPERD_FAULT=fail:STEP makes STEP fail
# (EIO) before it runs; stop:STEP stops the shim (SIGSTOP) just before STEP.  It can only
# make wrapperd fail or pause -- never skip or reorder a step -- so it is safe to leave in.
FAULT_ENV = "WRAPPERD_FAULT"


def _fault(name: str, fault: str) -> None:
    action, _, where = fault.partition(":")
    if where != name:
        return
    if action == "fail":
        raise SetupError(name, errno.EIO, "fault injected (WRAPPERD_FAULT)")
    if action == "stop":
        import _signal  # the C module: signal's enums cost the lean shim
        os.kill(os.getpid(), _signal.SIGSTOP)


def start(plan: Plan, ctx: Context):     # never returns
    """The one start of every launch path -- wrapperd's command line, a plan from
    spawn(), a fork server's worker -- with what only that path knows in ctx: every
    step, in the order of STEPS, then execve.  Raises SetupError naming the step."""
    fault = ctx.fault
    for name, step in STEPS:
        try:
            if fault:
                _fault(name, fault)
            # A step that changes what later steps read returns the new plan.
            plan = step(plan, ctx) or plan
        except SetupError:
            raise
        except OSError as e:
            what = str(e.strerror or e)
            if e.errno and what == os.strerror(e.errno):
                # Only the errno: say what failed, so the line is not "EBADF: EBADF".
                what = f"{name} failed" + (f" on {e.filename}" if e.filename else "")
            raise SetupError(name, e.errno or 0, what) from None
    raise AssertionError("exec returned")   # unreachable: _exec never returns
