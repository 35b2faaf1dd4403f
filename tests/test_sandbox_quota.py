"""The sandbox's disk accounting and output counting, on plain folders (no bubblewrap).

How ``quota.measure`` counts (links, hard links, depth, locked folders), where
``collect`` draws the output line once manifest rows count, how ``classify``
names the disk limit, and that a bubblewrap without ``--size`` is refused.
The same limits against real sandboxes are in ``test_sandbox.py``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from deai.workloads import command as wl
from deai.workloads import quota
from deai.workloads import sandbox as impl

MB = 1024 * 1024


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_measure_counts_names_and_each_inode_once(tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "a" / "b").mkdir(parents=True)
    big = root / "a" / "b" / "big"
    big.write_bytes(b"x" * MB)
    os.link(big, root / "hard")
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(50):
        (outside / str(i)).write_bytes(b"y" * 10_000)
    (root / "link").symlink_to(outside)  # never followed
    used, names = quota.measure(root, 1 << 40)
    assert names == 5  # a, a/b, a/b/big, hard, link
    assert used == sum(blocks(p) for p in (root / "a", root / "a" / "b", big, root / "link"))
    assert MB <= used < 2 * MB  # the hard link adds a name, not a second copy


def test_measure_stops_counting_past_the_quota(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / str(i)).touch()
    assert quota.measure(tmp_path, 10)[1] == 11
    assert quota.measure(tmp_path, 100)[1] == 30


def test_a_locked_folder_is_opened_for_its_owner_only(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").touch()
    locked.chmod(0)
    assert quota._let_owner_in(str(locked))
    assert stat.S_IMODE(locked.stat().st_mode) == 0o700
    target = tmp_path / "target"
    target.mkdir(mode=0o750)
    target.chmod(0o750)
    (tmp_path / "link").symlink_to(target)
    assert not quota._let_owner_in(str(tmp_path / "link"))  # a link is never followed
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_quota_counts_what_was_added_beyond_the_inputs(tmp_path: Path) -> None:
    (tmp_path / "input").write_bytes(b"i" * 3 * MB)
    q = quota.Quota(tmp_path, max_bytes=2 * MB, max_files=3)
    assert q.check() is None and (q.bytes, q.files) == (0, 0)
    (tmp_path / "new").write_bytes(b"n" * MB)
    assert q.check() is None and q.files == 1 and MB <= q.bytes < 2 * MB
    (tmp_path / "more").write_bytes(b"m" * 2 * MB)
    assert q.check() == "work-folder quota exceeded (more than 2 MB written to /work)"
    (tmp_path / "more").unlink()
    for i in range(3):
        (tmp_path / f"e{i}").touch()
    assert q.check() == ("file-count quota exceeded (more than 3 files and folders created "
                         "in /work, /tmp and /dev/shm)")


def test_filesystem_growth_makes_a_walk_due_early(tmp_path: Path) -> None:
    """Growth far past the quota: the whole filesystem is measured, and other processes
    on it may free space or files meanwhile (CI saw 3 MB written over a 2 MB quota go
    unseen, a database's log recycled beside it), so the margin is wide."""
    q = quota.Quota(tmp_path, max_bytes=2 * MB, max_files=50)
    with open(tmp_path / "big", "wb") as f:
        f.write(b"b" * 96 * MB)
        f.flush()
        os.fsync(f.fileno())
    assert q.due()
    assert q.check() is not None
    q = quota.Quota(tmp_path, max_bytes=1 << 40, max_files=50)
    for i in range(5_000):
        (tmp_path / f"e{i}").touch()
    assert q.due()


def write_out(out: Path, files: dict[str, bytes]) -> int:
    """Write ``files`` under ``out``; what they cost against the output limit."""
    out.mkdir()
    cost = 0
    for name, data in files.items():
        (out / name).write_bytes(data)
        cost += len(data) + wl.row_bytes(name, len(data), hashlib.sha256(data).hexdigest())
    return cost


def test_collect_counts_manifest_rows_against_the_limit(tmp_path: Path) -> None:
    files = {"data": b"d" * 1000, **{f"{i:0100d}": b"" for i in range(20)}}
    cost = write_out(tmp_path / "out", files)
    assert cost > 1000 + 20 * 100  # every empty file costs its row
    got = wl.collect(tmp_path / "out", cost)
    assert got is not None and len(got) == 21
    assert wl.collect(tmp_path / "out", cost - 1) is None


def test_classify_names_the_disk_limit() -> None:
    lim = impl.Limits(cpu_seconds=1, wall_seconds=1, memory_mb=64, file_size_mb=1,
                      max_processes=4)
    assert (lim.tmp_mb, lim.shm_mb, lim.work_mb) == (32, 16, 64)
    full = impl.classify(1, None, 5, 5, 2, lim, "sh: write error: No space left on device")
    assert full.limit == "disk" and full.error == (
        "no space left on a device (/tmp holds 32 MB and /dev/shm 16 MB, from memory_mb) "
        "(exited with 1)")
    killed = impl.classify(-9, "disk", 5, 5, 2, lim, "", disk="work-folder quota exceeded")
    assert (killed.limit, killed.signal) == ("disk", "SIGKILL")
    assert killed.error == "work-folder quota exceeded (killed by SIGKILL)"
    assert impl.classify(0, None, 5, 5, 2, lim, "No space left on device").error is None


def test_bwrap_args_size_the_tmpfs_and_seal_the_root(tmp_path: Path) -> None:
    lim = impl.Limits(cpu_seconds=1, wall_seconds=1, memory_mb=256, file_size_mb=1,
                      max_processes=4)
    args = impl.bwrap_args(tmp_path, {}, ["true"], lim)
    i, j = args.index("/tmp"), args.index("/dev/shm")
    assert args[i - 3:i + 1] == ["--size", str(128 * MB), "--tmpfs", "/tmp"]
    assert args[j - 3:j + 1] == ["--size", str(64 * MB), "--tmpfs", "/dev/shm"]
    last_mount = max(k for k, a in enumerate(args) if a in ("--bind", "--tmpfs", "--dev"))
    assert args.index("--remount-ro") > last_mount
    assert args[args.index("--remount-ro"):][:4] == ["--remount-ro", "/dev", "--remount-ro", "/"]


def test_a_bubblewrap_without_size_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'usage: bwrap [OPTIONS...] [--] COMMAND [ARGS...]'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    impl.available.cache_clear()
    try:
        ok, why = impl.available()
        assert not ok and why == f"{fake} has no --size option for size-limited tmpfs " \
                                 "(upgrade bubblewrap)"
    finally:
        impl.available.cache_clear()
