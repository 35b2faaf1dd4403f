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
import tempfile
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


# --- sealed: environment, read-only root, tmpfs, disk quota, manifest ----------------------

def test_pid_1_holds_only_the_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAI_SECRET", "s3cr3t-of-the-provider")
    out = run({"script": "tr '\\0' '\\n' </proc/1/environ; echo ---; "
                         "cat /proc/[0-9]*/environ | tr '\\0' '\\n' | sort -u"})
    assert out["status"] == "ok", out
    pid1, everyone = out["stdout_tail"].split("---\n")
    assert sorted(pid1.split()) == sorted(f"{k}={v}" for k, v in impl.BWRAP_ENV.items())
    assert "s3cr3t" not in out["stdout_tail"] and "DEAI_SECRET" not in out["stdout_tail"]
    names = {line.split("=", 1)[0] for line in everyone.split()}
    assert names <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD"}, names  # sh exports PWD


def test_only_work_tmp_and_shm_are_writable() -> None:
    out = run({"script": "for d in / /dev /usr /etc /proc /tmp /dev/shm /work; do "
                         "touch $d/x 2>/dev/null && echo W$d; done; mkdir /new; mv /tmp /t"})
    assert out["stdout_tail"].split() == ["W/tmp", "W/dev/shm", "W/work"], out
    assert out["stderr_tail"].count("Read-only file system") == 2


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
def test_tmpfs_is_sized_from_the_memory_limit(where: str) -> None:
    # /tmp is half of memory_mb (32 MB) and /dev/shm a quarter (16 MB): RAM either way
    out = run({"script": f"df -k {where}; head -c 40000000 /dev/zero > {where}/big"},
              memory_mb=64, file_size_mb=64)
    assert out["status"] == "error" and out["limit"] == wl.DISK_LIMIT, out
    assert "No space left on device" in out["stderr_tail"]
    assert "no space left on a device (/tmp holds 32 MB and /dev/shm 16 MB" in out["error"]
    size_kb = int(out["stdout_tail"].splitlines()[-1].split()[1])
    assert size_kb == {"/tmp": 32, "/dev/shm": 16}[where] * 1024
    assert run({"script": "echo fine > /tmp/x && cat /tmp/x"})["status"] == "ok"


def run_sandbox(script: str, **over: Any) -> impl.Result:
    """Run a shell script straight in the sandbox, with small limits of our own."""
    base = Path(tempfile.mkdtemp(prefix="deai-cmd-test-"))
    try:
        os.chmod(base, 0o711)
        (base / "work").mkdir()
        (base / "work" / "input").write_bytes(b"\0" * 4 * 1024 * 1024)  # inputs are free
        limits = impl.Limits(**{"cpu_seconds": 10, "wall_seconds": 60, "memory_mb": 128,
                                "file_size_mb": 64, "max_processes": 8, **over})
        return impl.run(["/bin/sh", "-c", script], base / "work", limits,
                        stdout=base / "o", stderr=base / "e")
    finally:
        wl._rmtree(base)


MANY_FILES = {
    "in subfolders": "for d in range(200):\n    os.mkdir(f'd{d}')\n"
                     "    for i in range(100): open(f'd{d}/{i}', 'w').close()",
    "in /tmp": "for i in range(20000): open(f'/tmp/{i}', 'w').close()",
    "in /dev/shm": "for i in range(20000): open(f'/dev/shm/{i}', 'w').close()",
}


@pytest.mark.parametrize("how", MANY_FILES)
def test_twenty_thousand_empty_files_are_stopped_while_running(how: str) -> None:
    script = f"import os, time\n{MANY_FILES[how]}\nprint('made them')\ntime.sleep(60)"
    # creating files can cost the kernel seconds of CPU on a slow disk: not the limit here
    out = run({"argv": ["/usr/bin/python3", "-c", script]}, memory_mb=128, cpu_seconds=120,
              wall_seconds=120)
    assert out["status"] == "error" and out["limit"] == wl.DISK_LIMIT, out
    assert out["error"].startswith(f"file-count quota exceeded (more than {impl.MAX_FILES} "
                                   "files and folders created in /work, /tmp and /dev/shm)")
    assert out["signal"] == "SIGKILL"  # killed in its sleep, not at the wall-clock limit


