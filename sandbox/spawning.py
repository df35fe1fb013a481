"""spawn() and run(): launch a target through the wrapperd shim from Python code.

Named spawning.py, not spawn.py, so the module never shadows the function
`sandbox.spawn` (importing a submodule rebinds the package attribute of its name).

The shim is started as a fresh process (`python -I -m wrapperd`) with subprocess.Popen
and no preexec_fn: preexec_fn runs Python code between fork and exec, which can
deadlock in a multithreaded caller (another thread may hold the import lock or a
malloc lock at fork time).  Every privileged step happens inside the shim instead.

The handshake, as CPython's subprocess does with its errpipe and bubblewrap with
--json-status-fd:
  * the spec travels on an inherited pipe (--spec-fd), never argv or the environment
    (argv and environ are readable in /proc by anyone who may ptrace-read the process);
  * the shim marks the status pipe close-on-exec; the parent reads it until EOF.
    EOF with nothing written means the target was exec'd; otherwise the shim wrote one
    JSON record {"step", "errno", "message"} and exits 125/126/127.  spawn() then
    reaps the shim (no zombie) and raises SpecError, SetupError or ExecError.
Both pipe ends the parent keeps are created close-on-exec, so a shim spawned by
another thread at the same moment never holds them (which would delay the EOF).
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess
import sys
import threading
import time
from typing import Any, TypedDict, Unpack

from .errors import SandboxError, SetupError, SpecError, error_from_record, exit_code


class SpawnFields(TypedDict, total=False):
    """The spec fields spawn(), run() and ForkServer.spawn() take as keywords (the
    spec's top-level keys, see docs/spec.md; `user`, `cgroup` and
    `capabilities` also take the shorthands of build_spec).  Declared so that a type
    checker catches a misspelt keyword; at run time the spec loader refuses it too."""
    version: int
    name: str
    profile: str
    argv: Any
    env: Any
    cwd: "str | None"
    user: Any
    capabilities: Any
    securebits: Any
    no_new_privs: bool
    pdeathsig: Any
    new_session: bool
    seccomp: Any
    namespaces: Any
    hostname: str
    mounts: Any
    cgroup: Any
    rlimits: Any
    oom_score_adj: int
    nice: int
    pass_fds: Any
    masked_paths: Any
    readonly_paths: Any
    readonly_root: bool
    filesystem: Any
    directories: Any
    listen: Any
    address_families: "list[str] | None"
    notify: bool
    landlock: Any

__all__ = ["spawn", "run", "Completed", "build_spec", "resolve", "PIPE", "DEVNULL",
           "STDOUT", "DEFAULT_SETUP_TIMEOUT"]

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
DEFAULT_SETUP_TIMEOUT = 60.0
_SHIM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --------------------------------------------------------------------------- the spec

def resolve(spec):
    """The spec with its profile merged underneath, as the shim will run it.

    A Spec loaded from JSON keeps `profile` as a name only; wrapperd merges the profile
    when it reads the spec.  Resolving here, in the parent, lets spawn() validate the
    whole thing before anything runs and lets verify() and the exposure score see what
    the shim sees.  Fields the spec sets win over the profile's.  The result has no
    `profile` left (it is self-contained), so resolving it again changes nothing and
    the shim does not merge the profile a second time."""
    from .spec import Spec
    if not isinstance(spec, Spec):
        raise TypeError(f"expected a sandbox.Spec, got {type(spec).__name__}")
    if not spec.profile:
        return spec
    from . import profile
    # spec_layer: only the fields the spec was given beat the profile, not its defaults.
    return _merged(profile.spec_layer(spec))


def _merged(d: dict):
    from . import profile
    from .spec import Spec
    d = profile.apply_profile(d)
    d.pop("profile", None)
    return Spec.from_dict(d)


def _user_field(v):
    if isinstance(v, (int, str)) and not isinstance(v, bool):
        return {"uid": v}
    return v


def _cgroup_field(v):
    return {"path": v} if isinstance(v, str) else v


def _caps_field(v):
    # capabilities=["CAP_NET_BIND_SERVICE"] reads as "keep exactly these".
    return {"keep": list(v)} if isinstance(v, (list, tuple)) else v


_FIELD_SUGAR = {"user": _user_field, "cgroup": _cgroup_field, "capabilities": _caps_field}


def check_library_spec(spec) -> None:
    """What spawn() and the fork server refuse beyond the shim: `"cwd": "inherit"`,
    whose directory would be the caller's (the fork server's: its start-time one) and
    never checked as the target's -- it is wrapperd's flags mode, Talos's shim."""
    spec.check_runnable()
    if spec.cwd is None:
        raise SpecError("'inherit' is wrapperd's flags mode (Talos's shim); the library "
                        "gives the target a directory: name it", "cwd")


