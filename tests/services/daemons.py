"""The real daemons the services suite runs, as data: one record each -- its Debian
package, how to write its configuration into a run's directory given a port, its argv,
the spec fields it needs under a profile, the client that checks it answers, and the
exit status it documents for SIGTERM -- and the outcome expected under each profile.

Each daemon keeps its Debian packaged configuration: copied into the run's directory
only where a free port or a path must change (a path of our own instead of one the
host's service would use, so a run never touches the host's /run/nginx.pid or
/var/log/redis), with every change named in its prepare function."""

from __future__ import annotations

import http.client
import os
import random
import re
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Callable

# The profiles of the matrix, in its column order: root first, then ever more confined.
PROFILES = ("talos", "default", "service", "network-service", "strict", "untrusted")
ROOT_PROFILES = ("talos", "default")
# Where the target is uid 0 itself: the root profiles, and untrusted's root inside its
# user namespace (a dynamic uid outside, holding no capability).
UID_0 = (*ROOT_PROFILES, "untrusted")


class ClientError(Exception):
    """The client's request did not get the answer it should (the message says what)."""


@dataclass
class Run:
    """One (daemon, profile) run: where its files are and what it listens on."""
    profile: str
    dir: str            # its configuration, readable by any uid (not in a private /tmp)
    port: int
    tag: str            # unique per run: the directories' names, the test user
    user: "str | None" = None       # sshd: the test user that logs in
    key: "str | None" = None        # sshd: that user's private key

    def name(self, daemon: "Daemon") -> str:
        """The one name of its runtime, state and logs directories (/run/NAME,
        /var/lib/NAME, /var/log/NAME): ours, never the host's service's."""
        return f"wrapperd-test-{daemon.name}-{self.tag}"


@dataclass(frozen=True)
class Daemon:
    name: str
    package: str
    binary: str
    prepare: Callable[[Run], None]          # write its configuration into run.dir
    argv: Callable[[Run], "list[str]"]
    fields: Callable[[Run], dict]           # spec fields it needs under run.profile
    check: Callable[[Run], None]            # the client; raises ClientError
    sigterm_status: int                     # its exit status after SIGTERM, as documented
    logs: Callable[[Run], "list[str]"] = lambda run: []   # its messages besides stderr
    # The user a root-started daemon switches its main process to by itself (else root).
    switches_to: "str | None" = None
    # Its port is a privileged one, as the service's real port (53) is.
    low_port: bool = False
    # Directories it needs that are not its own (a fixed path compiled in).
    fixed_dirs: Callable[[Run], "list[str]"] = lambda run: []
    # Its client logs in: a user of the test's own, with a key (run.user, run.key).
    login_user: bool = False


def _copy(src: str, dst: str, edits: "list[tuple[str, str]]") -> None:
    """Copy a packaged file with edits, each (regex, literal replacement) applied where
    it matches: one that no longer matches Debian's file fails loudly."""
    with open(src) as f:
        text = f.read()
    for pattern, repl in edits:
        text, n = re.subn(pattern, lambda m, r=repl: r, text, flags=re.M)
        assert n, f"{src}: no line matches {pattern!r} (Debian's file changed?)"
    with open(dst, "w") as f:
        f.write(text)
    os.chmod(dst, 0o644)


def _directories(run: Run, daemon: "Daemon", *kinds: str) -> dict:
    return {"directories": {k: [run.name(daemon)] for k in kinds}}


# ----------------------------------------------------------------------------- nginx

