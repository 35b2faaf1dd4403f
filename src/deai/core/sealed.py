"""Sealed jobs: the wire formats the coordinator handles without ever reading the data.

A sealed job (``sealed: true`` in its spec, ``sealed_for``: the providers and
verifiers allowed to read it) is split and encrypted by its client. The
coordinator sees only these JSON documents, none of which holds a key or a
byte of plaintext:

- the **manifest** (the job's input blob): the seal id, each shard's digest,
  items and units, and the job key wrapped to each party (``keys``: account id →
  ``SealedBox`` of the key to that account's X25519 key, base64);
- a **shard envelope** (a task's input blob): the same wrapped keys, and the
  shard encrypted with the job key (XChaCha20-Poly1305, associated data
  ``ad(seal, "in", idx)``, so a shard cannot be passed off as another task's);
- an **output envelope** (a result's output blob): the output encrypted to the
  same key (``ad(seal, "out", idx)``), its units, and for a check the party's
  signed **verdict** (the result signature covers the blob's digest);
- a **check payload** (a checker's lease input): which shard, which claimed
  output (and, for a referee, which checker's output) to decrypt and compare,
  and for a training job the recorded checkpoints it may replay from;
- a **checkpoint envelope** (a sealed training task's checkpoint blob): the
  checkpoint encrypted to the job key (``ad(seal, "ckpt.<step>", idx)``), so
  weights never reach the coordinator; the chain it records commits to the
  plaintext checkpoint's digest, which the provider states beside it.

Crypto lives with the parties that hold keys (``deai.client.sealed``); this
module is pure parsing and validation, so the coordinator, the client and the
provider agree on one format.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from deai.core import batch
from deai.core.errors import InvalidInput

MAGIC = "deai-sealed/v1"
CHECK = "deai-sealed-check/v1"
KINDS = frozenset({"embeddings", "train"})  # kinds whose shards, checks and outputs seal
MAX_SHARDS = 10_000
MAX_PARTIES = 64
MAX_DETAIL = 500
MAX_SHARD_UNITS = 2**31 - 1  # a task's units are a 32-bit column (``tasks.units``), as a
# result's are (``wire.ResultIn.units``): past it PostgreSQL refused the row with a 500
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SEAL = re.compile(r"^[0-9a-f]{32}$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def ad(seal: str, part: str, idx: int) -> bytes:
    """Associated data binding a ciphertext to its job (seal), direction and shard."""
    return f"{MAGIC}|{seal}|{part}|{idx}".encode()


def dumps(obj: dict[str, Any]) -> bytes:
    """Canonical JSON (the first key names the format, so a blob is recognised by prefix)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def is_envelope(blob: bytes) -> bool:
    return blob.startswith(b'{"deai_sealed":')


def is_check(blob: bytes) -> bool:
    return blob.startswith(b'{"deai_sealed_check":')


# --- manifest ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardRef:
    """A shard blob by digest; ``genesis``: for a training shard, the chain's H_0 over the
    plaintext payload (``core.checkpoints.genesis``), so the coordinator can check that
    the checkpoints providers record link up without reading the payload."""

    digest: str
    items: int
    units: int
    genesis: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"digest": self.digest, "items": self.items, "units": self.units}
        if self.genesis is not None:
            d["genesis"] = self.genesis
        return d


@dataclass(frozen=True)
class Manifest:
    seal: str
    keys: dict[str, str]
    shards: list[ShardRef] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return dumps({"deai_sealed": MAGIC, "part": "manifest", "seal": self.seal,
                      "keys": self.keys,
                      "shards": [s.to_dict() for s in self.shards]})


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = batch.safe_loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"{where}: not a sealed document (JSON)", field=where) from None
    if not isinstance(obj, dict) or obj.get("deai_sealed") != MAGIC:
        raise InvalidInput(f"{where}: not a {MAGIC} document", field=where)
    return obj


def _keys(obj: dict[str, Any], where: str) -> dict[str, str]:
    keys = obj.get("keys")
    if not isinstance(keys, dict) or not keys or len(keys) > MAX_PARTIES + 1:
        raise InvalidInput(f"{where}.keys: a mapping of 1 to {MAX_PARTIES + 1} parties",
                           field=f"{where}.keys")
    for k, v in keys.items():
        if not _HEX64.match(k) or not isinstance(v, str) or len(v) > 200 or not _B64.match(v):
            raise InvalidInput(f"{where}.keys: each entry maps an account id to a wrapped "
                               "key (base64)", field=f"{where}.keys")
    return dict(keys)


