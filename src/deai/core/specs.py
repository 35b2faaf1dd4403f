"""Job specs: parse any kind's spec with errors that name the field, and split input.

``parse_spec`` reads ``kind`` and hands the rest to that kind's spec model
(``deai.core.kinds``). The embeddings input helpers are re-exported here
because clients use them to check a file before uploading it.
"""

from __future__ import annotations

from typing import Any

from deai.core import kinds
from deai.core.errors import InvalidInput
from deai.core.kinds.base import Shard, SpecBase
from deai.core.kinds.embeddings import (
    MAX_INPUT_CHARS,
    MAX_INPUTS_PER_LINE,
    Item,
    encode_items,
    parse_input,
    shard,
)

JobSpec = SpecBase

__all__ = ["MAX_INPUTS_PER_LINE", "MAX_INPUT_CHARS", "Item", "JobSpec", "Shard",
           "encode_items", "parse_input", "parse_spec", "shard", "split"]


def parse_spec(data: Any) -> SpecBase:
    """Validate a decoded spec; raises InvalidInput naming ``spec.<field>``."""
    if not isinstance(data, dict):
        raise InvalidInput("spec must be a mapping", field="spec")
    return kinds.get(data.get("kind")).parse_spec(data)


def split(spec: SpecBase, data: bytes) -> list[Shard]:
    return kinds.get(spec.kind).split(spec, data)
