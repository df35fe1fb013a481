"""Seccomp compilation, without loading anything: the compiled BPF is run through
sandbox.seccomp.evaluate (a classic-BPF interpreter) the way the kernel would run it."""

import json
import os
import subprocess
import sys

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import caps, seccomp
from sandbox.errors import SpecError
from sandbox.spec import Seccomp, SeccompRule, Spec

pyseccomp = pytest.importorskip("pyseccomp")

NATIVE = seccomp.native_arch()
CLONE_NEWUSER = 0x10000000
TIOCSTI, TIOCLINUX, TCGETS = 0x5412, 0x541C, 0x5401
ALL_CAPS = caps.mask(caps.CAP_NAMES)


@attrs.frozen
class FakeCaps:                 # the one field seccomp.prepare reads from caps.Prepared
    permitted: int


def nr(name):
    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)


def compiled(sc: dict, kept=ALL_CAPS):
    return seccomp.prepare(Seccomp.load(sc, "seccomp"), FakeCaps(kept))


def act(prepared, name, *args, arch=NATIVE):
    n = nr(name) if isinstance(name, str) else name
    return seccomp.action_name(seccomp.evaluate(prepared.program, n, arch, args))


# --------------------------------------------------------------------------- data files

def _all_names():
    """Every syscall name in every group and every profile, with where it came from."""
    out = []
    for g, members in seccomp.load_groups().items():
        out += [(m, g) for m in members if not m.startswith("@")]
    for p in seccomp.profile_names():
        for i, r in enumerate(seccomp.load_profile(p).syscalls):
            out += [(n, f"{p}.syscalls[{i}]") for n in r.names if not n.startswith("@")]
    return out


def test_every_name_is_in_the_kernels_syscall_table():
    # libseccomp's tables: >= 0 is a syscall of this ABI, < -1 one of another ABI (a
    # pseudo number, e.g. socketcall on x86_64); -1 (__NR_SCMP_ERROR) is no syscall at all.
    bad = [(n, where) for n, where in _all_names() if nr(n) == -1]
    assert not bad
    assert nr("fooctl") == -1 and nr("getppid") >= 0          # control: a typo is caught


def test_groups_are_well_formed():
    groups = seccomp.load_groups()
    for g, members in groups.items():
        assert members, g
        assert len(set(members)) == len(members), g
        for m in members:
            if m.startswith("@"):
                assert m in groups, (g, m)
        assert seccomp.expand(g)
    native = [s for s in seccomp.expand("@system-service") if nr(s) >= 0]
    assert len(native) > 250


def test_profiles_exist_and_compile():
    assert {"default", "strict"} <= set(seccomp.profile_names())
    for p in seccomp.profile_names():
        prepared = compiled({"profile": p})
        assert 0 < prepared.instructions <= seccomp.BPF_MAXINSNS
        assert len(prepared.program) % 8 == 0


# --------------------------------------------------------------------------- profiles

@pytest.mark.parametrize("profile", ["default", "strict"])
def test_profile_semantics(profile):
    p = compiled({"profile": profile}, kept=0)
    eperm, enosys = "errno:1", "errno:38"
    for name in ("init_module", "finit_module", "delete_module", "kexec_load",
                 "kexec_file_load", "reboot", "swapon", "swapoff", "mount", "umount2",
                 "pivot_root", "bpf", "perf_event_open", "userfaultfd", "add_key", "keyctl",
                 "request_key", "ptrace", "open_by_handle_at", "iopl", "ioperm",
                 "clock_settime", "setns"):
        assert act(p, name) == eperm, name
    assert act(p, "clone3") == enosys
    for name in ("getppid", "read", "write", "openat", "mmap", "exit_group", "socket",
                 "accept4", "epoll_wait", "futex", "getrandom"):
        assert act(p, name) == "allow", name
    # ioctl: the 32-bit request is compared, so high bits do not slip TIOCSTI through
    assert act(p, "ioctl", 0, TIOCSTI) == eperm
    assert act(p, "ioctl", 0, TIOCSTI | 1 << 32) == eperm
    assert act(p, "ioctl", 0, TIOCLINUX) == eperm
    assert act(p, "ioctl", 0, TCGETS) == "allow"
    assert act(p, "ioctl", 0, TIOCSTI + 1) == "allow"
    # new user namespaces
    assert act(p, "clone", CLONE_NEWUSER | 17) == eperm
    assert act(p, "clone", 0x3D0F00) == "allow"          # what pthread_create passes
    assert act(p, "unshare", CLONE_NEWUSER) == eperm
    # personality: only the harmless values
    for v in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF, 1 << 32):
        assert act(p, "personality", v) == "allow", hex(v)
    for v in (0x0040000, 0x0400000, 0x0100000, 1, 9, 0x20001, 0xFFFFFFFE):
        assert act(p, "personality", v) == eperm, hex(v)


