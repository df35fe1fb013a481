"""sandbox.plancache: what the key covers, and what a hit checks again."""

from sandbox import plancache
from sandbox.spec import Spec
from wrapperd import shim

SPEC = {"argv": ["/bin/true"], "env": {"PATH": "/usr/bin:/bin"}}


def test_the_key_covers_the_invocation():
    k = plancache.key(["--spec", "a.json"], b"{}", b"A=1\0")
    assert k == plancache.key(["--spec", "a.json"], b"{}", b"A=1\0")
    assert k != plancache.key(["--spec", "b.json"], b"{}", b"A=1\0")
    assert k != plancache.key(["--spec", "a.json"], b"{ }", b"A=1\0")
    assert k != plancache.key(["--spec", "a.json"], b"{}", b"A=2\0")


def test_a_hit_is_checked_against_the_user_database_again():
    plan = shim.prepare(Spec.from_dict({**SPEC, "user": {"uid": "root"}}))
    assert plancache._still_holds(plan, {"user": ["root", None, []]})
    # The name now resolving to another id (NSS answers from elsewhere than files):
    # the plan's uid is not what the spec means any more.
    assert not plancache._still_holds(plan, {"user": ["nobody", None, []]})
    assert not plancache._still_holds(plan, {"user": ["no-such-user-here", None, []]})
    assert not plancache._still_holds(plan, {"user": ["root", "nogroup", []]})


def test_a_hit_is_checked_against_the_executable_found_again():
    plan = shim.prepare(Spec.from_dict(SPEC))
    assert plancache._still_holds(plan, {"user": None})
    from sandbox._record import replace
    moved = replace(plan, target=replace(plan.target, executable="/usr/bin/false"))
    assert not plancache._still_holds(moved, {"user": None})
