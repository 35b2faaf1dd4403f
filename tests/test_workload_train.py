"""The training workload with real torch training on scikit-learn's digits (no mocks).

Runs are short (a couple of epochs, well under a second each) but exercise
what matters: repeat runs are bitwise equal, a run resumed from any
checkpoint ends bitwise equal to one that never stopped, ``replay``
reproduces a segment, and a tampered checkpoint or chain is caught.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from deai.core import kinds, specs
from deai.core.errors import InvalidInput
from deai.workloads import base, nets
from deai.workloads import train as wl
from deai.workloads.base import TaskContext

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")
KIND = kinds.get("train")
BASE: dict[str, Any] = {"kind": "train", "model": "mlp-digits", "max_price": 1000,
                        "epochs": 2, "batch_size": 32, "checkpoint_every": 20, "seed": 5}


def shard_for(data: bytes = b"", **kw: Any) -> bytes:
    return KIND.split(specs.parse_spec({**BASE, **kw}), data)[0].payload


class Recorder:
    """A TaskContext's checkpoint sink and blob store, like the coordinator's."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}

    def checkpoint(self, step: int, data: bytes, chain_hash: str, meta: dict[str, Any]) -> None:
        self.steps[step] = (data, chain_hash)
        self.blobs[hashlib.sha256(data).hexdigest()] = data

    def ctx(self, resume: dict[str, Any] | None = None) -> TaskContext:
        return TaskContext(resume=resume, checkpoint=self.checkpoint, fetch=self.blobs.__getitem__)

    def resume_at(self, step: int) -> dict[str, Any]:
        data, h = self.steps[step]
        return {"step": step, "digest": hashlib.sha256(data).hexdigest(), "chain_hash": h,
                "meta": {}}


@pytest.mark.parametrize(("model", "optimizer"), [
    ("mlp-digits", {"name": "adam", "lr": 0.003, "weight_decay": 0.0001}),
    ("cnn-digits", {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
])
def test_resumed_runs_are_bitwise_equal_to_uninterrupted_ones(model: str,
                                                              optimizer: dict[str, Any]) -> None:
    shard = shard_for(model=model, optimizer=optimizer)
    full = Recorder()
    out, units = wl.WORKLOAD.run(model, shard, full.ctx())
    assert KIND.meter(specs.parse_spec({**BASE, "model": model}), shard, out) == units
    assert sorted(full.steps) == [20, 40, 60, 80, 90]
    again, _ = wl.train(shard)
    assert again == out
    for at in (40, 90):
        resumed = Recorder()
        resumed.blobs = dict(full.blobs)
        out2, _ = wl.train(shard, resumed.ctx(full.resume_at(at)))
        assert out2 == out
        assert all(resumed.steps[s] == full.steps[s] for s in resumed.steps)
        assert min(resumed.steps, default=91) > at
    result = json.loads(out)
    assert result["metrics"]["final_test_accuracy"] > 0.8
    assert result["model_digest"] == hashlib.sha256(full.steps[90][0]).hexdigest()


def test_replay_reproduces_a_segment_and_exposes_a_forged_one() -> None:
    shard = shard_for()
    rec = Recorder()
    wl.train(shard, rec.ctx())
    assert wl.replay(shard, rec.steps[40][0], 40, 20) == rec.steps[60][0]
    assert wl.replay(shard, b"", 0, 20) == rec.steps[20][0]
    forged = wl.Trainer(wl.parse_payload(shard))
    hist = forged.restore(rec.steps[40][0])
    with torch.no_grad():
        next(forged.net.parameters()).add_(1e-6)
    tampered = forged.save(hist)
    assert wl.replay(shard, tampered, 40, 20) != rec.steps[60][0]
    with pytest.raises(InvalidInput):
        wl.replay(shard, rec.steps[40][0], 20, 20)  # the checkpoint is at another step
    with pytest.raises(InvalidInput):
        wl.replay(shard, rec.steps[80][0], 80, 20)  # past the end of the run


def test_resume_refuses_a_checkpoint_whose_chain_hash_does_not_follow() -> None:
    shard = shard_for()
    rec = Recorder()
    wl.train(shard, rec.ctx())
    bad = {**rec.resume_at(40), "chain_hash": "0" * 64}
    with pytest.raises(InvalidInput, match="chain hash"):
        wl.train(shard, rec.ctx(bad))
    with pytest.raises(InvalidInput, match="step"):
        wl.train(shard, rec.ctx({**rec.resume_at(40), "step": 60}))


def test_cancel_stops_training() -> None:
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(wl.Cancelled):
        wl.train(shard_for(), TaskContext(cancelled=cancelled))


def test_checkpoint_is_a_safetensors_model_file_that_loads_into_the_network() -> None:
    shard = shard_for()
    rec = Recorder()
    out, _ = wl.train(shard, rec.ctx())
    tensors = st_load(rec.steps[90][0])
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    assert any(k.startswith("optim.") for k in tensors)
    net = nets.build("mlp", 64, 10, seed=0)
    net.load_state_dict(weights)
    meta = json.loads(wl.metadata(rec.steps[90][0])["deai"])
    assert meta["step"] == 90 and len(meta["chain"]) == 4
    assert wl.state_dict_digest(rec.steps[90][0]) != wl.state_dict_digest(rec.steps[20][0])


def test_a_user_csv_trains_and_meters() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    data = "\n".join(",".join(f"{v:.4f}" for v in row) + f",{label}"
                     for row, label in zip(x, y, strict=True)).encode()
    spec = specs.parse_spec({**BASE, "dataset": "file", "epochs": 20, "batch_size": 16,
                             "optimizer": {"name": "adam", "lr": 0.01}})
    shard = KIND.split(spec, data)[0].payload
    out, units = wl.train(shard)
    assert KIND.meter(spec, shard, out) == units
    assert json.loads(out)["metrics"]["final_test_accuracy"] > 0.8


def test_training_leaves_torch_settings_as_it_found_them() -> None:
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    wl.train(shard_for(epochs=1))
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (
        threads, det)


def test_workload_is_registered_loads_and_refuses_another_model() -> None:
    w = base.get("train")
    w.load("mlp-digits")
    assert wl.WORKLOAD.available("cnn-digits") and w is wl.WORKLOAD
    with pytest.raises(InvalidInput):
        w.run("cnn-digits", shard_for())