def test_default_is_a_deny_list_and_strict_an_allow_list():
    assert act(compiled({"profile": "default"}), "sethostname") == "allow"
    assert act(compiled({"profile": "strict"}), "sethostname") == "errno:1"
    assert act(compiled({"profile": "strict"}), "unshare", 0) == "errno:1"
    assert act(compiled({"profile": "default"}), "unshare", 0) == "allow"


def test_default_capability_aware_rules():
    with_time = compiled({"profile": "default"}, kept=caps.mask(["CAP_SYS_TIME"]))
    without = compiled({"profile": "default"}, kept=0)
    assert act(with_time, "clock_settime") == "allow"
    assert act(without, "clock_settime") == "errno:1"
    assert any("CAP_SYS_TIME" in s for s in with_time.skipped)


def test_spec_rules_add_to_the_profile_and_tighten_it():
    p = compiled({"profile": "default", "syscalls": [
        {"names": ["getppid"], "action": "errno:EACCES"},
        {"names": ["personality"], "action": "kill_process"},
        {"names": ["ioctl"], "action": "errno:EACCES",
         "args": [{"index": 1, "op": "masked_eq", "value": 0xFFFFFFFF,
                   "value_two": TCGETS}]}]})
    assert act(p, "getppid") == "errno:13"
    assert act(p, "umount2") == "errno:1"                # the rest of the profile stays
    assert act(p, "personality", 0) == "kill_process"    # stricter than the profile's
    assert act(p, "ioctl", 0, TCGETS) == "errno:13"
    assert act(p, "ioctl", 0, TIOCSTI) == "errno:1"      # the profile's rule stays
    assert act(p, "ioctl", 0, TCGETS + 1) == "allow"
    assert p.replaced == ()
    p = compiled({"profile": "default", "default_action": "errno:EPERM"})
    assert act(p, "getppid") == "errno:1"               # default_action overrides too


# A spec rule for a syscall the profile restricts, and what the profile gives anyway.
LOOSENING = [
    ("default", "clone", "allow", [(CLONE_NEWUSER | 17,), (0x3D0F00,)], ["errno:1", "allow"]),
    ("default", "unshare", "allow", [(CLONE_NEWUSER,), (0,)], ["errno:1", "allow"]),
    ("default", "ioctl", "allow", [(0, TIOCSTI), (0, TIOCLINUX), (0, TIOCSTI | 1 << 32),
                                   (0, TCGETS)], ["errno:1"] * 3 + ["allow"]),
    ("default", "mount", "allow", [()], ["errno:1"]),
    ("default", "personality", "allow", [(0,), (0x0040000,)], ["allow", "errno:1"]),
    ("default", "personality", "log", [(0,), (0x0040000,)], ["log", "errno:1"]),
    ("strict", "clone", "allow", [(CLONE_NEWUSER | 17,), (17,)], ["errno:1", "allow"]),
    ("strict", "ioctl", "allow", [(0, TIOCSTI), (0, TCGETS)], ["errno:1", "allow"]),
    ("strict", "unshare", "allow", [(0,)], ["errno:1"]),
]


@pytest.mark.parametrize("profile,name,action,calls,expect", LOOSENING)
def test_a_spec_rule_never_loosens_the_profile(profile, name, action, calls, expect):
    rule = {"names": [name], "action": action}
    p = compiled({"profile": profile, "syscalls": [rule]})
    assert [act(p, name, *c) for c in calls] == expect
    # An exception the spec adds (only these args) does not loosen either.
    cond = dict(rule, args=[{"index": 0, "op": "masked_eq", "value": 0xFFFFFFFF,
                             "value_two": 0x0040000}])
    if name == "personality":
        assert act(compiled({"profile": profile, "syscalls": [cond]}), name,
                   0x0040000) == "errno:1"


