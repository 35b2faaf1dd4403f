"""Calibrated embeddings tolerances against the real model on this CPU: an honest
re-run with another thread count is accepted, the same job computed in bf16 or
fp16 is rejected, whatever hardware classes the two parties declare.
(Figures: bench/calibrate_tolerances.py, docs/verification.md "Calibration".)
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from deai.core import batch
from deai.core.kinds import embeddings as kind
from deai.core.specs import parse_spec
from deai.provider.cheats import Cheat
from deai.workloads import embeddings

MODEL = "all-MiniLM-L6-v2"
SPEC = parse_spec({"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600})
SENTENCES = [
    "The pilot learned to play the cello at the age of sixty.",
    "Quarterly revenue rose four percent on strong demand for cloud services.",
    "A hash function maps data of any size to a fixed-size value.",
    "Rain is expected over the northern hills by Thursday afternoon, with winds easing.",
    "She folded the letter twice and slid it under the door without a word.",
    " ".join(["Long inputs accumulate more rounding than short ones do."] * 12),
]
SHARD = b"".join(batch.dumps({"custom_id": f"s{i}", "input": [t]})
                 for i, t in enumerate(SENTENCES))
CLASSES: list[tuple[str, str] | None] = [None, ("cpu", "cpu"), ("cpu", "gpu:H100"), ("", "")]


@pytest.fixture(scope="module")
def honest() -> Iterator[bytes]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield embeddings.WORKLOAD.run(MODEL, SHARD)[0]
    finally:
        torch.set_num_threads(threads)


def run_with_threads(n: int) -> bytes:
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return embeddings.WORKLOAD.run(MODEL, SHARD)[0]
    finally:
        torch.set_num_threads(threads)


def cheated(mode: str, honest: bytes) -> bytes:
    cheat = Cheat.parse(mode)
    assert cheat is not None and cheat.mode == mode
    blob = cheat.shard("embeddings", SHARD)
    assert blob == SHARD  # the low-precision cheat does the whole job, only cheaper
    return cheat.output("embeddings", honest, MODEL)


def test_honest_rerun_with_another_thread_count_is_accepted(honest: bytes) -> None:
    other = run_with_threads(1)
    for classes in CLASSES:
        cmp = kind.EmbeddingsKind().compare(SPEC, SHARD, honest, other, classes=classes)
        assert cmp.match, (classes, cmp.detail)
        assert cmp.statistic <= kind.COSINE_TOLERANCE_SAME_CLASS / 100
    assert kind.EmbeddingsKind().compare(SPEC, SHARD, honest, honest).statistic == 0.0


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_low_precision_embeddings_are_rejected(honest: bytes, mode: str) -> None:
    try:
        fake = cheated(mode, honest)
    except RuntimeError as exc:  # pragma: no cover - a CPU without fp16 kernels
        pytest.skip(f"{mode} does not run on this CPU: {exc}")
    assert fake != honest
    for line, ref in zip(map(json.loads, fake.splitlines()), map(json.loads, honest.splitlines()),
                         strict=True):  # same shape and counts: only the numbers tell
        assert line["custom_id"] == ref["custom_id"]
        assert line["prompt_tokens"] == ref["prompt_tokens"]
    kind.check_output(SHARD, fake, 384)
    for classes in CLASSES:
        cmp = kind.EmbeddingsKind().compare(SPEC, SHARD, honest, fake, classes=classes)
        assert not cmp.match, (classes, cmp.detail)
        # A margin, not a coin flip: the cheat lands well beyond the loosest tolerance.
        assert cmp.statistic > 3 * kind.COSINE_TOLERANCE_CROSS_CLASS, cmp.statistic
        # A replica's check and a referee's comparison of checks take the classes too.
        assert not kind.EmbeddingsKind().check(SPEC, SHARD, fake, honest, classes=classes).match
        assert not kind.EmbeddingsKind().compare_checks(SPEC, SHARD, honest, fake,
                                                        classes=classes).match
    assert kind.EmbeddingsKind().check(SPEC, SHARD, honest, honest).match


def test_tolerance_by_hardware_class() -> None:
    same, cross = kind.COSINE_TOLERANCE_SAME_CLASS, kind.COSINE_TOLERANCE_CROSS_CLASS
    assert same < cross
    assert kind.cosine_tolerance(("cpu", "cpu")) == same
    assert kind.cosine_tolerance(("gpu:H100", "gpu:H100")) == same
    assert kind.cosine_tolerance(("cpu", "gpu:H100")) == cross
    assert kind.cosine_tolerance(("", "")) == cross  # unknown is never "the same"
    assert kind.cosine_tolerance(None) == kind.COSINE_TOLERANCE == cross


def test_distance_counts_rescaling_and_is_exact_for_equal_vectors() -> None:
    u = [0.6, 0.8, 0.0]
    assert kind.distance(u, u) == 0.0
    assert kind.distance(u, [2 * x for x in u]) == pytest.approx(0.25)  # same direction
    assert kind.distance(u, [0.0, 0.0, 1.0]) == pytest.approx(1.0)  # orthogonal: 1 - cos
    assert kind.distance([0.0] * 3, [0.0] * 3) == 0.0
    assert kind.distance([0.0] * 3, u) == 1.0