def _int(v: Any, lo: int, hi: int, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidInput(f"{where}: an integer from {lo} to {hi}", field=where)
    return v


def parse_manifest(data: bytes, owner: str, sealed_for: tuple[str, ...],
                   where: str = "input_digest") -> Manifest:
    """The client's manifest, checked: every party of ``sealed_for`` and the owner hold a
    wrapped key, and every shard names a blob by digest with positive items and units."""
    obj = _load(data, where)
    seal = obj.get("seal")
    if obj.get("part") != "manifest" or not isinstance(seal, str) or not _SEAL.match(seal):
        raise InvalidInput(f"{where}: a manifest needs part 'manifest' and a 32-hex seal",
                           field=f"{where}.seal")
    keys = _keys(obj, where)
    missing = [p for p in (*sealed_for, owner) if p not in keys]
    if missing:
        raise InvalidInput(f"{where}.keys: no wrapped key for {missing[0][:16]}… (every party "
                           "in spec.sealed_for and the owner need one)", field=f"{where}.keys")
    extra = [p for p in keys if p != owner and p not in sealed_for]
    if extra:
        raise InvalidInput(f"{where}.keys: {extra[0][:16]}… is not in spec.sealed_for",
                           field=f"{where}.keys")
    raw = obj.get("shards")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SHARDS:
        raise InvalidInput(f"{where}.shards: a list of 1 to {MAX_SHARDS} shards",
                           field=f"{where}.shards")
    shards = []
    for i, sh in enumerate(raw):
        w = f"{where}.shards[{i}]"
        if not isinstance(sh, dict) or not isinstance(sh.get("digest"), str) \
                or not _HEX64.match(sh["digest"]):
            raise InvalidInput(f"{w}.digest: a sha256 hex digest", field=f"{w}.digest")
        genesis = sh.get("genesis")
        if genesis is not None and (not isinstance(genesis, str) or not _HEX64.match(genesis)):
            raise InvalidInput(f"{w}.genesis: a sha256 hex digest", field=f"{w}.genesis")
        shards.append(ShardRef(sh["digest"], _int(sh.get("items"), 1, 10**7, f"{w}.items"),
                               _int(sh.get("units"), 1, MAX_SHARD_UNITS, f"{w}.units"),
                               genesis))
    return Manifest(seal, keys, shards)


# --- envelopes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Envelope:
    """A sealed shard (``part`` "in"), output ("out") or training checkpoint ("ckpt", at
    ``step``); ``verdict`` only on a check's output."""

    seal: str
    part: str
    idx: int
    nonce: bytes
    ct: bytes
    keys: dict[str, str] = field(default_factory=dict)
    units: int = 0
    verdict: Verdict | None = None
    step: int = 0

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"deai_sealed": MAGIC, "part": self.part, "seal": self.seal,
                               "idx": self.idx}
        if self.part == "ckpt":
            obj["step"] = self.step
        if self.keys:
            obj["keys"] = self.keys
        if self.part == "out":
            obj["units"] = self.units
        if self.verdict is not None:
            obj["verdict"] = self.verdict.to_dict()
        obj["nonce"] = base64.b64encode(self.nonce).decode()
        obj["ct"] = base64.b64encode(self.ct).decode()
        return dumps(obj)


@dataclass(frozen=True)
class Verdict:
    """What a checker found, decrypting where the coordinator cannot: does the claimed
    output (``subject``) agree with its own run, and for a referee, does the checker's?"""

    subject: bool
    checker: bool | None = None
    statistic: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"subject": self.subject, "statistic": self.statistic,
                             "detail": self.detail[:MAX_DETAIL]}
        if self.checker is not None:
            d["checker"] = self.checker
        return d


def _b64(v: Any, where: str) -> bytes:
    try:
        if isinstance(v, str) and _B64.match(v):
            return base64.b64decode(v, validate=True)
    except ValueError:  # binascii.Error: bad padding
        pass
    raise InvalidInput(f"{where}: base64 expected", field=where)


def _verdict(v: Any, where: str) -> Verdict | None:
    if v is None:
        return None
    ok = (isinstance(v, dict) and isinstance(v.get("subject"), bool)
          and isinstance(v.get("checker", False), bool)
          and batch.finite(v.get("statistic", 0.0))
          and isinstance(v.get("detail", ""), str))
    if not ok:
        raise InvalidInput(f"{where}.verdict: needs subject (bool), statistic, detail",
                           field=f"{where}.verdict")
    return Verdict(v["subject"], v.get("checker"), float(v.get("statistic", 0.0)),
                   str(v.get("detail", ""))[:MAX_DETAIL])


