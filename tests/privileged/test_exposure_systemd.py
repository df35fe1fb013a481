"""`sandbox exposure` beside `systemd-analyze security`: the same band for every shipped
profile and for the settings systemd has names for.

Each case is a spec, resolved as `sandbox exposure` resolves it, and the systemd unit
that asks for the same thing, generated from the resolved spec (`unit_for`): the
identity, the capability bounding and ambient sets, no_new_privs, the namespaces, the
`filesystem` settings (systemd's own names), the service directories, the address
families, and the seccomp filters wrapperd would load -- compiled, and run on every
syscall this ABI has (with zero arguments) to list what they deny, so systemd's
per-group checks see exactly what our filters do.  `systemd-analyze security
--offline=true` reads the unit from a directory of our own; nothing is started.  Where
the two scores differ, docs/library.md#how-the-score-compares-with-systemds says why.

    python -m tests.privileged.test_exposure_systemd    # the table, side by side
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile

import pytest

from sandbox import caps, exposure, filesystem, profile, seccomp
from sandbox.spec import Spec
from tests.conftest import skip_or_fail

# systemd's RestrictNamespaces= names and their clone flags.
_NS_FLAGS = {"user": 0x10000000, "mnt": 0x00020000, "ipc": 0x08000000,
             "pid": 0x20000000, "cgroup": 0x02000000, "net": 0x40000000,
             "uts": 0x04000000}
_RET_ACTION_FULL = 0xFFFF0000
_RET_ALLOWS = (0x7FFF0000, 0x7FFC0000)      # SECCOMP_RET_ALLOW, SECCOMP_RET_LOG


def resolved(d: dict, profile_name: "str | None" = None) -> Spec:
    """A spec as `sandbox exposure [SPEC] [--profile NAME]` resolves it."""
    return Spec.from_dict(profile.apply_profile(dict(d), profile_name))


class _Filters:
    """The seccomp programs wrapperd would load for a spec's target, run offline."""

    def __init__(self, spec: Spec, expanded: Spec, x, held: int):
        arches = spec.seccomp.architectures if spec.seccomp else ("native",)
        self.programs = []
        self.allow_list = False
        if expanded.seccomp is not None:
            p = seccomp.prepare(expanded.seccomp, _Kept(held))
            self.programs.append(p.program)
            self.allow_list = (seccomp.action_value(p.default_action) & _RET_ACTION_FULL
                               not in _RET_ALLOWS)
        denied = x.denied if x else ()
        if expanded.address_families is not None or denied:
            self.programs.append(seccomp.prepare_restrictions(
                expanded.address_families, denied, arches).program)
        if spec.user is not None and spec.user.dynamic:
            self.programs.append(seccomp.restrict_suid_sgid(arches))
        import pyseccomp
        self.arch = seccomp.native_arch()
        token = seccomp.ARCHES[self.arch]
        self.names = {}
        for nr in range(seccomp.highest_known(pyseccomp, self.arch) + 1):
            try:
                self.names[pyseccomp.resolve_syscall(token, nr).decode()] = nr
            except ValueError:
                continue

    def denies(self, name: str, *args: int) -> bool:
        nr = self.names.get(name)
        if nr is None:
            return True          # not on this ABI
        return any(seccomp.evaluate(p, nr, self.arch, args) & _RET_ACTION_FULL
                   not in _RET_ALLOWS for p in self.programs)


class _Kept:
    def __init__(self, permitted: int):
        self.permitted = permitted


