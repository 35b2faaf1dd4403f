"""Faulty executors, for demonstrations and tests of verification: never for real use.

A provider started with ``--cheat MODE`` (or ``DEAI_PROVIDER_CHEAT=MODE``) runs
its tasks, then tampers with what it returns. Modes:

    wrong               every result is fabricated (random numbers, not computed)
    sometimes:F         fabricates a share F of results (e.g. sometimes:0.3)
    lazy                computes on truncated input (a cheaper job than was paid for)
    sloppy              returns results at much lower precision than computed
    truncate            drops the tail of each result
    turncoat:N          honest for N tasks, then always wrong
    collude             embeddings fabricated as a function of the request alone, so that
                        every provider in the ring fabricates the same answer and a ring
                        member asked to check another agrees (colluders, sybils)
    bf16 / fp16         embeddings computed with the model cast to bfloat16 / float16
                        instead of float32 (a cheap approximation: 0.75x the honest
                        time on CPU; the calibrated tolerance rejects it)
    role-reader[:N]     a role reader (``cheat_roles.RoleReader``): before each task it
                        reads everything a provider can see (the lease, what came with
                        it, the explorer and the event stream) and fabricates the
                        result only where nothing says it is a check, a canary or a
                        replica; honest elsewhere (and for its first N tasks)
    rubber-stamp        honest on its own work; asked to check a claim (a chat
                        re-scoring check carries the claimed tokens) it agrees without
                        running the model: the tokenizer alone fills in text, room and
                        prompt tokens, every margin is 0 and a sampled line's tokens
                        are the claimed ones. Embeddings checks are blind (the lease
                        is an ordinary shard) so there is nothing to copy: it runs them
                        honestly

Cheats that do not apply to a workload leave its output alone. The low-precision
modes run the approximate model in ``output`` on the shard remembered by
``shard`` (same thread: the agent runs one task per thread), so the agent needs
no hook of its own; ``approx_embed`` is shared with ``bench/calibrate_tolerances.py``
and the calibration tests.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deai.core import batch
from deai.provider.cheat_roles import RoleReader

if TYPE_CHECKING:
    import numpy as np

LOW_PRECISION = ("bf16", "fp16")
_APPROX: dict[tuple[str, str], Any] = {}
_APPROX_LOCK = threading.Lock()
_local = threading.local()


def approx_model(model: str, dtype: str) -> Any:
    """A process-wide copy of an embeddings model cast to ``dtype`` (bf16, fp16)."""
    import torch

    from deai.workloads import embeddings

    key = (embeddings.canonical(model), dtype)
    with _APPROX_LOCK:
        if key not in _APPROX:
            base = embeddings.load_model(model)
            cast = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            _APPROX[key] = copy.deepcopy(base).to(cast)
        return _APPROX[key]


def approx_embed(model: str, texts: list[str], dtype: str) -> np.ndarray:
    """The texts' embeddings computed in ``dtype``, returned as float32 like honest ones."""
    import numpy as np

    st = approx_model(model, dtype)
    with _APPROX_LOCK:  # a fast tokenizer must not be used from two threads at once
        vecs = st.encode(texts, batch_size=64, normalize_embeddings=False,
                         convert_to_tensor=True, show_progress_bar=False)
    return np.asarray(vecs.float().cpu().numpy(), dtype=np.float32)


