"""Escape tests against the real bubblewrap sandbox, through the command workload.

Each hostile command is contained, reported in the output as an error that
names the limit, metered by the kind like any output, and leaves no process
behind. bubblewrap is required: ``make test`` installs it, and without it
these tests fail (they do not skip).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deai.core import kinds, specs
from deai.core.kinds import command as cmd
from deai.provider import sandbox
from deai.workloads import command as wl
from deai.workloads import get
from deai.workloads import sandbox as impl
from deai.workloads.base import TaskContext

KIND = kinds.get("command")


@pytest.fixture(autouse=True)
def need_bwrap() -> Iterator[None]:
    ok, why = sandbox.available()
    if not ok:
        pytest.fail(f"bubblewrap is required for command jobs: {why}. `make test` installs "
                    "it (apt-get install -y bubblewrap).")
    yield
    left = sandbox_processes()
    assert not left, f"sandbox processes left behind: {left}"


def sandbox_processes() -> list[str]:
    """Host processes owned by this process's sandbox uids (when it runs as root)."""
    found = []
    first = impl._UIDS.first
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and first <= d.stat().st_uid < first + impl.UID_POOL:
                found.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def run(command: dict[str, Any], ctx: TaskContext | None = None,
        **limits: Any) -> dict[str, Any]:
    """Run one command as a provider would and meter its output as the coordinator would."""
    spec = specs.parse_spec({"kind": "command", "model": "bwrap-sandbox", "max_price": 10,
                             **limits})
    [shard] = KIND.split(spec, json.dumps(command).encode())
    output, units = get("command").run("bwrap-sandbox", shard.payload, ctx)
    assert KIND.meter(spec, shard.payload, output) == units <= shard.max_units
    out: dict[str, Any] = json.loads(output)
    return out


def test_good_command_output_is_collected_hashed_and_deterministic() -> None:
    job = {"script": "sort data.txt > out/sorted.txt && mkdir out/sub && "
                     "wc -l < data.txt > out/sub/n && echo done",
           "files": {"data.txt": {"text": "pear\napple\nfig\n"}}}
    a = run(job)
    assert a["status"] == "ok" and a["exit_code"] == 0, a
    assert [f["path"] for f in a["files"]] == ["sorted.txt", "sub/n"]
    assert a["stdout_tail"] == "done\n"
    b = run(job)
    assert cmd.same_output(cmd.canonical(a), cmd.canonical(b))
    assert a["manifest_sha256"] == b["manifest_sha256"]


def test_blob_inputs_are_fetched_through_the_context() -> None:
    blob = b"1\n2\n3\n"
    ctx = TaskContext(fetch=lambda d: blob if d == "ab" * 32 else b"")
    out = run({"script": "awk '{s+=$1} END {print s}' nums > out/sum",
               "files": {"nums": {"digest": "ab" * 32}}}, ctx)
    assert out["status"] == "ok", out
    assert out["files"][0]["base64"] == "Ngo="  # "6\n"