def unit_for(spec: Spec) -> str:
    """The [Service] section that asks systemd for what wrapperd does with `spec`."""
    spec2, x = filesystem.expand(spec)
    fs = spec.filesystem
    ns = spec2.namespaces
    out = ["[Unit]", f"Description=wrapperd spec {spec.name}", "", "[Service]",
           "ExecStart=/bin/true"]
    u = spec.user
    root = u is None
    if u is not None and u.dynamic:
        out.append("DynamicUser=yes")
    elif u is not None:
        uid = u.uid
        if isinstance(uid, int):
            try:
                uid = pwd.getpwuid(uid).pw_name
            except KeyError:
                pass
        root = uid in (0, "root")
        out.append(f"User={uid}")
        if u.gid is not None:
            out.append(f"Group={u.gid}")
        if u.groups:
            out.append("SupplementaryGroups=" + " ".join(str(g) for g in u.groups))
    if u is not None and u.umask:
        out.append(f"UMask={u.umask}")
    if ns is not None and ns.user not in (False, None):
        root = False if spec.user is not None else root
    bits = 0
    for name in spec2.securebits:
        bits |= caps.SECUREBITS[name]
    inside_root = spec2.user is None or (not spec2.user.dynamic and spec2.user.uid in
                                         (0, "root"))
    p = caps.prepare(spec2.capabilities, inside_root and not bits & caps.SECBIT_NOROOT,
                     bits, shim_holds=(1 << (caps.last_cap() + 1)) - 1)
    out.append("CapabilityBoundingSet=" + " ".join(caps.names(p.bounding)))
    if p.ambient:
        out.append("AmbientCapabilities=" + " ".join(caps.names(p.ambient)))
    out.append(f"NoNewPrivileges={'yes' if spec2.no_new_privs else 'no'}")
    if ns is not None:
        for field, key in (("net", "PrivateNetwork"), ("ipc", "PrivateIPC"),
                           ("mount", "PrivateMounts"), ("user", "PrivateUsers"),
                           ("uts", "ProtectHostname")):
            if getattr(ns, field) not in (False, None):
                out.append(f"{key}=yes")
        if ns.ipc not in (False, None):
            out.append("RemoveIPC=yes")       # its SysV objects end with the namespace
    tmp = {m.destination for m in spec2.mounts if m.type == "tmpfs"}
    if {"/tmp", "/var/tmp"} <= tmp:
        out.append("PrivateTmp=yes")
    if any(m.type == "dev" and m.destination == "/dev" for m in spec2.mounts):
        out.append("PrivateDevices=yes")
    others = sorted(tmp - {"/tmp", "/var/tmp"})
    if others:
        out.append("TemporaryFileSystem=" + " ".join(others))
    if fs is not None:
        ps = {True: "yes", False: "no"}.get(fs.protect_system, fs.protect_system)
        ph = {True: "yes", False: "no"}.get(fs.protect_home, fs.protect_home)
        out += [f"ProtectSystem={ps}", f"ProtectHome={ph}"]
        for name in ("protect_kernel_tunables", "protect_kernel_modules",
                     "protect_kernel_logs", "protect_control_groups"):
            if getattr(fs, name):
                out.append(name.title().replace("_", "") + "=yes")
        out += [f"ProtectProc={fs.protect_proc}", f"ProcSubset={fs.proc_subset}"]
        for key, paths in (("ReadWritePaths", fs.read_write_paths),
                           ("ReadOnlyPaths", fs.read_only_paths)):
            if paths:
                out.append(f"{key}=" + " ".join(paths))
    if spec2.readonly_root and (fs is None or fs.protect_system != "strict"):
        out.append("ProtectSystem=strict")
    if spec2.masked_paths:
        out.append("InaccessiblePaths=" + " ".join("-" + m.lstrip("-")
                                                  for m in spec2.masked_paths))
    d = spec.directories
    if d is not None:
        for kind, key in (("runtime", "RuntimeDirectory"), ("state", "StateDirectory"),
                          ("cache", "CacheDirectory"), ("logs", "LogsDirectory"),
                          ("configuration", "ConfigurationDirectory")):
            entries = getattr(d, kind)
            if entries:
                out.append(f"{key}=" + " ".join(e.path for e in entries))
    if spec2.address_families is not None:
        out.append("RestrictAddressFamilies=" + (" ".join(spec2.address_families) or
                                                 "none"))
    if spec2.cgroup is not None:
        if spec2.cgroup.memory_max is not None:
            out.append(f"MemoryMax={spec2.cgroup.memory_max}")
        if spec2.cgroup.pids_max is not None:
            out.append(f"TasksMax={spec2.cgroup.pids_max}")
    out += _seccomp_lines(spec, spec2, x, p.permitted)
    return "\n".join(out) + "\n"


