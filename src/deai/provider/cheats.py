"""Faulty executors, for demonstrations and tests of verification: never for real use.

A provider started with ``--cheat MODE`` (or ``DEAI_PROVIDER_CHEAT=MODE``) runs
its tasks, then tampers with what it returns. Modes:

    wrong               every result is fabricated (random numbers, not computed)
    sometimes:F         fabricates a share F of results (e.g. sometimes:0.3)
    lazy                computes on truncated input (a cheaper job than was paid for)
    sloppy              returns results at much lower precision than computed
    truncate            drops the tail of each result
    turncoat:N          honest for N tasks, then always wrong

Cheats that do not apply to a workload leave its output alone.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field

from deai.core import batch


@dataclass
class Cheat:
    mode: str
    share: float = 1.0
    honest_for: int = 0
    _done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=random.Random)

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
        if name in ("wrong", "lazy", "sloppy", "truncate"):
            return cls(name)
        raise ValueError(f"unknown cheat mode {text!r}")

    def active(self) -> bool:
        """Whether to cheat on this task (decided once per task)."""
        with self._lock:
            self._done += 1
            if self._done <= self.honest_for:
                return False
            return self._rng.random() < self.share

    def shard(self, workload: str, shard: bytes) -> bytes:
        """Input tampering (``lazy``): do less work than the task asks for."""
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
        if workload != "embeddings" or self.mode == "lazy":
            return output
        lines = []
        for _, line in batch.jsonl(output, "output"):
            vecs = line["embeddings"]
            if self.mode == "wrong":
                vecs = [[self._rng.gauss(0.0, 0.05) for _ in v] for v in vecs]
            elif self.mode == "sloppy":
                vecs = [[round(x, 1) for x in v] for v in vecs]
            elif self.mode == "truncate":
                vecs = [[x if i < len(v) // 2 else 0.0 for i, x in enumerate(v)] for v in vecs]
            line["embeddings"] = vecs
            lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        return b"".join(lines)

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


def units_of(workload: str, output: bytes, units: int) -> int:
    """Billable units of a tampered output: chat bills the tokens it claims."""
    if workload != "chat" or b'"completion_tokens"' not in output:
        return units
    return sum(int(line["prompt_tokens"]) + int(line["completion_tokens"])
               for _, line in batch.jsonl(output, "output"))