@pytest.mark.parametrize("link", ["ln f", "ln -s /usr"])
def test_links_count_as_files(link: str) -> None:
    res = run_sandbox(f"touch f; mkdir -p a/b/c; i=0; while [ $i -lt 400 ]; do i=$((i+1)); "
                      f"{link} a/b/c/l$i; done; sleep 60", max_files=300)
    assert res.limit == "disk" and res.signal == "SIGKILL", res
    assert "file-count quota exceeded (more than 300 files" in str(res.error)


def test_files_made_faster_than_a_sample_are_caught_at_the_end() -> None:
    res = run_sandbox("mkdir d && cd d && touch $(seq 301)", max_files=300)
    # Usually the command ends between two samples and the count at the end catches it;
    # on a loaded machine a sample may land after ``touch`` and before the exit: caught
    # then, and killed. Either way the quota is enforced and named.
    assert res.limit == "disk", res
    assert res.error in tuple(
        "file-count quota exceeded (more than 300 files and folders created in /work, /tmp "
        f"and /dev/shm) ({end})" for end in ("exited with 0", "killed by SIGKILL")), res
    assert run_sandbox("touch $(seq 299)", max_files=300).error is None


def test_many_files_past_the_work_quota_are_stopped() -> None:
    # file_size_mb=1: 1 MB a file, so a work-folder quota of 64 MB (the floor)
    out = run({"script": "i=0; while :; do i=$((i+1)); mkdir -p d/$((i % 7)); "
                         "head -c 1000000 /dev/zero > d/$((i % 7))/f$i || exit 1; done"},
              file_size_mb=1, wall_seconds=60)
    assert out["limit"] == wl.DISK_LIMIT and out["signal"] == "SIGKILL", out
    assert "work-folder quota exceeded (more than 64 MB written to /work)" in out["error"]


def test_deleted_files_held_open_count_against_the_quota() -> None:
    script = ("import os, time\nkeep = []\nfor i in range(100):\n"
              "    f = open(f'x{i}', 'wb'); os.unlink(f'x{i}')\n"
              "    f.write(b'1' * 1000000); f.flush(); keep.append(f)\ntime.sleep(60)")
    out = run({"argv": ["/usr/bin/python3", "-c", script]}, memory_mb=128, file_size_mb=1,
              wall_seconds=60)
    assert out["limit"] == wl.DISK_LIMIT and "work-folder quota exceeded" in out["error"], out


def test_a_big_file_past_the_work_quota_is_stopped() -> None:
    res = run_sandbox("head -c 6000000 /dev/zero > ok && rm ok && "
                      "head -c 30000000 /dev/zero > big; sleep 60", disk_mb=8)
    assert res.limit == "disk" and res.signal == "SIGKILL", res
    assert res.error == ("work-folder quota exceeded (more than 8 MB written to /work) "
                         "(killed by SIGKILL)")


def test_the_manifest_counts_in_the_output_limit() -> None:
    # 1,000,000 bytes of data fit in output_mb=1 (1,048,576), with 300 long-named
    # empty files beside them they do not: their manifest rows count too
    script = ("head -c 1000000 /dev/zero > out/data && cd out && "
              "for i in $(seq 300); do : > $(printf '%0200d' $i); done")
    out = run({"script": script}, output_mb=1)
    assert out["status"] == "error" and out["limit"] == "output", out
    assert out["files"] == [] and len(cmd.canonical(out)) < 64 * 1024
    alone = run({"script": "head -c 1000000 /dev/zero > out/data"}, output_mb=1)
    assert alone["status"] == "ok" and len(alone["files"]) == 1, alone


def test_the_provider_keeps_working_after_the_limits() -> None:
    run({"script": "head -c 40000000 /dev/zero > /tmp/big"}, memory_mb=64, file_size_mb=64)
    run({"argv": ["/usr/bin/python3", "-c", MANY_FILES["in /tmp"]]}, memory_mb=128)
    out = run({"script": "echo again > out/x && ls /tmp | wc -l"})
    assert out["status"] == "ok" and out["stdout_tail"] == "0\n", out
