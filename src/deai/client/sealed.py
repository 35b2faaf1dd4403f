"""Sealed jobs on the client side: the crypto envelope, sealing an input, opening results.

Keys: every account is an Ed25519 key; its X25519 key for sealing is derived from
it (``VerifyKey.to_curve25519_public_key``), so a party needs no second key
registered. A job gets a fresh 32-byte key; each shard is encrypted with
XChaCha20-Poly1305 (libsodium's AEAD, through PyNaCl) under that key with
``core.sealed.ad(seal, "in", idx)`` as associated data; the key is wrapped with
``SealedBox`` to each party of ``sealed_for`` and to the owner. Outputs are
encrypted to the same key (``ad(seal, "out", idx)``), so the owner and the set
can read them and nobody else, the coordinator included.

    job = sealed.submit(client, {"kind": "embeddings", "model": ..., "max_price": 2000},
                        data)                 # parties: the quote's best + the verifiers
    ...
    lines = sealed.results(client, job.id)   # decrypted and assembled, as unsealed

A sealed training job's checkpoints are encrypted to the same key
(``ad(seal, "ckpt.<step>", idx)``) by the provider that writes them;
``model(client, job_id, result)`` fetches and opens the final one (the model
file) for its owner.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox
from nacl.signing import VerifyKey

from deai.core import batch, checkpoints, kinds, sealed, specs
from deai.core.errors import DeAIError, InvalidInput

if TYPE_CHECKING:
    from deai.client.keys import Identity
    from deai.client.sdk import Client
    from deai.core import wire

KEY_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
NONCE_BYTES = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES


class SealError(DeAIError):
    """A sealed blob cannot be opened here: not for this key, or tampered with."""

    status = 403
    code = "sealed"


def x25519_public(account_id: str) -> PublicKey:
    try:
        return VerifyKey(bytes.fromhex(account_id)).to_curve25519_public_key()
    except (ValueError, CryptoError):
        raise InvalidInput(f"sealed_for: {account_id[:16]}… is not an Ed25519 account id",
                           field="spec.sealed_for") from None


def wrap(key: bytes, account_id: str) -> str:
    """``key`` sealed to ``account_id``'s X25519 key (only its private key opens it)."""
    return base64.b64encode(SealedBox(x25519_public(account_id)).encrypt(key)).decode()


def unwrap(wrapped: str, identity: Identity) -> bytes:
    box = SealedBox(identity.signing_key.to_curve25519_private_key())
    try:
        return box.decrypt(base64.b64decode(wrapped))
    except CryptoError:
        raise SealError("the job key does not open with this identity") from None


def encrypt(key: bytes, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def decrypt(key: bytes, nonce: bytes, ct: bytes, ad: bytes) -> bytes:
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, ad, nonce, key)
    except (CryptoError, ValueError, TypeError):
        raise SealError("a sealed blob does not decrypt (wrong key, shard or tampered)") \
            from None


def open_key(keys: dict[str, str], identity: Identity) -> bytes:
    """The job key, unwrapped from ``keys`` with ``identity`` (SealError: not a party)."""
    wrapped = keys.get(identity.id)
    if wrapped is None:
        raise SealError("this identity is not in the job's sealed set")
    return unwrap(wrapped, identity)


def open_shard(key: bytes, env: sealed.Envelope, idx: int) -> bytes:
    if env.part != "in" or env.idx != idx:
        raise SealError(f"the shard envelope is not shard {idx}'s input")
    return decrypt(key, env.nonce, env.ct, sealed.ad(env.seal, "in", idx))


def seal_output(key: bytes, seal: str, idx: int, output: bytes, units: int,
                verdict: sealed.Verdict | None = None) -> bytes:
    nonce, ct = encrypt(key, output, sealed.ad(seal, "out", idx))
    return sealed.Envelope(seal=seal, part="out", idx=idx, nonce=nonce, ct=ct, units=units,
                           verdict=verdict).to_bytes()


def seal_checkpoint(key: bytes, seal: str, idx: int, step: int, data: bytes) -> bytes:
    nonce, ct = encrypt(key, data, sealed.ad(seal, sealed.ckpt_part(step), idx))
    return sealed.Envelope(seal=seal, part="ckpt", idx=idx, nonce=nonce, ct=ct,
                           step=step).to_bytes()


def open_checkpoint(key: bytes, env: sealed.Envelope, seal: str, idx: int) -> bytes:
    if env.part != "ckpt" or env.seal != seal or env.idx != idx:
        raise SealError(f"the envelope is not a checkpoint of shard {idx}")
    return decrypt(key, env.nonce, env.ct, sealed.ad(seal, sealed.ckpt_part(env.step), idx))


def open_output(key: bytes, env: sealed.Envelope, seal: str, idx: int) -> bytes:
    if env.part != "out" or env.seal != seal or env.idx != idx:
        raise SealError(f"the output envelope is not shard {idx}'s output")
    return decrypt(key, env.nonce, env.ct, sealed.ad(seal, "out", idx))