def test_replace_profile_rules_replaces_and_says_so():
    for sc in ({"profile": "default", "syscalls": [
                   {"names": ["clone"], "action": "allow", "replace_profile_rules": True}]},
               {"profile": "default", "replace_profile_rules": True,
                "syscalls": [{"names": ["clone"], "action": "allow"}]}):
        p = compiled(sc)
        assert act(p, "clone", CLONE_NEWUSER | 17) == "allow"
        assert act(p, "unshare", CLONE_NEWUSER) == "errno:1"   # not named: kept
        assert len(p.replaced) == 1 and "clone: errno:EPERM if arg0" in p.replaced[0]
        assert p.replaced[0].endswith("by seccomp.syscalls[0].names[0]")
    s = Seccomp.load({"profile": "default", "syscalls": [
        {"names": ["clone"], "action": "allow", "replace_profile_rules": True}]}, "seccomp")
    assert Seccomp.load(s.dump(), "seccomp") == s
    with pytest.raises(SpecError, match=r"replace_profile_rules: expected true or false"):
        Seccomp.load({"profile": "default", "replace_profile_rules": 1}, "seccomp")


def test_an_allow_list_profiles_default_is_a_deny_rule_too():
    # Under `strict` everything it does not name is denied by its default action: a
    # looser spec default, or allowing a call it does not name, loosens it.
    with pytest.raises(SpecError, match=r"seccomp.default_action: allow is looser than "
                                        r"the default of seccomp profile 'strict'"):
        compiled({"profile": "strict", "default_action": "allow"})
    with pytest.raises(SpecError, match=r"seccomp.syscalls\[0\].names\[0\]: allow for "
                                        r"'bpf' is looser than the seccomp profile's"):
        compiled({"profile": "strict", "syscalls": [{"names": ["bpf", "keyctl"],
                                                       "action": "allow"}]})
    control = compiled({"profile": "strict"})
    assert act(control, "bpf") == act(control, "keyctl") == "errno:1"
    # Asked for, it is done and said.
    p = compiled({"profile": "strict", "replace_profile_rules": True,
                  "default_action": "allow"})
    assert act(p, "bpf") == "allow"
    assert any("default_action" in r for r in p.replaced)
    p = compiled({"profile": "strict", "syscalls": [
        {"names": ["bpf"], "action": "allow", "replace_profile_rules": True}]})
    assert act(p, "bpf") == "allow" and act(p, "keyctl") == "errno:1"
    assert any("for bpf" in r for r in p.replaced)
    # Tightening needs nothing: a stricter default over `default`, a deny rule.
    p = compiled({"profile": "default", "default_action": "errno:EPERM",
                  "syscalls": [{"names": ["read", "write", "exit_group"],
                                "action": "allow"}]})
    assert act(p, "getpid") == "errno:1" and act(p, "read") == "allow"


def test_rules_that_cannot_be_combined_with_the_profiles_are_refused():
    # The profile compares ioctl's command (arg1); a condition on its argument (arg2, a
    # 64-bit value) has another shape, whose combination this compiler does not build:
    # refused, not guessed.
    with pytest.raises(SpecError, match=r"seccomp.syscalls\[0\].names\[0\]: the rules "
                                        r"for 'ioctl' cannot be combined"):
        compiled({"profile": "default", "syscalls": [
            {"names": ["ioctl"], "action": "allow",
             "args": [{"index": 2, "op": "eq", "value": 5}]}]})


def test_a_64_bit_eq_on_a_32_bit_argument_combines_with_the_profile():
    # ioctl's command is an unsigned int: the spec's eq is compared on 32 bits, as the
    # profile's masked_eq is, so the two combine -- and the stricter one wins.
    p = compiled({"profile": "default", "syscalls": [
        {"names": ["ioctl"], "action": "allow",
         "args": [{"index": 1, "op": "eq", "value": TIOCSTI}]}]})
    assert act(p, "ioctl", 0, TIOCSTI) == "errno:1"
    assert act(p, "ioctl", 0, 1 << 32 | TIOCSTI) == "errno:1"
    assert act(p, "ioctl", 0, TCGETS) == "allow"


