"""The train kind, purely: spec and input checks naming the field, units, metering, assembly."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from typing import Any

import numpy as np
import pytest

from deai.core import checkpoints, kinds, specs
from deai.core.errors import InvalidInput, UnknownModel
from deai.core.kinds import train, train_data

SPEC: dict[str, Any] = {"kind": "train", "model": "mlp-digits", "max_price": 1000,
                        "epochs": 2, "batch_size": 32, "checkpoint_every": 20}
KIND = kinds.get("train")


def spec(**kw: Any) -> specs.JobSpec:
    return specs.parse_spec({**SPEC, **kw})


def field_of(exc: pytest.ExceptionInfo[InvalidInput]) -> str | None:
    return exc.value.field


@pytest.mark.parametrize(("change", "field"), [
    ({"epochs": 0}, "spec.epochs"),
    ({"epochs": "2"}, "spec.epochs"),
    ({"batch_size": 2.5}, "spec.batch_size"),
    ({"optimizer": {"name": "rmsprop"}}, "spec.optimizer.name"),
    ({"optimizer": {"name": "adam", "momentum": 0.9}}, "spec.optimizer"),
    ({"optimizer": {"lr": 0}}, "spec.optimizer.lr"),
    ({"test_fraction": 0.9}, "spec.test_fraction"),
    ({"dataset": "mnist"}, "spec.dataset"),
    ({"learning_rate": 0.1}, "spec.learning_rate"),
])
def test_bad_spec_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        spec(**change)
    assert field_of(exc) == field


def test_unknown_or_foreign_model_is_refused() -> None:
    with pytest.raises(UnknownModel):
        spec(model="resnet-50")
    with pytest.raises(UnknownModel):
        spec(model="all-MiniLM-L6-v2")


def test_split_makes_one_self_contained_shard_with_known_units() -> None:
    sp = spec()
    shards = KIND.split(sp, b'{"dataset": "digits"}')
    assert len(shards) == 1
    p = train.parse_payload(shards[0].payload)
    n_train, n_test = train.split_sizes(1797, 0.2)
    assert (n_train, n_test) == (1438, 359)
    assert p.steps == 2 * 45 == shards[0].items
    per_step = -(-3 * train.forward_flops("mlp", 64, 10) * 32 // 10**6)
    assert p.step_units == per_step == 4
    assert shards[0].max_units == p.steps * per_step
    assert p.checkpoint_steps() == [20, 40, 60, 80, 90]
    assert KIND.split(sp, b"")[0].payload == shards[0].payload  # an empty placeholder works
    assert KIND.split(sp, b"{}")[0].payload == shards[0].payload


def test_cnn_costs_more_per_step_and_needs_8x8_images() -> None:
    mlp = KIND.split(spec(), b"")[0]
    cnn = KIND.split(spec(model="cnn-digits"), b"")[0]
    assert cnn.max_units > mlp.max_units
    with pytest.raises(InvalidInput) as exc:
        KIND.split(spec(model="cnn-digits", dataset="iris"), b"")
    assert field_of(exc) == "spec.model"


@pytest.mark.parametrize(("data", "field"), [
    (b'{"dataset": "iris"}', "input.dataset"),
    (b"1,2,3\n", "input"),
    (b'["digits"]', "input"),
])
def test_placeholder_input_must_match_the_dataset(data: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        KIND.split(spec(), data)
    assert field_of(exc) == field


def csv_data(n: int = 40, f: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    rows = ["a,b,c,label"] + [",".join(f"{v:.3f}" for v in rng.normal(size=f)) + f",{i % 3}"
                              for i in range(n)]
    return "\n".join(rows).encode()


def test_csv_and_npz_files_are_packed_into_the_payload() -> None:
    p = train.parse_payload(KIND.split(spec(dataset="file"), csv_data())[0].payload)
    assert (p.n, p.features, p.classes) == (40, 3, 3)
    x, y = train_data.unpack(p.x or "", p.y or "", p.data_info)
    assert x.shape == (40, 3) and list(y[:4]) == [0, 1, 2, 0]
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    q = train.parse_payload(KIND.split(spec(dataset="file"), buf.getvalue())[0].payload)
    assert q.data_sha256 == p.data_sha256


@pytest.mark.parametrize(("data", "field"), [
    (b"x,y\n1,0\n2,x\n", "input[line 3]"),
    (b"1,2,0\n1,0\n", "input[line 2]"),
    (b"1,2,0.5\n", "input[line 1]"),
    (b"1,nan,1\n" * 20, "input[line 1]"),
    (b"1,2,0\n" * 20, "input"),  # one class only
    (b"1,2,0\n1,2,1\n", "input"),  # too few samples
    (b"\xff\xfe", "input"),
])
def test_bad_csv_names_the_line(data: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        KIND.split(spec(dataset="file"), data)
    assert field_of(exc) == field


def test_bad_npz_is_refused() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((20, 2)), y=np.arange(20) % 2, extra=np.zeros(1))
    with pytest.raises(InvalidInput, match="exactly the arrays x and y"):
        KIND.split(spec(dataset="file"), buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((20, 2)), y=np.full(20, 0.5))
    with pytest.raises(InvalidInput) as exc:
        KIND.split(spec(dataset="file"), buf.getvalue())
    assert field_of(exc) == "input.y"
    with pytest.raises(InvalidInput):
        KIND.split(spec(dataset="file"), b"PK\x03\x04broken")


def test_too_large_a_run_is_refused() -> None:
    with pytest.raises(InvalidInput) as exc:
        KIND.split(spec(epochs=10_000, batch_size=1), b"")
    assert field_of(exc) == "spec.epochs"
    with pytest.raises(InvalidInput) as exc:
        KIND.split(spec(epochs=100, batch_size=1, checkpoint_every=1), b"")
    assert field_of(exc) == "spec.checkpoint_every"


# --- metering -------------------------------------------------------------------------------

def fake_output(shard: bytes) -> dict[str, Any]:
    """A structurally valid output for ``shard`` (the numbers are not from training)."""
    p = train.parse_payload(shard)
    g = checkpoints.genesis(hashlib.sha256(shard).hexdigest())
    chain: list[checkpoints.Link] = []
    for end in p.checkpoint_steps():
        chain.append(checkpoints.extend(chain, g, hashlib.sha256(b"%d" % end).hexdigest(),
                                        end, p.seed))
    return {"format": train.FORMAT, "model": p.model, "steps": p.steps,
            "units": p.steps * p.step_units, "model_digest": chain[-1].digest,
            "chain": [ln.to_dict() for ln in chain],
            "metrics": {"loss": [[10, 2.1], [p.steps, 0.3]],
                        "test_accuracy": [[ln.end, 0.5] for ln in chain],
                        "final_test_accuracy": 0.9, "final_test_loss": 0.3}}


def test_meter_accepts_a_well_formed_output_and_assemble_names_the_model() -> None:
    sp = spec()
    shard = KIND.split(sp, b"")[0].payload
    out = fake_output(shard)
    assert KIND.meter(sp, shard, json.dumps(out).encode()) == out["units"]
    result = json.loads(KIND.assemble("job_1", sp, [json.dumps(out).encode()]))
    assert result["model_digest"] == out["model_digest"] and result["job"] == "job_1"
    assert result["chain"] == out["chain"] and result["metrics"] == out["metrics"]


def tamper(out: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    bad = copy.deepcopy(out)
    *keys, last = path.split(".")
    node: Any = bad
    for k in keys:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is ...:
        del node[last]
    else:
        node[last] = value
    return bad


@pytest.mark.parametrize(("path", "value", "field"), [
    ("steps", 10, "output.steps"),
    ("units", 1, "output.units"),
    ("model_digest", "0" * 64, "output.model_digest"),
    ("chain.1.digest", "1" * 64, "output.chain[1]"),
    ("chain.0.start", 1, "output.chain[0]"),
    ("chain.0.seed", 99, "output.chain[0]"),
    ("chain.0", {"start": 0}, "output.chain[0]"),
    ("metrics.final_test_accuracy", 1.5, "output.metrics"),
    ("metrics.loss", [[5, float("nan")]], "output.metrics.loss"),
    ("metrics.test_accuracy", [[20, 0.5], [10, 0.5]], "output.metrics.test_accuracy"),
    ("metrics.loss", ..., "output.metrics"),
    ("format", "other", "output"),
])
def test_meter_rejects_malformed_outputs(path: str, value: Any, field: str) -> None:
    sp = spec()
    shard = KIND.split(sp, b"")[0].payload
    bad = tamper(fake_output(shard), path, value)
    with pytest.raises(InvalidInput) as exc:
        KIND.meter(sp, shard, json.dumps(bad).encode())
    assert field_of(exc) == field


def test_meter_rejects_a_chain_moved_from_another_task() -> None:
    sp = spec()
    shard = KIND.split(sp, b"")[0].payload
    other = KIND.split(spec(seed=1), b"")[0].payload
    out = fake_output(other)
    out["chain"] = [dict(ln, seed=0) for ln in out["chain"]]  # even with this task's seed
    with pytest.raises(InvalidInput) as exc:
        KIND.meter(sp, shard, json.dumps(out).encode())
    assert field_of(exc) == "output.chain[0]"
    with pytest.raises(InvalidInput):
        KIND.meter(sp, shard, b"not json")


def test_seeds_are_derived_per_purpose() -> None:
    assert train.derive_seed(0, "order", 1) != train.derive_seed(0, "order", 2)
    assert train.derive_seed(0, "init") != train.derive_seed(1, "init")
    assert 0 <= train.derive_seed(2**63 - 1, "split") < 2**63


def test_compare_names_the_segment_where_two_runs_part() -> None:
    sp = spec()
    shard = KIND.split(sp, b"")[0].payload
    out = fake_output(shard)
    a = json.dumps(out).encode()
    assert KIND.compare(sp, shard, a, a).match
    g = checkpoints.genesis(hashlib.sha256(shard).hexdigest())
    links = [checkpoints.Link.from_dict(d) for d in out["chain"][:2]]
    forged = checkpoints.extend(links, g, "f" * 64, 60, links[0].seed)
    other = {**out, "chain": [*out["chain"][:2], forged.to_dict(), *out["chain"][3:]]}
    got = KIND.compare(sp, shard, a, json.dumps(other).encode())
    assert not got.match and "chain[2]" in got.detail and "(40, 60]" in got.detail
    assert not KIND.compare(sp, shard, a, b"garbage").match
