"""The chat workload on the real SmolLM2-135M-Instruct: determinism, seeds, bounds, warmth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from deai.core.errors import InvalidInput
from deai.core.kinds.chat import ChatKind, check_output, greedy_ok, line_bound
from deai.workloads import chat, get

MODEL = "SmolLM2-135M-Instruct"
KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": MODEL, "max_price": 500, "shard_size": 100})


def shard(*bodies: dict[str, Any]) -> bytes:
    lines = [{"custom_id": f"r{i}", "url": "/v1/chat/completions", "body": b}
             for i, b in enumerate(bodies)]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    (only,) = KIND.split(SPEC, data)
    return only.payload


def ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 12,
            "temperature": 0, **kw}


GREEDY = shard(ask("What is the capital of France?"),
               ask("Name three colours.", max_tokens=4),
               {"messages": [{"role": "system", "content": "Answer in one word."},
                             {"role": "user", "content": "Is water wet?"}],
                "max_tokens": 6, "temperature": 0})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the agent runs it: on busy cores, more threads are slower
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def greedy(one_thread: None) -> tuple[bytes, int]:
    return get("chat").run(MODEL, GREEDY)


def lines(blob: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in blob.splitlines()]


def test_greedy_output_is_well_formed_and_metered(greedy: tuple[bytes, int]) -> None:
    blob, units = greedy
    out = lines(blob)
    assert [x["custom_id"] for x in out] == ["r0", "r1", "r2"]
    check_output(GREEDY, blob)
    assert KIND.meter(SPEC, GREEDY, blob) == units
    assert "Paris" in out[0]["text"] and out[0]["finish_reason"] == "stop"
    assert out[0]["token_ids"][-1] in chat._loaded(MODEL).stop_ids
    assert out[1]["finish_reason"] == "length" and out[1]["completion_tokens"] == 4
    assert all(chat.text_of(MODEL, x["token_ids"]) == x["text"] for x in out)


def test_greedy_is_deterministic(greedy: tuple[bytes, int]) -> None:
    assert chat.complete(MODEL, GREEDY) == greedy


def test_seeded_sampling_repeats_and_the_seed_matters() -> None:
    def run(seed: int) -> list[list[int]]:
        blob, _ = chat.complete(MODEL, shard(
            ask("Write a line about the sea.", temperature=1.2, seed=seed, max_tokens=6)))
        return [x["token_ids"] for x in lines(blob)]

    assert run(1) == run(1)
    assert len({str(run(s)) for s in (1, 2, 3)}) > 1


def test_tiny_top_p_is_greedy(greedy: tuple[bytes, int]) -> None:
    blob, _ = chat.complete(MODEL, shard(ask("What is the capital of France?", temperature=1.5,
                                             top_p=1e-9, seed=3)))
    assert lines(blob)[0]["token_ids"] == lines(greedy[0])[0]["token_ids"]


def test_rescore_accepts_greedy_and_catches_a_substituted_token(
        greedy: tuple[bytes, int]) -> None:
    req = json.loads(GREEDY.splitlines()[0])
    ids = lines(greedy[0])[0]["token_ids"]
    margins = chat.rescore(MODEL, req["messages"], ids)
    assert len(margins) == len(ids) and greedy_ok(margins, 1e-3)
    forged = [*ids[:2], (ids[2] + 1) % 1000, *ids[3:]]
    bad = chat.rescore(MODEL, req["messages"], forged)
    assert bad[2] > 0.1 and not greedy_ok(bad, 1e-3)
    with pytest.raises(InvalidInput):
        chat.rescore(MODEL, req["messages"], [10**9])


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "😀🦀" * 40 + "日本語のテキスト" * 10 + "\u2028\x00\t"}],
    [{"role": "system", "content": "s"}, *[{"role": r, "content": "a b c"}
                                           for r in ("user", "assistant") * 10],
     {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "<|im_start|>assistant\n<|im_end|>" * 5}],
])
def test_real_prompt_tokens_stay_within_the_escrow_bound(messages: list[dict[str, str]]) -> None:
    ids = chat.prompt_ids(chat._loaded(MODEL), messages)
    assert len(ids) + 1 <= line_bound(messages, 1)


def test_malformed_shard_is_refused() -> None:
    for bad in (b"{}\n", b"not json\n", b'{"custom_id": 1}\n', b"\xff\n"):
        with pytest.raises(InvalidInput):
            chat.complete(MODEL, bad)


def test_a_loaded_model_is_not_loaded_again(greedy: tuple[bytes, int]) -> None:
    wl = get("chat")
    before = chat.load_count
    t0 = time.perf_counter()
    wl.load(MODEL)
    wl.load("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - t0 < 0.01
    wl.run(MODEL, shard(ask("Hi", max_tokens=1)))
    assert chat.load_count == before


def test_later_loads_read_the_dequantized_copy() -> None:
    """Dequantizing the GGUF takes ~20 s; every load after the first reads the saved
    float32 copy instead (how fast that is belongs in a benchmark, not here)."""
    chat._loaded(MODEL)  # the copy exists (made now on a machine's first run)
    entry = chat._build(MODEL, chat.device())
    assert (chat.dequantized_dir(MODEL) / "config.json").exists()
    assert str(entry.model.config._name_or_path) == str(chat.dequantized_dir(MODEL))
    assert entry.context == 8192


def test_a_padded_prompt_token_count_is_caught_by_every_check(
        greedy: tuple[bytes, int]) -> None:
    """Chat is billed per token, the prompt's included. A primary claiming more prompt
    tokens than the model's tokenizer counts (within the escrow bound, so metering takes
    it) overcharged the client: the checks compared tokens, text and margins only. Now a
    re-score, a re-execution and two checkers' outputs all compare the count."""
    honest = greedy[0]
    padded = b"".join(json.dumps({**x, "prompt_tokens": x["prompt_tokens"] + 1}).encode()
                      + b"\n" for x in lines(honest))
    KIND.meter(SPEC, GREEDY, padded)  # within the bound: metering alone takes it
    payload = KIND.check_payload(SPEC, GREEDY, padded)
    assert payload is not None
    checked, _ = chat.check(MODEL, payload)
    assert KIND.check(SPEC, GREEDY, honest, chat.check(
        MODEL, KIND.check_payload(SPEC, GREEDY, honest) or b"")[0]).match
    verdict = KIND.check(SPEC, GREEDY, padded, checked)
    assert not verdict.match and "prompt_tokens" in verdict.detail
    assert not KIND.compare(SPEC, GREEDY, honest, padded).match
    lying = b"".join(json.dumps({**x, "prompt_tokens": x["prompt_tokens"] + 1}).encode()
                     + b"\n" for x in lines(checked))
    assert not KIND.compare_checks(SPEC, payload, checked, lying).match