def test_provider_key_and_home_are_invisible(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "deai-home"
    (home / "keys").mkdir(parents=True)
    key = home / "keys" / "provider.key"
    key.write_text("f" * 64)
    monkeypatch.setenv("DEAI_HOME", str(home))
    out = run({"script": f"cat {key}; cat /proc/1/root{key}; ls {home} /root /home; "
                         f"test -e {key} && echo VISIBLE; env; cat /etc/shadow; id -u"})
    text = out["stdout_tail"] + out["stderr_tail"]
    assert "f" * 64 not in text and "VISIBLE" not in text
    assert "DEAI_HOME" not in out["stdout_tail"]
    assert "No such file" in out["stderr_tail"]
    assert out["stdout_tail"].split()[-1] != "0"  # not root inside either


def test_network_is_unreachable() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        script = ("import socket\n"
                  f"for addr in [('127.0.0.1', {port}), ('192.0.2.1', 80)]:\n"
                  "    try:\n"
                  "        socket.create_connection(addr, timeout=2); print('CONNECTED')\n"
                  "    except OSError as e:\n"
                  "        print('blocked', e)\n")
        out = run({"argv": ["/usr/bin/python3", "-c", script]})
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert "CONNECTED" not in out["stdout_tail"]
    assert out["stdout_tail"].count("blocked") == 2, out
    assert "Network is unreachable" in out["stdout_tail"]


def test_fork_bomb_is_contained_by_the_process_limit() -> None:
    out = run({"script": "f(){ f | f & }; f; sleep 1"}, max_processes=16, wall_seconds=10)
    assert out["status"] == "error" and out["limit"] == "processes", out
    assert "process limit reached (16 processes)" in out["error"]


def test_memory_past_the_limit() -> None:
    out = run({"argv": ["/usr/bin/python3", "-c", "x = bytearray(400 * 1024 * 1024)"]},
              memory_mb=128)
    assert out["limit"] == "memory", out
    assert "memory limit reached (128 MB" in out["error"]


def test_file_past_the_size_limit() -> None:
    out = run({"script": "head -c 3000000 /dev/zero > out/big"}, file_size_mb=1)
    assert out["limit"] == "file_size" and out["signal"] == "SIGXFSZ", out
    assert "file-size limit exceeded (1 MB per file)" in out["error"]
    [big] = out["files"]
    assert big["size"] == 1024 * 1024  # written up to the limit, then stopped


def test_cpu_time_past_the_limit_single_and_parallel() -> None:
    one = run({"script": "while :; do :; done"}, cpu_seconds=1, wall_seconds=20)
    assert one["limit"] == "cpu" and "CPU-time limit exceeded (1 s)" in one["error"], one
    assert 800 <= one["cpu_ms"] <= 1000  # billed up to the limit, never past it
    t0 = time.monotonic()
    many = run({"script": "for i in 1 2 3; do (while :; do :; done) & done; wait"},
               cpu_seconds=1, wall_seconds=20)
    assert many["limit"] == "cpu", many  # the processes' CPU counts together
    assert many["cpu_ms"] == 1000 and time.monotonic() - t0 < 10


def test_wall_clock_past_the_limit_and_leftovers_are_killed() -> None:
    t0 = time.monotonic()
    out = run({"script": "sleep 30"}, wall_seconds=1)
    assert out["limit"] == "wall" and out["signal"] == "SIGKILL", out
    assert "wall-clock limit exceeded (1 s)" in out["error"]
    assert time.monotonic() - t0 < 5
    daemon = run({"script": "(sleep 60 &) ; echo started"})
    assert daemon["status"] == "ok", daemon  # its background child dies with the sandbox


def test_symlinks_in_the_output_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    os.chmod(tmp_path, 0o755)
    out = run({"script": f"ln -s {secret} out/leak; mkfifo out/pipe; echo ok > out/real"})
    assert [f["path"] for f in out["files"]] == ["real"], out


def test_output_over_its_limit_is_an_error_not_a_partial_result() -> None:
    out = run({"script": "head -c 700000 /dev/zero > out/a; head -c 700000 /dev/zero > out/b"},
              output_mb=1)
    assert out["limit"] == "output" and out["files"] == [], out


def test_nonzero_exit_is_an_error_with_its_status() -> None:
    out = run({"script": "echo oops >&2; exit 3"})
    assert (out["status"], out["exit_code"], out["limit"]) == ("error", 3, None)
    assert out["error"] == "command exited with 3" and out["stderr_tail"] == "oops\n"


def test_without_bwrap_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    impl.available.cache_clear()
    try:
        ok, why = sandbox.available()
        assert not ok and "bwrap not found" in why
        assert wl.WORKLOAD.available("bwrap-sandbox") is False
        with pytest.raises(sandbox.SandboxUnavailable):
            wl.WORKLOAD.load("bwrap-sandbox")
        marker = tmp_path / "ran"
        with pytest.raises(sandbox.SandboxUnavailable):
            run({"script": f"touch {marker}"})
        assert not marker.exists()
    finally:
        impl.available.cache_clear()


def test_locked_output_folders_are_collected_and_cleaned_up() -> None:
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("deai-cmd-*"))
    out = run({"script": "mkdir -p out/d && echo 1 > out/d/f && chmod 000 out/d out"})
    assert out["status"] == "ok" and [f["path"] for f in out["files"]] == ["d/f"], out
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("deai-cmd-*")) <= before