# --------------------------------------------------------------------------- 32-bit args

@pytest.mark.parametrize("op, value, inside, outside", [
    ("eq", 2, [2], [1, 3, 0xFFFFFFFF]),
    ("ne", 2, [0, 1, 3, 0xFFFFFFFF], [2]),
    ("lt", 3, [0, 1, 2], [3, 4, 0xFFFFFFFF]),
    ("le", 3, [0, 3], [4, 0x80000000]),
    ("gt", 40, [41, 0xFFFFFFFF], [0, 40]),
    ("ge", 40, [40, 1000], [0, 39]),
    ("masked_eq", 0xF0, [0x10, 0x1F], [0x20, 0x01]),      # value_two 0x10
])
def test_int_arguments_are_compared_on_32_bits(op, value, inside, outside):
    # socket's family is an int: the kernel ignores the upper half of the register, so
    # the filter must too -- else (1 << 32) | AF_VSOCK passes "family != AF_VSOCK".
    arg = {"index": 0, "op": op, "value": value, "value_two": 0x10 if op == "masked_eq"
           else 0}
    p = compiled({"default_action": "allow", "syscalls": [
        {"names": ["socket"], "action": "errno:13", "args": [arg]}]})
    for low in inside:
        for high in (0, 1 << 32, 0xFFFFFFFF << 32):
            assert act(p, "socket", high | low, 1, 0) == "errno:13", (op, hex(high | low))
    for low in outside:
        for high in (0, 1 << 32, 0xFFFFFFFF << 32):
            assert act(p, "socket", high | low, 1, 0) == "allow", (op, hex(high | low))


def test_other_arguments_stay_64_bit():
    # clone's flags are an unsigned long: all 64 bits count.
    p = compiled({"default_action": "allow", "syscalls": [
        {"names": ["clone"], "action": "errno:13",
         "args": [{"index": 0, "op": "eq", "value": 5}]}]})
    assert act(p, "clone", 5) == "errno:13" and act(p, "clone", 1 << 32 | 5) == "allow"


def test_an_ordering_beyond_32_bits_or_too_many_blocks_is_refused():
    with pytest.raises(SpecError, match=r"seccomp.syscalls\[0\].args\[0\]: arg0 is a "
                                        r"32-bit value in the kernel"):
        compiled({"default_action": "allow", "syscalls": [
            {"names": ["socket"], "action": "errno:13",
             "args": [{"index": 0, "op": "lt", "value": 1 << 40}]}]})
    with pytest.raises(SpecError, match=r"more than 64 rules"):
        compiled({"default_action": "allow", "syscalls": [
            {"names": ["socket"], "action": "errno:13",
             "args": [{"index": i, "op": "ne", "value": 7} for i in range(3)]}]})


# ------------------------------------------------------------- syscalls newer than the filter

def _highest(arch):
    return seccomp.highest_known(pyseccomp, arch)


def test_syscalls_above_the_highest_known_get_enosys_under_a_denying_default():
    top = _highest(NATIVE)
    p = compiled({"default_action": "errno:EPERM"})
    assert p.unknown_syscalls_action == "errno:ENOSYS"
    assert act(p, top) == "errno:1"                      # known to libseccomp: the default
    assert act(p, top + 1) == "errno:38"
    assert act(p, 1023) == "errno:38"
    if NATIVE == "x86_64":
        assert act(p, 0x3FFFFFFF) == "errno:38"
        assert act(p, 0x40000000 | 1) == "kill_process"  # x32's numbers: the ABI check
        assert act(p, top + 1, arch="x86") == "kill_process"     # i386 not allowed
        p = compiled({"default_action": "errno:EPERM", "architectures": ["native", "x86"]})
        assert act(p, _highest("x86") + 1, arch="x86") == "errno:38"
        assert act(p, 0xFFFFFFF, arch="x86") == "errno:38"


