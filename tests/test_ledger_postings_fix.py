"""An entry's postings must move what its body says: the chain's epochs and deposits
are read from bodies, so a ``withdrawal`` whose body sends money to the chain while its
postings move nothing (or a ``deposit`` whose postings credit someone other than its
body names) once audited clean, in the journal's replay and in the chain audit alike.
Every kind with a builder in ``core.ledger`` is rebuilt from its body and compared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.chain import merkle, rail
from deai.chain.audit import audit_chain
from deai.core import ledger
from deai.core.replay import Replay
from deai.store import journal
from tests.test_chain_rail import World

ALICE, MALLORY, PROV = "a1" * 32, "c3" * 32, "b2" * 32


def _chained(drafts: list[ledger.Draft]) -> list[ledger.Entry]:
    out, prev = [], ledger.GENESIS
    for i, d in enumerate(drafts, 1):
        e = ledger.chain(d, i, prev, 1000 + i)
        out.append(e)
        prev = e.hash
    return out


def _replayed(entries: list[ledger.Entry]) -> ledger.AuditReport:
    r = Replay()
    for e in entries:
        r.feed_dict(e.to_dict())
    return r.finish()


HONEST = [
    ledger.faucet(ALICE, 10_000), ledger.faucet(PROV, 10_000),
    ledger.treasury_grant(5_000, "seed"), ledger.bond(PROV, 3_000), ledger.unbond(PROV, 500),
    ledger.escrow_job(ALICE, "job-1", 2_000),
    ledger.payout("job-1", "t1", "a1", PROV, 800, 40),
    ledger.release(PROV, 760, [7]), ledger.check_fee(PROV, 10, "a2", "replica"),
    ledger.verdict("t1", {"verdict": "wrong"}),
    ledger.slash(PROV, 100, ALICE, 10, {"task": "t1", "verdict": "wrong"}),
    ledger.slash(PROV, 100, None, 0, {"task": "t2"}),
    ledger.forfeit(PROV, "job-1", 5, 1, ledger.acct(ALICE)),
    ledger.clawback(PROV, "job-1", "t1", 5, 5, 5, ledger.acct(ALICE)),
    ledger.refund(ALICE, "job-1", 100, "done"),
    ledger.royalty("ds-1", "job-1", MALLORY, ALICE, 50),
    ledger.hold_fee("ds-1", "job-1", ALICE, 5, 1_800),
    ledger.escrow_lease(ALICE, "lease_1", 500),
    ledger.lease_charge("lease_1", PROV, 100, 5, 60),
    ledger.lease_refund(ALICE, "lease_1", 400, "ended"),
    ledger.downtime_penalty(PROV, "lease_1", 50, 12.3456),
    ledger.deposit(ALICE, 1_000, 31337, "0x" + "11" * 32, 0, 5),
    ledger.withdrawal(ALICE, 700, "0x" + "ab" * 20),
]


def test_every_honest_kind_audits_clean() -> None:
    assert set(ledger.CANONICAL) <= {d.kind for d in HONEST}
    entries = _chained(HONEST)
    assert ledger.audit(entries).ok, ledger.audit(entries).problems
    assert _replayed(entries).ok


@pytest.mark.parametrize("forged", [
    ledger.Draft("withdrawal", {"account": MALLORY, "amount": 3_000,
                                "address": "0x" + "cd" * 20}, ()),
    ledger.Draft("deposit", {"account": ALICE, "amount": 2_000, "chain_id": 1, "tx": "0x1",
                             "log_index": 0, "block": 1},
                 ((ledger.MINT, -2_000), (ledger.acct(MALLORY), 2_000))),
    ledger.Draft("payout", {"job": "job-1", "task": "t", "assignment": "a", "provider": PROV,
                            "cost": 100, "fee": 5},
                 (("escrow:job-1", -100), (ledger.pending(MALLORY), 95), (ledger.FEE, 5))),
    ledger.Draft("withdrawal", {"account": ALICE, "amount": -5, "address": "0x" + "cd" * 20},
                 ((ledger.MINT, -5), (ledger.acct(ALICE), 5))),
    ledger.Draft("faucet", {"account": ALICE}, ((ledger.MINT, -1), (ledger.acct(ALICE), 1))),
    ledger.Draft("verdict", {"task": "t"}, ((ledger.FEE, -1), (ledger.acct(ALICE), 1))),
])
def test_postings_that_are_not_the_body_are_caught(forged: ledger.Draft) -> None:
    entries = _chained([ledger.faucet(ALICE, 10_000), ledger.escrow_job(ALICE, "job-1", 500),
                        ledger.treasury_grant(10, "seed"), forged])
    for rep in (ledger.audit(entries), _replayed(entries)):
        assert not rep.ok
        assert any(p.startswith("entry 4: ") and ("postings do not move" in p or
                                                  "not a valid" in p) for p in rep.problems)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(f"sqlite:///{tmp_path / 'deai.sqlite3'}")
    yield world
    world.db.dispose()


def _audit(w: World) -> tuple[bool, bool]:
    entries = w.entries()
    return ledger.audit(entries).ok, audit_chain(entries, w.chain).ok


def test_a_withdrawal_that_moved_no_journal_money_is_caught(w: World) -> None:
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 3_000_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 1
    thief = w.lc.account("thief")
    w.post(ledger.Draft("withdrawal", {"account": MALLORY, "amount": 3_000_000,
                                       "address": thief.address}, ()))
    epoch = rail.commit_epoch(w.db, w.chain, w.clock.now(), force=True)
    w.lc.skip(600)
    tree = merkle.Tree(w.chain.dep.settlement, {thief.address: 3_000_000})
    w.chain.send(thief, w.chain.settlement.functions.withdraw(
        epoch, thief.address, 3_000_000, tree.proof(thief.address)))
    with w.db.read() as s:
        assert journal.balance(s, ledger.acct(ALICE)) == 3_000_000
    assert _audit(w) == (False, False)


def test_a_deposit_credited_to_someone_else_is_caught(w: World) -> None:
    payer = w.lc.account("payer2", tokens=5_000_000)
    w.deposit(payer, ALICE, 2_000_000)
    w.lc.tester.mine_blocks(1)
    ev = w.chain.events(w.chain.settlement, "Deposited", w.chain.dep.start_block)[-1]
    tx, idx = "0x" + bytes(ev.transactionHash).hex(), int(ev.logIndex)
    w.post(ledger.Draft("deposit", {"account": ALICE, "amount": 2_000_000,
                                    "chain_id": w.chain.dep.chain_id, "tx": tx,
                                    "log_index": idx, "block": int(ev.blockNumber)},
                        ((ledger.MINT, -2_000_000), (ledger.acct(MALLORY), 2_000_000))))
    assert _audit(w) == (False, False)


def test_a_journal_that_sends_more_than_was_deposited_is_caught(w: World) -> None:
    payer = w.lc.account("payer3", tokens=5_000_000)
    w.deposit(payer, ALICE, 1_000_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now())
    w.post(ledger.faucet(MALLORY, 5_000_000))  # devnet money no deposit backs
    w.post(ledger.withdrawal(MALLORY, 2_000_000, w.lc.account("m").address))
    rep = audit_chain(w.entries(), w.chain)
    assert not rep.ok
    assert any("sent 2000000 µ to the chain; only 1000000 µ" in p for p in rep.problems)