@dataclass(frozen=True)
class SealedInput:
    """A job's input, sealed: the shard envelopes to upload and the manifest naming them."""

    seal: str
    key: bytes
    keys: dict[str, str]
    shards: list[tuple[bytes, int, int]]  # (envelope, items, units)
    genesis: list[str | None] | None = None  # a training shard's chain H_0

    def manifest(self) -> sealed.Manifest:
        gen = self.genesis or [None] * len(self.shards)
        return sealed.Manifest(self.seal, self.keys, [
            sealed.ShardRef(hashlib.sha256(blob).hexdigest(), items, units, g)
            for (blob, items, units), g in zip(self.shards, gen, strict=True)])


def seal_input(spec: specs.JobSpec, data: bytes, owner: str,
               key: bytes | None = None) -> SealedInput:
    """Split ``data`` as the coordinator would, and seal every shard to ``spec.sealed_for``
    and ``owner``."""
    key = key if key is not None else secrets.token_bytes(KEY_BYTES)
    seal = secrets.token_hex(16)
    keys = {p: wrap(key, p) for p in sorted({*spec.sealed_for, owner})}
    out = []
    genesis: list[str | None] = []
    for i, sh in enumerate(kinds.get(spec.kind).split(spec, data)):
        nonce, ct = encrypt(key, sh.payload, sealed.ad(seal, "in", i))
        env = sealed.Envelope(seal=seal, part="in", idx=i, nonce=nonce, ct=ct, keys=keys)
        out.append((env.to_bytes(), sh.items, sh.max_units))
        genesis.append(checkpoints.genesis(hashlib.sha256(sh.payload).hexdigest())
                       if spec.kind == "train" else None)
    return SealedInput(seal, key, keys, out, genesis)


def parties(client: Client, spec: dict[str, Any], data: bytes, workers: int = 3) -> list[str]:
    """A sealed set from the quote: the ``workers`` best eligible providers that are not
    verifiers (enough for a primary and its replica), plus every trusted verifier."""
    parsed = specs.parse_spec(spec)
    units = [sh.max_units for sh in kinds.get(parsed.kind).split(parsed, data)]
    trusted = client.verifiers()
    q = client.quote(spec, units)
    best = [e["provider"] for e in q.eligible if e["provider"] not in trusted][:workers]
    return sorted({*best, *trusted})


def submit(client: Client, spec: dict[str, Any], data: bytes,
           sealed_for: list[str] | None = None) -> wire.JobOut:
    """Seal ``data`` to ``sealed_for`` (default: ``parties``) and submit the job."""
    plain = {k: v for k, v in spec.items() if k not in ("sealed", "sealed_for")}
    who = sealed_for if sealed_for is not None else parties(client, plain, data)
    full = {**plain, "sealed": True, "sealed_for": sorted(set(who))}
    si = seal_input(specs.parse_spec(full), data, client._me())
    for blob, _, _ in si.shards:
        client.upload(blob)
    digest = client.upload(si.manifest().to_bytes()).digest
    return client.submit_job(full, digest)


def _head(raw: bytes, identity: Identity) -> tuple[bytes, str, list[bytes]]:
    """(job key, seal, envelope lines) of a sealed job's result file."""
    lines = raw.splitlines()
    if not lines:
        raise InvalidInput("results: empty", field="results")
    head = batch.safe_loads(lines[0])
    if not isinstance(head, dict) or head.get("part") != "results":
        raise InvalidInput("results: not a sealed job's results", field="results")
    return open_key(head.get("keys") or {}, identity), str(head.get("seal")), lines


def open_results(raw: bytes, job_id: str, spec: dict[str, Any], identity: Identity) -> bytes:
    """A sealed job's result file, decrypted and assembled as an unsealed job's would be."""
    key, seal, lines = _head(raw, identity)
    outputs = []
    for i, line in enumerate(lines[1:]):
        env = sealed.parse_envelope(line, f"results line {i + 2}")
        outputs.append(open_output(key, env, seal, i))  # in shard order
    parsed = specs.parse_spec(spec)
    return kinds.get(parsed.kind).assemble(job_id, parsed, outputs)


def results(client: Client, job_id: str) -> bytes:
    """``client.results``, decrypted when the job is sealed."""
    job = client.job(job_id)
    raw = client.results(job_id)
    if not sealed.is_sealed(job.spec):
        return raw
    if client.identity is None:
        raise SealError("a sealed job's results open only with its owner's key")
    return open_results(raw, job_id, job.spec, client.identity)


def model(client: Client, job_id: str, result: dict[str, Any]) -> bytes | None:
    """A sealed training job's final model file (its last checkpoint), decrypted and
    checked against the result's ``model_digest``; None for an unsealed job."""
    job = client.job(job_id)
    if not sealed.is_sealed(job.spec):
        return None
    if client.identity is None:
        raise SealError("a sealed job's model opens only with its owner's key")
    key, seal, _ = _head(client.results(job_id), client.identity)
    want = result["model_digest"]
    cps = client.checkpoints(job_id)
    for cp in reversed(cps):
        if (cp.get("meta") or {}).get("plain") != want:
            continue
        # Any party of the task may record a checkpoint claiming to be the model: one that
        # does not open (or opens to something else) is passed over, not the end of it.
        try:
            env = sealed.parse_envelope(client.download(cp["digest"]), "checkpoint")
            data = open_checkpoint(key, env, seal, sealed.task_index(cp["task_id"]))
        except (SealError, InvalidInput):
            continue
        if hashlib.sha256(data).hexdigest() == want:
            return data
    raise DeAIError(f"no recorded checkpoint of job {job_id} opens to the model {want}")
