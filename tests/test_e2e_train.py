"""Training through real processes: a provider is SIGKILLed mid-run, another resumes it.

The second provider must start from the last checkpoint the first recorded (it
records no step at or below it), and the job's final weights, chain and
metrics must be bitwise those of an uninterrupted run in this process. The
CLI submits the job and saves and plots its results. (The coordinator's
checkpoint rules run on PostgreSQL too, in tests/test_checkpoints.py.)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from deai.client.cli import app
from deai.client.sdk import Client
from deai.core import kinds, specs
from deai.workloads import train as workload
from deai.workloads.base import TaskContext
from tests.netutil import Network

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")]

SPEC: dict[str, Any] = {
    "kind": "train", "model": "cnn-digits", "max_price": 1000, "deadline": 600,
    "dataset": "digits", "optimizer": {"name": "adam", "lr": 0.002},
    "epochs": 10, "batch_size": 16, "seed": 7, "checkpoint_every": 60,
}
INPUT = b'{"dataset": "digits"}'
MODELS = ("--models", "cnn-digits")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=4.0, lease_ttl=60.0, challenge_window=1.0,
                verify=False)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def recorded(c: Client, job_id: str) -> list[dict[str, Any]]:
    return c.checkpoints(job_id)


def wait_checkpoints(c: Client, job_id: str, n: int) -> None:
    end = time.time() + 120
    while len(recorded(c, job_id)) < n:
        assert time.time() < end, f"fewer than {n} checkpoints recorded"
        time.sleep(0.05)


def test_killed_provider_is_resumed_bitwise(net: Network) -> None:
    victim = net.start_provider("victim", 500, *MODELS)
    net.wait_providers(1)
    c = net.client("client")
    c.faucet(1_000_000_000)
    job = c.job(submit_with_cli(net))
    steps = job.items
    wait_checkpoints(c, job.id, 1)
    rescuer = net.start_provider("rescuer", 900, *MODELS)  # starts up while the victim trains
    wait_checkpoints(c, job.id, 3)
    victim.kill()
    before = recorded(c, job.id)
    last = max(cp["step"] for cp in before)
    assert len(before) >= 3 and last < steps, net.logs()
    assert c.job(job.id).status == "running"

    # The uninterrupted reference run, while the lease expires and the rescuer resumes.
    shard = kinds.get("train").split(specs.parse_spec(SPEC), INPUT)[0].payload
    blobs: list[bytes] = []
    out, units = workload.train(shard, TaskContext(
        checkpoint=lambda step, data, h, meta: blobs.append(data)))
    clean = json.loads(out)

    assert net.wait_job(c, job.id, timeout=120) == "completed", net.logs()
    assert rescuer.alive()
    cps = recorded(c, job.id)
    by = {cp["provider_id"] for cp in cps}
    assert len(by) == 2
    victim_id = next(iter({cp["provider_id"] for cp in before}))
    second = [cp["step"] for cp in cps if cp["provider_id"] != victim_id]
    assert min(second) > last, "the rescuer redid steps it should have resumed past"
    assert "resuming from the checkpoint at step" in (net.root / "rescuer.log").read_text()

    result = json.loads(c.results(job.id))
    assert result["model_digest"] == clean["model_digest"]
    assert result["chain"] == clean["chain"]
    assert result["metrics"] == clean["metrics"]
    assert result["units"] == units == c.job(job.id).units
    assert [cp["digest"] for cp in cps] == [ln["digest"] for ln in clean["chain"]]
    model = c.download(result["model_digest"])
    assert model == blobs[-1]
    assert workload.state_dict_digest(model) == workload.state_dict_digest(blobs[-1])
    assert result["metrics"]["final_test_accuracy"] > 0.9

    code, said = deai("job", "results", job.id, "-o", str(net.root / "r.jsonl"),
                      "--coordinator", net.url)
    assert code == 0, said
    assert (net.root / "r.model.safetensors").read_bytes() == model
    metrics = json.loads((net.root / "r.metrics.json").read_text())
    assert metrics["loss"] == clean["metrics"]["loss"] and len(metrics["chain"]) == len(cps)
    code, said = deai("job", "plot", job.id, "-o", str(net.root / "loss.png"),
                      "--coordinator", net.url)
    assert code == 0, said
    assert (net.root / "loss.png").read_bytes().startswith(b"\x89PNG")


def deai(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def submit_with_cli(net: Network) -> str:
    """``deai job submit spec.yaml --input digits.json``; returns the job id."""
    spec = net.root / "train.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    (net.root / "digits.json").write_bytes(INPUT)
    code, said = deai("job", "submit", str(spec), "--input", str(net.root / "digits.json"),
                      "--coordinator", net.url, "--key", "client")
    assert code == 0, said
    found = re.search(r"submitted job (\S+):", said)
    assert found, said
    return found.group(1)