def test_arm_private_syscalls_are_left_to_the_rules():
    # cacheflush, set_tls, ... (0xf0000 up on arm) are named by libseccomp: a rule on
    # one must hold, not the prefix's ENOSYS (outside review).
    p = compiled({"default_action": "errno:EPERM", "architectures": ["native", "arm"],
                  "syscalls": [{"names": ["set_tls"], "action": "allow"}]})
    set_tls = pyseccomp.resolve_syscall(seccomp.ARCHES["arm"], "set_tls")
    assert set_tls >= 0xF0000
    assert act(p, set_tls, arch="arm") == "allow"
    assert act(p, 0xF00FF, arch="arm") == "errno:1"             # the default
    assert act(p, _highest("arm") + 1, arch="arm") == "errno:38"


@pytest.mark.parametrize("sc, want", [
    ({"default_action": "allow"}, None),                 # allowed anyway: no change
    ({"default_action": "log"}, None),
    ({"default_action": "kill_process"}, "errno:ENOSYS"),
    ({"default_action": "errno:EPERM", "unknown_syscalls_action": "default_action"}, None),
    ({"default_action": "errno:EPERM", "unknown_syscalls_action": "kill_process"},
     "kill_process"),
    ({"default_action": "errno:EPERM", "unknown_syscalls_action": "errno:EPERM"}, None),
    ({"profile": "strict"}, "errno:ENOSYS"),
    ({"profile": "default"}, None),
])
def test_unknown_syscalls_action(sc, want):
    p = compiled(sc)
    assert p.unknown_syscalls_action == want
    top = _highest(NATIVE)
    expect = want or p.default_action
    assert act(p, top + 1) == seccomp.action_name(seccomp.action_value(expect))


@pytest.mark.parametrize("sc, match", [
    ({"default_action": "errno:EPERM", "unknown_syscalls_action": "allow"},
     r"seccomp.unknown_syscalls_action: allow would let through"),
    ({"default_action": "errno:EPERM", "unknown_syscalls_action": "log"},
     r"seccomp.unknown_syscalls_action: log would let through"),
    ({"default_action": "errno:EPERM", "unknown_syscalls_action": "bogus"},
     r"seccomp.unknown_syscalls_action: "),
])
def test_unknown_syscalls_action_refused(sc, match):
    with pytest.raises(SpecError, match=match):
        compiled(sc)


def test_address_families_filter():
    p = seccomp.prepare_restrictions(("AF_UNIX", "AF_INET6"), (),
                                     ("native", "x86") if NATIVE == "x86_64" else ("native",))

    def fam(name, family, arch=NATIVE):
        n = nr(name) if arch == NATIVE else {"socket": 359, "socketpair": 360}[name]
        return seccomp.action_name(seccomp.evaluate(p.program, n, arch, (family, 1, 0)))
    arches = [NATIVE] + (["x86"] if NATIVE == "x86_64" else [])
    for arch in arches:
        for call in ("socket", "socketpair"):
            assert fam(call, 1, arch) == "allow" and fam(call, 10, arch) == "allow"
            assert fam(call, 1 << 32 | 1, arch) == "allow"       # the kernel sees AF_UNIX
            for bad in (2, 16, 17, 40, 1 << 32 | 40, 0xFFFFFFFF):
                assert fam(call, bad, arch) == "errno:97", (arch, call, hex(bad))
    if NATIVE == "x86_64":
        assert seccomp.action_name(seccomp.evaluate(p.program, 102, "x86", (1,))) == \
            "errno:38"                                            # socketcall
    assert act(p, "io_uring_setup") == "errno:1"
    assert act(p, "read") == "allow" and act(p, "connect") == "allow"
    none = seccomp.prepare_restrictions(())
    assert act(none, "socket", 1) == "errno:97" and act(none, "socketpair", 1) == "errno:97"


@pytest.mark.parametrize("value, match", [
    (["AF_UNIX", "AF_BOGUS"], r"address_families\[1\]: unknown address family 'AF_BOGUS'"),
    (["AF_UNIX", "AF_UNIX"], r"address_families: a family is listed twice"),
    ("AF_UNIX", r"address_families: expected a list"),
    ([""], r"address_families\[0\]: "),
])
def test_address_families_bad_input(value, match):
    with pytest.raises(SpecError, match=match):
        Spec.from_dict({"argv": ["/bin/true"], "address_families": value})