def build_spec(target=None, **fields: Unpack[SpawnFields]):
    """A resolved Spec from spawn()'s arguments: a Spec, a spec dict, or an argv list
    plus spec fields as keywords (`user="svc"`, `cgroup="/wrapperd/svc"`,
    `capabilities=["CAP_NET_BIND_SERVICE"]` are shorthands)."""
    from .spec import Spec
    if isinstance(target, Spec):
        if fields:
            from . import profile
            d = profile.spec_layer(target)
            d.update(_sugar(fields))
            target = d
        else:
            return resolve(target)
    if isinstance(target, dict):
        d = dict(target)
        d.update(_sugar(fields))
    elif isinstance(target, (list, tuple)):
        d = {"argv": [os.fspath(a) for a in target]}
        d.update(_sugar(fields))
    elif isinstance(target, (str, bytes, os.PathLike)):
        raise TypeError("give argv as a list (['/usr/bin/svc', ...]), not a string")
    elif target is None:
        d = _sugar(fields)
    else:
        raise TypeError(f"cannot spawn a {type(target).__name__}")
    return _merged(d)


def _sugar(fields: "SpawnFields | dict") -> dict:
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k] = _FIELD_SUGAR[k](v) if k in _FIELD_SUGAR else v
    return out


def _open_stdio(v, which: str, opened: list):
    """None: inherit; PIPE/DEVNULL/STDOUT/an fd/a file object: as subprocess; a path:
    opened here, in the parent (stdin read-only, the others appended, created 0640)."""
    if v is None or isinstance(v, int) or hasattr(v, "fileno"):
        return v
    if isinstance(v, (str, bytes, os.PathLike)):
        from .stdio import open_path
        fd = open_path(v, which == "stdin", which)
        opened.append(fd)
        return fd
    raise TypeError(f"{which}: expected None, PIPE, DEVNULL, an fd, a file or a path")


# --------------------------------------------------------------------------- spawn

_shim_ok: dict = {}
_shim_lock = threading.Lock()