def _seccomp_lines(spec, spec2, x, held: int) -> "list[str]":
    f = _Filters(spec, spec2, x, held)
    if not f.programs:
        return []
    out = []
    arches = spec2.seccomp.architectures if spec2.seccomp else ("native",)
    if list(arches) == ["native"] or len(arches) == 1:
        out.append("SystemCallArchitectures=native")
    names = sorted(f.names)
    if f.allow_list:
        out.append("SystemCallFilter=" + " ".join(n for n in names if not f.denies(n)))
    else:
        denied = [n for n in names if f.denies(n)]
        if denied:
            out.append("SystemCallFilter=~" + " ".join(denied))
    # What systemd sets with a setting of its own, where our filters do the same.
    if f.denies("personality", 0x0400000):                     # READ_IMPLIES_EXEC
        out.append("LockPersonality=yes")
    restricted = [n for n, flag in _NS_FLAGS.items()
                  if f.denies("unshare", flag) and f.denies("clone", flag) and
                  f.denies("clone3")]
    if restricted:
        out.append("RestrictNamespaces=~" + " ".join(restricted))
    if f.denies("chmod", 0, 0o4000) and f.denies("fchmodat", 0, 0, 0o2000):
        out.append("RestrictSUIDSGID=yes")
    if f.denies("sched_setscheduler", 0, 1):                    # SCHED_FIFO
        out.append("RestrictRealtime=yes")
    if all(f.denies(n) for n in ("clock_settime", "settimeofday", "adjtimex")) and \
            "CAP_SYS_TIME" not in caps.names(caps.prepare(
                spec2.capabilities, True, 0,
                shim_holds=(1 << (caps.last_cap() + 1)) - 1).bounding):
        out.append("ProtectClock=yes")
    out.append("KeyringMode=" + ("private" if all(
        f.denies(n) for n in ("keyctl", "add_key", "request_key")) else "inherit"))
    return out


_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+\.\d) (\w+)")


def systemd_score(unit: str, name: str = "svc") -> "tuple[float, str, str]":
    """(score, band, the whole table) of `systemd-analyze security --offline=true`."""
    d = tempfile.mkdtemp(prefix="wrapperd-test-exposure-")
    try:
        path = os.path.join(d, f"{name}.service")
        with open(path, "w") as f:
            f.write(unit)
        r = subprocess.run(["systemd-analyze", "security", "--offline=true",
                            "--no-pager", f"{name}.service"], cwd=d, capture_output=True,
                           text=True, timeout=60,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                                "SYSTEMD_COLORS": "0"})
    finally:
        shutil.rmtree(d)
    m = _OVERALL.search(r.stdout)
    assert m, f"systemd-analyze said:\n{r.stdout}\n{r.stderr}\nfor the unit:\n{unit}"
    return float(m.group(1)), m.group(2), r.stdout


# (case, spec dict, profile): the shipped profiles as `sandbox exposure --profile NAME`
# scores them, then the settings systemd has names for, one at a time, over a plain
# non-root service (a fixed uid of its own, no capabilities, no_new_privs).
_PLAIN = {"argv": ["/usr/bin/svc"], "name": "svc",
          "user": {"uid": 4242, "gid": 4242}, "capabilities": {"keep": []}}
