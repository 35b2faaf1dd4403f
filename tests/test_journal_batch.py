"""Batched journal appends on SQLite and PostgreSQL: one batch of many entries chains
and audits exactly like the same entries appended one by one; a refused draft
leaves nothing of its batch; concurrent appenders keep one unbroken chain."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.errors import InsufficientFunds
from deai.store import journal
from deai.store.db import Database
from deai.store.models import Base, JournalEntry

OWNERS = [f"{i:064x}" for i in range(1, 41)]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'j.sqlite3'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    d = Database(url)
    Base.metadata.create_all(d.engine)
    yield d
    d.dispose()


def replay(db: Database) -> ledger.AuditReport:
    with db.read() as s:
        entries = [journal.to_entry(r) for r in
                   s.scalars(select(JournalEntry).order_by(JournalEntry.seq))]
        claimed = journal.balances(s, [a for e in entries for a, _ in e.postings])
    return ledger.audit(entries, claimed)


def drafts(n_jobs: int) -> list[ledger.Draft]:
    """Fund, bond, escrow, pay, release and refund: later entries spend what earlier
    entries of the same batch credited."""
    out: list[ledger.Draft] = []
    for who in OWNERS:
        out.append(ledger.faucet(who, 1_000_000))
        out.append(ledger.bond(who, 10_000))
    for j in range(n_jobs):
        owner, prov = OWNERS[j % len(OWNERS)], OWNERS[(j + 1) % len(OWNERS)]
        job = f"job-{j}"
        out.append(ledger.escrow_job(owner, job, 900))
        out.append(ledger.payout(job, f"t{j}", f"a{j}", prov, 700, 35))
        out.append(ledger.release(prov, 665, [j]))
        out.append(ledger.refund(owner, job, 200, "done"))
    out.append(ledger.verdict("t0", {"why": "no money moves"}))
    return out


def test_batch_audits_and_matches_one_by_one(db: Database, tmp_path: Path) -> None:
    batch = drafts(300)
    clock = ManualClock(1_700_000_000.0)
    with db.write() as s:
        entries = journal.append_many(s, batch, clock)
    assert [e.seq for e in entries] == list(range(1, len(batch) + 1))
    rep = replay(db)
    assert rep.ok, rep.problems
    assert rep.entries == len(batch) and rep.head == entries[-1].hash
    assert rep.supply == 1_000_000 * len(OWNERS)

    # The same drafts appended one at a time give the same chain, hash for hash.
    other = Database(f"sqlite:///{tmp_path / 'one.sqlite3'}")
    Base.metadata.create_all(other.engine)
    with other.write() as s:
        singles = [journal.append(s, d, clock) for d in batch]
    assert [e.hash for e in singles] == [e.hash for e in entries]
    with db.read() as a, other.read() as b:
        accounts = {x for e in entries for x, _ in e.postings}
        assert journal.balances(a, accounts) == journal.balances(b, accounts)
    other.dispose()


def test_a_refused_draft_writes_nothing_of_its_batch(db: Database) -> None:
    clock = ManualClock(1_700_000_000.0)
    with db.write() as s:
        journal.append(s, ledger.faucet(OWNERS[0], 500), clock)
    with pytest.raises(InsufficientFunds), db.write() as s:
        journal.append_many(s, [ledger.faucet(OWNERS[1], 10),
                                ledger.escrow_job(OWNERS[0], "j", 400),
                                ledger.escrow_job(OWNERS[0], "k", 400)], clock)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(JournalEntry)) == 1
        assert journal.balances(s, [ledger.acct(OWNERS[0]), ledger.acct(OWNERS[1])]) == {
            ledger.acct(OWNERS[0]): 500}
    assert replay(db).ok


def test_balances_read_back_inside_the_transaction(db: Database) -> None:
    clock = ManualClock(1_700_000_000.0)
    with db.write() as s:
        before = journal.balance(s, ledger.acct(OWNERS[0]))
        journal.append(s, ledger.faucet(OWNERS[0], 70), clock)
        assert journal.balance(s, ledger.acct(OWNERS[0])) - before == 70
        journal.append(s, ledger.faucet(OWNERS[0], 5), clock)
        assert journal.balance(s, ledger.acct(OWNERS[0])) == 75


def test_concurrent_appenders_keep_one_chain(db: Database) -> None:
    clock = ManualClock(1_700_000_000.0)
    errors: list[BaseException] = []

    def worker(who: str) -> None:
        try:
            for k in range(10):
                db.run(lambda s, k=k: journal.append_many(
                    s, [ledger.faucet(who, 100 + k), ledger.bond(who, 50)], clock))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in OWNERS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    rep = replay(db)
    assert rep.ok, rep.problems
    assert rep.entries == 4 * 10 * 2


def test_the_fast_hash_path_agrees_with_core() -> None:
    assert journal._chain_all is journal._chain_fast  # chosen only when it matches core
    batch = [ledger.faucet(OWNERS[0], 5000),
             ledger.payout("job-é", "t", "a", OWNERS[0], 1000, 50),
             ledger.slash(OWNERS[1], 30, OWNERS[2], 10, {"why": 'a"b\\ \u2028', "r": 0.25,
                                                        "l": [1, None, True]})]
    batch += [ledger.Draft(kind, {"k": kind}, ()) for kind in ("check_fee", 'a"b', "é", "",
                                                               "x y")]
    start = {a: 10**6 for d in batch for a, _ in d.postings}
    fast, fast_rows = journal._chain_fast(batch, dict(start), 3, "f" * 64, 99)
    core, core_rows = journal._chain_core(batch, dict(start), 3, "f" * 64, 99)
    assert fast == core
    prev = "f" * 64
    for e, d, row in zip(fast, batch, fast_rows, strict=True):
        assert e == ledger.chain(d, e.seq, prev, 99)
        assert row[:5] == (e.seq, prev, e.hash, 99, d.kind)
        assert json.loads(row[5]) == d.body
        assert json.loads(row[6]) == [[a, v] for a, v in d.postings]
        prev = e.hash


def test_the_fast_funds_check_nets_an_entry_like_core() -> None:
    """An account posted twice in one entry is judged on its net, as ``check_funds`` does;
    the refusal names the account and leaves the running balances as they were."""
    a = ledger.acct(OWNERS[0])
    twice_down = ledger.Draft("x", {}, ((a, -3), (a, -3), ("fee", 6)))
    up_then_down = ledger.Draft("x", {}, ((a, 10), (a, -12), ("fee", 2)))
    for fn in (journal._chain_fast, journal._chain_core):
        running = {a: 5, "fee": 0}
        with pytest.raises(InsufficientFunds) as err:
            fn([twice_down], running, 0, ledger.GENESIS, 1)
        assert err.value.details["account"] == a and running == {a: 5, "fee": 0}
        entries, _ = fn([up_then_down], running, 0, ledger.GENESIS, 1)
        assert len(entries) == 1 and running == {a: 3, "fee": 2}
