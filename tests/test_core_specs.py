"""Spec and input-line validation: every bad input names its field; good input parses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai.core import kinds, specs
from deai.core.errors import InvalidInput, UnknownModel
from deai.core.specs import Item, JobSpec, parse_input, parse_spec, shard

MODEL = "all-MiniLM-L6-v2"
GOOD: dict[str, Any] = {"kind": "embeddings", "model": MODEL, "max_price": 2_000,
                        "deadline": 600, "shard_size": 50}


def spec_with(**changes: Any) -> dict[str, Any]:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return d


def line(custom_id: Any = "r1", **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": MODEL, "input": "hello"}}
    for k, v in {"custom_id": custom_id, **fields}.items():
        if v is ...:
            del obj[k]
        else:
            obj[k] = v
    return obj


def jsonl(*objs: Any) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n"
                    for o in objs)


SPEC = parse_spec(GOOD)


# --- specs ---------------------------------------------------------------------------------

def test_a_good_spec_parses_with_defaults() -> None:
    s = parse_spec(spec_with(deadline=..., shard_size=...))
    assert (s.kind, s.model, s.max_price, s.deadline, s.shard_size) == (
        "embeddings", MODEL, 2_000, 3600, 64)
    alias = parse_spec(spec_with(model="sentence-transformers/all-MiniLM-L6-v2"))
    assert kinds.get("embeddings").model(alias).name == MODEL


@pytest.mark.parametrize(("data", "field"), [
    (spec_with(max_price=-1), "spec.max_price"),
    (spec_with(max_price=10**13), "spec.max_price"),
    (spec_with(max_price="cheap"), "spec.max_price"),
    (spec_with(max_price=1.5), "spec.max_price"),
    (spec_with(max_price=...), "spec.max_price"),
    (spec_with(kind="training"), "spec.kind"),
    (spec_with(kind=...), "spec.kind"),
    (spec_with(model=""), "spec.model"),
    (spec_with(model=7), "spec.model"),
    (spec_with(model="x" * 201), "spec.model"),
    (spec_with(deadline=9), "spec.deadline"),
    (spec_with(deadline=8 * 24 * 3600), "spec.deadline"),
    (spec_with(shard_size=0), "spec.shard_size"),
    (spec_with(shard_size=10_001), "spec.shard_size"),
    (spec_with(priority=1), "spec.priority"),
    ([GOOD], "spec"),
    ("kind: embeddings", "spec"),
    (None, "spec"),
])
def test_a_bad_spec_names_its_field(data: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_spec(data)
    assert type(exc.value) is InvalidInput
    assert exc.value.field == field
    assert exc.value.message.startswith(field)
    assert exc.value.to_dict()["error"]["field"] == field


def test_an_unknown_model_is_its_own_error() -> None:
    with pytest.raises(UnknownModel) as exc:
        parse_spec(spec_with(model="gpt-9"))
    assert exc.value.field == "spec.model" and exc.value.status == 404
    assert MODEL in exc.value.message  # the error lists the models that do exist


def test_a_boolean_is_not_a_price() -> None:
    with pytest.raises(InvalidInput):
        parse_spec(spec_with(max_price=True))


def test_spec_is_frozen() -> None:
    with pytest.raises(ValueError):
        SPEC.max_price = 1  # type: ignore[misc]
    assert isinstance(SPEC, JobSpec)


# --- input lines ---------------------------------------------------------------------------

def test_good_input_parses_in_order() -> None:
    data = jsonl(
        line("a"),
        {"custom_id": "b", "body": {"input": ["x", "y", "z"]}},  # method, url, model default
        line("c", body={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "w"}),
    ) + b"\n   \n"
    items = parse_input(data, SPEC)
    assert items == [Item(0, "a", ("hello",)), Item(1, "b", ("x", "y", "z")),
                     Item(2, "c", ("w",))]
    assert [it.units for it in items] == [1, 3, 1]


def test_crlf_and_no_trailing_newline_are_fine() -> None:
    data = json.dumps(line("a")).encode() + b"\r\n" + json.dumps(line("b")).encode()
    assert [it.custom_id for it in parse_input(data, SPEC)] == ["a", "b"]


@pytest.mark.parametrize(("lines", "field"), [
    ([line("a"), line("a")], "input[line 2].custom_id"),
    ([line("a"), line("b"), line("")], "input[line 3].custom_id"),
    ([line(custom_id=...)], "input[line 1].custom_id"),
    ([line(custom_id=5)], "input[line 1].custom_id"),
    ([line(custom_id="x" * 513)], "input[line 1].custom_id"),
    ([line("a"), line("b", method="GET")], "input[line 2].method"),
    ([line("a", url="/v1/chat/completions")], "input[line 1].url"),
    ([line("a", body=...)], "input[line 1].body"),
    ([line("a", body="hello")], "input[line 1].body"),
    ([line("a"), line("b", body={"model": MODEL})], "input[line 2].body.input"),
    ([line("a"), line("b", body={"input": ""})], "input[line 2].body.input"),
    ([line("a", body={"input": []})], "input[line 1].body.input"),
    ([line("a", body={"input": ["ok", 3]})], "input[line 1].body.input"),
    ([line("a", body={"input": ["ok", "  "]})], "input[line 1].body.input"),
    ([line("a", body={"input": [1, 2, 3]})], "input[line 1].body.input"),
    ([line("a", body={"input": {"text": "x"}})], "input[line 1].body.input"),
    ([line("a", body={"input": ["x"] * (specs.MAX_INPUTS_PER_LINE + 1)})],
     "input[line 1].body.input"),
    ([line("a", body={"input": "x" * (specs.MAX_INPUT_CHARS + 1)})],
     "input[line 1].body.input"),
    ([line("a", body={"model": 3, "input": "x"})], "input[line 1].body.model"),
    ([line("a", extra=1)], "input[line 1]"),
    ([line("a"), [1, 2]], "input[line 2]"),
    ([line("a"), "just a string"], "input[line 2]"),
    ([line("a"), b"{not json"], "input[line 2]"),
    ([line("a"), b"", line("b"), b"{"], "input[line 4]"),  # blank lines still count
])
def test_a_bad_line_names_its_line_and_field(lines: list[Any], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_input(jsonl(*lines), SPEC)
    assert type(exc.value) is InvalidInput
    assert exc.value.field == field
    assert exc.value.message.startswith(field)


def test_a_line_naming_an_unknown_model_is_unknown_model() -> None:
    with pytest.raises(UnknownModel) as exc:
        parse_input(jsonl(line("a"), line("b", body={"model": "gpt-9", "input": "x"})), SPEC)
    assert exc.value.field == "input[line 2].body.model"


@pytest.mark.parametrize(("data", "field"), [
    (b"", "input"), (b"\n \n", "input"), (b"\xff\xfe", "input"),
])
def test_input_as_a_whole(data: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_input(data, SPEC)
    assert exc.value.field == field


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_inside_strings_do_not_split_a_line(sep: str) -> None:
    # json.dumps(ensure_ascii=False), as many JSONL writers do, leaves these raw.
    text = json.dumps(line("a", body={"input": f"one{sep}two"}), ensure_ascii=False)
    items = parse_input(text.encode(), SPEC)
    assert items == [Item(0, "a", (f"one{sep}two",))]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.text(min_size=1, max_size=20),
    st.lists(st.text(max_size=30).filter(str.strip), min_size=1, max_size=4)),
    min_size=1, max_size=20, unique_by=lambda t: t[0]))
def test_any_well_formed_input_round_trips(rows: list[tuple[str, list[str]]]) -> None:
    data = b"".join(json.dumps({"custom_id": cid, "body": {"input": texts}}).encode() + b"\n"
                    for cid, texts in rows)
    items = parse_input(data, SPEC)
    assert [(it.custom_id, list(it.inputs)) for it in items] == [
        (cid, texts) for cid, texts in rows]
    decoded = [json.loads(b) for b in specs.encode_items(items).splitlines()]
    assert decoded == [{"custom_id": cid, "input": texts} for cid, texts in rows]


# --- sharding ------------------------------------------------------------------------------

@given(st.integers(1, 200), st.integers(1, 70))
def test_shards_cover_the_input_in_order(n: int, size: int) -> None:
    items = [Item(i, f"c{i}", ("x",)) for i in range(n)]
    shards = shard(items, size)
    assert [it for s in shards for it in s] == items
    assert all(1 <= len(s) <= size for s in shards)
    assert all(len(s) == size for s in shards[:-1])
    assert len(shards) == -(-n // size)


def test_shard_examples() -> None:
    items = [Item(i, f"c{i}", ("x",)) for i in range(5)]
    assert [[it.index for it in s] for s in shard(items, 2)] == [[0, 1], [2, 3], [4]]
    assert shard([], 3) == []
