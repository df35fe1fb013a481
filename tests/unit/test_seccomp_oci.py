"""Import of OCI linux.seccomp sections and Docker seccomp profiles."""

import json

import attrs
import pytest

from sandbox import caps, seccomp
from sandbox.errors import SpecError
from sandbox.seccomp_oci import import_profile
from sandbox.spec import Seccomp

pyseccomp = pytest.importorskip("pyseccomp")
NATIVE = seccomp.native_arch()

# The shape of moby's profiles/seccomp/default.json, cut down.
DOCKER = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64",
         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_MIPS64", "subArchitectures": ["SCMP_ARCH_MIPS"]},
    ],
    "syscalls": [
        {"names": ["read", "write", "getppid", "exit_group", "not_a_syscall_xyz"],
         "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["newkernelcall"], "action": "SCMP_ACT_ALLOW",
         "includes": {"minKernel": "99.0"}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["s390_pci_mmio_read"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["s390", "s390x"]}},
        {"names": ["mount", "umount2"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                   "op": "SCMP_CMP_MASKED_EQ"}],
         "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["kexec_load"], "action": "SCMP_ACT_NOTIFY"},
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ],
}


@attrs.frozen
class FakeCaps:
    permitted: int


def compile_(section, kept):
    return seccomp.prepare(Seccomp.load(section, "seccomp"), FakeCaps(kept))


def act(p, name, *args, arch=NATIVE):
    n = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) if isinstance(name, str) \
        else name
    return seccomp.action_name(seccomp.evaluate(p.program, n, arch, args))


@pytest.mark.skipif(NATIVE != "x86_64", reason="the sample's arch rules are for x86_64")
def test_docker_profile_imports_with_notes():
    section, notes = import_profile(DOCKER)
    assert section["default_action"] == "errno:1"
    assert section["architectures"] == ["native", "x86", "x32"]
    names = [n for r in section["syscalls"] for n in r["names"]]
    assert "newkernelcall" not in names                  # minKernel 99.0
    assert "s390_pci_mmio_read" not in names             # other machines only
    assert "arch_prctl" in names and "ptrace" in names
    assert "not_a_syscall_xyz" not in names
    joined = "\n".join(notes)
    assert "not_a_syscall_xyz" in joined
    assert "SCMP_ACT_NOTIFY" in joined
    assert "x86, x32" in joined                          # other ABIs allowed: said plainly
    mount = next(r for r in section["syscalls"] if "mount" in r["names"])
    assert mount["if_caps"] == ["CAP_SYS_ADMIN"]
    clone = next(r for r in section["syscalls"] if r["names"] == ["clone"] and r.get("args"))
    assert clone["unless_caps"] == ["CAP_SYS_ADMIN"]
    assert clone["args"] == [{"index": 0, "op": "masked_eq", "value": 2114060288,
                              "value_two": 0}]


@pytest.mark.skipif(NATIVE != "x86_64", reason="the sample's arch rules are for x86_64")
def test_imported_profile_compiles_and_resolves_caps():
    section, _ = import_profile(DOCKER)
    admin = compile_(section, caps.mask(["CAP_SYS_ADMIN"]))
    plain = compile_(section, 0)
    assert act(admin, "mount") == "allow" and act(plain, "mount") == "errno:1"
    assert act(plain, "clone", 0x10000000) == "errno:1"       # CLONE_NEWUSER: masked out
    assert act(plain, "clone", 17) == "allow"
    assert act(admin, "clone", 0x10000000) == "allow"
    assert act(plain, "getpid") == "errno:38"
    assert act(plain, "kexec_load") == "errno:1"              # NOTIFY -> EPERM
    assert act(plain, "personality", 0) == "allow"
    assert act(plain, "personality", 8) == "errno:1"
    # x86 passes the arch check, as with Docker, and rules follow names into it:
    assert act(plain, 64, arch="x86") == "allow"              # i386 getppid
    assert act(plain, 20, arch="x86") == "errno:38"           # i386 getpid


def test_oci_section_and_whole_config():
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "flags": ["SECCOMP_FILTER_FLAG_LOG"],
           "syscalls": [
               {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
               {"names": ["ioctl"], "action": "SCMP_ACT_KILL",
                "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"},
                         {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]},
               {"names": ["getpid"], "action": "SCMP_ACT_TRACE"}]}
    for doc in (oci, {"ociVersion": "1.0.2", "linux": {"seccomp": oci}}):
        section, notes = import_profile(doc)
        joined = "\n".join(notes)
        assert "flags" in joined and "SCMP_ACT_TRACE" in joined and "OR-ed" in joined
        assert section["syscalls"][0] == {"names": ["getppid"], "action": "errno:1"}
        assert [r["args"][0]["value"] for r in section["syscalls"][1:3]] == [1, 2]
        if NATIVE == "x86_64":
            assert section["architectures"] == ["native"]
            p = compile_(section, 0)
            assert act(p, "ioctl", 0, 1) == "kill_thread"
            assert act(p, "ioctl", 0, 2) == "kill_thread"
            assert act(p, "ioctl", 0, 3) == "allow"
            assert act(p, "getpid") == "errno:38"


@pytest.mark.parametrize("doc, match", [
    ({"syscalls": []}, "defaultAction"),
    ({"defaultAction": "SCMP_ACT_EXPLODE"}, "unknown action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_BOGUS"}]}]}, "unknown operator"),
    ([], "expected a JSON object"),
])
def test_bad_input(doc, match):
    with pytest.raises(SpecError, match=match):
        import_profile(doc)


def test_cli_import(tmp_path, capsys):
    from sandbox.cli import main
    src = tmp_path / "docker.json"
    src.write_text(json.dumps(DOCKER))
    out = tmp_path / "spec.json"
    assert main(["seccomp", "import", str(src), "-o", str(out)]) == 0
    section = json.loads(out.read_text())["seccomp"]
    compile_(section, 0)
    assert "not honoured" in capsys.readouterr().err
