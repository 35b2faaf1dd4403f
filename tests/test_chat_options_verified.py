"""Stop sequences, n choices, logprobs and JSON-constrained decoding on the real
SmolLM2-135M-Instruct, each re-checked by the chat verifier exactly as a replica's
checker would: honest results pass, doctored ones are flagged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from deai.core.kinds.chat import ChatKind
from deai.workloads import chat

pytestmark = pytest.mark.slow  # a few minutes of CPU decoding
MODEL = "SmolLM2-135M-Instruct"
KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": MODEL, "max_price": 500, "shard_size": 100})
CAT = [{"role": "user", "content": "Describe a cat as a JSON object with name and age."}]
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shard(*bodies: dict[str, Any]) -> bytes:
    data = b"".join(json.dumps({"custom_id": f"r{i}", "url": "/v1/chat/completions",
                                "body": b}).encode() + b"\n" for i, b in enumerate(bodies))
    (only,) = KIND.split(SPEC, data)
    return only.payload


def verdict(sh: bytes, out: bytes) -> Any:
    payload = KIND.check_payload(SPEC, sh, out)
    assert payload is not None
    checked, _ = chat.check(MODEL, payload)
    return KIND.check(SPEC, sh, out, checked)


def lines(blob: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in blob.splitlines()]


def blob(xs: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in xs)


@pytest.fixture(scope="module")
def run(one_thread: None) -> tuple[bytes, bytes]:
    sh = shard({"messages": COUNT, "max_tokens": 30, "temperature": 0, "stop": ["5"],
                "logprobs": True, "top_logprobs": 2},
               {"messages": CAT, "max_tokens": 40, "temperature": 0,
                "response_format": {"type": "json_object"}},
               {"messages": CAT, "max_tokens": 40, "temperature": 0.9, "seed": 1, "n": 2,
                "response_format": {"type": "json_object"}})
    return sh, chat.complete(MODEL, sh)[0]


def test_options_do_what_they_say(run: tuple[bytes, bytes]) -> None:
    _, out = run
    stop, greedy_json, *choices = lines(out)
    assert stop["finish_reason"] == "stop" and "5" not in stop["text"]
    assert stop["text"].startswith("1") and stop["token_ids"][-1] not in chat._loaded(
        MODEL).stop_ids
    assert len(stop["logprobs"]) == len(stop["token_ids"])
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in stop["logprobs"])
    assert stop["logprobs"][0]["top_logprobs"][0]["logprob"] >= stop["logprobs"][0]["logprob"]
    for line in (greedy_json, *choices):
        assert line["text"].lstrip().startswith("{")
        if line["finish_reason"] == "stop":
            assert isinstance(json.loads(line["text"]), dict)
    assert len(choices) == 2 and choices[0]["token_ids"] != choices[1]["token_ids"]
    assert chat.complete(MODEL, run[0])[0] == out  # a replica gets the same bytes


def test_honest_results_pass_the_check(run: tuple[bytes, bytes]) -> None:
    result = verdict(*run)
    assert result.match, result.detail


def test_doctored_results_are_flagged(run: tuple[bytes, bytes]) -> None:
    _, out = run
    bodies = [json.loads(x) for x in run[0].splitlines()]
    stop, greedy_json, *choices = lines(out)

    def flagged(line: dict[str, Any], change: dict[str, Any], *more: dict[str, Any]) -> str:
        """The verdict on one request's claim (its choices), doctored by ``change``."""
        sh = blob([b for b in bodies if b["custom_id"] == line["custom_id"]])
        claim = [x for x in lines(out) if x["custom_id"] == line["custom_id"]]
        claim[len(claim) - 1 - len(more)] = {**line, **change}
        result = verdict(sh, blob(claim))
        assert not result.match
        return result.detail

    # a stop claimed as a cut-off; logprobs made up; text past the stop sequence
    flagged(stop, {"finish_reason": "length"})
    lps = [dict(e) for e in stop["logprobs"]]
    lps[0]["logprob"] = lps[0]["logprob"] - 0.5
    assert "logprob" in flagged(stop, {"logprobs": lps})
    assert "text" in flagged(stop, {"text": stop["text"] + "5"})
    # JSON output whose tokens the constraint would not allow (an unconstrained completion)
    free = lines(chat.complete(MODEL, shard({"messages": CAT, "max_tokens": 40,
                                             "temperature": 0}))[0])[0]
    assert free["token_ids"] != greedy_json["token_ids"]
    detail = flagged(greedy_json, {k: free[k] for k in (
        "token_ids", "text", "finish_reason", "completion_tokens")})
    assert "greedy" in detail or "cut off" in detail
    # a sampled choice swapped for the other one
    assert "seeded" in flagged(choices[1], {k: choices[0][k] for k in (
        "token_ids", "text", "finish_reason", "completion_tokens")})