def parse_envelope(data: bytes, where: str = "output") -> Envelope:
    obj = _load(data, where)
    part = obj.get("part")
    seal = obj.get("seal")
    if part not in ("in", "out", "ckpt") or not isinstance(seal, str) or not _SEAL.match(seal):
        raise InvalidInput(f"{where}: an envelope needs part 'in', 'out' or 'ckpt' and a seal",
                           field=where)
    return Envelope(
        seal=seal, part=part, idx=_int(obj.get("idx"), 0, MAX_SHARDS, f"{where}.idx"),
        nonce=_b64(obj.get("nonce"), f"{where}.nonce"), ct=_b64(obj.get("ct"), f"{where}.ct"),
        keys=_keys(obj, where) if part == "in" else {},
        units=(_int(obj.get("units"), 0, MAX_SHARD_UNITS, f"{where}.units") if part == "out"
               else 0),
        verdict=_verdict(obj.get("verdict"), where),
        step=_int(obj.get("step"), 1, 2**63 - 1, f"{where}.step") if part == "ckpt" else 0)


def ckpt_part(step: int) -> str:
    """The associated data's part for a checkpoint at ``step`` (bound, so a checkpoint
    cannot be passed off as another step's)."""
    return f"ckpt.{step}"


# --- check payloads ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckPayload:
    """A checker's lease input: the shard to re-run, the claimed output to test and, for a
    referee, the first checker's output; ``spec``: the job's spec (public metadata);
    ``checkpoints``: for a training task, its recorded checkpoints (plaintext digest, as
    the chain names them → the sealed blob's digest), for a segment audit to replay from."""

    shard: str
    claimed: str
    claimed_units: int
    spec: dict[str, Any]
    checker: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    nonce: str = ""  # hex: the coordinator's draw for a sampling check (``Kind.check_payload``)

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"deai_sealed_check": CHECK, "shard": self.shard,
                               "claimed": self.claimed, "claimed_units": self.claimed_units,
                               "spec": self.spec}
        if self.checker is not None:
            obj["checker"] = self.checker
        if self.checkpoints:
            obj["checkpoints"] = self.checkpoints
        if self.nonce:
            obj["nonce"] = self.nonce
        return dumps(obj)


def parse_check(data: bytes) -> CheckPayload:
    try:
        obj = batch.safe_loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("input: not a sealed check payload", field="input") from None
    if not isinstance(obj, dict) or obj.get("deai_sealed_check") != CHECK:
        raise InvalidInput("input: not a sealed check payload", field="input")
    for k in ("shard", "claimed") + (("checker",) if "checker" in obj else ()):
        if not isinstance(obj.get(k), str) or not _HEX64.match(obj[k]):
            raise InvalidInput(f"input.{k}: a sha256 hex digest", field=f"input.{k}")
    if not isinstance(obj.get("spec"), dict):
        raise InvalidInput("input.spec: the job's spec", field="input.spec")
    cps = obj.get("checkpoints", {})
    if not isinstance(cps, dict) or not all(
            isinstance(k, str) and _HEX64.match(k) and isinstance(v, str) and _HEX64.match(v)
            for k, v in cps.items()):
        raise InvalidInput("input.checkpoints: digest → digest", field="input.checkpoints")
    nonce = obj.get("nonce", "")
    if not isinstance(nonce, str) or not re.fullmatch(r"(?:[0-9a-f]{2}){0,32}", nonce):
        raise InvalidInput("input.nonce: at most 32 bytes, hex", field="input.nonce")
    return CheckPayload(obj["shard"], obj["claimed"],
                        _int(obj.get("claimed_units"), 0, MAX_SHARD_UNITS, "input.claimed_units"),
                        obj["spec"], obj.get("checker"), dict(cps), nonce)


def is_sealed(spec: dict[str, Any] | None) -> bool:
    """Whether a stored job spec (a dict) is a sealed job's."""
    return bool(spec) and spec.get("sealed") is True  # type: ignore[union-attr]


def only(spec: dict[str, Any]) -> frozenset[str] | None:
    """Who may hold a lease of a job with this stored spec (None: anyone)."""
    return frozenset(spec.get("sealed_for") or ()) if is_sealed(spec) else None


def task_index(task_id: str) -> int:
    """A task's shard index from its id (``<job>.t00003`` → 3)."""
    _, _, tail = task_id.rpartition(".t")
    if not tail.isdigit():
        raise InvalidInput(f"task id {task_id!r} has no shard index", field="task_id")
    return int(tail)