def _shim_env() -> dict:
    """The shim's own environment (the target gets exactly spec.env, never this): a PATH,
    and where the caller moved wrapperd's BPF cache or dynamic-user registry, that
    setting."""
    from .bpfcache import ENV
    from .dynamicuser import ENV as DYNAMIC_ENV
    from .notify import ENV as NOTIFY_ENV
    env = {"PATH": _SHIM_PATH}
    for name in (ENV, DYNAMIC_ENV, NOTIFY_ENV):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _check_shim(python: str) -> None:
    """Fail closed if `python -I` cannot import wrapperd (say, the library is used from
    a source tree that only the caller's sys.path has).  Such a shim would exit 1
    without writing a status record, and EOF without a record means "exec'd": the
    caller would get a Process for a target that never ran.  Checked once per python."""
    with _shim_lock:
        if _shim_ok.get(python):
            return
        try:
            r = subprocess.run([python, "-I", "-c", "import wrapperd.cli"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={"PATH": _SHIM_PATH},
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SetupError("spawn", getattr(e, "errno", 0) or 0,
                             f"cannot run {python}") from None
        if r.returncode != 0:
            last = (r.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
            raise SetupError("spawn", 0, f"{python} -I cannot import wrapperd ({last}); "
                             "install the package where that python finds it")
        _shim_ok[python] = True


def package_root() -> "str | None":
    """The sys.path entry holding both the sandbox and wrapperd packages this process
    uses, or None if they live apart."""
    import wrapperd
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.dirname(os.path.dirname(os.path.abspath(wrapperd.__file__))) != root:
        return None
    return root


def lean_path() -> str:
    """sys.path entries for the lean shim (after its standard library): the package
    root, then this interpreter's site-packages (only for what a step imports lazily,
    such as cgroupspy for v1 limits).  Entries with ':' in them are left out."""
    import site
    root = package_root()
    out = [root] if root else []
    # Only the interpreter's own site-packages (its prefixes'): never an entry the
    # caller's PYTHONPATH or user site put on sys.path -- the shim runs as root, and
    # -I -S is there to keep exactly those out.
    own = set(site.getsitepackages())
    out += [p for p in sys.path if p in own and p not in out]
    return ":".join(p for p in out if ":" not in p)


def lean_command(root: str, plan_fd: int, status_fd: int) -> "list[str]":
    """The lean shim: `python -I -S` (no site, no editable finder) running a plan.
    `root`: package_root(), or lean_path()."""
    from wrapperd.planned import LEAN_BOOT
    return [sys.executable, "-I", "-S", "-c", LEAN_BOOT, root, "--plan-fd", str(plan_fd),
            "--status-fd", str(status_fd), "--parent-pid", str(os.getpid())]


def _prepared(spec, python, notify_socket: "str | None" = None
              ) -> "tuple[bytes | None, str | None, bool]":
    """(plan bytes, package root, new pid namespace made here) to start the lean shim
    with, or (None, None, False): then the shim gets the spec itself (another
    `python` than ours: our package root may not suit it).  A spec that cannot be
    prepared (a bad uid name, a target not found ...) raises here, as from the fork
    server, with the exit status the shim would have given and no pid: no shim is
    started and no stdio file is created for what cannot run.  notify_socket: the
    socket made for a spec with `notify` (sandbox.notify.Listener)."""
    if python is not None and os.path.realpath(python) != os.path.realpath(sys.executable):
        return None, None, False
    root = package_root()
    if root is None:
        return None, None, False
    from wrapperd import shim

    from . import namespaces
    from . import plan as _plan
    try:
        plan = shim.prepare(spec, notify_socket=notify_socket)
        payload = _plan.encode(plan)
    except SandboxError as e:
        e.exit_status = exit_code(e)
        e.pid = None
        raise
    # The pid namespace made here, with the shim born as its pid 1, saves the shim
    # its outside supervisor (--in-new-pidns, wrapperd.planned).  Not with pdeathsig:
    # the shim could not tell whether we (outside its namespace) already exited.
    premade = namespaces.premade_kind(plan.namespaces) is not None and \
        spec.pdeathsig is None
    return payload, lean_path(), premade


def _cgroup_dirs(spec) -> "list[str]":
    """The spec's cgroup directory in every hierarchy it would join."""
    if spec.cgroup is None:
        return []
    from . import cgroups
    try:
        p = cgroups.prepare(spec.cgroup)
    except SandboxError:
        return []      # the shim will report it
    return [t.hierarchy.mountpoint + p.path for t in p.targets]


def _missing_cgroup_dirs(spec) -> "list[str]":
    """The directories the shim will create for the spec's cgroup -- its own and the
    parents not there yet -- deepest first: what Process removes again (each only once
    empty: a parent another sandbox still uses stays)."""
    out = []
    for leaf in _cgroup_dirs(spec):
        d = leaf
        while d not in ("", "/") and not os.path.isdir(d):
            out.append(d)
            d = os.path.dirname(d)
    return sorted(set(out), key=lambda d: -d.count("/"))


def _wait_fd(fd: int, events: int, deadline: "float | None") -> None:
    import select
    if deadline is None:
        return
    left = deadline - time.monotonic()
    p = select.poll()
    p.register(fd, events)
    if left <= 0 or not p.poll(left * 1000):
        raise TimeoutError


def _write_all(fd: int, data: bytes, deadline: "float | None") -> None:
    """Write the spec; a shim that never reads it cannot block us past the deadline."""
    import select
    os.set_blocking(fd, deadline is None)
    view = memoryview(data)
    while view:
        _wait_fd(fd, select.POLLOUT, deadline)
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _read_status(fd: int, deadline: "float | None") -> bytes:
    import select
    chunks: "list[bytes]" = []
    size = 0
    while True:
        _wait_fd(fd, select.POLLIN, deadline)
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        size += len(b)
        if size > 1 << 20:              # a shim never writes this much: stop reading
            return b"".join(chunks)


_LASTING: "tuple[Any, Any] | None" = None      # (thread, its queue of calls)
_LASTING_LOCK = threading.Lock()


def _from_lasting_thread(fn):
    """fn() run in a daemon thread started once and never ended (ended only with the
    interpreter), its result or exception handed back."""
    global _LASTING
    with _LASTING_LOCK:
        if _LASTING is None or not _LASTING[0].is_alive():
            import queue
            q: "queue.SimpleQueue" = queue.SimpleQueue()

            def serve() -> None:
                while True:
                    call, done, box = q.get()
                    try:
                        box.append((True, call()))
                    except BaseException as e:     # handed back, raised there
                        box.append((False, e))
                    done.set()
            t = threading.Thread(target=serve, name="sandbox-spawner", daemon=True)
            t.start()
            _LASTING = (t, q)
        q = _LASTING[1]
    done, box = threading.Event(), []
    q.put((fn, done, box))
    done.wait()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def spawn(target=None, *, stdin=None, stdout=None, stderr=None,
          setup_timeout: "float | None" = DEFAULT_SETUP_TIMEOUT, python: "str | None" = None,
          fast: bool = False, **fields: Unpack[SpawnFields]):
    """Start a confined target; return its Process once the target has been exec'd.

    `target`: a sandbox.Spec, a spec dict, or an argv list with spec fields as keywords
    (`spawn(["/usr/bin/svc"], profile="service", user="svc", cgroup="/wrapperd/svc")`).
    stdin/stdout/stderr: None (inherit), PIPE, DEVNULL, STDOUT (stderr), an fd, a file
    object or a path.  Raises SpecError (bad spec; nothing ran), SetupError (a step
    failed; `.step`, `.errno`, `.message`; the target never ran) or ExecError.

    The spec is prepared here (sandbox.plan) and run by the lean shim.  `fast=True`
    forks it from the process-wide fork server instead (sandbox.forkserver: no
    interpreter start per spawn; started on first use, stopped at exit).
    """
    from .process import Process
    if fast:
        if python is not None:
            raise TypeError("spawn(fast=True) runs in the fork server: no 'python'")
        from . import forkserver
        return forkserver.default().spawn(target, stdin=stdin, stdout=stdout,
                                          stderr=stderr, setup_timeout=setup_timeout,
                                          **fields)
    spec = build_spec(target, **fields)
    check_library_spec(spec)
    listener = _notify_listener(spec)      # `notify`: the socket, ours (sandbox.notify)
    try:
        payload, lean_root, premade = _prepared(
            spec, python, listener.path if listener is not None else None)
        shim_python = python or sys.executable
        if payload is None:
            _check_shim(shim_python)
            payload = spec.to_json(indent=None).encode()
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    cg_dirs = _missing_cgroup_dirs(spec)
    shim_env = _shim_env()
    if listener is not None:
        shim_env["NOTIFY_SOCKET"] = listener.path   # a shim given the spec prepares it

    opened: list = []
    spec_r = spec_w = status_r = status_w = -1
    popen = None
    try:
        in_, out, err = (_open_stdio(stdin, "stdin", opened),
                         _open_stdio(stdout, "stdout", opened),
                         _open_stdio(stderr, "stderr", opened))
        spec_r, spec_w = os.pipe()        # both close-on-exec (PEP 446)
        status_r, status_w = os.pipe()
        if lean_root is not None:
            cmd = lean_command(lean_root, spec_r, status_w)
        else:
            cmd = [shim_python, "-I", "-m", "wrapperd", "--spec-fd", str(spec_r),
                   "--status-fd", str(status_w), "--parent-pid", str(os.getpid())]

        def start(cmd=cmd):
            return subprocess.Popen(cmd, stdin=in_, stdout=out, stderr=err,
                                    pass_fds=(spec_r, status_w, *spec.pass_fds),
                                    close_fds=True, env=shim_env)
        popen = None
        if premade:
            from . import namespaces
            popen = namespaces.made_pid_ns_for_children(
                lambda: start(cmd + ["--in-new-pidns"]))
        if popen is None and spec.pdeathsig is not None:
            # The kernel sends the parent-death signal when the *thread* that forked
            # exits: forked from an executor's worker, the target would die with it.
            # Forked from a thread that lives as long as this process, it dies with
            # the process, as the spec means.
            popen = _from_lasting_thread(start)
        if popen is None:              # no CLONE_NEWPID allowed here: the shim makes it
            popen = start()
    except BaseException as e:
        for fd in (spec_r, spec_w, status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if listener is not None:
            listener.close()
        if isinstance(e, OSError) and not isinstance(e, SandboxError):
            # e.g. a pass_fds entry that is not open, a stdio path that cannot be opened
            what = f"open {os.fsdecode(e.filename)}" if e.filename else "start wrapperd"
            raise SetupError("spawn", e.errno or 0, what) from None
        raise
    finally:
        for fd in opened:               # the child has its copies
            try:
                os.close(fd)
            except OSError:
                pass
    # Only the child may hold these now: EOF on status_r then means "exec'd or failed".
    os.close(spec_r)
    os.close(status_w)
    proc = Process(popen, spec, created_cgroups=cg_dirs)
    if listener is not None:
        proc._attach_notify(listener)   # closed with the Process, a failed setup's too
    deadline = None if setup_timeout is None else time.monotonic() + setup_timeout
    try:
        try:
            _write_all(spec_w, payload, deadline)
        except BrokenPipeError:
            pass                        # the shim died early; its status says why
        finally:
            os.close(spec_w)
        raw = _read_status(status_r, deadline)
    except TimeoutError:
        proc._abandon()
        raise SetupError("spawn", _errno.ETIMEDOUT,
                         f"wrapperd did not exec the target within {setup_timeout}s") \
            from None
    except BaseException:
        proc._abandon()                 # e.g. KeyboardInterrupt: no half-started target
        raise
    finally:
        os.close(status_r)
    if raw:
        status = popen.wait()           # the shim exits right after writing: reap it
        proc._cleanup_failed_setup()
        raise error_from_record(raw, status, popen.pid)
    if listener is not None:
        proc._notify_exec_done()
    return proc


def _notify_listener(spec):
    """The socket for a spec with `notify` (sandbox.notify.Listener), else None."""
    if not spec.notify:
        return None
    from .notify import Listener
    return Listener()


# --------------------------------------------------------------------------- run

class Completed:
    """What run() returns, like subprocess.CompletedProcess."""

    def __init__(self, args, returncode, stdout=None, stderr=None, pid=None, spec=None):
        self.args = args
        self.returncode = returncode
        self.exit_reason = None     # sandbox.process.ExitReason, set by run()
        self.stdout = stdout
        self.stderr = stderr
        self.pid = pid
        self.spec = spec

    def __repr__(self) -> str:
        return (f"Completed(args={self.args!r}, returncode={self.returncode!r}, "
                f"pid={self.pid})")

    def check_returncode(self) -> None:
        if self.returncode:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout,
                                                self.stderr)


def run(target=None, *, input: "bytes | None" = None, capture_output: bool = False,
        timeout: "float | None" = None, check: bool = False, stdin=None, stdout=None,
        stderr=None, **kw: Any) -> Completed:
    """Like subprocess.run, through the shim: spawn, feed `input`, collect output, wait.

    On timeout the target (and its whole cgroup, if the spec has one) is killed and
    subprocess.TimeoutExpired is raised.  With check, a non-zero exit raises
    subprocess.CalledProcessError.  Setup failures raise as spawn() does."""
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr may not be used with capture_output")
        stdout = stderr = PIPE
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input may not both be used")
        stdin = PIPE
    proc = spawn(target, stdin=stdin, stdout=stdout, stderr=stderr, **kw)
    with proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            proc._timed_out = True
            proc.kill()
            out, err = proc.communicate()
            late = subprocess.TimeoutExpired(list(proc.spec.argv), e.timeout, out, err)
            late.exit_reason = proc.exit_reason            # type: ignore[attr-defined]
            raise late from e
        done = Completed(list(proc.spec.argv), proc.returncode, out, err, proc.pid,
                         proc.spec)
        done.exit_reason = proc.exit_reason
    if check:
        done.check_returncode()
    return done