def _nginx_prepare(run: Run) -> None:
    n = run.name(NGINX)
    _copy("/etc/nginx/nginx.conf", f"{run.dir}/nginx.conf", [
        (r"^pid /run/nginx\.pid;$", f"pid /run/{n}/nginx.pid;"),
        (r"/var/log/nginx/", f"/var/log/{n}/"),
        # The temporary paths are compiled in under /var/lib/nginx: ours instead.
        (r"^\tinclude /etc/nginx/sites-enabled/\*;$",
         f"\tinclude {run.dir}/sites-enabled/*;" + "".join(
             f"\n\t{t}_temp_path /var/lib/{n}/{t};"
             for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
    ])
    os.mkdir(f"{run.dir}/sites-enabled", 0o755)
    _copy("/etc/nginx/sites-enabled/default", f"{run.dir}/sites-enabled/default", [
        (r"listen 80 default_server;", f"listen 127.0.0.1:{run.port} default_server;"),
        (r"^\s*listen \[::\]:80 default_server;\n", ""),
    ])


def _nginx_check(run: Run) -> None:
    c = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read()
    except OSError as e:
        raise ClientError(f"GET /: {e}") from e
    finally:
        c.close()
    # Debian's own page, /var/www/html/index.nginx-debian.html.
    if r.status != 200 or b"Welcome to nginx!" not in body:
        raise ClientError(f"GET /: {r.status} {body[:80]!r}")


NGINX = Daemon(
    name="nginx", package="nginx-light", binary="/usr/sbin/nginx",
    prepare=_nginx_prepare,
    # In the foreground, as a supervisor wants it (Debian's unit daemonizes, Type=forking).
    argv=lambda run: ["/usr/sbin/nginx", "-c", f"{run.dir}/nginx.conf", "-g", "daemon off;"],
    fields=lambda run: _directories(run, NGINX, "runtime", "state", "logs"),
    check=_nginx_check,
    # nginx(8): TERM, INT "fast shutdown"; the master exits 0 once its workers have.
    sigterm_status=0,
    logs=lambda run: [f"/var/log/{run.name(NGINX)}/error.log"],
)


# ----------------------------------------------------------------------------- redis

def _redis_prepare(run: Run) -> None:
    n = run.name(REDIS)
    # /etc/redis/redis.conf is redis:redis 0640: only a copy is readable by another uid.
    _copy("/etc/redis/redis.conf", f"{run.dir}/redis.conf", [
        (r"^port 6379$", f"port {run.port}"),
        (r"^pidfile /run/redis/redis-server\.pid$", f"pidfile /run/{n}/redis-server.pid"),
        (r"^logfile /var/log/redis/redis-server\.log$",
         f"logfile /var/log/{n}/redis-server.log"),
        (r"^dir /var/lib/redis$", f"dir /var/lib/{n}"),
    ])


def _redis_cli(run: Run, *args: str) -> str:
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(run.port), *args],
                       capture_output=True, text=True, timeout=10)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise ClientError(f"redis-cli {' '.join(args)}: {out}")
    return out


def _redis_check(run: Run) -> None:
    key, value = f"wrapperd-test-{run.tag}", f"value-{random.getrandbits(32)}"
    if (out := _redis_cli(run, "SET", key, value)) != "OK":
        raise ClientError(f"SET: {out}")
    if (out := _redis_cli(run, "GET", key)) != value:
        raise ClientError(f"GET: {out!r}, not {value!r}")


REDIS = Daemon(
    name="redis", package="redis-server", binary="/usr/bin/redis-server",
    prepare=_redis_prepare,
    # As Debian's unit starts it, without the systemd supervision it has no socket for.
    argv=lambda run: ["/usr/bin/redis-server", f"{run.dir}/redis.conf",
                      "--supervised", "no", "--daemonize", "no"],
    fields=lambda run: _directories(run, REDIS, "runtime", "state", "logs"),
    check=_redis_check,
    # redis.conf, shutdown-on-sigterm: saves the RDB snapshot (save points are
    # configured), then exits 0; a failed save keeps it running.
    sigterm_status=0,
    logs=lambda run: [f"/var/log/{run.name(REDIS)}/redis-server.log"],
)


# --------------------------------------------------------------------------- dnsmasq

DNS_NAME, DNS_ADDRESS = "wrapperd.test", "192.0.2.7"


def _dnsmasq_argv(run: Run) -> "list[str]":
    # dnsmasq-base ships no configuration (the dnsmasq package does): its command line,
    # an authoritative answer for one name and nothing of the host's (no resolv.conf,
    # no /etc/hosts, no /etc/dnsmasq.conf).
    return ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--log-facility=-",
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--port={run.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            f"--address=/{DNS_NAME}/{DNS_ADDRESS}",
            f"--pid-file=/run/{run.name(DNSMASQ)}/dnsmasq.pid"]


def _dns_query(name: str, qid: int) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)     # RD, one question
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)             # A, IN


def _skip_name(msg: bytes, i: int) -> int:
    while msg[i]:
        if msg[i] & 0xC0 == 0xC0:                                 # a compression pointer
            return i + 2
        i += msg[i] + 1
    return i + 1


