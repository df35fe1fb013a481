"""The order of steps is pinned: changing it must change this test, in review."""

from wrapperd import shim


def test_step_order_is_pinned():
    assert [name for name, _ in shim.STEPS] == [
        "dumpable", "oom_score_adj", "nice", "rlimits", "cgroup", "dynamic_user", "directories",
        "listen", "namespaces",
        "mounts", "session", "fds", "umask", "identity", "capabilities", "cwd", "pdeathsig",
        "no_new_privs", "landlock", "signals", "reaper", "seccomp", "exec",
    ]


def test_privilege_dropping_comes_after_everything_that_needs_privilege():
    names = [n for n, _ in shim.STEPS]
    for needs_root in ("oom_score_adj", "nice", "rlimits", "cgroup"):
        assert names.index(needs_root) < names.index("identity")
    assert names.index("identity") < names.index("capabilities")
    assert names.index("capabilities") < names.index("pdeathsig") < names.index("no_new_privs")
    assert names.index("cgroup") < names.index("namespaces") < names.index("mounts")
    assert names[-2:] == ["seccomp", "exec"]
    # chdir with the target's own ids and caps; signals reset before the filter (which
    # may forbid rt_sigaction), so only execve runs under it.
    assert names.index("capabilities") < names.index("cwd")
    assert names.index("no_new_privs") < names.index("signals") < names.index("seccomp")
    # A fork server's premade reaper is in the target's namespaces before the target
    # runs; its answer is read before the filter (which may forbid recv).
    assert names.index("namespaces") < names.index("reaper") < names.index("seccomp")
    # A new session (it may fork) inside the namespaces, before fds and the uid change.
    assert names.index("mounts") < names.index("session") < names.index("fds")
    assert names.index("session") < names.index("identity")
    # A dynamic id is allocated while /run and /proc are the host's (before any new
    # mount or pid namespace), and before the identity step uses it.
    assert names.index("dynamic_user") < names.index("namespaces")
    # Service directories: owned by the allocated id, made in the host's mount namespace.
    assert names.index("dynamic_user") < names.index("directories") < names.index("namespaces")
    assert names.index("dynamic_user") < names.index("identity")
    # Socket activation: the sockets are bound while the shim still holds the caller's
    # privileges (a port below 1024 for a target without capabilities) and is in the
    # caller's network and mount namespaces (the host's addresses and paths, whatever
    # namespaces the target gets); after the directories, where a socket file may go.
    # The fds step then puts them at 3, 4, ... (sd_listen_fds), and LISTEN_PID is set by
    # the exec step, once nothing forks any more.
    assert names.index("directories") < names.index("listen") < names.index("namespaces")
    assert names.index("listen") < names.index("identity")
    assert names.index("listen") < names.index("fds")
    assert names.index("session") < names.index("fds")
    # Landlock: the paths are opened in the target's view (after the mounts) with the
    # target's ids (after identity and capabilities); an unprivileged
    # landlock_restrict_self needs no_new_privs; and the seccomp filter, loaded after it,
    # need not allow the landlock syscalls.
    assert names.index("mounts") < names.index("landlock")
    assert names.index("capabilities") < names.index("landlock")
    assert names.index("no_new_privs") < names.index("landlock") < names.index("seccomp")
