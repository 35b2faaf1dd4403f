"""The checkpoint hash chain of a training task: pure hashing and structural checks.

A task that runs for long writes a checkpoint every k steps. Each checkpoint
is committed to by a link of a hash chain::

    H_0 = genesis(task payload digest)
    H_i = sha256(checkpoint_i ‖ H_{i-1} ‖ step range ‖ data order seed)

where ``checkpoint_i`` is the sha256 digest of the checkpoint's bytes (the
digest commits to the bytes and lets anyone check the chain's structure from
digests alone), the step range is ``(start, end]`` (the steps the segment
ran, ``end`` being the checkpoint's step) and the seed is the seed of the
segment's data order. Byte layout of the hashed message, all fixed width::

    b"deai.chain.v1" | digest (32 B) | H_{i-1} (32 B) | start | end | seed

with start, end and seed as unsigned 64-bit big-endian integers.

A chain is *well formed* when its first segment starts at step 0, each
segment starts where the previous one ended, steps strictly increase, and
every hash recomputes from its predecessor. Whether the checkpoint bytes are
the right ones is a verifier's question: it replays a segment and compares
digests (``first_mismatch`` finds where two chains part).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deai.core.errors import InvalidInput

DOMAIN = b"deai.chain.v1"
MAX_U64 = 2**64 - 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genesis(payload_digest: str) -> str:
    """H_0: binds the chain to one task's payload, so a chain cannot be moved to another."""
    return sha256_hex(b"deai.chain.genesis.v1" + _hex32(payload_digest, "payload_digest"))


def link(digest: str, prev: str, start: int, end: int, seed: int) -> str:
    """H_i for the checkpoint whose bytes hash to ``digest``, ran over steps ``(start, end]``."""
    if not 0 <= start < end <= MAX_U64:
        raise InvalidInput(f"step range ({start}, {end}] is empty or out of range",
                           field="step")
    if not 0 <= seed <= MAX_U64:
        raise InvalidInput("seed must fit in 64 bits", field="seed")
    msg = (DOMAIN + _hex32(digest, "digest") + _hex32(prev, "chain_hash")
           + start.to_bytes(8, "big") + end.to_bytes(8, "big") + seed.to_bytes(8, "big"))
    return sha256_hex(msg)


@dataclass(frozen=True)
class Link:
    """One checkpoint in a chain: steps ``(start, end]``, its bytes' digest, its hash."""

    start: int
    end: int
    digest: str
    seed: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "digest": self.digest,
                "seed": self.seed, "hash": self.hash}

    @classmethod
    def from_dict(cls, d: Any, field: str = "chain") -> Link:
        if not isinstance(d, dict) or set(d) != {"start", "end", "digest", "seed", "hash"}:
            raise InvalidInput(f"{field}: want {{start, end, digest, seed, hash}}", field=field)
        for k in ("start", "end", "seed"):
            v = d[k]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_U64:
                raise InvalidInput(f"{field}.{k}: must be an integer in [0, 2^64)",
                                   field=f"{field}.{k}")
        for k in ("digest", "hash"):
            _hex32(d[k], f"{field}.{k}")
        return cls(start=d["start"], end=d["end"], digest=d["digest"], seed=d["seed"],
                   hash=d["hash"])


def extend(chain: Sequence[Link], genesis_hash: str, digest: str, end: int, seed: int) -> Link:
    """The link that appends a checkpoint at step ``end`` to ``chain``."""
    prev, start = (chain[-1].hash, chain[-1].end) if chain else (genesis_hash, 0)
    return Link(start=start, end=end, digest=digest, seed=seed,
                hash=link(digest, prev, start, end, seed))


def verify(chain: Sequence[Link], genesis_hash: str, field: str = "chain") -> None:
    """Raise InvalidInput naming ``chain[i]`` at the first link that is not well formed."""
    prev, at = genesis_hash, 0
    for i, ln in enumerate(chain):
        where = f"{field}[{i}]"
        if ln.start != at:
            raise InvalidInput(f"{where}: starts at step {ln.start}, the chain is at {at}",
                               field=where)
        if ln.end <= ln.start:
            raise InvalidInput(f"{where}: step {ln.end} does not advance past {ln.start}",
                               field=where)
        if link(ln.digest, prev, ln.start, ln.end, ln.seed) != ln.hash:
            raise InvalidInput(f"{where}: hash does not follow from its checkpoint and "
                               f"the previous hash", field=where)
        prev, at = ln.hash, ln.end


def first_mismatch(a: Sequence[Link], b: Sequence[Link]) -> int | None:
    """Index of the first link where two chains differ (by step or digest); None if one
    is a prefix of the other. Bisection starts from the segment before it."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if (x.start, x.end, x.digest) != (y.start, y.end, y.digest):
            return i
    return None


def _hex32(value: object, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise InvalidInput(f"{field}: must be 64 lowercase hex characters", field=field)
    return bytes.fromhex(value)


_HEX = frozenset("0123456789abcdef")
