"""The documentation is true to the code: every spec field is documented in docs/spec.md,
every wrapperd option and sandbox subcommand is documented, every example runs as
written against the installed commands, and every link inside the docs resolves.

Conventions the examples follow (so this test can read them):
* ```sh lines starting with `sandbox ` or `wrapperd ` are run by `sh -c` in a scratch
  directory, with the installed commands first on PATH.  Placeholders are made real:
  SPEC (the spec example of docs/spec.md, its cgroup moved under a test cgroup of our
  own), PID (this process), NAME (a profile), FILE and FILE.bpf (files in the scratch
  directory), config.json and P.json (an OCI config and its seccomp section, exported
  from SPEC).  The status is 0 unless the line's comment says `# exit N`.
  A synopsis (with [optional] parts) goes in a plain ``` block, which is not run.
* ```json blocks are specs when they have "argv" or "version" (loaded with the profile
  merged), else fragments: objects of spec fields, loaded over a minimal spec.
* ```python blocks must compile; ```python runnable blocks are run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import attrs
import pytest

from sandbox import profile as profile_mod
from sandbox import spec as spec_mod
from sandbox.spec import Spec
from tests.conftest import cgroup_test_path, skip_or_fail

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS_DIR = os.path.join(ROOT, "docs")
DOCS = ["README.md", "SECURITY.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(DOCS_DIR) if f.endswith(".md"))
BIN = os.path.dirname(sys.executable)     # the venv's bin: the installed commands

FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def blocks(lang: str):
    """(doc, line number, info string, text) of every ```LANG block in the docs."""
    out = []
    for doc in DOCS:
        text = read(doc)
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                line = text.count("\n", 0, m.start()) + 1
                out.append((doc, line, m.group(2).strip(), m.group(3)))
    return out


# ---------------------------------------------------------------- spec fields

# Where each sub-record of the spec model sits in a spec.  A new record class in
# sandbox/spec.py must be added here (test_every_record_class_has_a_place), so its
# fields cannot go undocumented.
RECORDS: "dict[str, type]" = {
    "user": spec_mod.User,
    "capabilities": spec_mod.Capabilities,
    "seccomp": spec_mod.Seccomp,
    "seccomp.syscalls[]": spec_mod.SeccompRule,
    "seccomp.syscalls[].args[]": spec_mod.SeccompArg,
    "namespaces": spec_mod.Namespaces,
    "namespaces.user.uid_map[]": spec_mod.IdMap,
    "namespaces.user.gid_map[]": spec_mod.IdMap,
    "mounts[]": spec_mod.Mount,
    "cgroup": spec_mod.Cgroup,
    "filesystem": spec_mod.Filesystem,
    "directories": spec_mod.Directories,
    **{f"directories.{k}[]": spec_mod.ServiceDirectory for k in spec_mod.DIRECTORY_KINDS},
    "listen[]": spec_mod.Listen,
    "landlock": spec_mod.Landlock,
    "landlock.fs[]": spec_mod.LandlockPath,
    "landlock.net": spec_mod.LandlockNet,
}


def spec_field_paths() -> "list[str]":
    paths = list(Spec.KEYS)
    for prefix, cls in RECORDS.items():
        paths += [f"{prefix}.{k}" for k in cls.KEYS]
    paths += ["namespaces.user.uid_map", "namespaces.user.gid_map"]
    return paths


def documented_fields() -> "set[str]":
    """The backquoted names in the first cell of each table row of docs/spec.md."""
    names = set()
    for line in read("docs/spec.md").splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            names.update(re.findall(r"`([^`]+)`", line.split(" | ")[0]))
    return names


def test_every_record_class_has_a_place():
    classes = {cls for cls in vars(spec_mod).values()
               if isinstance(cls, type) and attrs.has(cls) and hasattr(cls, "KEYS")
               and cls.__module__ == spec_mod.__name__}
    assert classes - set(RECORDS.values()) - {Spec} == set()


@pytest.mark.parametrize("path", spec_field_paths())
def test_every_spec_field_is_documented(path):
    names = documented_fields()
    if path in RECORDS:     # an object: documented by the rows of its fields
        assert any(n.startswith(path + ".") for n in names), path
        return
    assert path in names, f"{path}: no row of docs/spec.md's table names it"


# ---------------------------------------------------------------- commands


def wrapperd_options() -> "list[str]":
    from wrapperd import cli
    opts = [o for a in cli._parser()._actions for o in a.option_strings
            if o.startswith("--") and o != "--help"]
    return opts + ["--plan-fd", "--in-new-pidns"]


@pytest.mark.parametrize("opt", wrapperd_options())
def test_every_wrapperd_option_is_documented(opt):
    text = read("docs/wrapperd.md")
    options = text.split("## OPTIONS", 1)[1].split("\n## ", 1)[0]
    assert re.search(rf"`{re.escape(opt)}(?![\w-])", options), opt


def sandbox_commands() -> "list[str]":
    import argparse

    from sandbox import cli
    sub = next(a for a in cli.parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, p in sub.choices.items():
        actions = [a for a in p._actions if a.dest == "action" and a.choices]
        out += [f"{name} {c}" for a in actions for c in a.choices] or [name]
    return out


@pytest.mark.parametrize("cmd", sandbox_commands())
def test_every_sandbox_subcommand_is_in_the_readme(cmd):
    assert re.search(rf"^sandbox {re.escape(cmd)}\b", read("README.md"), re.M), cmd


# ---------------------------------------------------------------- json examples


@pytest.mark.parametrize("doc, line, info, text", blocks("json"),
                         ids=lambda v: str(v)[:30])
def test_every_json_example_loads(doc, line, info, text):
    d = json.loads(text)
    assert isinstance(d, dict), f"{doc}:{line}"
    if not ("argv" in d or "version" in d):
        # A fragment: spec fields, shown without the rest of a spec.
        assert set(d) <= set(Spec.KEYS), f"{doc}:{line}: {set(d) - set(Spec.KEYS)}"
        d = dict(d, argv=["/bin/true"])
    Spec.from_dict(profile_mod.apply_profile(d))


# ---------------------------------------------------------------- python examples


@pytest.mark.parametrize("doc, line, info, text", blocks("python"),
                         ids=lambda v: str(v)[:30])
def test_every_python_example_compiles(doc, line, info, text, tmp_path):
    code = compile(text, f"{doc}:{line}", "exec")
    if info != "runnable":
        return
    del code
    p = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, f"{doc}:{line}: {p.stderr}"


# ---------------------------------------------------------------- sh examples


def sh_commands():
    out = []
    for doc, line, _info, text in blocks("sh"):
        for i, cmd in enumerate(text.splitlines()):
            if cmd.startswith(("sandbox ", "wrapperd ")):
                out.append((doc, line + 1 + i, cmd))
    return out


def expected_status(cmd: str) -> int:
    m = re.search(r"#.*\bexit (\d+)", cmd)
    return int(m.group(1)) if m else 0


def needs_root(cmd: str) -> bool:
    """Commands that start a target (the shim changes ids, cgroups, namespaces)."""
    return (cmd.startswith("wrapperd ") and "--dry-run" not in cmd) or \
        cmd.startswith("sandbox run ")


@pytest.fixture
def example_dir(tmp_path):
    """A scratch directory holding what the placeholders stand for, and the cgroup of
    SPEC (a unique one of ours), emptied and removed afterwards."""
    from sandbox import cgroups, oci
    text = next(t for doc, _l, _i, t in blocks("json")
                if doc == "docs/spec.md" and "argv" in json.loads(t))
    d = json.loads(text)
    path = cgroup_test_path("wrapperd-docs")
    d["cgroup"] = dict(d["cgroup"], path=path + "/web")
    (tmp_path / "spec.json").write_text(json.dumps(d))
    # The OCI config is made from SPEC with numeric ids, so that config.json does not
    # depend on what `sandbox oci export SPEC` (an example under test) does with names.
    numeric = dict(d, user=dict(d["user"], uid=65534, gid=65534))
    config = oci.export_spec(Spec.from_dict(profile_mod.apply_profile(numeric)))
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "P.json").write_text(json.dumps(config["linux"]["seccomp"]))
    yield tmp_path
    g = cgroups.Group(path)
    try:
        assert g.kill(timeout=10), f"could not empty {path}: {g.procs()}"
    finally:
        g.remove()


def make_real(cmd: str) -> str:
    subs = [(r"\bSPEC\b", "spec.json"), (r"\bPID\b", str(os.getpid())),
            (r"\bNAME\b", "strict"), (r"\bFILE\.bpf\b", "out.bpf"),
            (r"\bFILE\b", "out.txt"), (r"\bARGV\b", "/bin/true")]
    for pat, real in subs:
        cmd = re.sub(pat, real, cmd)
    return cmd


@pytest.mark.parametrize("doc, line, cmd", sh_commands(), ids=lambda v: str(v)[:40])
def test_every_command_example_runs_as_written(doc, line, cmd, example_dir):
    if needs_root(cmd) and os.geteuid() != 0:
        skip_or_fail(f"{doc}:{line} starts a target: needs root")
    env = dict(os.environ, PATH=BIN + ":/usr/sbin:/usr/bin:/sbin:/bin")
    p = subprocess.run(["sh", "-c", make_real(cmd)], cwd=example_dir, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert p.returncode == expected_status(cmd), \
        f"{doc}:{line}: {cmd!r} -> {p.returncode}\n{p.stderr.decode(errors='replace')}"
    assert b"Traceback" not in p.stderr


def help_examples() -> "list[str]":
    """The example lines of `wrapperd --help`."""
    from wrapperd import cli
    text = cli.EPILOG.split("examples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in text.splitlines()]


@pytest.mark.parametrize("cmd", help_examples())
def test_every_example_of_wrapperd_help_runs_as_written(cmd, example_dir):
    if needs_root(cmd) and os.geteuid() != 0:
        skip_or_fail(f"{cmd!r} starts a target: needs root")
    # service.json: a spec of the service profile's kind that runs /bin/true; fd 3 open
    # for --status-fd 3, as an init would pass it.
    (example_dir / "service.json").write_text(json.dumps(
        {"name": "docs-example", "profile": "service", "argv": ["/bin/true"]}))
    env = dict(os.environ, PATH=BIN + ":/usr/sbin:/usr/bin:/sbin:/bin")
    p = subprocess.run(["sh", "-c", f"exec 3>status.txt; {cmd}"], cwd=example_dir,
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert p.returncode == 0, f"{cmd!r} -> {p.returncode}\n{p.stderr.decode(errors='replace')}"
    assert (example_dir / "status.txt").read_bytes() == b""


# ---------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(rel: str) -> "set[str]":
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", read(rel), re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_inside_the_docs_resolves(doc):
    text = FENCE.sub("", read(doc))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+:", target):
            continue
        file, _, anchor = target.partition("#")
        rel = os.path.normpath(os.path.join(os.path.dirname(doc), file)) if file else doc
        assert os.path.exists(os.path.join(ROOT, rel)), f"{doc}: {target}"
        if anchor:
            assert anchor in anchors(rel), f"{doc}: {target}: no such heading"


def test_readme_is_short():
    assert len(read("README.md").encode()) <= 12 * 1024


def test_the_status_record_has_the_documented_members(tmp_path):
    """docs/wrapperd.md's record examples have exactly the members wrapperd writes."""
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader:
        try:
            p = subprocess.run([os.path.join(BIN, "wrapperd"), "--status-fd", str(w),
                                "--", "/no/such/program"], pass_fds=(w,),
                               capture_output=True, timeout=60)
        finally:
            os.close(w)
        real = json.loads(reader.read())
    assert p.returncode == 127
    section = read("docs/wrapperd.md").split("## THE STATUS RECORD", 1)[1]
    example = FENCE.search(section).group(3).splitlines()
    assert all(set(json.loads(line)) == set(real) for line in example)


@pytest.mark.parametrize("doc", ["README.md", "docs/profiles.md"])
def test_the_profile_scores_quoted_are_what_exposure_says(doc):
    from sandbox import exposure
    text = " ".join(read(doc).split())
    quoted = text.split("By exposure score: ", 1)[1].split(". ", 1)[0]
    pairs = re.findall(r"([\w-]+(?: and [\w-]+)?) (\d+\.\d)", quoted)
    assert len(pairs) == 5, quoted
    for names, score in pairs:
        for name in names.split(" and "):
            spec = Spec.from_dict(profile_mod.apply_profile({"name": name}, name))
            assert f"{exposure.of_spec(spec).score:.1f}" == score, (doc, name)


def test_the_layout_names_every_module():
    layout = read("docs/internals.md").split("## Layout", 1)[1].split("\n## ", 1)[0]
    for package in ("sandbox", "wrapperd"):
        top = os.path.join(ROOT, package)
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            for f in files:
                # A module of a subpackage is named with its directory: forkserver/server.py
                name = os.path.relpath(os.path.join(d, f), top)
                if f.endswith((".py", ".pyi", ".c")) and f != "__init__.py":
                    assert re.search(rf"(?<![\w./]){re.escape(name)}\b", layout), \
                        f"{package}/{name}"
