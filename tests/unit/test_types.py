"""The type checker sees the library's contract: spawn()'s spec fields are declared, so
a misspelt keyword is a type error before anything runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from sandbox.spawning import SpawnFields
from sandbox.spec import Spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_spawn_fields_are_the_specs_keys():
    assert set(SpawnFields.__annotations__) == set(Spec.KEYS)


def _mypy(tmp_path, code: str) -> subprocess.CompletedProcess:
    if shutil.which("mypy", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("mypy is not installed (the test extra brings it)")
    f = tmp_path / "caller.py"
    f.write_text(code)
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary",
                           "--cache-dir", str(tmp_path / "cache"), str(f)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_misspelt_spawn_keyword_is_a_type_error(tmp_path):
    r = _mypy(tmp_path, "import sandbox\n"
                        "sandbox.spawn(['/bin/true'], profile='service')\n"
                        "sandbox.spawn(['/bin/true'], profle='service')\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("error:") == 1
    assert ":3: error:" in r.stdout and "profle" in r.stdout
