"""Folders nested past PATH_MAX and past Python's recursion limit, on the provider's side.

A command can nest folders deeper than a path string reaches (``PATH_MAX``,
4096) or than a recursive walk survives (~1000 levels): ``quota.measure`` must
still count what lies below (or call the tree over quota), and the provider
must still collect the output and remove the job's folder, with a result, not
an exception. The sandbox tests need bubblewrap, as ``test_sandbox.py`` does.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deai.core.kinds import command as cmd
from deai.provider import sandbox
from deai.workloads import command as wl
from deai.workloads import quota
from deai.workloads import sandbox as impl

LONG = "x" * 200  # 25 of them: a path of 5,000+ characters


def chain(root: Path, levels: int, name: str = "d") -> int:
    """``levels`` nested folders ``name`` under ``root``, made by descriptor (a path would
    pass PATH_MAX); a descriptor of the deepest, to be closed by the caller."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    return fd


def test_measure_counts_what_lies_past_path_max(tmp_path: Path) -> None:
    fd = chain(tmp_path, 25, LONG)
    try:
        for i in range(40):
            with open(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"z" * 8192)
    finally:
        os.close(fd)
    used, names = quota.measure(tmp_path, 1 << 40)
    assert names == 25 + 40
    assert used >= 40 * 8192
    q = quota.Quota(tmp_path / LONG, max_bytes=1 << 30, max_files=10)
    assert q.check() is None  # the baseline saw them all: nothing was added


def test_a_tree_too_deep_to_measure_is_over_quota(tmp_path: Path) -> None:
    q = quota.Quota(tmp_path, max_bytes=1 << 30, max_files=10_000)
    os.close(chain(tmp_path, quota.MAX_DEPTH + 5))
    with pytest.raises(quota.Unmeasurable):
        quota.measure(tmp_path, 1 << 40)
    why = q.check()
    assert why is not None and "cannot be measured" in why and "deeper than" in why


def test_remove_tree_removes_any_depth_and_locked_folders(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    fd = chain(doomed, 3000)  # past the recursion limit, and past PATH_MAX
    try:
        os.symlink(str(outside), "link", dir_fd=fd)  # never followed
        os.mkdir("locked", dir_fd=fd)
        os.close(os.open("locked/f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        os.chmod(f"/proc/self/fd/{fd}", 0o500)  # a folder its owner cannot write
    finally:
        os.close(fd)
    locked = os.open(doomed, os.O_RDONLY | os.O_DIRECTORY)
    os.chmod(f"/proc/self/fd/{locked}", 0)
    os.close(locked)
    assert quota.remove_tree(doomed) is None
    assert not doomed.exists()
    assert (outside / "keep").read_text() == "host file"
    assert quota.remove_tree(tmp_path / "never-made") is None


def test_collect_never_follows_a_link_in_place_of_a_parent_of_output_dir(
        tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "x").mkdir(parents=True)
    (host / "x" / "secret").write_text("host data")
    work = tmp_path / "work"
    work.mkdir()
    (work / "o").symlink_to(host)  # what a job with output_dir "o/x" could leave
    assert (work / "o" / "x" / "secret").read_text() == "host data"  # a path walk reads it
    assert wl.collect(work / "o" / "x", 1 << 20, root=work) == []


def test_collect_reads_locked_files_and_skips_paths_too_long_to_carry(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "f").write_text("data")
    (out / "sub" / "f").chmod(0)
    (out / "sub").chmod(0)
    fd = chain(out, 200, "y")  # 400 characters: no manifest path
    os.close(fd)
    got = wl.collect(out, 1 << 20)
    assert got is not None and [f["path"] for f in got] == ["sub/f"]
    assert quota.remove_tree(out) is None


# --- against the real sandbox ---------------------------------------------------------------

@pytest.fixture
def host_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder for the command workload's ``deai-cmd-*`` folders, to see what is left."""
    ok, why = sandbox.available()
    if not ok:
        pytest.fail(f"bubblewrap is required for command jobs: {why}. `make test` installs "
                    "it (apt-get install -y bubblewrap).")
    base = Path(tempfile.mkdtemp(prefix="deai-deep-"))
    os.chmod(base, 0o711)  # the sandbox's uid reaches deai-cmd-*/work
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    assert quota.remove_tree(base) is None


def run_command(program: str, **limits: Any) -> dict[str, Any]:
    spec = cmd.CommandSpec.model_validate({
        "kind": "command", "model": "bwrap-sandbox", "max_price": 10, "cpu_seconds": 30,
        "wall_seconds": 60, "memory_mb": 256, "file_size_mb": 1, "max_processes": 8,
        **limits})
    line = json.dumps({"argv": ["/usr/bin/python3", "-c", program]}).encode()
    shard = cmd.CommandKind().split(spec, line)[0]
    out, _ = wl.WORKLOAD.run("bwrap-sandbox", shard.payload)
    return dict(json.loads(out))


def test_files_past_path_max_count_against_the_file_quota(host_tmp: Path) -> None:
    res = run_command(f"""
import os
for _ in range(25):
    os.mkdir({LONG!r}); os.chdir({LONG!r})
for i in range({impl.MAX_FILES + 2000}):
    open(f"f{{i}}", "w").close()
print("made them")
""")
    assert res["limit"] == wl.DISK_LIMIT and "file-count quota" in res["error"], res["error"]
    assert list(host_tmp.iterdir()) == []


def test_a_chain_past_the_recursion_limit_is_a_disk_result_and_leaves_nothing(
        host_tmp: Path) -> None:
    res = run_command("""
import os
for _ in range(1200):
    os.mkdir("a"); os.chdir("a")
os.mkdir("locked"); os.chmod("locked", 0)
print("made the chain")
""")
    assert res["status"] == "error" and res["limit"] == wl.DISK_LIMIT, res["error"]
    assert list(host_tmp.iterdir()) == []


def test_output_below_a_locked_folder_is_collected(host_tmp: Path) -> None:
    res = run_command("""
import os
os.makedirs("out/a")
open("out/a/r.txt", "w").write("result")
os.chmod("out/a/r.txt", 0); os.chmod("out/a", 0)
""")
    assert res["status"] == "ok", res["error"]
    assert [(f["path"], f["size"]) for f in res["files"]] == [("a/r.txt", 6)]
    assert list(host_tmp.iterdir()) == []
