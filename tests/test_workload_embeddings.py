"""The embeddings workload on the real all-MiniLM-L6-v2 model: format, order, metering, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deai.core.errors import InvalidInput, UnknownModel
from deai.core.kinds.embeddings import check_output
from deai.core.specs import Item, encode_items
from deai.workloads import embeddings, get

MODEL = "all-MiniLM-L6-v2"

# Lengths vary on purpose: sentence-transformers sorts a batch by length
# internally, so a wrong un-sort would show up as misplaced vectors.
ITEMS = [
    Item(0, "a", ("hello world",)),
    Item(1, "b", ("A much longer sentence about graphics cards renting out idle time. " * 4,
                  "short", "medium length sentence here")),
    Item(2, "c", ("x",)),
]


@pytest.fixture(scope="module")
def output() -> tuple[bytes, int]:
    return get("embeddings").run(MODEL, encode_items(ITEMS))


def test_one_line_per_input_line_in_order(output: tuple[bytes, int]) -> None:
    blob, units = output
    lines = [json.loads(x) for x in blob.splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "b", "c"]
    assert [len(x["embeddings"]) for x in lines] == [1, 3, 1]
    assert all(len(v) == 384 for x in lines for v in x["embeddings"])
    assert units == 5
    assert blob.endswith(b"\n")


def test_output_passes_the_coordinators_structural_check(output: tuple[bytes, int]) -> None:
    check_output(encode_items(ITEMS), output[0], dims=384)


@pytest.mark.parametrize("tokens", [10**18, int("9" * 4000), -1])
def test_a_prompt_count_past_the_inputs_bytes_is_refused(output: tuple[bytes, int],
                                                         tokens: int) -> None:
    """The caller's ``usage`` is the provider's word: bounded by the line's bytes."""
    lines = [json.loads(x) for x in output[0].splitlines()]
    lines[2]["prompt_tokens"] = tokens
    forged = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    with pytest.raises(InvalidInput, match="prompt_tokens"):
        check_output(encode_items(ITEMS), forged, dims=384)


def test_line_separators_inside_texts_do_not_split_lines() -> None:
    items = [Item(0, "sep\u2028id", ("one\u2028two", "three\x85four\x1c")), Item(1, "z", ("z",))]
    blob, units = embeddings.embed(MODEL, encode_items(items))
    check_output(encode_items(items), blob, dims=384)
    assert units == 3


def test_vectors_are_the_models_raw_output_for_each_text(output: tuple[bytes, int]) -> None:
    lines = [json.loads(x) for x in output[0].splitlines()]
    got = np.array([v for x in lines for v in x["embeddings"]], dtype=np.float32)
    texts = [t for it in ITEMS for t in it.inputs]
    one_by_one = np.stack([embeddings.load_model(MODEL).encode([t], normalize_embeddings=False)[0]
                           for t in texts])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    # The model's own pipeline ends in a Normalize layer; the workload adds none.
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_repeat_runs_are_bitwise_identical(output: tuple[bytes, int]) -> None:
    assert get("embeddings").run(MODEL, encode_items(ITEMS)) == output


def test_floats_round_trip_as_float32(output: tuple[bytes, int]) -> None:
    vec = json.loads(output[0].splitlines()[0])["embeddings"][0]
    assert all(float(np.float32(v)) == v for v in vec)


def test_prompt_tokens_count_cls_sep_and_truncate_to_max_seq_length() -> None:
    long = "word " * 1000
    blob, _ = embeddings.embed(MODEL, encode_items([
        Item(0, "hw", ("hello world",)), Item(1, "two", ("hello world", "hello world")),
        Item(2, "long", (long,))]))
    tokens = [json.loads(x)["prompt_tokens"] for x in blob.splitlines()]
    assert tokens == [4, 8, embeddings.load_model(MODEL).max_seq_length]


def test_model_is_loaded_once_and_aliases_share_it() -> None:
    first = embeddings.load_model(MODEL)
    assert embeddings.load_model(MODEL) is first
    assert embeddings.load_model("sentence-transformers/all-MiniLM-L6-v2") is first
    assert get("embeddings") is get("embeddings")


def test_runs_on_cuda_when_torch_sees_one() -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert embeddings.device() == expected
    assert embeddings.load_model(MODEL).device.type == expected


def test_empty_shard_is_zero_units() -> None:
    assert embeddings.embed(MODEL, b"") == (b"", 0)


@pytest.mark.parametrize("blob", [
    b"not json\n",
    b'{"custom_id": "a"}\n',
    b'{"custom_id": "a", "input": []}\n',
    b'{"custom_id": 1, "input": ["x"]}\n',
    b'{"custom_id": "a", "input": [3]}\n',
    b"\xff\xfe\n",
])
def test_malformed_shard_is_invalid_input(blob: bytes) -> None:
    with pytest.raises(InvalidInput, match="shard"):
        embeddings.embed(MODEL, blob)


def test_unknown_model_and_workload_are_refused() -> None:
    with pytest.raises(UnknownModel):
        embeddings.embed("no-such-model", encode_items(ITEMS))
    with pytest.raises(InvalidInput, match="unknown workload"):
        get("painting")


def _junk(out: bytes, value: float) -> bytes:
    """``out`` with every component of every vector replaced by ``value``."""
    lines = [json.loads(x) for x in out.splitlines()]
    for line in lines:
        line["embeddings"] = [[value] * len(v) for v in line["embeddings"]]
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


@pytest.mark.parametrize("value", [1e200, 1e5, 1e-150, 1e-170, 0.0])
def test_junk_vectors_never_match_the_models(output: tuple[bytes, int], value: float) -> None:
    """Vectors whose norms overflowed (1e200: ``inf / inf`` made the distance NaN, which
    no tolerance refused, so junk passed every replica, canary and audit) or underflowed
    (1e-150 against 1e-170 divided by zero), or that are merely far off, are refused or
    compared as a mismatch, in both orders, whatever the parties' classes."""
    from deai.core import kinds

    kind = kinds.get("embeddings")
    spec = kind.parse_spec({"kind": "embeddings", "model": MODEL, "max_price": 1})
    shard = encode_items(ITEMS)
    honest, _ = output
    junk = _junk(honest, value)
    for a, b in ((honest, junk), (junk, honest)):
        for classes in (None, ("cpu", "cuda")):
            got = kind.compare(spec, shard, a, b, classes=classes)
            assert not got.match, (value, got)
            assert got.statistic == got.statistic  # a number, never NaN
    if value >= 1e200:
        with pytest.raises(InvalidInput):
            check_output(shard, junk, 384)
    tiny = kind.compare(spec, shard, _junk(honest, 1e-150), _junk(honest, 1e-170))
    assert not tiny.match