CASES = [(n, {"name": n}, n) for n in ("talos", "default", "service", "network-service",
                                       "strict", "untrusted")] + [
    ("plain non-root", _PLAIN, None),
    ("service as nobody", {"name": "svc", "user": {"uid": 65534}}, "service"),
    ("service, a fixed uid", {"name": "svc", "user": {"uid": 4242}}, "service"),
    ("service + directories", {"name": "svc", "directories": {
        "state": ["svc"], "runtime": ["svc"], "cache": ["svc"], "logs": ["svc"]}},
     "service"),
    ("service + every address family", {"name": "svc", "address_families": sorted(
        seccomp.ADDRESS_FAMILIES)}, "service"),
    ("plain + dynamic user", {**_PLAIN, "user": {"dynamic": True},
                              "namespaces": {"mount": True}}, None),
    ("plain + protect_system strict", {**_PLAIN, "filesystem": {
        "protect_system": "strict"}}, None),
    ("plain + protect_system full", {**_PLAIN, "filesystem": {"protect_system": "full"}},
     None),
    ("plain + protect_home", {**_PLAIN, "filesystem": {"protect_home": True}}, None),
    ("plain + private_tmp", {**_PLAIN, "filesystem": {"private_tmp": True}}, None),
    ("plain + private_devices", {**_PLAIN, "filesystem": {"private_devices": True}},
     None),
    ("plain + kernel protections", {**_PLAIN, "filesystem": {
        "protect_kernel_tunables": True, "protect_kernel_modules": True,
        "protect_kernel_logs": True, "protect_control_groups": True}}, None),
    ("plain + protect_proc", {**_PLAIN, "filesystem": {
        "protect_proc": "invisible", "proc_subset": "pid"}}, None),
    ("plain + every filesystem setting", {**_PLAIN, "filesystem": {
        "protect_system": "strict", "protect_home": True, "private_tmp": True,
        "private_devices": True, "protect_kernel_tunables": True,
        "protect_kernel_modules": True, "protect_kernel_logs": True,
        "protect_control_groups": True, "protect_proc": "invisible"}}, None),
    ("plain + AF_UNIX only", {**_PLAIN, "address_families": ["AF_UNIX"]}, None),
    ("plain + AF_INET, AF_INET6", {**_PLAIN, "address_families": ["AF_INET", "AF_INET6"]},
     None),
    ("plain + no sockets", {**_PLAIN, "address_families": []}, None),
    ("plain + AF_NETLINK, AF_PACKET", {**_PLAIN, "address_families": [
        "AF_UNIX", "AF_NETLINK", "AF_PACKET"]}, None),
]


def compare(case: str, d: dict, profile_name) -> dict:
    spec = resolved(d, profile_name)
    ours = exposure.of_spec(spec)
    unit = unit_for(spec)
    score, band, table = systemd_score(unit)
    return {"case": case, "ours": ours.score, "our_band": ours.band,
            "systemd": score, "systemd_band": band, "unit": unit, "table": table}


@pytest.fixture(scope="module", autouse=True)
def _systemd_analyze():
    if shutil.which("systemd-analyze", path="/usr/bin:/bin") is None:
        skip_or_fail("systemd-analyze is missing (Debian's systemd package)")


def test_the_bands_are_systemds():
    """systemd 252's badness_table: PERFECT 0.0, SAFE from 0.1, OK from 1.0, MEDIUM
    from 5.0, EXPOSED from 7.5, UNSAFE from 9.0, DANGEROUS at 10.0; systemd rounds the
    score up to a tenth."""
    for value, band in ((0.0, "PERFECT"), (0.1, "SAFE"), (0.9, "SAFE"), (1.0, "OK"),
                        (4.9, "OK"), (5.0, "MEDIUM"), (7.4, "MEDIUM"), (7.5, "EXPOSED"),
                        (8.9, "EXPOSED"), (9.0, "UNSAFE"), (9.9, "UNSAFE"),
                        (10.0, "DANGEROUS")):
        assert exposure.band(value) == band, value
    score, band, _ = systemd_score("[Service]\nExecStart=/bin/true\n")
    assert band == exposure.band(score)


@pytest.mark.parametrize("case,d,profile_name", CASES, ids=[c[0] for c in CASES])
def test_the_same_band_as_systemd_analyze(case, d, profile_name):
    r = compare(case, d, profile_name)
    assert r["our_band"] == r["systemd_band"], (
        f"{case}: ours {r['ours']} {r['our_band']}, systemd {r['systemd']} "
        f"{r['systemd_band']}\n{r['unit']}\n{r['table']}")


if __name__ == "__main__":
    import sys
    rows = [compare(*c) for c in CASES]
    if "-v" in sys.argv:
        for r in rows:
            print(f"--- {r['case']}\n{r['unit']}\n{r['table']}")
    w = max(len(r["case"]) for r in rows)
    print(f"{'case':<{w}}  {'ours':>14}  {'systemd-analyze':>16}")
    for r in rows:
        mark = " " if r["our_band"] == r["systemd_band"] else "*"
        print(f"{r['case']:<{w}}  {r['ours']:4.1f} {r['our_band']:<9}  "
              f"{r['systemd']:4.1f} {r['systemd_band']:<9} {mark}")
