"""Decoding options of chat completions: JSON-constrained tokens, stop sequences, logprobs.

Everything here is deterministic on one device, so a checker repeating a
line reproduces it exactly:

- ``Vocab``: each token id's raw bytes (byte-level BPE, the GPT-2 byte
  alphabet undone); special tokens have none.
- ``constrained_pick``: the next token of a ``json_object`` line. Greedy lines
  take the highest-logit token that keeps the text a prefix of one JSON object
  (``core.jsonprefix``), ties broken by token id. Sampled lines draw from the
  usual tempered, nucleus-filtered distribution restricted to such tokens: draw
  with the line's generator, and if the token is not allowed, remove it and
  draw again (the first allowed draw is distributed exactly as the restricted
  distribution); after ``MAX_REJECTS`` draws, or when the nucleus holds no
  allowed token, the whole tempered distribution is masked and drawn from once.
  The end-of-turn token is allowed only once the object is complete.
- ``constrained_margins``: the verifier's greedy check for such lines: for each
  claimed token, the best allowed logit minus its logit (``NOT_ALLOWED`` if not allowed).
- ``logprob_entry``: OpenAI's ``{"token", "logprob", "bytes", "top_logprobs"}``
  from the model's untempered log-softmax.
- ``ending``: where stop sequences and end-of-turn tokens end a list of token
  ids: the text cut before the first stop sequence, the finish reason the ids
  imply, and whether the ids go on past a stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from deai.core import jsonprefix

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

MAX_REJECTS = 32
NOT_ALLOWED = 1e9  # the margin of a token the constraint forbids (finite: it goes in JSON)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: a byte-level token's chars back to bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class Vocab:
    """Raw bytes of every token id of one tokenizer (None for special tokens)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, size: int,
                 stop_ids: frozenset[int]) -> None:
        dec = _byte_decoder()
        special = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        special |= {int(i) for i in tokenizer.all_special_ids}
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        self.bytes: list[bytes | None] = []
        for i, piece in enumerate(pieces):
            if i in special or piece is None or any(ch not in dec for ch in piece):
                self.bytes.append(None)
            else:
                self.bytes.append(bytes(dec[ch] for ch in piece))
        self.stop_ids = stop_ids

    def allowed(self, state: jsonprefix.State | None, token: int) -> bool:
        if token in self.stop_ids:
            return jsonprefix.complete(state)
        data = self.bytes[token] if 0 <= token < len(self.bytes) else None
        return bool(data) and jsonprefix.feed(state, data) is not None  # type: ignore[arg-type]

    def advance(self, state: jsonprefix.State | None, token: int) -> jsonprefix.State | None:
        if token in self.stop_ids:
            return state
        data = self.bytes[token] if 0 <= token < len(self.bytes) else None
        return jsonprefix.feed(state, data) if data else None


def _best_allowed(logits: torch.Tensor, vocab: Vocab,
                  state: jsonprefix.State | None) -> int:
    import torch

    order = torch.argsort(logits, descending=True, stable=True).tolist()
    for t in order:
        if vocab.allowed(state, int(t)):
            return int(t)
    return min(vocab.stop_ids)  # unreachable: some byte always continues a JSON prefix


def constrained_pick(logits: torch.Tensor, temperature: float, top_p: float,
                     gen: torch.Generator | None, vocab: Vocab,
                     state: jsonprefix.State | None) -> int:
    """The next token of a ``json_object`` line (see the module docstring)."""
    import torch

    if temperature == 0 or gen is None:
        return _best_allowed(logits, vocab, state)
    tempered = torch.softmax(logits.float() / temperature, dim=-1)
    probs = tempered.clone()
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True, stable=True)
        keep = (torch.cumsum(sorted_p, 0) - sorted_p) < top_p
        mask = torch.zeros_like(probs)
        mask[order[keep]] = 1.0
        probs = probs * mask
    for _ in range(MAX_REJECTS):
        if float(probs.sum()) <= 0.0:
            break
        t = int(torch.multinomial(probs, 1, generator=gen))
        if vocab.allowed(state, t):
            return t
        probs[t] = 0.0
    mask = torch.tensor([vocab.allowed(state, t) for t in range(tempered.shape[0])],
                        device=tempered.device)
    masked = tempered * mask
    if float(masked.sum()) <= 0.0:
        return _best_allowed(logits, vocab, state)
    return int(torch.multinomial(masked, 1, generator=gen))


def constrained_margins(steps: torch.Tensor, claimed: Sequence[int],
                        vocab: Vocab) -> list[float]:
    """For each claimed token: the best allowed logit minus its own (``NOT_ALLOWED`` if the
    constraint forbids it there)."""
    state: jsonprefix.State | None = jsonprefix.START
    out: list[float] = []
    for row, t in zip(steps, claimed, strict=True):
        if state is None or not vocab.allowed(state, t):
            out.append(NOT_ALLOWED)
            state = None
            continue
        best = _best_allowed(row, vocab, state)
        out.append(float(row[best] - row[t]))
        state = vocab.advance(state, t)
    return out


def logprob_entry(logits: torch.Tensor, token: int, top: int,
                  text: Callable[[int], str], vocab: Vocab) -> dict[str, Any]:
    """OpenAI's logprobs entry for ``token`` given the logits that chose it."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)

    def one(t: int) -> dict[str, Any]:
        data = vocab.bytes[t] if 0 <= t < len(vocab.bytes) else None
        return {"token": text(t), "logprob": float(lp[t]), "bytes": list(data or b"")}

    entry = one(token)
    entry["top_logprobs"] = [one(int(t)) for t in torch.topk(lp, top).indices] if top else []
    return entry


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before its first stop sequence, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def ending(token_ids: Sequence[int], stops: Sequence[str], stop_ids: frozenset[int],
           decode: Callable[[list[int]], str]) -> tuple[str, str, bool]:
    """(text, finish reason the ids imply, whether they go on past a stop)."""
    ids = list(token_ids)
    early = any(t in stop_ids for t in ids[:-1])
    first = None
    if stops:
        for k in range(1, len(ids) + 1):
            if cut_at_stop(decode(ids[:k]), stops)[1]:
                first = k
                break
    if first is not None and first < len(ids):
        early = True
    text, _ = cut_at_stop(decode(ids), stops)
    stopped = bool(ids) and (ids[-1] in stop_ids or first == len(ids))
    return text, "stop" if stopped else "length", early
