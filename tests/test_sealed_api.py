"""Sealed jobs through a real coordinator: bad sealed submissions are refused with a 4xx
naming the field, and nothing is escrowed; a sealed job is placed only within its set
(hand-driven providers, one of them cheaper and outside the set)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from deai.client import sealed as sealing
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import sealed, specs
from deai.core.errors import DeAIError
from tests.helpers import HandProvider, lines
from tests.netutil import Network

MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "shard_size": 4}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("sealed-api"), heartbeat_timeout=30.0, verifiers=1)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def refused(call: object, status: int, field: str) -> None:
    with pytest.raises(DeAIError) as exc:
        call()  # type: ignore[operator]
    assert (exc.value.status, exc.value.field) == (status, field), exc.value


def test_bad_sealed_submissions_are_refused_naming_the_field(net: Network) -> None:
    c = Client(net.url, Identity.generate())
    c.faucet(10_000_000)
    who = [Identity.generate().id, net.key("verifier-1").id]
    spec = {**SPEC, "sealed": True, "sealed_for": who}
    si = sealing.seal_input(specs.parse_spec(spec), lines(6), c._me())
    for blob, _, _ in si.shards:
        c.upload(blob)
    good = si.manifest()
    before = c.balance().available

    def submit(manifest: bytes, s: dict[str, object] = spec) -> object:
        return lambda: c.submit_job(s, c.upload(manifest).digest)

    missing = sealed.Manifest(good.seal, {k: v for k, v in good.keys.items() if k != who[0]},
                              good.shards)
    refused(submit(missing.to_bytes()), 422, "input_digest.keys")
    swapped = sealed.Manifest(good.seal, good.keys, good.shards[::-1])
    refused(submit(swapped.to_bytes()), 422, "input_digest.shards[0].digest")
    stranger = Client(net.url, Identity.generate())
    theirs = stranger.upload(b'{"deai_sealed":"not yours"}').digest
    other = sealed.Manifest(good.seal, good.keys,
                            [sealed.ShardRef(theirs, 1, 1), *good.shards[1:]])
    refused(submit(other.to_bytes()), 404, "input_digest.shards[0].digest")
    refused(submit(lines(3)), 422, "input_digest")
    chat = {"kind": "chat", "model": "SmolLM2-135M-Instruct", "max_price": 10,
            "sealed": True, "sealed_for": who}
    refused(submit(good.to_bytes(), chat), 422, "spec.sealed")
    no_verifier = {**spec, "sealed_for": who[:1]}
    refused(submit(good.to_bytes(), no_verifier), 422, "spec.sealed_for")
    # A good manifest with nobody in the set online: no capacity, still a 4xx.
    with pytest.raises(DeAIError) as exc:
        submit(good.to_bytes())()  # type: ignore[operator]
    assert 400 <= exc.value.status < 500 and exc.value.field == "spec.sealed_for"
    assert c.balance().available == before  # nothing was escrowed


def test_a_sealed_job_is_leased_only_within_its_set(net: Network) -> None:
    inside = HandProvider(net, price=900, slots=2)
    outside = HandProvider(net, price=100)  # the cheapest: it would win an unsealed job
    c = Client(net.url, Identity.generate())
    c.faucet(10_000_000)
    verifier = net.key("verifier-1").id  # named, not running: no check is placed here
    job = sealing.submit(c, SPEC, lines(8), sealed_for=[inside.id, verifier])
    assert job.spec["sealed_for"] == sorted([inside.id, verifier]) and job.units == 8
    taken = []
    for _ in range(60):
        assert outside.take(wait=0.5) == []
        taken += inside.take(wait=1.0)
        if len(taken) == 2:
            break
    assert sorted(a.task_id for a in taken) == [f"{job.id}.t00000", f"{job.id}.t00001"]
    for a in taken:  # what the provider receives is an envelope only it can open
        raw = c.download(a.input_digest) if a.input_b64 is None else None
        env = sealed.parse_envelope(raw or base64.b64decode(a.input_b64 or ""))
        shard = sealing.open_shard(sealing.open_key(env.keys, inside.ident), env,
                                   sealed.task_index(a.task_id))
        assert [json.loads(x)["custom_id"] for x in shard.splitlines()][0].startswith("c")
        with pytest.raises(sealing.SealError):
            sealing.open_key(env.keys, outside.ident)
    outside.quit()
    inside.quit()
