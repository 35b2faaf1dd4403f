"""OpenAI chat parameters without a network: the JSON prefix automaton, the chat kind's
new fields and checks, OpenAI-worded refusals, and token-id embeddings input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai.coordinator.openai import compat, tokens
from deai.coordinator.openai import schemas as S
from deai.coordinator.openai.errors import ApiError
from deai.core import jsonprefix
from deai.core.errors import InvalidInput
from deai.core.kinds.chat import ChatKind, check_output, logprobs_agree
from deai.core.kinds.embeddings import EmbeddingsKind

KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": "SmolLM2-135M-Instruct", "max_price": 500,
                        "shard_size": 100})
MSG = [{"role": "user", "content": "Hi"}]

# --- the JSON automaton -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5), st.sampled_from([None, 2]))
def test_every_json_object_is_accepted_and_complete(obj: dict[str, Any],
                                                     indent: int | None) -> None:
    data = json.dumps(obj, indent=indent, ensure_ascii=False).encode()
    if indent and any(len(line) - len(line.lstrip()) > jsonprefix.MAX_SPACE
                      for line in data.decode().splitlines()):
        return  # deeper indentation than a constrained decoder may write
    state: jsonprefix.State | None = jsonprefix.START
    for i, b in enumerate(data):
        assert not jsonprefix.complete(state), data[:i]
        state = jsonprefix.step(state, b)  # type: ignore[arg-type]
        assert state is not None, (data, i)
    assert jsonprefix.complete(state)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}[]":,.-+eE0123456789 truefalsn\\/ab\u00e9'),
               max_size=24).map(str.encode))
def test_accepted_prefixes_are_json_prefixes(data: bytes) -> None:
    """Whatever the automaton calls complete parses as one JSON object (text the model
    can produce: the byte-level grammar does not check UTF-8 inside strings)."""
    state = jsonprefix.feed(jsonprefix.START, data)
    if jsonprefix.complete(state):
        assert isinstance(json.loads(data), dict)


@pytest.mark.parametrize("bad", [b"[1]", b"1", b'"a"', b"{,", b'{"a" 1', b"{}x", b"{} ",
                                 b'{"a":01}', b'{"a":tru ', b'{"a":"\x01"}', b'{"a":1,}'])
def test_not_json_objects_are_refused(bad: bytes) -> None:
    assert not jsonprefix.complete(jsonprefix.feed(jsonprefix.START, bad))


# --- the chat kind's new fields -----------------------------------------------------------

def split(**body: Any) -> bytes:
    line = {"custom_id": "r", "url": "/v1/chat/completions",
            "body": {"messages": MSG, "max_tokens": 4, **body}}
    (shard,) = KIND.split(SPEC, json.dumps(line).encode() + b"\n")
    return shard.payload


def test_plain_lines_keep_their_bytes() -> None:
    assert json.loads(split(temperature=0)) == {
        "custom_id": "r", "messages": MSG, "max_tokens": 4, "temperature": 0.0, "top_p": 1.0,
        "seed": json.loads(split(temperature=0))["seed"]}


def test_n_becomes_one_line_a_choice_seeded_apart() -> None:
    lines = [json.loads(x) for x in split(n=3, seed=7, stop="\n", logprobs=True,
                                          top_logprobs=2,
                                          response_format={"type": "json_object"}).splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2]
    assert [x["seed"] for x in lines] == [7, 8, 9]
    assert all(x["stop"] == ["\n"] and x["logprobs"] and x["top_logprobs"] == 2
               and x["response_format"] == "json_object" for x in lines)


@pytest.mark.parametrize(("body", "field"), [
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"stop": ["a"] * 5}, "stop"), ({"stop": [""]}, "stop"),
    ({"top_logprobs": 3}, "logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "json_schema"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"), ({"logprobs": "yes"}, "logprobs")])
def test_bad_values_name_their_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        split(**body)
    assert exc.value.field == f"input[line 1].body.{field}"


def out_line(ids: list[int], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {"custom_id": "r", "token_ids": ids, "text": "x", "finish_reason": finish,
            "prompt_tokens": 5, "completion_tokens": len(ids), **extra}


def blob(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def entry(lp: float, top: int = 0) -> dict[str, Any]:
    return {"token": "x", "logprob": lp, "bytes": [120],
            "top_logprobs": [{"token": "x", "logprob": lp, "bytes": [120]}] * top}


def checked(**kw: Any) -> dict[str, Any]:
    return {"custom_id": "r", "text": "x", "room": 100, "margins": [0.0, 0.0],
            "finish": "stop", "early": False, "prompt_tokens": 5, **kw}


def test_check_knows_stops_and_logprobs() -> None:
    shard = split(temperature=0, stop=["x"], logprobs=True, top_logprobs=1)
    claim = blob(out_line([1, 2], logprobs=[entry(-0.5, 1), entry(-0.1, 1)]))
    good = [entry(-0.5001, 1), entry(-0.1, 1)]
    assert KIND.check(SPEC, shard, claim, blob(checked(logprobs=good))).match
    for bad, why in [(checked(logprobs=[entry(-0.9, 1), entry(-0.1, 1)]), "logprob"),
                     (checked(logprobs=good, finish="length"), "finish_reason"),
                     (checked(logprobs=good, early=True), "past a stop")]:
        result = KIND.check(SPEC, shard, claim, blob(bad))
        assert not result.match and why in result.detail


def test_logprobs_must_be_shaped_when_asked() -> None:
    shard = split(temperature=0, logprobs=True, top_logprobs=1)
    with pytest.raises(InvalidInput):
        check_output(shard, blob(out_line([1, 2])))
    with pytest.raises(InvalidInput):
        check_output(shard, blob(out_line([1, 2], logprobs=[entry(-0.5, 0), entry(-1, 0)])))
    check_output(shard, blob(out_line([1, 2], logprobs=[entry(-0.5, 1), entry(-1, 1)])))


def test_near_ties_in_top_logprobs_pass() -> None:
    a = [{"token": "a", "logprob": -1.0, "bytes": [97],
          "top_logprobs": [{"token": "b", "logprob": -0.5, "bytes": [98]},
                           {"token": "c", "logprob": -0.501, "bytes": [99]}]}]
    b = [{**a[0], "top_logprobs": list(reversed(a[0]["top_logprobs"]))}]
    assert logprobs_agree(a, b, 1e-2) is None
    assert logprobs_agree(a, [{**a[0], "token": "z"}], 1e-2) is not None


def test_choices_assemble_into_one_response() -> None:
    shard = split(n=2, temperature=0.5)
    out = blob(out_line([1]), out_line([2], "length"))
    (line,) = [json.loads(x) for x in KIND.assemble("j", SPEC, [out]).splitlines()]
    body = line["response"]["body"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert KIND.meter(SPEC, shard, out) == 12  # each choice is billed as its own run


# --- refusals in OpenAI's words -----------------------------------------------------------

def refusal(raw: Any) -> ApiError:
    with pytest.raises(ApiError) as exc:
        compat.check_chat(compat.parse(S.ChatIn, raw))
    return exc.value


BASE = {"model": "SmolLM2-135M-Instruct", "messages": MSG}


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
     "Unsupported parameter: 'tools'"),
    ({"tool_choice": "required"}, "tool_choice", "Unsupported value: 'tool_choice'"),
    ({"functions": [{"name": "f"}]}, "functions", "Unsupported parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.type", "Supported values are: 'text' and 'json_object'"),
    ({"logit_bias": {"50256": -100}}, "logit_bias", "Unsupported parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "Only the default (0)"),
    ({"top_logprobs": 2}, "top_logprobs", "'logprobs' must be set to true"),
    ({"stream_options": {"include_usage": True}}, "stream_options",
     "only allowed when 'stream' is enabled"),
    ({"temperature": "hot"}, "temperature", "Invalid type for 'temperature': expected a "
                                            "number, but got a string instead."),
    ({"n": "two"}, "n", "Invalid type for 'n'"),
    ({"stop": 5}, "stop", "Invalid type for 'stop'"),
    ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
    ({"messages": []}, "messages", "empty array"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}, "messages[0].role",
     "Unsupported value"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     "Supported values are"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].type", "text parts only"),
])
def test_refusals_name_the_parameter(extra: dict[str, Any], param: str, words: str) -> None:
    err = refusal({**BASE, **extra})
    assert err.status == 400 and err.param == param and words in err.message
    assert "Input should" not in err.message


def test_missing_model_and_defaults_pass() -> None:
    err = refusal({"messages": MSG})
    assert err.message == "Missing required parameter: 'model'." and err.param == "model"
    ok = compat.parse(S.ChatIn, {**BASE, "n": 2, "stop": ["\n"], "logprobs": True,
                                 "top_logprobs": 1, "response_format": {"type": "text"},
                                 "tool_choice": "none", "tools": [], "presence_penalty": 0})
    compat.check_chat(ok)
    assert ok.deai_body() == {"model": BASE["model"], "messages": MSG, "n": 2,
                              "stop": ["\n"], "logprobs": True, "top_logprobs": 1}


# --- token ids for embeddings -------------------------------------------------------------

def test_token_ids_of_the_models_tokenizer_decode() -> None:
    tok = tokens._tokenizer("all-MiniLM-L6-v2")
    ids = tok.encode("Hello world, this is a test.", add_special_tokens=False).ids
    assert tokens.texts("all-MiniLM-L6-v2", ids) == ["hello world, this is a test."]
    framed = tok.encode("a cat", add_special_tokens=True).ids
    assert tokens.texts("all-MiniLM-L6-v2", [framed, ids]) == ["a cat",
                                                               "hello world, this is a test."]


@pytest.mark.parametrize("ids", [[9906, 1917, 11, 420, 374, 264, 1296, 13],  # tiktoken's
                                 [[100_000]], [[]]])
def test_foreign_token_ids_get_the_langchain_hint(ids: list[Any]) -> None:
    with pytest.raises(ApiError) as exc:
        tokens.texts("all-MiniLM-L6-v2", ids)
    assert exc.value.param == "input" and "check_embedding_ctx_length=False" in exc.value.message


@pytest.mark.parametrize("ids", [[[101]] * (tokens.MAX_INPUTS_PER_LINE + 1),
                                 [[1000] * (tokens.MAX_IDS + 1)]])
def test_token_id_input_is_bounded_before_the_tokenizer(ids: list[Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token-id request shares the tokenizer's lock: too many inputs, or an input
    longer than any text could be, is refused before it is taken."""
    def no_tokenizer(model: str) -> Any:
        raise AssertionError("the tokenizer was reached")

    monkeypatch.setattr(tokens, "_tokenizer", no_tokenizer)
    with pytest.raises(ApiError) as exc:
        tokens.texts("all-MiniLM-L6-v2", ids)
    assert exc.value.param == "input"


def test_batch_files_refuse_token_ids_by_name() -> None:
    kind = EmbeddingsKind()
    spec = kind.parse_spec({"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 1})
    line = {"custom_id": "a", "url": "/v1/embeddings", "body": {"input": [[1, 2]]}}
    with pytest.raises(InvalidInput) as exc:
        kind.split(spec, json.dumps(line).encode() + b"\n")
    assert exc.value.field == "input[line 1].body.input" and "token ids" in exc.value.message
