"""sandbox.procfs: the one reader of /proc's formats."""

from __future__ import annotations

import os

from sandbox import procfs


def test_stat_numbers_fields_as_proc5_does():
    f = procfs.stat(os.getpid())
    assert int(f[0]) == os.getpid()
    assert procfs.ppid(os.getpid()) == os.getppid()
    assert procfs.start_time() > 0
    assert int(f[18]) == os.getpriority(os.PRIO_PROCESS, 0)      # field 19: nice


def test_a_comm_with_spaces_and_parentheses():
    # The comm is the process's to choose: the fields after it follow the last ')'.
    import subprocess
    import sys
    code = ("import sys; open('/proc/self/comm', 'w').write('a) b (c'); "
            "print('ready', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        f = procfs.stat(p.pid)
        assert f[1] == "a) b (c"
        assert int(f[3]) == os.getpid() and f[2] in "RS"
    finally:
        p.stdin.close()
        p.wait(timeout=30)
        p.stdout.close()


def test_mountinfo_octal_escapes_are_undone_on_bytes():
    line = ("36 35 98:0 / /mnt/a\\040b\\011c\\134d/caf\u00e9 rw,noatime master:1 - "
            "ext3 /dev/root\\040x rw,errors=continue\n").encode()
    (m,) = procfs.parse_mountinfo(line)
    assert m.mount_point == "/mnt/a b\tc\\d/caf\u00e9"
    assert m.source == "/dev/root x"
    assert (m.mount_id, m.parent_id, m.device, m.root) == (36, 35, "98:0", "/")
    assert m.optional == ("master:1",) and m.fstype == "ext3"
    assert m.super_options == "rw,errors=continue"


def test_a_path_that_is_not_utf8_survives():
    (m,) = procfs.parse_mountinfo(b"1 0 0:1 / /x\\040\xff rw - tmpfs t rw\n")
    assert os.fsencode(m.mount_point) == b"/x \xff"


def test_id_maps_translate_both_ways():
    ranges = ((0, 100000, 65536), (70000, 5, 1))
    assert procfs.to_outside(ranges, 0) == 100000
    assert procfs.to_outside(ranges, 65535) == 165535
    assert procfs.to_outside(ranges, 65536) is None
    assert procfs.to_outside(ranges, 70000) == 5
    assert procfs.to_inside(ranges, 100001) == 1
    assert procfs.to_inside(ranges, 99999) is None
    assert procfs.id_map("uid") and procfs.id_map("gid")
