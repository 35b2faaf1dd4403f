"""Sealed jobs, unit level: the crypto envelope, the manifest the coordinator reads, the
spec, the matcher's constraint and the provider's checks of a sealed claim."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deai.client import sealed as crypto
from deai.client.keys import Identity
from deai.core import market, sealed, specs, wire
from deai.core.errors import InvalidInput
from deai.provider import sealed as unseal
from tests.helpers import lines

MODEL = "all-MiniLM-L6-v2"


def parties(n: int) -> list[Identity]:
    return [Identity.generate(f"p{i}") for i in range(n)]


def spec_for(who: list[Identity], **more: Any) -> specs.JobSpec:
    return specs.parse_spec({"kind": "embeddings", "model": MODEL, "max_price": 2000,
                             "shard_size": 4, "sealed": True,
                             "sealed_for": [p.id for p in who], **more})


def test_every_party_and_the_owner_open_every_shard_and_it_is_the_plain_shard() -> None:
    owner, *who = parties(4)
    spec = spec_for(who)
    data = lines(10)
    si = crypto.seal_input(spec, data, owner.id)
    plain = specs.split(spec, data)
    assert len(si.shards) == len(plain) == 3
    for i, ((blob, items, units), sh) in enumerate(zip(si.shards, plain, strict=True)):
        assert (items, units) == (sh.items, sh.max_units)
        assert b"sentence" not in blob and b"custom_id" not in blob
        env = sealed.parse_envelope(blob, "input")
        for party in (owner, *who):
            key = crypto.open_key(env.keys, party)
            assert crypto.open_shard(key, env, i) == sh.payload


def test_a_provider_outside_the_set_cannot_decrypt_a_shard() -> None:
    owner, *who = parties(3)
    outsider = Identity.generate("outsider")
    si = crypto.seal_input(spec_for(who), lines(4), owner.id)
    env = sealed.parse_envelope(si.shards[0][0], "input")
    with pytest.raises(crypto.SealError, match="not in the job's sealed set"):
        crypto.open_key(env.keys, outsider)
    # Nor with a party's wrapped key in hand: only that party's private key unwraps it.
    with pytest.raises(crypto.SealError):
        crypto.unwrap(env.keys[who[0].id], outsider)
    # Nor by guessing a key: the AEAD refuses every other key.
    with pytest.raises(crypto.SealError):
        crypto.open_shard(bytes(32), env, 0)


def test_a_shard_does_not_open_as_another_task_nor_tampered() -> None:
    owner, *who = parties(3)
    si = crypto.seal_input(spec_for(who), lines(8), owner.id)
    env0 = sealed.parse_envelope(si.shards[0][0], "input")
    key = crypto.open_key(env0.keys, who[0])
    moved = sealed.Envelope(seal=env0.seal, part="in", idx=1, nonce=env0.nonce, ct=env0.ct,
                            keys=env0.keys)
    with pytest.raises(crypto.SealError):
        crypto.open_shard(key, moved, 1)  # shard 0's ciphertext passed off as shard 1
    with pytest.raises(crypto.SealError):
        crypto.open_shard(key, env0, 1)
    flipped = bytes([env0.ct[0] ^ 1]) + env0.ct[1:]
    bad = sealed.Envelope(seal=env0.seal, part="in", idx=0, nonce=env0.nonce, ct=flipped,
                          keys=env0.keys)
    with pytest.raises(crypto.SealError):
        crypto.open_shard(key, bad, 0)


def test_an_output_opens_for_the_owner_only_at_its_own_index() -> None:
    owner, *who = parties(3)
    si = crypto.seal_input(spec_for(who), lines(4), owner.id)
    out = crypto.seal_output(si.key, si.seal, 0, b"vectors", 4)
    env = sealed.parse_envelope(out)
    assert (env.part, env.units, env.verdict) == ("out", 4, None)
    assert crypto.open_output(crypto.open_key(si.keys, owner), env, si.seal, 0) == b"vectors"
    with pytest.raises(crypto.SealError):
        crypto.open_output(si.key, env, si.seal, 1)


# --- the manifest: what the coordinator checks without a key ---------------------------------

def manifest(owner: Identity, who: list[Identity], n: int = 6) -> tuple[bytes, crypto.SealedInput]:
    si = crypto.seal_input(spec_for(who), lines(n), owner.id)
    return si.manifest().to_bytes(), si


def test_manifest_names_shards_and_keys_and_holds_no_key_in_the_clear() -> None:
    owner, *who = parties(3)
    raw, si = manifest(owner, who)
    m = sealed.parse_manifest(raw, owner.id, tuple(p.id for p in who))
    assert [(s.items, s.units) for s in m.shards] == [(4, 4), (2, 2)]
    assert set(m.keys) == {owner.id, *(p.id for p in who)}
    assert si.key not in raw and si.key.hex().encode() not in raw


@pytest.mark.parametrize("change, field", [
    (lambda m, o: m["keys"].pop(next(k for k in m["keys"] if k != o)), "input_digest.keys"),
    (lambda m, o: m["keys"].update({"ab" * 32: "QUJD"}), "input_digest.keys"),
    (lambda m, o: m["shards"][1].update(units=0), "input_digest.shards[1].units"),
    (lambda m, o: m["shards"][0].update(digest="nope"), "input_digest.shards[0].digest"),
    (lambda m, o: m.update(shards=[]), "input_digest.shards"),
    (lambda m, o: m.update(seal="x"), "input_digest.seal"),
])
def test_a_bad_manifest_is_refused_naming_the_field(change: Any, field: str) -> None:
    owner, *who = parties(3)
    raw, _ = manifest(owner, who)
    obj = json.loads(raw)
    change(obj, owner.id)
    with pytest.raises(InvalidInput) as exc:
        sealed.parse_manifest(json.dumps(obj).encode(), owner.id, tuple(p.id for p in who))
    assert exc.value.field == field


def test_a_bad_envelope_is_refused_naming_the_field() -> None:
    owner, *who = parties(2)
    blob = crypto.seal_input(spec_for(who), lines(2), owner.id).shards[0][0]
    obj = json.loads(blob)
    for key, value, field in (("nonce", "abc", "input.nonce"), ("ct", 7, "input.ct"),
                              ("idx", -1, "input.idx"), ("keys", {}, "input.keys")):
        with pytest.raises(InvalidInput) as exc:
            sealed.parse_envelope(json.dumps({**obj, key: value}).encode(), "input")
        assert exc.value.field == field
    verdict = crypto.seal_output(bytes(32), obj["seal"], 0, b"x", 1,
                                 sealed.Verdict(True, None, 0.0, "ok"))
    bad = {**json.loads(verdict), "verdict": {"subject": "yes"}}
    with pytest.raises(InvalidInput) as exc:
        sealed.parse_envelope(json.dumps(bad).encode())
    assert exc.value.field == "output.verdict"


def test_not_a_manifest_is_refused() -> None:
    for raw in (b"", b"[1]", lines(2), b'{"deai_sealed": "other"}', b"[" * 100_000):
        with pytest.raises(InvalidInput):
            sealed.parse_manifest(raw, "a" * 64, ("b" * 64,))


# --- the spec and the matcher -----------------------------------------------------------------

def test_an_unsealed_spec_is_stored_exactly_as_before() -> None:
    spec = specs.parse_spec({"kind": "embeddings", "model": MODEL, "max_price": 1})
    assert "sealed" not in spec.model_dump() and "sealed_for" not in spec.model_dump()
    assert not sealed.is_sealed(spec.model_dump())
    assert sealed.only(spec.model_dump()) is None


@pytest.mark.parametrize("extra", [{"sealed": True}, {"sealed_for": ["a" * 64]},
                                   {"sealed": True, "sealed_for": ["nothex"]},
                                   {"sealed": "yes", "sealed_for": ["a" * 64]}])
def test_a_bad_sealed_spec_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as exc:
        specs.parse_spec({"kind": "embeddings", "model": MODEL, "max_price": 1, **extra})
    assert exc.value.field is not None and exc.value.field.startswith("spec")


def test_the_matcher_places_a_sealed_task_only_within_its_set() -> None:
    def prov(pid: str, price: int) -> market.ProviderState:
        return market.ProviderState(id=pid, online=True, stake=10**9, memory_mb=8192,
                                    slots=4, offers=(market.Offer("embeddings", MODEL, price),))

    cheap, dear = prov("cheap", 100), prov("dear", 900)
    free = market.TaskDemand(id="t", workload="embeddings", model=MODEL, max_price=1000,
                             memory_mb=100)
    sealed_t = market.TaskDemand(id="t", workload="embeddings", model=MODEL, max_price=1000,
                                 memory_mb=100, only=frozenset({"dear"}))
    assert market.place([free], [cheap, dear], 0)[0].provider_id == "cheap"
    assert market.place([sealed_t], [cheap, dear], 0)[0].provider_id == "dear"
    assert market.place([sealed_t], [cheap], 0) == []
    assert market.why_not(sealed_t, cheap, 0) == ["excluded for this task"]
    for draw in (0.0, 0.5, 0.99):
        pl = market.pick(sealed_t, [cheap, dear], 0, draw, {})
        assert pl is not None and pl.provider_id == "dear"


# --- the provider: run a sealed shard, check a sealed claim ------------------------------------

def fake_run(shard: bytes, scale: float = 0.25) -> tuple[bytes, int]:
    """An embeddings 'model' that is deterministic (what the comparator needs)."""
    rows = [json.loads(x) for x in shard.splitlines()]
    out = b"".join(json.dumps({"custom_id": r["custom_id"],
                               "embeddings": [[scale + i * 1e-3] * 384
                                              for i, _ in enumerate(r["input"])],
                               "prompt_tokens": 4}).encode() + b"\n" for r in rows)
    return out, sum(len(r["input"]) for r in rows)


def lease(idx: int, input_digest: str = "0" * 64) -> wire.AssignmentOut:
    return wire.AssignmentOut(id="asg_1", task_id=f"job_x.t{idx:05d}", job_id="job_x",
                              workload="embeddings", model=MODEL, input_digest=input_digest,
                              units=4, price=1000, lease_deadline=0.0)


def test_a_party_runs_a_sealed_shard_and_checks_a_claim() -> None:
    owner, primary, replica, referee = parties(4)
    spec = spec_for([primary, replica, referee])
    si = crypto.seal_input(spec, lines(8), owner.id)
    store: dict[str, bytes] = {}

    def put(b: bytes) -> str:
        import hashlib

        d = hashlib.sha256(b).hexdigest()
        store[d] = b
        return d

    shard1 = put(si.shards[1][0])
    out, units = unseal.run(primary, lease(1), store[shard1], store.__getitem__, fake_run)
    assert units == 4 and b"embeddings" not in out
    honest = put(out)
    wrong = put(unseal.run(primary, lease(1), store[shard1], store.__getitem__,
                           lambda s: fake_run(s, 0.9))[0])

    def check(claimed: str, units: int = 4, checker: str | None = None,
              who: Identity = replica) -> sealed.Verdict:
        payload = sealed.CheckPayload(shard=shard1, claimed=claimed, claimed_units=units,
                                      spec=spec.model_dump(mode="json"), checker=checker)
        out, _ = unseal.run(who, lease(1), payload.to_bytes(), store.__getitem__, fake_run)
        v = sealed.parse_envelope(out).verdict
        assert v is not None
        return v

    assert check(honest).subject is True
    assert check(wrong).subject is False
    assert check(honest, units=3).subject is False  # units claimed beyond what it shows
    v = check(wrong, checker=honest, who=referee)
    assert (v.subject, v.checker) == (False, True)
    # An outsider leased the payload by mistake: it still cannot open anything.
    with pytest.raises(crypto.SealError):
        unseal.run(Identity.generate(), lease(1), store[shard1], store.__getitem__, fake_run)
    # A shard with more units than its task declares is refused (the client under-declared),
    # before it runs: the provider would otherwise do the whole shard's work unpaid.
    def never(shard: bytes) -> tuple[bytes, int]:
        raise AssertionError("an under-declared shard was run")

    with pytest.raises(crypto.SealError, match="declares 3"):
        unseal.run(primary, lease(1).model_copy(update={"units": 3}), store[shard1],
                   store.__getitem__, never)
    # A shard delivered as another task's does not open.
    with pytest.raises(crypto.SealError):
        unseal.run(primary, lease(0), store[shard1], store.__getitem__, fake_run)
