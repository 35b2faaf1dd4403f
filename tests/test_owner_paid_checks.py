"""Checks a job's owner chose are paid by that owner, from the job's escrow, not by the
treasury. A client and two providers of its own (a ring), on a job sealed for them with
every task replicated, were paid by the treasury for each replica at the ring's own
price: 95% of what the job cost, again, on every job, for honest work no check could
fault. The treasury pays only for checks the network chose and placed
(``policy.owner_pays_check``: audits, referees, canaries, forced errors); the escrow
holds the owner's replicas too, and what they did not use is refunded. Real
coordinator, hand-driven providers (SQLite)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from deai.client import sealed as sealing
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core.money import cost_for_units
from tests.helpers import MODEL, HandProvider, lines
from tests.netutil import Network
from tests.test_sealed_api import SealedHand

pytestmark = pytest.mark.slow
PRICE = 10**7  # per 1,000 units: the ring's own ask, which the job's max_price allows
FEE_BPS = 500


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("owner-checks"), heartbeat_timeout=30.0,
                challenge_window=2.0, verifiers=1,
                extra=("--canary-share", "0", "--audit-share", "0"))
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def balances(net: Network) -> dict[str, int]:
    out: dict[str, int] = {}
    after = ""
    while True:
        r = httpx.get(f"{net.url}/api/ledger/balances",
                      params={"after": after, "limit": 5000}).json()
        out.update(r.get("balances") or {})
        if not r.get("next"):
            return out
        after = r["next"]


def journal(net: Network) -> list[dict[str, object]]:
    r = httpx.get(f"{net.url}/api/ledger/journal", params={"after": 0, "limit": 1000})
    return list(r.json()["entries"])


def run(c: Client, job_id: str, providers: list[HandProvider]) -> list[tuple[str, str]]:
    """Drive ``providers`` until the job ends; (provider, task) of every lease."""
    end, leases = time.time() + 180, []
    while c.job(job_id).status not in ("completed", "failed"):
        assert time.time() < end, "the job did not end in time"
        for p in providers:
            for a in p.take(wait=0.2):
                leases.append((p.id, a.task_id))
                p.answer(a)
    return leases


def test_a_ring_on_a_job_sealed_for_itself_is_paid_nothing_by_the_treasury(
        net: Network) -> None:
    honest = HandProvider(net, price=100, slots=2)  # cheapest: an open job's first choice
    p1, p2 = SealedHand(net, price=PRICE, slots=2), SealedHand(net, price=PRICE, slots=2)
    me = Client(net.url, Identity.generate())
    me.faucet(10**12)
    verifier = net.key("verifier-1").id
    before = balances(net)
    spec = {"kind": "embeddings", "model": MODEL, "max_price": PRICE, "shard_size": 8,
            "replicate": True}
    job = sealing.submit(me, spec, lines(32), sealed_for=[p1.id, p2.id, verifier])
    escrowed = me.job(job.id).escrow
    leases = run(me, job.id, [honest, p1, p2])
    assert me.job(job.id).status == "completed"
    assert not [x for x in leases if x[0] == honest.id]  # sealed: not its business
    assert len(leases) == 8  # four tasks, each run twice: a primary and its replica
    after = balances(net)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    entries = journal(net)
    assert [e for e in entries if e["kind"] == "check_fee"] == []  # nothing from the treasury
    payouts = [e["body"] for e in entries if e["kind"] == "payout"
               and e["body"]["job"] == job.id]  # type: ignore[index]
    assert len(payouts) == 8
    cost = sum(int(p["cost"]) for p in payouts)  # type: ignore[index]
    fees = sum(int(p["fee"]) for p in payouts)  # type: ignore[index]
    assert delta.get("fee", 0) == fees > 0  # the treasury only took its fees
    ring = sum(v for k, v in delta.items() if k.split(":")[-1] in (me.identity.id, p1.id, p2.id)
               and not k.startswith("escrow:"))
    assert ring == -fees  # the ring lost the fees and gained nothing
    assert -delta.get(f"acct:{me.identity.id}", 0) == cost  # the owner paid both runs
    # The escrow held the checks too (a run's worth again, 1 µ a task for rounding), and
    # gave back what they did not use.
    assert escrowed >= cost and escrowed % 2 == 0
    refunds = [e["body"] for e in entries if e["kind"] == "refund"
               and e["body"]["job"] == job.id]  # type: ignore[index]
    assert sum(int(r["amount"]) for r in refunds) == escrowed - cost  # type: ignore[index]


def test_replicas_an_owner_asks_for_on_an_open_job_are_the_owners_to_pay(
        net: Network) -> None:
    """``replicate: true`` on an open job: the network chooses the replicas' providers,
    but the owner asked for them, so the owner pays them."""
    a, b = HandProvider(net, price=1_000, slots=2), HandProvider(net, price=1_000, slots=2)
    me = Client(net.url, Identity.generate())
    me.faucet(10**10)
    treasury = balances(net).get("fee", 0)
    spec = {"kind": "embeddings", "model": MODEL, "max_price": 2_000, "shard_size": 4}
    job = me.submit_job({**spec, "replicate": True}, me.upload(lines(8)).digest)
    assert job.units == 8
    t0 = t1 = 4  # one unit an input, four inputs a shard
    plain = me.quote(spec, [t0, t1]).max_cost
    assert plain == cost_for_units(t0, 2_000) + cost_for_units(t1, 2_000)
    # escrowed, and quoted: the tasks, their replicas again, and 1 µ a task for rounding
    assert job.escrow == me.quote({**spec, "replicate": True}, [t0, t1]).max_cost \
        == 2 * plain + 2
    run(me, job.id, [a, b])
    entries = journal(net)
    assert [e for e in entries if e["kind"] == "check_fee"] == []
    payouts = [e["body"] for e in entries if e["kind"] == "payout"
               and e["body"]["job"] == job.id]  # type: ignore[index]
    assert len(payouts) == 4  # two tasks, each run by both
    fees = sum(int(p["fee"]) for p in payouts)  # type: ignore[index]
    assert balances(net).get("fee", 0) - treasury == fees


def test_the_network_pays_the_checks_it_chose() -> None:
    from deai.core.verify import policy
    assert policy.owner_pays_check("replica", forced=False)
    for role in ("audit", "referee", "canary", "primary"):
        assert not policy.owner_pays_check(role, forced=False)
    assert not policy.owner_pays_check("replica", forced=True)  # its test of the checker