# --------------------------------------------------------------------------- ABIs

@pytest.mark.skipif(NATIVE != "x86_64", reason="x32 and i386 are x86_64's other ABIs")
def test_other_abis_are_killed_unless_named():
    p = compiled({"default_action": "allow"})
    assert p.architectures == ("x86_64",)
    assert act(p, nr("getpid") | 0x40000000) == "kill_process"          # x32
    assert act(p, 20, arch="x86") == "kill_process"                     # int 0x80 getpid
    assert act(p, 20, arch="aarch64") == "kill_process"
    assert act(p, "getpid") == "allow"
    p = compiled({"default_action": "allow", "architectures": ["native", "SCMP_ARCH_X86",
                                                               "x32"]})
    assert p.architectures == ("x86_64", "x86", "x32")
    assert act(p, 20, arch="x86") == "allow"
    assert act(p, nr("getpid") | 0x40000000) == "allow"
    # Rules follow the syscall by name into every named ABI.
    p = compiled({"default_action": "allow", "architectures": ["native", "x86"],
                  "syscalls": [{"names": ["getpid"], "action": "errno:5"}]})
    assert act(p, 20, arch="x86") == "errno:5"
    assert act(p, "getpid") == "errno:5"


def test_unknown_architecture():
    with pytest.raises(SpecError, match=r"seccomp.architectures\[1\]: unknown architecture"):
        compiled({"default_action": "allow", "architectures": ["native", "vax"]})
    other = "x86" if NATIVE == "x86_64" else "x86_64"
    with pytest.raises(SpecError, match=r"seccomp.architectures: must include the native"):
        compiled({"default_action": "allow", "architectures": [other]})


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("sc, match", [
    ({"default_action": "allow", "syscalls": [{"names": ["read", "fooctl"],
                                               "action": "errno:EPERM"}]},
     r"seccomp.syscalls\[0\].names\[1\]: unknown syscall 'fooctl'"),
    ({"default_action": "allow", "syscalls": [{"names": ["@nope"], "action": "log"}]},
     r"seccomp.syscalls\[0\].names\[0\]: unknown syscall group '@nope'"),
    ({"profile": "nope"}, r"seccomp.profile: unknown seccomp profile 'nope'"),
    ({"profile": "../etc/x"}, r"bad seccomp profile name"),
    ({"default_action": "errno:EPERM", "syscalls": [
        {"names": ["ioctl"], "action": "allow"},
        {"names": ["ioctl"], "action": "errno:EPERM",
         "args": [{"index": 1, "op": "gt", "value": 5}]}]},
     r"seccomp.syscalls\[1\].names\[0\]: syscall 'ioctl': exceptions"),
])
def test_errors_name_the_field(sc, match):
    with pytest.raises(SpecError, match=match):
        compiled(sc)


def test_actions_round_trip():
    for a in ("allow", "kill_process", "kill_thread", "trap", "log", "errno:1", "errno:4095"):
        assert seccomp.action_name(seccomp.action_value(a)) == a
    assert seccomp.action_value("errno:EACCES") == 0x0005000D


# --------------------------------------------------------------------------- properties

@given(st.sets(st.integers(0, 2**16 - 1), min_size=1, max_size=6),
       st.sampled_from([0xFFFF, 0xFF00, 0x0FF0, 0xF0F0]), st.integers(0, 2**16 - 1))
def test_complement_blocks_match_exactly_the_other_values(points, mask, v):
    points = {p & mask for p in points}
    blocks = seccomp._complement(points, mask)
    hits = [b for b in blocks if v & b[0] == b[1]]
    assert len(hits) <= 1                              # disjoint
    assert bool(hits) == ((v & mask) not in points)
    assert len(blocks) <= len(points) * bin(mask).count("1")


_SYSCALLS = ("getppid", "getpid", "ioctl", "personality")
_ACTIONS = ("allow", "errno:1", "errno:13", "errno:38", "log", "trap")
_values = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 0x5412, 2**32 - 1, 2**64 - 1])


