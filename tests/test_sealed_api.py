"""Sealed jobs through a real coordinator: bad sealed submissions are refused with a 4xx
naming the field, and nothing is escrowed; a sealed job is placed only within its set
(hand-driven providers, one of them cheaper and outside the set)."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deai.client import cli
from deai.client import sealed as sealing
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import auth, sealed, specs, wire
from deai.core.errors import DeAIError
from deai.provider import sealed as unseal
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


# --- the whole protocol through the CLI, with hand-driven providers ---------------------------

def fake_run(shard: bytes, scale: float = 0.25) -> tuple[bytes, int]:
    """A deterministic stand-in for the model (the comparator only needs equal numbers)."""
    rows = [json.loads(x) for x in shard.splitlines()]
    out = b"".join(json.dumps({"custom_id": r["custom_id"],
                               "embeddings": [[scale] * 384 for _ in r["input"]],
                               "prompt_tokens": 4}).encode() + b"\n" for r in rows)
    return out, sum(len(r["input"]) for r in rows)


class SealedHand(HandProvider):
    """A hand-driven provider that opens, runs and seals as the agent does
    (``provider.sealed.run``); ``scale`` other than 0.25 makes it a cheater."""

    scale = 0.25

    def answer(self, a: wire.AssignmentOut, dims: int = 384) -> wire.ResultOut:
        raw = (base64.b64decode(a.input_b64) if a.input_b64 is not None
               else self.c.download(a.input_digest))
        out, units = unseal.run(self.ident, a, raw, self.c.download,
                                lambda shard: fake_run(shard, self.scale))
        digest = self.c.upload(out).digest
        sig = self.ident.sign(auth.result_message(a.id, digest, units))
        return self.c.submit_result(a.id, wire.ResultIn(output_digest=digest, units=units,
                                                        signature=sig))


def work(providers: list[HandProvider], until: Callable[[], bool],
         timeout: float = 180.0) -> None:
    end = time.time() + timeout
    while not until():
        assert time.time() < end, "the network did not get there in time"
        for p in providers:
            for a in p.take(wait=0.2):
                p.answer(a)


def test_sealed_jobs_through_the_cli_checks_by_verdict_and_a_cheater_slashed(
        tmp_path: Path) -> None:
    net = Network(tmp_path, heartbeat_timeout=20.0, lease_ttl=60.0, challenge_window=5.0,
                  extra=("--verify-timeout", "120"), verifiers=1)
    net.start_coordinator()
    try:
        a, b = SealedHand(net, price=900), SealedHand(net, price=950)
        v = SealedHand(net, price=0, stake=0, ident=net.key("verifier-1"))
        net.key("cli-client")
        Client(net.url, net.key("cli-client")).faucet(100_000_000)
        spec = tmp_path / "spec.yaml"
        spec.write_text("kind: embeddings\nmodel: all-MiniLM-L6-v2\nmax_price: 2000\n"
                        "shard_size: 3\n")
        data = tmp_path / "in.jsonl"
        data.write_bytes(lines(5))
        flags = ["--coordinator", net.url, "--key", "cli-client"]

        def submit() -> str:
            r = CliRunner().invoke(cli.app, ["job", "submit", str(spec), "--input", str(data),
                                             "--sealed", *flags])
            assert r.exit_code == 0, r.output
            return re.search(r"submitted job (\S+):", r.output).group(1)  # type: ignore[union-attr]

        c = Client(net.url, net.key("cli-client"))
        first = submit()
        job = c.job(first)
        assert set(job.spec["sealed_for"]) == {a.id, b.id, v.id}
        work([a, b, v], lambda: c.job(first).status == "completed")
        out = tmp_path / "out.jsonl"
        r = CliRunner().invoke(cli.app, ["job", "results", first, "-o", str(out), *flags])
        assert r.exit_code == 0, r.output
        got = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["custom_id"] for x in got] == [f"c{i}" for i in range(5)]
        assert got[0]["response"]["body"]["data"][0]["embedding"][:2] == [0.25, 0.25]
        with sqlite3.connect(f"file:{tmp_path / 'coordinator' / 'deai.sqlite3'}?mode=ro",
                             uri=True) as db:
            roles = dict(db.execute("SELECT role, status FROM assignments WHERE job_id = ?",
                                    (first,)).fetchall())
        # New providers: every result is checked, here by a replica's signed verdict.
        assert roles.get("replica") == "accepted", roles

        a.scale = 0.9  # the cheapest now cheats, inside the set
        second = submit()
        work([a, b, v], lambda: c.job(second).status in ("completed", "failed"))
        entries = [e for e in c.journal(limit=1000).entries]
        slashed = {e["body"]["provider"] for e in entries if e["kind"] == "slash"}
        assert slashed == {a.id}
        verdicts = [e["body"] for e in entries if e["kind"] == "verdict"]
        assert verdicts and all(x["sealed"] and x["referee"] == v.id for x in verdicts)
        assert c.job(second).status == "completed"
        r = CliRunner().invoke(cli.app, ["job", "results", second, "-o", str(out), *flags])
        assert r.exit_code == 0, r.output
        for x in map(json.loads, out.read_text().splitlines()):  # the honest answer stood
            assert x["response"]["body"]["data"][0]["embedding"][0] == 0.25
        for p in (a, b, v):
            p.quit()
    finally:
        net.close()
