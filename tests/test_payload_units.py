"""``Kind.payload_units``: what a shard can bill, read from the shard alone, equals what
``split`` counted for its ``max_units`` in every kind. A sealed job's provider checks the
client's declared units against it before running (``provider.sealed``): an
under-declared shard used to run in full and then be refused, unpaid."""

from __future__ import annotations

import json

import pytest

from deai.core import kinds
from deai.core.errors import InvalidInput


def jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


CASES = {
    "embeddings": ({"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 1,
                    "shard_size": 2},
                   jsonl(*({"custom_id": f"e{i}", "url": "/v1/embeddings",
                            "body": {"input": ["a", "b c"][: 1 + i % 2]}} for i in range(5)))),
    "chat": ({"kind": "chat", "model": "SmolLM2-135M-Instruct", "max_price": 1,
              "shard_size": 2},
             jsonl(*({"custom_id": f"c{i}", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "héllo " * i}],
                               "max_tokens": 3 + i, "n": 1 + i % 2}} for i in range(3)))),
    "command": ({"kind": "command", "model": "bwrap-sandbox", "max_price": 1,
                 "cpu_seconds": 7},
                jsonl({"custom_id": "x", "script": "true"}, {"custom_id": "y", "script": "ls"})),
    "train": ({"kind": "train", "model": "mlp-digits", "max_price": 1, "epochs": 2},
              b'{"dataset": "digits"}'),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_shards_units_are_read_from_the_shard_as_split_counted_them(name: str) -> None:
    kind = kinds.get(name)
    raw, data = CASES[name]
    spec = kind.parse_spec(raw)
    shards = kind.split(spec, data)
    assert shards
    for sh in shards:
        assert kind.payload_units(sh.payload) == sh.max_units


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_shard_of_another_shape_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        kinds.get(name).payload_units(b'{"nothing": "of the kind"}\n')
