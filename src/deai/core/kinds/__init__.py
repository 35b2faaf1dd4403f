"""The registry of job kinds. ``get("embeddings")`` returns its ``Kind``."""

from __future__ import annotations

from deai.core.errors import InvalidInput
from deai.core.kinds.base import Kind, Shard, SpecBase
from deai.core.kinds.chat import ChatKind
from deai.core.kinds.command import CommandKind
from deai.core.kinds.embeddings import EmbeddingsKind
from deai.core.kinds.train import TrainKind

KINDS: dict[str, Kind] = {k.name: k for k in (EmbeddingsKind(), ChatKind(), CommandKind(),
                                                 TrainKind())}


def get(name: object, field: str = "spec.kind") -> Kind:
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise InvalidInput(f"{field}: unknown kind {name!r}; known: {', '.join(sorted(KINDS))}",
                           field=field)
    return kind


__all__ = ["KINDS", "Kind", "Shard", "SpecBase", "get"]