def _dnsmasq_check(run: Run) -> None:
    qid = random.getrandbits(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        try:
            s.sendto(_dns_query(DNS_NAME, qid), ("127.0.0.1", run.port))
            msg = s.recv(512)
        except OSError as e:
            raise ClientError(f"query {DNS_NAME}: {e}") from e
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != qid or flags & 0x000F or an < 1:
        raise ClientError(f"query {DNS_NAME}: id {rid}, rcode {flags & 15}, {an} answers")
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    answers = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            answers.append(socket.inet_ntoa(msg[i:i + 4]))
        i += rdlen
    if answers != [DNS_ADDRESS]:
        raise ClientError(f"query {DNS_NAME}: A {answers}")


DNSMASQ = Daemon(
    name="dnsmasq", package="dnsmasq-base", binary="/usr/sbin/dnsmasq",
    prepare=lambda run: None,
    argv=_dnsmasq_argv,
    fields=lambda run: {
        **_directories(run, DNSMASQ, "runtime"),
        # It lists the interfaces through netlink even when told one address: without
        # AF_NETLINK (the profiles from `service` up allow UNIX, INET, INET6) it stops
        # with "cannot create netlink socket: Address family not supported by protocol".
        **({} if run.profile in ROOT_PROFILES else {"address_families": [
            "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]})},
    check=_dnsmasq_check,
    # dnsmasq(8), SIGTERM: "exits"; it logs "exiting on receipt of SIGTERM", status 0.
    sigterm_status=0,
    # Started as root it changes to its compiled-in user (dnsmasq(8), -u).
    switches_to="nobody",
    # A DNS server's port, 53, needs CAP_NET_BIND_SERVICE: a free port below
    # ip_unprivileged_port_start asks for the same.
    low_port=True,
)


# ------------------------------------------------------------------------------ sshd

def _sshd_prepare(run: Run) -> None:
    n = run.name(SSHD)
    edits = [
        (r"^#Port 22$", f"Port {run.port}"),
        (r"^#ListenAddress 0\.0\.0\.0$", "ListenAddress 127.0.0.1"),
        (r"^#PidFile /run/sshd\.pid$", f"PidFile /run/{n}/sshd.pid"),
    ]
    if run.profile not in ROOT_PROFILES:
        # The host's keys (/etc/ssh/ssh_host_*_key) are root's, 0600: an sshd that is not
        # the host's root gets one of its own.  Root-owned and readable: sshd refuses a
        # key others can read only when the key is its own uid's (picked at spawn).
        key = f"{run.dir}/ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                       check=True)
        os.chmod(key, 0o644)
        edits.append((r"^#HostKey /etc/ssh/ssh_host_ed25519_key$", f"HostKey {key}"))
    _copy("/etc/ssh/sshd_config", f"{run.dir}/sshd_config", edits)


def _sshd_fields(run: Run) -> dict:
    fields = _directories(run, SSHD, "runtime")
    if run.profile in UID_0:
        # Its privilege separation directory is compiled in, /run/sshd (Debian's unit:
        # RuntimeDirectory=sshd); only an sshd of uid 0 chroots there.
        fields["directories"]["runtime"].append("sshd")
    return fields


def _sshd_check(run: Run) -> None:
    assert run.user and run.key
    r = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", run.key, "-p", str(run.port),
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
         f"{run.user}@127.0.0.1", "id -un"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or r.stdout.strip() != run.user:
        raise ClientError(f"ssh {run.user}@: exit {r.returncode}: "
                          f"{(r.stderr or r.stdout).strip()}")


SSHD = Daemon(
    name="sshd", package="openssh-server", binary="/usr/sbin/sshd",
    prepare=_sshd_prepare,
    # As Debian's unit (-D: no detach), its messages on stderr (-e) rather than syslog.
    argv=lambda run: ["/usr/sbin/sshd", "-D", "-e", "-f", f"{run.dir}/sshd_config"],
    fields=_sshd_fields,
    check=_sshd_check,
    # sshd.c: "Received signal 15; terminating.", exit(0) for SIGTERM (255 otherwise).
    sigterm_status=0,
    fixed_dirs=lambda run: ["/run/sshd"] if run.profile in UID_0 else [],
    login_user=True,
)


DAEMONS = {d.name: d for d in (NGINX, REDIS, DNSMASQ, SSHD)}

# What each daemon does under each profile: "works", or "fails: " and a piece of the
# reason (the daemon's own error line, else the client's or wrapperd's).  The matrix in
# docs/daemons.md is what a run observed, never this table.
EXPECTED = {
    "nginx": {
        **dict.fromkeys(PROFILES, "works"),
        # Root inside its user namespace but no capability, and one id mapped: the
        # master cannot give its temporary directories to its workers' www-data (33).
        "untrusted": 'fails: chown("/var/lib/<name>/client_body", 33) failed '
                     '(1: Operation not permitted)',
    },
    "redis": dict.fromkeys(PROFILES, "works"),
    "dnsmasq": {
        **dict.fromkeys(PROFILES, "works"),
        # No CAP_NET_BIND_SERVICE for its (privileged) port: network-service's reason.
        **dict.fromkeys(("service", "strict", "untrusted"),
                        "fails: failed to create listening socket for 127.0.0.1: "
                        "Permission denied"),
    },
    "sshd": {
        **dict.fromkeys(PROFILES, "works"),
        # A login needs root: an sshd of another uid can neither read the user's keys
        # nor become the user.
        **dict.fromkeys(("service", "network-service", "strict"),
                        "fails: Could not open user '<user>' authorized keys"),
        # uid 0 in its user namespace, so it privilege-separates, without CAP_SYS_CHROOT.
        "untrusted": 'fails: chroot("/run/sshd"): Operation not permitted',
    },
}
