"""The provider: probe, benchmark, result signing, preparing a registration, the
process's clean exit on SIGTERM, and (``slow``) a job run end to end through a real
coordinator process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from deai.client import keys
from deai.client.sdk import Client
from deai.core import auth, wire
from deai.provider import benchmark, hardware
from deai.provider.agent import ProviderAgent, signed_result


def test_hardware_probe_is_sane() -> None:
    import torch

    hw = hardware.probe()
    assert hw.cpu_model and hw.cpu_model != "unknown"
    assert hw.cores == len(os.sched_getaffinity(0))
    assert 64 <= hw.memory_mb <= 64 * 1024 * 1024
    assert len(hw.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(g["memory_mb"] > 0 and g["name"] for g in hw.gpus)
    assert hw.platform


def test_benchmark_is_positive() -> None:
    bench = benchmark.run(threads=1)
    assert bench.gflops > 0 and bench.mem_gbps > 0
    assert bench.seconds > 0  # how long it takes is a benchmark's business, not a test's
    assert benchmark.compute_units(bench) > 0


def test_result_signature_verifies_and_binds_digest_and_units() -> None:
    ident = keys.Identity.generate("p")
    res = signed_result(ident, "asg-1", b'{"custom_id":"a"}\n', units=3, seconds=0.5)
    msg = auth.result_message("asg-1", res.output_digest, 3)
    assert keys.verify(ident.id, msg, res.signature)
    assert not keys.verify(ident.id, auth.result_message("asg-1", res.output_digest, 4),
                           res.signature)
    assert not keys.verify(ident.id, auth.result_message("asg-2", res.output_digest, 3),
                           res.signature)
    assert not keys.verify(keys.Identity.generate().id, msg, res.signature)


def test_prepare_builds_a_registration_with_warm_models() -> None:
    from deai.workloads import embeddings

    agent = ProviderAgent("http://127.0.0.1:9", keys.Identity.generate("p"),
                          threads=1, slots=2, price=750,
                          models=("sentence-transformers/all-MiniLM-L6-v2",))
    reg = agent.prepare()
    assert [(o.workload, o.model, o.price) for o in reg.offers] == [
        ("embeddings", "all-MiniLM-L6-v2", 750)]
    assert (reg.threads, reg.slots) == (1, 2)
    assert reg.name.endswith(agent.identity.id[:8])
    assert ("all-MiniLM-L6-v2", embeddings.device()) in embeddings._CACHE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agent_rides_out_a_missing_coordinator_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "DEAI_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deai.provider", "--coordinator",
         f"http://127.0.0.1:{_free_port()}", "--key", "prov", "--threads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("coordinator unavailable" in x for x in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
    assert (tmp_path / "keys" / "prov.key").exists()
    assert any("loaded all-MiniLM-L6-v2" in x for x in lines)


@pytest.mark.parametrize("argv", [[], ["--coordinator", "http://x"], ["--key", "k"]])
def test_cli_requires_coordinator_and_key(argv: list[str]) -> None:
    from deai.provider.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.mark.slow
def test_end_to_end_job_through_a_real_coordinator(tmp_path: Path) -> None:
    """Coordinator and provider as real processes; the job's vectors equal a local run's."""
    from deai.core.specs import encode_items, parse_input, parse_spec, shard
    from deai.workloads import embeddings

    env = {**os.environ, "DEAI_HOME": str(tmp_path / "home")}
    url = f"http://127.0.0.1:{_free_port()}"
    coord = _start(["deai.coordinator", "--database-url", f"sqlite:///{tmp_path}/db.sqlite3",
                    "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
                    "--data-dir", str(tmp_path / "data"), "--devnet", "--no-verify"],
                   env, tmp_path / "c.log")
    prov = _start(["deai.provider", "--coordinator", url, "--key", "prov", "--threads", "1",
                   "--price", "900"], env, tmp_path / "p.log")
    try:
        spec = {"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 2000,
                "shard_size": 3}
        data = "".join(json.dumps({"custom_id": f"r{i}", "body": {
            "model": "all-MiniLM-L6-v2", "input": [f"text {i}", "and more " * i]}}) + "\n"
            for i in range(1, 8)).encode()
        with Client(url, keys.Identity.generate("alice")) as client:
            deadline = time.monotonic() + 60
            while not any(p.online for p in _providers(client)):
                assert prov.poll() is None and coord.poll() is None, _logs(tmp_path)
                assert time.monotonic() < deadline, _logs(tmp_path)
                time.sleep(0.3)
            client.faucet(10_000_000)
            job = client.submit_job(spec, client.upload(data).digest)
            while job.status not in ("completed", "failed", "cancelled"):
                assert time.monotonic() < deadline + 60, _logs(tmp_path)
                time.sleep(0.3)
                job = client.job(job.id)
            assert job.status == "completed", (job, _logs(tmp_path))
            got = {}
            for line in client.results(job.id).decode().splitlines():
                obj = json.loads(line)
                got[obj["custom_id"]] = [d["embedding"] for d in obj["response"]["body"]["data"]]
        want = {}
        for part in shard(parse_input(data, parse_spec(spec)), 3):
            for line in embeddings.embed("all-MiniLM-L6-v2", encode_items(part))[0].splitlines():
                obj = json.loads(line)
                want[obj["custom_id"]] = obj["embeddings"]
        assert got == want  # bit for bit: same model, same shards, same CPU
        assert _stop(prov) == 0, _logs(tmp_path)
        assert "received SIGTERM" in (tmp_path / "p.log").read_text()
    finally:
        _stop(prov)
        _stop(coord)


def _providers(client: Client) -> list[wire.ProviderOut]:
    try:
        return client.providers()
    except httpx.TransportError:
        return []


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
