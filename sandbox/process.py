"""Process: the handle spawn() returns for a running target.

The target is our direct child (the shim exec'd it, so it kept the shim's pid), which
means its pid cannot be reused before we reap it.  Signals still go through a pidfd
where the kernel has one (Linux 5.3+): a signal sent through a pidfd can never reach
another process that got the same pid after a reap done elsewhere in the program.
"""

from __future__ import annotations

import errno as _errno
import os
import signal
import subprocess
import time

from . import procfs, supervisor
from .errors import SandboxError

__all__ = ["Process", "ExitReason", "Stopping"]


class Stopping:
    """What Process.stop() returns: SIGTERM already sent to the whole sandbox."""

    def __init__(self, proc: "Process", grace: float):
        self.process, self.grace = proc, grace
        self.deadline = time.monotonic() + grace
        if proc.returncode is None:
            proc._signal_all(signal.SIGTERM)

    def wait(self) -> int:
        """Until the target has exited (SIGKILL to all of it once the grace period is
        over); its returncode.  What else ran in its cgroup is killed too."""
        p = self.process
        try:
            rc = p.wait(max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        if p.spec.cgroup is not None and p._cgroup_pids():
            try:
                p._wait_empty(self.deadline)
            except subprocess.TimeoutExpired:
                p._kill_cgroup()
        return rc


class _StatusLost(SandboxError):
    def __init__(self, pid: int):
        super().__init__(f"the exit status of pid {pid} was taken by another wait (an "
                         "os.waitpid(-1) of this program's?): an init reaps with "
                         "sandbox.reap(), which keeps it")


class ExitReason:
    """Why a target ended: `kind` is "exited" (`code`), "killed" (`signal`),
    "oom_killed" (the cgroup's OOM killer: its memory.events / memory.oom_control
    counted the kill, not a guess from SIGKILL), "timed_out" (run()'s timeout killed
    it) or "setup_failed" (`step`: the target never ran; SetupError.exit_reason).
    str(): exited(3), killed(SIGTERM), oom_killed, timed_out, setup_failed(mounts)."""

    __slots__ = ("kind", "code", "signal", "step")

    def __init__(self, kind: str, code: "int | None" = None, signal: "int | None" = None,
                 step: "str | None" = None):
        self.kind, self.code, self.signal, self.step = kind, code, signal, step

    def __str__(self) -> str:
        if self.kind == "exited":
            return f"exited({self.code})"
        if self.kind == "killed":
            return f"killed({_signame(self.signal or 0)})"
        if self.kind == "setup_failed":
            return f"setup_failed({self.step})"
        return self.kind

    def __repr__(self) -> str:
        return f"<ExitReason {self}>"

    def __eq__(self, other) -> bool:
        return str(self) == str(other) if isinstance(other, (ExitReason, str)) else \
            NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


class Process:
    """A confined target started by sandbox.spawn().

    `pid`, `pidfd` (None where the kernel has no pidfds), `spec` (the resolved spec it
    runs under), `stdin`/`stdout`/`stderr` (file objects for PIPE, else None),
    `returncode` (None while it runs; -N for a signal, as subprocess).  As a context
    manager, as subprocess.Popen: on exit the pipes are closed and the target waited
    for (stopped first if the block raised), then everything is cleaned up.
    """

    exit_grace = 10.0
    _notify = None          # sandbox.notify.Listener, for a spec with `notify`

    def __init__(self, popen, spec, created_cgroups=(), pidfd=None):
        # popen: a subprocess.Popen, or what has its shape (forkserver.client._Child).
        self._popen = popen
        self.spec = spec
        self.pid = popen.pid
        self.stdin, self.stdout, self.stderr = popen.stdin, popen.stdout, popen.stderr
        self._created_cgroups = list(created_cgroups)
        self._closed = False
        self._target_pid: "int | None" = None
        # A pidfd may come with the handle: the fork server (sandbox.forkserver) opens
        # it while the process is still its unreaped child and passes it on.
        self.pidfd = pidfd
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd is None and pidfd_open is not None:
            try:
                # Safe: our unreaped child, so this pid is still the shim/target.
                self.pidfd = pidfd_open(self.pid)
            except OSError:
                self.pidfd = None     # ENOSYS on old kernels: fall back to the pid
        self._timed_out = False         # run(timeout=) killed it
        self._final_stats: "dict | None" = None
        self._oom_before = self._oom_kills()    # a reused cgroup's earlier OOM kills
        # Our own child (not a fork server's): sandbox.reap() keeps its status for us.
        self._child = isinstance(popen, subprocess.Popen)
        if self._child:
            from . import reaping
            reaping.register(self)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<sandbox.Process pid={self.pid} {self.spec.name or self.spec.argv[0]!r} " \
               f"{state}>"

    # ------------------------------------------------------------------ state
    @property
    def returncode(self) -> "int | None":
        """None while it runs -- and when its status was lost (see wait())."""
        try:
            return self.poll()
        except _StatusLost:
            return None

    @property
    def target_pid(self) -> int:
        """The target's pid as seen from here.  `pid` itself, except when the shim
        forked -- into a new pid namespace, or (`new_session`) because it led its
        process group, which spawn() never makes it do: then `pid` is the shim staying
        outside as a supervisor (it forwards signals and exits with the target's status)
        and the target is its descendant (behind the namespace's reaper, unless
        as_pid_1)."""
        if self._target_pid is not None:
            return self._target_pid
        ns = self.spec.namespaces
        if (ns is None or ns.pid is False) and not getattr(self.spec, "new_session", False):
            self._target_pid = self.pid
            return self.pid
        # The command line the shim was started with (a list: Popen never gets a str
        # from the launchers).
        shim = b"\0".join(os.fsencode(a) for a in self._popen.args) + b"\0"
        cur, found = self.pid, None
        for _ in range(3):                  # supervisor -> reaper -> target, at most
            try:
                with open(f"/proc/{cur}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                break
            # Still the shim, or the static helper a supervisor or reaper becomes (a
            # target calling itself so only moves this down to its one child).
            if cmdline != shim and not supervisor.is_helper(cmdline):
                found = cur                 # exec'd: this is the target
                break
            kids = _children(cur)
            if len(kids) != 1:
                break
            cur = kids[0]
        if found is None:
            return self.pid                 # gone or not settled: do not cache
        self._target_pid = found
        return found

    @property
    def args(self) -> list:
        return list(self.spec.argv)

    @property
    def exit_reason(self) -> "ExitReason | None":
        """Why the target ended (ExitReason), None while it runs.  Behind a supervisor
        (a new pid namespace) the exit status is the target's code, or 128+N when a
        signal N killed it, as a shell reports it: read as killed(N)."""
        rc = self.returncode
        if rc is None:
            return None
        if self._timed_out:
            return ExitReason("timed_out")
        sig = -rc if rc < 0 else None
        ns = self.spec.namespaces
        if sig is None and 128 < rc < 128 + 65 and ns is not None and ns.pid is not False \
                and not ns.as_pid_1:
            sig = rc - 128                  # a helper passed a signal on as 128+N
        if sig == signal.SIGKILL and self._oom_kills() > self._oom_before:
            return ExitReason("oom_killed")
        if sig is not None:
            return ExitReason("killed", signal=sig)
        return ExitReason("exited", code=rc)

    def _oom_kills(self) -> int:
        group = self._group()
        if group is None:
            return 0
        try:
            return group.events().get("oom_kill", 0) if group.exists() else 0
        except (OSError, SandboxError):
            return 0

    def processes(self) -> "list[int]":
        """The pids that still run for this sandbox: every process in its cgroup when
        the spec has one (a daemon that forked into the background included), else the
        target and its descendants that have not left it (an orphan reparented away is
        out of sight: give the spec a cgroup)."""
        if self.spec.cgroup is not None:
            return self._cgroup_pids()
        import psutil
        try:
            main = psutil.Process(self.target_pid)
            kids = main.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return sorted(p.pid for p in [main, *kids]
                      if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)

    def poll(self) -> "int | None":
        """The returncode if it has exited (and reap it), else None.  SandboxError when
        its status was taken by another wait (see wait())."""
        rc = self._popen.returncode
        if rc is not None or not self._child:
            return self._popen.poll() if rc is None else rc
        # Popen.poll() would call a child someone else reaped a success (0).
        from . import reaping
        with reaping._LOCK:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                if self._popen.returncode is not None:
                    return self._popen.returncode
                raise _StatusLost(self.pid) from None
            if info is None:
                return None                 # still running
        return self._popen.poll()

    def wait(self, timeout: "float | None" = None, group: bool = False) -> int:
        """Wait for the target to exit and reap it; return its returncode.  Raises
        subprocess.TimeoutExpired after `timeout` seconds (the target keeps running).
        If something else reaped it -- an os.waitpid(-1) of the caller's instead of
        sandbox.reap() -- its status is gone: SandboxError, never a made-up 0.
        group=True: also until nothing is left in its cgroup (a daemon whose main
        process forked into the background and exited 0); needs the spec's cgroup."""
        if group:
            if self.spec.cgroup is None:
                raise SandboxError("wait(group=True) needs the spec's cgroup: without one "
                                   "what the target left behind cannot be followed")
            deadline = None if timeout is None else time.monotonic() + timeout
            rc = self.wait(timeout)
            self._wait_empty(deadline)
            return rc
        rc = self._wait(timeout)
        self._keep_stats()
        return rc

    def _wait_empty(self, deadline: "float | None") -> None:
        """Until the cgroup holds no process (its members leave it as they exit)."""
        g = self._group()
        while g is not None and self._cgroup_pids():
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, 0.0)
            # cgroup v2's cgroup.events would wake us; v1 has nothing to poll: a short,
            # bounded sleep between reads of cgroup.procs.
            time.sleep(0.02)

    def _keep_stats(self) -> None:
        """The cgroup's counters as the target ended: stats() gives them after exit,
        when the cgroup is gone."""
        if self._final_stats is None and self.spec.cgroup is not None:
            g = self._group()
            try:
                if g is not None and g.exists():
                    self._final_stats = g.stats()
            except (OSError, SandboxError):
                pass

    def _wait(self, timeout: "float | None" = None) -> int:
        rc = self._popen.returncode
        if rc is not None:
            return rc
        if self._child and self.pidfd is not None:
            # Readable once it has exited, whoever reaps it; then reap it ourselves,
            # unless its status has already been taken.
            import select
            p = select.poll()
            p.register(self.pidfd, select.POLLIN)
            if not p.poll(None if timeout is None else max(0.0, timeout) * 1000):
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            from . import reaping
            with reaping._LOCK:         # not while reap() is handing it over
                if self._popen.returncode is None and self._status_lost():
                    raise _StatusLost(self.pid)
            return self._popen.wait()
        if timeout is not None and self.pidfd is not None:
            # A pidfd polls readable once the process exits: no sleep loop.
            import select
            p = select.poll()
            p.register(self.pidfd, select.POLLIN)
            if not p.poll(max(0.0, timeout) * 1000):
                raise subprocess.TimeoutExpired(self.args, timeout)
            return self._popen.wait()
        return self._popen.wait(timeout)

    def _status_lost(self) -> bool:
        """Our child, exited, but no longer ours to reap (and we did not reap it)."""
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            return False
        except ChildProcessError:
            return self._popen.returncode is None

    def _reap(self) -> bool:
        """sandbox.reap() found us exited: reap through Popen, which keeps the status.
        Popen.poll() never blocks on its lock: a wait() of this Process's in progress
        (the main thread, interrupted by the SIGCHLD handler that called reap()) keeps
        it, and will reap it itself -- False then."""
        return self._popen.poll() is not None

    def communicate(self, input: "bytes | None" = None, timeout: "float | None" = None):
        """As subprocess.Popen.communicate: (stdout, stderr) of the pipes asked for."""
        return self._popen.communicate(input, timeout)

    # ------------------------------------------------------------------ signals
    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is not None:
            return                    # reaped: the pid may already be someone else's
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass                  # exited, not yet reaped
            return
        self._popen.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM to the target, as subprocess.Popen.terminate(): it only sends (stop()
        also waits, and SIGKILLs after a grace period)."""
        self.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> "Stopping":
        """SIGTERM to every process of the sandbox (its cgroup when the spec has one,
        else the target), at once; the handle's wait() waits until `grace` seconds
        have passed and then SIGKILLs the lot, and returns the returncode.  Stopping N
        services takes one grace period, not N: stop() each, then wait() each."""
        return Stopping(self, grace)

    def _signal_all(self, sig: int) -> None:
        self.send_signal(sig)
        if self.spec.cgroup is not None:
            for pid in self._cgroup_pids():
                try:
                    os.kill(pid, sig)   # (a pid of its cgroup, alive: read just now)
                except OSError:
                    pass

    def kill(self) -> None:
        """SIGKILL the target and, when the spec has a cgroup, every process in it
        (whatever the target forked or daemonized).  Does not wait."""
        if self.spec.cgroup is not None:
            self._kill_cgroup()
        target = self.target_pid
        if target != self.pid:
            # In a new pid namespace: SIGKILL of the namespace's own processes (its
            # pid 1 takes the whole namespace down) -- the supervisor outside cannot
            # forward a SIGKILL it receives.
            for pid in _chain(self.pid, target)[1:]:
                _kill_by_pidfd(pid)
        self.send_signal(signal.SIGKILL)

    def _group(self):
        """The spec's cgroup as a sandbox.cgroups.Group, or None."""
        if self.spec.cgroup is None:
            return None
        from . import cgroups
        try:
            return cgroups.Group.from_spec(self.spec.cgroup)
        except (AttributeError, OSError, SandboxError):
            return None

    def _kill_cgroup(self) -> None:
        group = self._group()
        if group is None:
            return
        try:
            # cgroup.kill (v2) or freeze-kill-thaw (v1): whatever the target forked or
            # daemonized dies too, and nothing can fork its way out meanwhile.
            group.kill(timeout=5.0)
        except OSError:
            for pid in self._cgroup_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def _cgroup_pids(self) -> "list[int]":
        group = self._group()
        if group is None:
            return []
        try:
            return sorted(group.procs())
        except OSError:
            return []

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        """cpu seconds, memory and number of processes (psutil): of every process in
        the cgroup when the spec has one, else of the target and its descendants.
        With a cgroup, `cgroup` holds the kernel's own counters (Group.stats())."""
        import psutil
        try:
            main = psutil.Process(self.pid)
            procs = [main]
            if self.spec.cgroup is not None:
                members = [p for p in self._cgroup_pids() if p != self.pid]
                procs += [psutil.Process(p) for p in members if psutil.pid_exists(p)]
            else:
                procs += main.children(recursive=True)
        except psutil.NoSuchProcess:
            out = {"pid": self.pid, "running": False, "returncode": self.returncode,
                   "cpu_user": 0.0, "cpu_system": 0.0, "rss": 0, "vms": 0, "threads": 0,
                   "pids": 0}
            self._keep_stats()
            if self._final_stats is not None:
                out["cgroup"] = self._final_stats      # as it ended
            return out
        out = {"pid": self.pid, "running": True, "cpu_user": 0.0, "cpu_system": 0.0,
               "rss": 0, "vms": 0, "threads": 0, "pids": 0}
        for p in procs:
            try:
                with p.oneshot():
                    if p.status() == psutil.STATUS_ZOMBIE:
                        continue
                    ct, mem = p.cpu_times(), p.memory_info()
                    out["threads"] += p.num_threads()
            except psutil.NoSuchProcess:
                continue
            out["cpu_user"] += ct.user
            out["cpu_system"] += ct.system
            out["rss"] += mem.rss
            out["vms"] += mem.vms
            out["pids"] += 1
        out["running"] = out["pids"] > 0
        group = self._group()
        if group is not None:
            try:
                out["cgroup"] = group.stats()
            except OSError:
                pass
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self, grace: "float | None" = None) -> None:
        """Stop the target (terminate with `grace`, default `exit_grace`), kill what is
        left in its cgroup, remove the cgroup directories spawn() created and the spec's
        runtime directories (unless preserve_runtime), close pipes and the pidfd.
        Idempotent."""
        if self._closed:
            return
        try:
            if self.returncode is None:
                try:
                    self.stop(self.exit_grace if grace is None else grace).wait()
                except _StatusLost:
                    pass                # ended, its status taken elsewhere: nothing to stop
            self._keep_stats()
            if self.spec.cgroup is not None and self._cgroup_pids():
                self._kill_cgroup()
            self._remove_cgroups()
            self._remove_runtime_directories()
        finally:
            self._release()

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """As subprocess.Popen's: the pipes are closed and the target waited for --
        then everything close() releases is (cgroup, runtime directories, pidfd).  If
        the block raised, the target is stopped first (stop(exit_grace)), so a failing
        caller does not hang on a service that would run on."""
        try:
            if exc_type is not None:
                self.close()
                return
            self._close_pipes()
            try:
                self.wait()
            except _StatusLost:
                pass
        finally:
            self.close()

    def __del__(self):
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        fd, self.pidfd = getattr(self, "pidfd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _remove_cgroups(self, timeout: float = 2.0) -> None:
        """rmdir the leaf cgroups spawn() saw created.  Members leave a cgroup as they
        exit, so a just-killed cgroup may stay busy for a moment: retry briefly."""
        deadline = time.monotonic() + timeout
        for d in self._created_cgroups:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != _errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        self._created_cgroups = []

    def _remove_runtime_directories(self) -> None:
        """The spec's runtime directories (unless preserve_runtime), as systemd removes
        RuntimeDirectory= when the service stops."""
        if getattr(self.spec, "directories", None) is None:
            return
        from . import directories
        directories.remove_runtime(directories.prepare(self.spec))

    def _abandon(self) -> None:
        """The handshake failed or timed out: kill the shim, reap it, clean up."""
        try:
            self._popen.kill()
        except OSError:
            pass
        self._popen.wait()
        self._cleanup_failed_setup()

    def _cleanup_failed_setup(self) -> None:
        """After a setup failure (the shim is reaped): the cgroup the shim may have
        created before failing, pipes and the pidfd go."""
        self._remove_cgroups()
        self._remove_runtime_directories()
        self._release()

    def _release(self) -> None:
        """The handle's own resources: the caller's pipe ends, the pidfd and the
        notification socket."""
        self._closed = True
        if self._notify is not None:
            self._notify.close()
        self._close_pipes()
        self._close_pidfd()

    def _close_pipes(self) -> None:
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    # ------------------------------------------------------------------ readiness
    # sd_notify (sandbox.notify): a spec with `notify` gets a socket of the spawner's.
    # Messages are read by whichever call drains the socket -- wait_ready(), ready(),
    # or reading one of the notify_* attributes -- and what they said is kept here, so
    # every reader sees the same state.

    def _attach_notify(self, listener) -> None:
        """spawn(): the socket made for this process; closed by close() (and by a
        failed setup's cleanup)."""
        self._notify = listener
        listener.group = self._group()   # with a cgroup, its members' messages count

    def _notify_exec_done(self) -> None:
        """spawn(), once the target was exec'd: find its pid now (target_pid caches it),
        while the chain to it is settled -- a notifier that exits at once (systemd-notify
        as the target) must still be known as the target when its message is read."""
        self.target_pid  # noqa: B018  (a property with a cache)

    def _notify_drain(self):
        n = self._notify
        if n is None:
            from .notify import NotifyError
            raise NotifyError("notify: the spec did not ask for readiness notification "
                              "(\"notify\": true)")
        n.drain((self.target_pid,))
        return n

    def wait_ready(self, timeout: "float | None" = None) -> bool:
        """Block until the target sends READY=1 (True), or `timeout` seconds pass
        (False).  Raises sandbox.notify.NotifyError (a SandboxError) if the target exits
        first without having said it -- messages sent before it exited still count."""
        import select
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            exited = self._notify_exited()      # before the drain: nothing is missed
            n = self._notify_drain()
            if n.ready:
                return True
            if exited:
                self._raise_not_ready()
            if n.closed:
                from .notify import NotifyError
                raise NotifyError("notify: the process handle is closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            p = select.poll()
            p.register(n.fileno(), select.POLLIN)
            if self.pidfd is not None:
                p.register(self.pidfd, select.POLLIN)   # readable once it exits
                ms = None if left is None else left * 1000
            else:
                ms = 50 if left is None else min(left, 0.05) * 1000
            p.poll(ms)

    async def ready(self) -> bool:
        """`await proc.ready()`: as wait_ready() without a timeout (wrap it in
        asyncio.wait_for for one), on the running loop: loop.add_reader() on the socket
        and on the pidfd, no thread.  True once READY=1 came; NotifyError if the target
        exits first."""
        import asyncio
        n = self._notify_drain()
        if n.ready:
            return True
        loop = asyncio.get_running_loop()
        done: "asyncio.Future[bool]" = loop.create_future()

        def check(exited: bool = False) -> None:
            if done.done():
                return
            try:
                exited = exited or self._notify_exited()
                if self._notify_drain().ready:
                    done.set_result(True)
                elif exited:
                    self._raise_not_ready()
            except BaseException as e:      # noqa: BLE001  (handed to the awaiter)
                done.set_exception(e)

        fds = [n.fileno()]
        loop.add_reader(fds[0], check)
        timer = None
        if self.pidfd is not None:
            fds.append(self.pidfd)
            loop.add_reader(self.pidfd, check, True)
        else:                               # no pidfd: look for the exit now and then

            def tick() -> None:
                nonlocal timer
                check()
                if not done.done():
                    timer = loop.call_later(0.05, tick)
            timer = loop.call_later(0.05, tick)
        try:
            check()                         # anything that came before the readers
            return await done
        finally:
            for fd in fds:
                loop.remove_reader(fd)
            if timer is not None:
                timer.cancel()

    def _notify_exited(self) -> bool:
        if self.poll() is not None:
            return True
        if self.pidfd is None:
            return False
        import select
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return bool(p.poll(0))      # gone, its status not read yet (the fork server's)

    def _raise_not_ready(self):
        from .notify import NotifyError
        try:
            rc: "int | None" = self.wait(5.0)
        except subprocess.TimeoutExpired:
            rc = None
        raise NotifyError(f"notify: the target exited (returncode {rc}) before it said "
                          "READY=1", rc)

    def _notify_state(self, name: str):
        if self._notify is None:
            return None
        if not self._notify.closed:
            self._notify.drain((self.target_pid,))
        return getattr(self._notify, name)

    @property
    def notify_socket(self) -> "str | None":
        """The socket's path on the host (the target sees NOTIFY_SOCKET, which with a
        mount namespace is another path); None without `notify`."""
        return self._notify.path if self._notify is not None else None

    @property
    def notify_ready(self) -> bool:
        """READY=1 has come (RELOADING=1 since: False until the next READY=1)."""
        return bool(self._notify_state("ready")) and not self._notify_state("reloading")

    @property
    def notify_status(self) -> "str | None":
        """The last STATUS= (free-form text)."""
        return self._notify_state("status")

    @property
    def main_pid(self) -> "int | None":
        """The last MAINPID= (as the target's pid namespace numbers it)."""
        return self._notify_state("main_pid")

    @property
    def stopping(self) -> bool:
        """STOPPING=1 has come."""
        return bool(self._notify_state("stopping"))

    @property
    def notify_errno(self) -> "int | None":
        """The last ERRNO= (the target's reason for failing)."""
        return self._notify_state("errno")

    @property
    def watchdog_at(self) -> "float | None":
        """time.monotonic() when the last WATCHDOG=1 was read."""
        return self._notify_state("watchdog_at")

    @property
    def notify_dropped(self) -> int:
        """Messages dropped: from a sender that is neither the target nor (with a
        cgroup) a process in it, without credentials, or longer than 4096 bytes."""
        return self._notify_state("dropped") or 0


def _children(pid: int) -> "list[int]":
    """Direct children of pid: /proc/<pid>/task/*/children, else a scan of /proc."""
    try:
        out = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        return out
    except OSError:
        pass
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if procfs.ppid(d) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _chain(top: int, target: int) -> "list[int]":
    """Pids from top down to target (its ancestors below top), via /proc ppid links."""
    out = [target]
    cur = target
    for _ in range(8):
        if cur == top:
            return out[::-1]
        try:
            cur = procfs.ppid(cur)
        except (OSError, IndexError, ValueError):
            break
        out.append(cur)
    return [top, target]


def _kill_by_pidfd(pid: int) -> None:
    # Through a pidfd, so the only window for pid reuse is between reading /proc and
    # pidfd_open, not also up to the kill.
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)