@st.composite
def _syscall_rules(draw, name):
    """Rules for one syscall in a shape the compiler promises to honour exactly: an
    optional rule without args, then exceptions on one argument with one mask."""
    rules = []
    if draw(st.booleans()):
        rules.append({"names": [name], "action": draw(st.sampled_from(_ACTIONS))})
    index = draw(st.integers(0, 5))
    mask = draw(st.sampled_from([2**64 - 1, 0xFFFFFFFF, 0xFF, 0x10000000]))
    # An argument the kernel reads as 32 bits is compared on those (seccomp.INT_ARGS):
    # points equal there are one point.
    seen = mask & 0xFFFFFFFF if index in seccomp.INT_ARGS.get(name, ()) else mask
    points = draw(st.lists(_values, max_size=4, unique_by=lambda v: v & seen))
    for p in points:
        arg = {"index": index, "op": "eq", "value": p} if mask == 2**64 - 1 else \
            {"index": index, "op": "masked_eq", "value": mask, "value_two": p & mask}
        rules.append({"names": [name], "action": draw(st.sampled_from(_ACTIONS)),
                      "args": [arg]})
    return rules


def _model(rules, default, name, args):
    """Our documented semantics, written the obvious way."""
    base, conds = default, []
    for r in rules:
        if name not in r["names"]:
            continue
        if not r.get("args"):
            base, conds = r["action"], []
        else:
            conds.append(r)
    for r in conds:
        a = r["args"][0]
        v = args[a["index"]]
        width = 0xFFFFFFFF if a["index"] in seccomp.INT_ARGS.get(name, ()) else 2**64 - 1
        if a["op"] == "masked_eq":
            hit = v & a["value"] & width == a["value_two"] & width
        else:
            hit = v & width == a["value"] & width
        if hit:
            return r["action"]
    return base


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_ACTIONS), st.data())
def test_compiled_filter_follows_the_documented_semantics(default, data):
    rules = []
    for name in _SYSCALLS:
        rules += data.draw(_syscall_rules(name))
    p = compiled({"default_action": default, "syscalls": rules})
    probes = [tuple(data.draw(st.lists(_values, min_size=6, max_size=6)))]
    for r in rules:                                   # every exception's own value too
        for a in r.get("args", ()):
            args = [0] * 6
            args[a["index"]] = a.get("value_two", a["value"]) if a["op"] == "masked_eq" \
                else a["value"]
            probes.append(tuple(args))
    for name in _SYSCALLS:
        for args in probes:
            want = seccomp.action_name(seccomp.action_value(_model(rules, default, name,
                                                                    args)))
            assert act(p, name, *args) == want, (name, [hex(x) for x in args])


_jsonish = st.recursive(
    st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8)

_rule_dicts = st.fixed_dictionaries(
    {"names": st.lists(st.sampled_from(["read", "@mount", "", "x"]) | st.text(max_size=5),
                       max_size=3),
     "action": st.sampled_from(["allow", "errno:EPERM", "errno:4095", "errno:4096", "log",
                                "kill", "trap", "errno:", "kill_thread"]) | st.text()},
    optional={"args": st.lists(st.fixed_dictionaries(
        {"index": st.integers(-1, 7) | st.booleans(),
         "op": st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "masked_eq", "EQ"]),
         "value": st.integers(-1, 2**64) | st.text(max_size=2)},
        optional={"value_two": st.integers(-1, 2**64)}), max_size=3),
        "if_caps": st.lists(st.sampled_from(["CAP_SYS_ADMIN", "net_raw", "CAP_FOO"]),
                            max_size=2),
        "unless_caps": st.lists(st.sampled_from(["CAP_SYS_ADMIN", "bogus"]), max_size=2),
        "junk": _jsonish})


@settings(max_examples=300, deadline=None)
@given(_rule_dicts | _jsonish)
def test_rule_parser_accepts_or_names_the_field(d):
    try:
        rule = SeccompRule.load(d, "seccomp.syscalls[0]")
    except SpecError as e:
        assert e.message.startswith("seccomp.syscalls[0]")
        return
    assert SeccompRule.load(rule.dump(), "x") == rule        # round-trips exactly
    assert rule.names and all(rule.names)
    for a in rule.args:
        assert 0 <= a.index <= 5 and 0 <= a.value < 2**64
    assert set(rule.dump()) == set(SeccompRule.KEYS)


