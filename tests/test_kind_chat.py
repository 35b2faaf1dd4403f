"""The chat kind, purely: input checks name the field, shards bound their tokens, outputs meter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.core import kinds
from deai.core.errors import InvalidInput, UnknownModel
from deai.core.kinds import chat
from deai.core.kinds.chat import ChatKind, greedy_ok, line_bound

MODEL = "SmolLM2-135M-Instruct"
KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": MODEL, "max_price": 500, "shard_size": 2})
HELLO = [{"role": "user", "content": "Hello"}]


def line(cid: str = "r1", **body: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0}
    for k, v in body.items():
        if v is ...:
            b.pop(k, None)
        else:
            b[k] = v
    return {"custom_id": cid, "method": "POST", "url": chat.URL, "body": b}


def jsonl(*lines: Any) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def refused(data: bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        KIND.split(SPEC, data)
    return exc.value


def test_registered_with_its_model() -> None:
    assert kinds.get("chat") is kinds.KINDS["chat"]
    assert KIND.model(SPEC).workload == "chat"
    with pytest.raises(UnknownModel) as exc:
        KIND.parse_spec({"kind": "chat", "model": "all-MiniLM-L6-v2", "max_price": 1})
    assert exc.value.field == "spec.model"


@pytest.mark.parametrize(("spec", "field"), [
    ({"shard_size": 0}, "spec.shard_size"),
    ({"shard_size": "2"}, "spec.shard_size"),
    ({"temperature": 0}, "spec.temperature"),
    ({"max_price": -1}, "spec.max_price"),
])
def test_bad_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        KIND.parse_spec({"kind": "chat", "model": MODEL, "max_price": 5, **spec})
    assert exc.value.field == field


BAD_LINES: list[tuple[dict[str, Any], str]] = [
    (line(messages=...), "input[line 2].body.messages"),
    (line(messages=[]), "input[line 2].body.messages"),
    (line(messages="hi"), "input[line 2].body.messages"),
    (line(messages=[{"role": "robot", "content": "x"}]), "input[line 2].body.messages[0].role"),
    (line(messages=[{"role": "user", "content": ["x"]}]),
     "input[line 2].body.messages[0].content"),
    (line(messages=[{"role": "user", "content": "x", "name": "a"}]),
     "input[line 2].body.messages[0].name"),
    (line(messages=[HELLO[0], "x"]), "input[line 2].body.messages[1]"),
    (line(messages=[HELLO[0], {"role": "assistant", "content": "hi"}]),
     "input[line 2].body.messages[1].role"),
    (line(messages=[{"role": "user", "content": "x" * (chat.MAX_PROMPT_BYTES + 1)}]),
     "input[line 2].body.messages"),
    (line(max_tokens=0), "input[line 2].body.max_tokens"),
    (line(max_tokens=chat.MAX_TOKENS + 1), "input[line 2].body.max_tokens"),
    (line(max_tokens=1.5), "input[line 2].body.max_tokens"),
    (line(max_tokens=..., max_completion_tokens=True), "input[line 2].body.max_completion_tokens"),
    (line(temperature=2.5), "input[line 2].body.temperature"),
    (line(temperature="0"), "input[line 2].body.temperature"),
    (line(top_p=0), "input[line 2].body.top_p"),
    (line(top_p=1.1), "input[line 2].body.top_p"),
    (line(seed=-1), "input[line 2].body.seed"),
    (line(seed="7"), "input[line 2].body.seed"),
    (line(stream="yes"), "input[line 2].body.stream"),
    (line(model="all-MiniLM-L6-v2"), "input[line 2].body.model"),
    (line(model="nope"), "input[line 2].body.model"),
    ({**line(), "url": "/v1/embeddings"}, "input[line 2].url"),
    (line("r0"), "input[line 2].custom_id"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_LINES)
def test_bad_line_names_the_field(bad: dict[str, Any], field: str) -> None:
    assert refused(jsonl(line("r0"), bad)).field == field


def test_split_makes_self_contained_shards_with_defaults_resolved() -> None:
    data = jsonl(line("a"), line("b", max_tokens=..., temperature=..., seed=5, top_p=0.5),
                 line("c", model=..., max_completion_tokens=3, max_tokens=...))
    shards = KIND.split(SPEC, data)
    assert [s.items for s in shards] == [2, 1]
    reqs = [json.loads(x) for s in shards for x in s.payload.splitlines()]
    assert reqs[0] == {"custom_id": "a", "messages": HELLO, "max_tokens": 8,
                       "temperature": 0.0, "top_p": 1.0, "seed": chat.default_seed("a")}
    assert reqs[1] | {"messages": None} == {
        "custom_id": "b", "messages": None, "max_tokens": chat.DEFAULT_MAX_TOKENS,
        "temperature": 1.0, "top_p": 0.5, "seed": 5}
    assert reqs[2]["max_tokens"] == 3
    assert chat.default_seed("a") != chat.default_seed("b")
    assert shards[0].max_units == 2 * (5 + chat.MESSAGE_OVERHEAD + chat.PROMPT_OVERHEAD) + 8 \
        + chat.DEFAULT_MAX_TOKENS
    assert shards[1].max_units == 5 + chat.MESSAGE_OVERHEAD + chat.PROMPT_OVERHEAD + 3


def test_bound_counts_utf8_bytes() -> None:
    msgs = (("system", "é"), ("user", "😀"))
    assert line_bound(msgs, 10) == 2 + 4 + 2 * chat.MESSAGE_OVERHEAD + chat.PROMPT_OVERHEAD + 10
    assert line_bound([{"role": r, "content": c} for r, c in msgs], 10) == line_bound(msgs, 10)


def output_for(payload: bytes, **changes: Any) -> bytes:
    out = []
    for raw in payload.splitlines():
        req = json.loads(raw)
        o = {"custom_id": req["custom_id"], "token_ids": [5, 6, 2], "text": "hi",
             "finish_reason": "stop", "prompt_tokens": 30, "completion_tokens": 3}
        out.append({**o, **changes})
    return jsonl(*out)


def test_meter_counts_prompt_and_completion_tokens() -> None:
    shard = KIND.split(SPEC, jsonl(line("a"), line("b")))[0]
    assert KIND.meter(SPEC, shard.payload, output_for(shard.payload)) == 66


@pytest.mark.parametrize("changes", [
    {"custom_id": "zz"},
    {"token_ids": [1, -2, 2]},
    {"token_ids": "5 6 2"},
    {"token_ids": [1, True, 2]},
    {"text": None},
    {"finish_reason": "eos"},
    {"completion_tokens": 2},
    {"prompt_tokens": 0},
    {"prompt_tokens": 2.5},
    {"token_ids": list(range(9)), "completion_tokens": 9},  # over max_tokens (8)
    {"prompt_tokens": 10_000},  # over the escrow bound
])
def test_meter_refuses_malformed_output(changes: dict[str, Any]) -> None:
    shard = KIND.split(SPEC, jsonl(line("a"), line("b")))[0]
    with pytest.raises(InvalidInput):
        KIND.meter(SPEC, shard.payload, output_for(shard.payload, **changes))


def test_a_prompt_count_stays_within_the_prompts_own_bound() -> None:
    """A provider that stopped after one token may not bill the rest of ``max_tokens`` as
    prompt: the prompt alone is bounded by its bytes and the template's tokens (the line's
    bound less ``max_tokens``), even where prompt and completion together fit the line."""
    shard = KIND.split(SPEC, jsonl(line("a"), line("b")))[0]
    most = line_bound(HELLO, 8) - 8
    KIND.meter(SPEC, shard.payload, output_for(shard.payload, prompt_tokens=most))
    one = {"token_ids": [5], "completion_tokens": 1}
    with pytest.raises(InvalidInput, match="prompt_tokens"):
        KIND.meter(SPEC, shard.payload, output_for(shard.payload, prompt_tokens=most + 1, **one))


def test_meter_refuses_missing_lines() -> None:
    shard = KIND.split(SPEC, jsonl(line("a"), line("b")))[0]
    with pytest.raises(InvalidInput):
        KIND.meter(SPEC, shard.payload, output_for(shard.payload).splitlines()[0])


def test_assemble_writes_openai_chat_completions() -> None:
    shards = KIND.split(SPEC, jsonl(line("a"), line("b"), line("c")))
    out = KIND.assemble("job-1", SPEC, [output_for(s.payload) for s in shards])
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "b", "c"]
    body = lines[0]["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}
    assert lines[0]["response"]["status_code"] == 200 and lines[0]["error"] is None


def test_greedy_ok_within_tolerance() -> None:
    assert greedy_ok([], 0.0)
    assert greedy_ok([0.0, 0.0, 1e-4], 1e-3)
    assert not greedy_ok([0.0, 0.5], 1e-3)
    assert not greedy_ok([float("nan")], 1.0)


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=20),
       st.floats(min_value=0, max_value=10))
def test_greedy_ok_is_all_margins_within_tolerance(margins: list[float], tol: float) -> None:
    assert greedy_ok(margins, tol) == (max(margins, default=0.0) <= tol)
