"""The verification protocol step by step, with providers driven by hand (no model):
replicas that agree, a canary that catches a cheater, a trusted verifier who
referees, the slash with its bounty, and honest providers left untouched."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import auth, ledger, wire
from deai.core.errors import Conflict
from tests.helpers import MODEL, SPEC, HandProvider, audit_ok, funded, journal, lines
from tests.netutil import Network


class Cheater(HandProvider):
    """Answers with vectors orthogonal to the honest ones."""

    def answer(self, a: wire.AssignmentOut, dims: int = 384) -> wire.ResultOut:
        rows = [json.loads(x) for x in self.c.download(a.input_digest).splitlines()]
        vec = [0.25 if i % 2 else -0.25 for i in range(dims)]
        out = b"".join(json.dumps({"custom_id": r["custom_id"], "embeddings": [vec] * len(
            r["input"]), "prompt_tokens": 4}).encode() + b"\n" for r in rows)
        digest = self.c.upload(out).digest
        sig = self.ident.sign(auth.result_message(a.id, digest, a.units))
        return self.c.submit_result(a.id, wire.ResultIn(output_digest=digest, units=a.units,
                                                        signature=sig))


VERIFIER = Identity.generate()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    # Canary share 0.5: odds 1, so every placement also queues a canary when one exists.
    n = Network(tmp_path, heartbeat_timeout=5.0, lease_ttl=30.0, challenge_window=6.0,
                extra=("--canary-share", "0.5", "--verify-timeout", "30",
                       "--verifier-key", VERIFIER.id))
    n.start_coordinator()
    yield n
    n.close()


def work(providers: list[HandProvider], until, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Let every provider take and answer whatever it is given until ``until()``."""
    end = time.time() + timeout
    while not until():
        assert time.time() < end, "the network did not get there in time"
        for p in providers:
            for a in p.take(wait=0.2):
                # A lease that lapsed while the test waited elsewhere (these providers
                # beat only when they poll) is refused and placed again: not a failure.
                with contextlib.suppress(Conflict):
                    p.answer(a)


def test_replicas_agree_then_a_canary_and_a_referee_catch_a_cheater(net: Network) -> None:
    a, b = HandProvider(net, price=900), HandProvider(net, price=950)
    v = HandProvider(net, price=0, stake=0, ident=VERIFIER)  # trusted, bonds nothing
    c = funded(net)
    first = c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2)).digest)
    work([a, b, v], lambda: c.job(first.id).status == "completed")

    def passed() -> list[dict]:  # public once the challenge window has closed
        return Client(net.url).request("GET", "/api/events",
                                       params={"kind": "check_passed"}).json()["events"]

    assert passed() == [], "checks stay sealed while the challenge window is open"
    end = time.time() + 15
    while not passed():
        assert time.time() < end
        time.sleep(0.3)
    assert [e["body"]["role"] for e in passed()] == ["replica"]  # new providers: ρ = 1

    # The cheapest, with two slots: it gets the next task, and the canary queued with it
    # (a job of its own, placed by the matcher later, never in the same delivery).
    cheat = Cheater(net, price=100, slots=2)
    second = c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2, start=10)).digest)
    got: list[wire.AssignmentOut] = []
    end = time.time() + 15
    while len(got) < 2 and time.time() < end:
        got += cheat.take(wait=1)
    assert len(got) == 2, "a canary is queued beside the real task"
    assert {g.workload for g in got} == {"embeddings"} and len({g.job_id for g in got}) == 2
    assert sorted(got[0].model_dump()) == sorted(got[1].model_dump())  # same fields
    for g in got:  # indistinguishable: the cheater answers both the same wrong way
        assert cheat.answer(g).status == "submitted"

    def settled() -> bool:
        kinds = [e.kind for e in map(ledger.Entry.from_dict, c.journal(0, 1000).entries)]
        return kinds.count("slash") >= 2 and c.job(second.id).status == "completed"

    work([a, b, v], settled)
    entries = [ledger.Entry.from_dict(e) for e in c.journal(0, 1000).entries]
    verdicts = [e.body for e in entries if e.kind == "verdict"]
    assert {v["canary"] for v in verdicts} == {True, False}
    assert all(x["fault"] == "subject" and x["subject"] == cheat.id for x in verdicts)
    assert all(x["referee"] == VERIFIER.id for x in verdicts), "only the verifier referees"
    slashes = [e.body for e in entries if e.kind == "slash"]
    assert {s["provider"] for s in slashes} == {cheat.id}
    assert any(s["bounty_to"] in (a.id, b.id) and s["bounty"] > 0 for s in slashes)
    assert cheat.c.balance().stake < 10_000_000
    assert a.c.balance().stake == b.c.balance().stake == 10_000_000
    out = [json.loads(x) for x in c.results(second.id).splitlines()]
    assert all(o["response"]["body"]["data"][0]["embedding"][:2] == [0.25, 0.25] for o in out)
    assert Client(net.url).provider(cheat.id).reputation < 0.5
    audit_ok(c)
    assert MODEL in {o.model for p in Client(net.url).providers() for o in p.offers}


def test_a_check_is_paid_the_checked_results_price_not_the_checkers_ask(net: Network) -> None:
    """A fixed check fee: the replica asks almost twice the primary's price and is paid
    the primary's price for the same units, so an inflated ask earns nothing more."""
    a, b = HandProvider(net, price=900), HandProvider(net, price=1900)
    v = HandProvider(net, price=0, stake=0, ident=VERIFIER)
    c = funded(net)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2)).digest)
    work([a, b, v], lambda: c.job(job.id).status == "completed")

    def fees() -> list[ledger.Entry]:
        return [e for e in journal(c) if e.kind == "check_fee" and e.body["provider"] == b.id]

    end = time.time() + 30
    while not fees():
        assert time.time() < end, "the replica's check fee never reached the journal"
        time.sleep(0.3)
    (fee,) = fees()
    (paid,) = [e for e in journal(c) if e.kind == "payout" and e.body["job"] == job.id]
    assert paid.body["provider"] == a.id
    assert fee.body["role"] == "replica"
    assert fee.body["amount"] == paid.body["cost"], (fee.body, paid.body)
    assert audit_ok(c).ok