@dataclass
class Cheat:
    mode: str
    share: float = 1.0
    honest_for: int = 0
    _done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=random.Random)
    reader: RoleReader | None = None

    @classmethod
    def parse(cls, text: str) -> Cheat | None:
        text = (text or "").strip()
        if text in ("", "0", "none", "honest"):
            return None
        if text == "1":
            text = "wrong"
        name, _, arg = text.partition(":")
        if name == "sometimes":
            return cls("wrong", share=float(arg or 0.5))
        if name == "turncoat":
            return cls("wrong", honest_for=int(arg or 10))
        if name == "role-reader":
            return cls("wrong", honest_for=int(arg or 0), reader=RoleReader())
        if name in ("wrong", "lazy", "sloppy", "truncate", "collude", "rubber-stamp",
                    *LOW_PRECISION):
            return cls(name)
        raise ValueError(f"unknown cheat mode {text!r}")

    def attach(self, url: str, me: str) -> None:
        """The coordinator and this provider's id, for modes that read public surfaces."""
        if self.reader is not None:
            self.reader.attach(url, me)

    def delivered(self, leases: Sequence[Any]) -> None:
        """One poll's leases, together (what arrives with what is a tell)."""
        if self.reader is not None:
            self.reader.delivered(leases)

    def active(self, lease: Any = None) -> bool:
        """Whether to cheat on this task (decided once per task)."""
        with self._lock:
            self._done += 1
            if self._done <= self.honest_for:
                return False
            if self._rng.random() >= self.share:
                return False
        if self.reader is not None and lease is not None:
            return self.reader.unchecked(lease)
        return True

    def stamp(self, workload: str, model: str, shard: bytes) -> tuple[bytes, int] | None:
        """``rubber-stamp``: a check's answer that agrees with its claim, with no model
        run; None for anything that is not a check (run it honestly)."""
        if self.mode != "rubber-stamp" or workload != "chat":
            return None
        from deai.workloads import chat

        if not chat.is_check(shard):
            return None
        return rubber_stamp(model, shard)

    def shard(self, workload: str, shard: bytes) -> bytes:
        """Input tampering (``lazy``): do less work than the task asks for."""
        _local.shard = shard  # the low-precision modes recompute from it in ``output``
        if self.mode != "lazy" or workload != "embeddings":
            return shard
        out = []
        for _, line in batch.jsonl(shard):
            line["input"] = [" ".join(t.split()[:3]) or t for t in line["input"]]
            out.append(batch.dumps(line))
        return b"".join(out)

    def output(self, workload: str, output: bytes, model: str = "") -> bytes:
        """Output tampering (``wrong``, ``sloppy``, ``truncate``)."""
        if workload == "chat" and self.mode in ("wrong", "truncate"):
            return self._chat(output, model)
        if workload != "embeddings" or self.mode in ("lazy", "rubber-stamp"):
            return output
        if self.mode in LOW_PRECISION:
            return self._low_precision(output, model)
        lines = []
        for _, line in batch.jsonl(output, "output"):
            vecs = line["embeddings"]
            if self.mode == "wrong":
                vecs = [[self._rng.gauss(0.0, 0.05) for _ in v] for v in vecs]
            elif self.mode == "collude":
                vecs = [_agreed(str(line.get("custom_id")), k, len(v)) for k, v in enumerate(vecs)]
            elif self.mode == "sloppy":
                vecs = [[round(x, 1) for x in v] for v in vecs]
            elif self.mode == "truncate":
                vecs = [[x if i < len(v) // 2 else 0.0 for i, x in enumerate(v)] for v in vecs]
            line["embeddings"] = vecs
            lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        return b"".join(lines)

    def _low_precision(self, output: bytes, model: str) -> bytes:
        """The shard's embeddings from the model cast to bf16/fp16, same lines and counts."""
        from deai.workloads import embeddings

        shard = getattr(_local, "shard", None)
        if shard is None:
            return output
        lines = embeddings.parse_shard(shard)
        texts = [t for _, ts in lines for t in ts]
        rows = approx_embed(model, texts, self.mode).tolist()
        out, i = [], 0
        for _, line in batch.jsonl(output, "output"):
            n = len(line["embeddings"])
            line["embeddings"], i = rows[i:i + n], i + n
            out.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        return b"".join(out)

    def _chat(self, output: bytes, model: str) -> bytes:
        """Claim tokens the model did not choose (``wrong``) or stop early (``truncate``),
        with text and usage made consistent so that only a real check can tell."""
        from deai.workloads import chat

        lines = []
        for _, line in batch.jsonl(output, "output"):
            if "completion_tokens" not in line:  # a check we were asked to run
                if isinstance(line.get("margins"), list):  # rubber-stamp every claim
                    line["margins"] = [0.0] * len(line["margins"])
                lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                continue
            ids = list(line["token_ids"])
            if self.mode == "wrong":
                ids = [(t + 1 + self._rng.randrange(100)) % 49_000 for t in ids]
            else:
                ids = ids[: max(1, len(ids) // 2)]
                line["finish_reason"] = "length"
            line["token_ids"], line["completion_tokens"] = ids, len(ids)
            line["text"] = chat.text_of(model, ids)
            lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        return b"".join(lines)


def rubber_stamp(model: str, shard: bytes) -> tuple[bytes, int]:
    """Agree with every claimed line of a chat check without the forward pass: what the
    tokenizer gives (text, finish, room, prompt tokens) is filled in honestly, every
    greedy margin is 0 (each claimed token "was the top choice"), and a sampled line
    "re-generates" the claimed tokens. Billed as an honest check would be."""
    from deai.workloads import chat
    from deai.workloads import chat_decoding as dec

    entry = chat._loaded(model)
    out, units = [], 0
    for _, obj in batch.jsonl(shard, "shard"):
        claimed = [int(t) for t in obj["token_ids"]]
        with entry.lock:
            prompt = len(chat.prompt_ids(entry, obj["messages"]))
            text, finish, early = dec.ending(claimed, tuple(obj.get("stop") or ()),
                                             entry.stop_ids, entry.text)
        line: dict[str, Any] = {"custom_id": obj["custom_id"], "text": text,
                                "room": entry.context - prompt, "finish": finish,
                                "early": early, "prompt_tokens": prompt}
        if float(obj.get("temperature") or 0.0) == 0.0:
            line["margins"] = [0.0] * len(claimed)
        else:
            line["token_ids"] = claimed
        units += prompt + len(claimed)
        out.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return b"".join(out), units


def _agreed(custom_id: str, k: int, dims: int) -> list[float]:
    """The ring's shared fake: every member derives the same vector from the request."""
    rng = random.Random(f"{custom_id}/{k}")
    return [rng.gauss(0.0, 0.05) for _ in range(dims)]


def units_of(workload: str, output: bytes, units: int) -> int:
    """Billable units of a tampered output: chat bills the tokens it claims."""
    if workload != "chat" or b'"completion_tokens"' not in output:
        return units
    return sum(int(line["prompt_tokens"]) + int(line["completion_tokens"])
               for _, line in batch.jsonl(output, "output"))
