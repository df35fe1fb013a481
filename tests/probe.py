"""The probe: run as the target, it reports what the kernel says about itself as JSON.

It runs under the system python3 (any uid can read and run it) and uses only the
standard library.  Optional actions, each one argument, run before the report:
  touch:PATH          create PATH (a marker that proves the target ran)
  bind:PORT           try to bind 127.0.0.1:PORT; result under "bind"
  run:PATH[,ARG...]   run a program and parse its stdout as JSON under "run"
  sleep:SECONDS       sleep after printing the report (a long-running target)
  cglimits            read memory.limit_in_bytes and pids.max of its own v1 cgroups
  tiocsti             ioctl(0, TIOCSTI, "x"): push a byte into the input of the
                      terminal on stdin; "ok" or the errno name under "tiocsti"
  openw:PATH          open PATH for writing (O_WRONLY, nothing written); "ok" or the
                      errno name under actions
  read:PATH           read PATH: {"data": its bytes as latin-1 text} or {"errno": the
                      errno name}, under "read" by PATH
  ancestors:N         for up to N ancestors (followed through /proc/PID/stat, so in the
                      pid namespace /proc was mounted for): what opening their
                      /proc/PID/exe for reading and for writing, and /proc/PID/mem for
                      reading and writing, gives, under "ancestors"
  attack:PID          what one sandbox can do to another process PID (a host pid, as
                      this /proc names it): read its environ, open its mem for
                      writing and write one byte back where it was (a write that
                      lands, harmlessly), PTRACE_SEIZE it, kill(PID, 0) and SIGSTOP
                      (a stop that lands is undone at once with SIGCONT); "ok" or the
                      errno name of each, under "attack"
"""

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
import time


def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def stat():
    """Process group, session and controlling terminal (tty_nr; 0: none), from stat."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"ppid": int(fields[1]), "pgrp": int(fields[2]), "session": int(fields[3]),
            "tty_nr": int(fields[4])}


def _try_open(path, flags):
    try:
        os.close(os.open(path, flags))
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


def ancestors(n):
    out, pid = [], "self"
    for _ in range(n):
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        if pid == 0:
            break
        try:
            link = os.readlink(f"/proc/{pid}/exe")
        except OSError as e:
            link = errno.errorcode[e.errno]
        out.append({"pid": pid, "exe_link": link,
                    "exe_r": _try_open(f"/proc/{pid}/exe", os.O_RDONLY),
                    "exe_w": _try_open(f"/proc/{pid}/exe", os.O_WRONLY),
                    "mem_rw": _try_open(f"/proc/{pid}/mem", os.O_RDWR)})
    return out


def _errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def attack(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            f.read()
        out["environ"] = "ok"
    except OSError as e:
        out["environ"] = _errname(e)
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    except OSError as e:
        out["mem_open"] = out["mem_write"] = _errname(e)
    else:
        out["mem_open"] = "ok"
        try:
            addr = None
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    span, perms = line.split()[:2]
                    if perms.startswith("rw"):
                        addr = int(span.split("-")[0], 16)
                        break
            byte = os.pread(fd, 1, addr)
            out["mem_write"] = "ok" if os.pwrite(fd, byte, addr) == 1 else "short"
        except OSError as e:
            out["mem_write"] = _errname(e)
        finally:
            os.close(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    # PTRACE_SEIZE attaches without stopping; the tracee is let go when we exit.
    if libc.ptrace(0x4206, pid, None, None) == 0:
        out["ptrace"] = "ok"
    else:
        out["ptrace"] = errno.errorcode.get(ctypes.get_errno(), "?")
    for name, sig in (("kill0", 0), ("sigstop", 19)):
        try:
            os.kill(pid, sig)
            out[name] = "ok"
            if sig:
                os.kill(pid, 18)       # SIGCONT
        except OSError as e:
            out[name] = _errname(e)
    return out


def fds():
    names = os.listdir("/proc/self/fd")
    out = {}
    for n in names:
        try:
            out[n] = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            continue          # the directory fd listdir used, already closed
    return out


def main(args):
    report = {"actions": {}}
    sleep = 0
    for a in args:
        verb, _, arg = a.partition(":")
        if verb == "touch":
            try:
                open(arg, "w").close()
                report["actions"][a] = "ok"
            except OSError as e:
                report["actions"][a] = errno.errorcode[e.errno]
        elif verb == "bind":
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", int(arg)))
                report["bind"] = "ok"
            except OSError as e:
                report["bind"] = errno.errorcode[e.errno]
            finally:
                s.close()
        elif verb == "run":
            cmd = arg.split(",")
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                report["run"] = json.loads(p.stdout)
            except ValueError:
                report["run"] = {"rc": p.returncode, "stdout": p.stdout.decode(),
                                 "stderr": p.stderr.decode()}
        elif verb == "cglimits":
            report["cglimits"] = cglimits()
        elif verb == "tiocsti":
            import fcntl
            import termios
            try:
                fcntl.ioctl(0, termios.TIOCSTI, b"x")
                report["tiocsti"] = "ok"
            except OSError as e:
                report["tiocsti"] = errno.errorcode[e.errno]
        elif verb == "openw":
            try:
                os.close(os.open(arg, os.O_WRONLY))
                report["actions"][a] = "ok"
            except OSError as e:
                report["actions"][a] = errno.errorcode[e.errno]
        elif verb == "read":
            try:
                with open(arg, "rb") as f:
                    report.setdefault("read", {})[arg] = {"data": f.read().decode("latin-1")}
            except OSError as e:
                report.setdefault("read", {})[arg] = {"errno": errno.errorcode[e.errno]}
        elif verb == "ancestors":
            report["ancestors"] = ancestors(int(arg))
        elif verb == "attack":
            report["attack"] = attack(int(arg))
        elif verb == "sleep":
            sleep = float(arg)
    libc = ctypes.CDLL(None)
    report.update({
        "pid": os.getpid(),
        "status": status(),
        "stat": stat(),
        "limits": open("/proc/self/limits").read(),
        "cgroup": open("/proc/self/cgroup").read().splitlines(),
        "oom_score_adj": int(open("/proc/self/oom_score_adj").read()),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "ns": {n: os.readlink(f"/proc/self/ns/{n}") for n in sorted(os.listdir("/proc/self/ns"))},
        "fds": fds(),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "argv0": sys.argv[0],
        "exe": os.readlink("/proc/self/exe"),
        "dumpable": libc.prctl(3, 0, 0, 0, 0),
        "securebits": libc.prctl(27, 0, 0, 0, 0),
        "pdeathsig": _pdeathsig(libc),
    })
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    if sleep:
        time.sleep(sleep)


def cglimits():
    out = {}
    for line in open("/proc/self/cgroup").read().splitlines():
        _h, ctrls, path = line.split(":", 2)
        for ctrl, name in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
            if ctrl in ctrls.split(","):
                try:
                    with open(f"/sys/fs/cgroup/{ctrl}{path}/{name}") as f:
                        out[ctrl] = f.read().strip()
                except OSError as e:
                    out[ctrl] = errno.errorcode[e.errno]
    return out


def _pdeathsig(libc):
    sig = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(sig), 0, 0, 0)
    return sig.value


if __name__ == "__main__":
    main(sys.argv[1:])