@settings(max_examples=100, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "profile": st.sampled_from(["default", "strict", "nope"]),
    "default_action": st.sampled_from(["allow", "errno:EPERM", "bogus"]),
    "architectures": st.lists(st.sampled_from(["native", "x86", "x32", "vax"]), max_size=3),
    "syscalls": st.lists(_rule_dicts, max_size=2)}))
def test_seccomp_section_compiles_or_raises_spec_error(d):
    try:
        sc = Seccomp.load(d, "seccomp")
        prepared = seccomp.prepare(sc, FakeCaps(0))
    except SpecError:
        return
    assert Seccomp.load(sc.dump(), "seccomp") == sc
    assert len(prepared.program) % 8 == 0


# --------------------------------------------------------------------------- integration

def test_shim_does_not_import_pyseccomp_without_a_filter():
    code = ("import sys; from sandbox.spec import Spec; from wrapperd import shim; "
            "shim.prepare(Spec.from_dict({'argv': ['/bin/true']})); "
            "print('pyseccomp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True)
    assert out.stdout.strip() == b"False"


def test_shim_prepare_compiles_the_filter():
    from wrapperd import shim
    plan = shim.prepare(Spec.from_dict({"argv": ["/bin/true"],
                                        "seccomp": {"profile": "strict"}}))
    assert isinstance(plan.seccomp, seccomp.Prepared)
    assert act(plan.seccomp, "mount") == "errno:1"


def test_shim_refuses_a_filter_without_no_new_privs():
    from wrapperd import shim
    with pytest.raises(SpecError, match="seccomp: a seccomp filter needs no_new_privs"):
        shim.prepare(Spec.from_dict({"argv": ["/bin/true"], "no_new_privs": False,
                                     "user": {"uid": 65534},
                                     "seccomp": {"profile": "default"}}))


def test_cli_compile_writes_the_same_program(tmp_path):
    from sandbox.cli import main
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"user": {"uid": 65534}, "seccomp": {"profile": "default"}}))
    out = tmp_path / "f.bpf"
    assert main(["seccomp", "compile", str(spec), "-o", str(out)]) == 0
    want = compiled({"profile": "default"}, kept=0).program
    assert out.read_bytes() == want
    empty = tmp_path / "none.json"
    empty.write_text("{}")
    assert main(["seccomp", "compile", str(empty), "-o", str(out)]) == 125


def test_cli_compile_is_wrapperds_own_prepare(tmp_path, capsys):
    # The same prepare as the shim: a filter that kills the shim's own execve is refused
    # there as it is by wrapperd; root inside a new user namespace keeps the caps the
    # capability-aware rules look at, as the shim decides.
    from sandbox.cli import main
    from wrapperd import shim
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"seccomp": {"default_action": "allow", "syscalls": [
        {"names": ["execve"], "action": "kill_process"}]}}))
    assert main(["seccomp", "compile", str(spec), "-o", str(tmp_path / "x.bpf")]) == 125
    assert "execve" in capsys.readouterr().err
    d = {"namespaces": {"user": True}, "seccomp": {"profile": "default"}}
    spec.write_text(json.dumps(d))
    out = tmp_path / "u.bpf"
    assert main(["seccomp", "compile", str(spec), "-o", str(out)]) == 0
    want = shim.prepare(Spec.from_dict(dict(d, argv=["/bin/true"]))).seccomp.program
    assert out.read_bytes() == want


def test_cli_list(capsys):
    from sandbox.cli import main
    assert main(["seccomp", "list"]) == 0
    out = capsys.readouterr().out
    assert "strict" in out and "@system-service" in out


def test_evaluate_rejects_garbage():
    with pytest.raises(ValueError):
        seccomp.evaluate(b"\xff\xff\x00\x00\x00\x00\x00\x00", 0, NATIVE)
    assert os.path.basename(__file__).startswith("test_seccomp")
