"""A withdrawal address with a trailing newline once passed ``WithdrawIn`` (``re.match``
with ``$``), and the epoch build then raised on it every tick: no epoch was ever
committed again and the chain audit crashed. Addresses are now whole-string matches;
an entry already in the journal with a bad address is left out of every root (its
money stays unclaimable in the contract) and reported by the audit; and an epoch that
fails for any reason, chain or not, is recorded with a back-off instead of raising the
same error every tick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from deai.chain import books, merkle, rail
from deai.chain.audit import audit_chain
from deai.coordinator import api_chain
from deai.core import ledger
from deai.store.models import ChainEpoch
from tests.test_chain_rail import World

ALICE, MALLORY = "a1" * 32, "c3" * 32
BAD = "0x" + "ab" * 20 + "\n"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(f"sqlite:///{tmp_path / 'deai.sqlite3'}")
    yield world
    world.db.dispose()


@pytest.mark.parametrize("address", [BAD, " 0x" + "ab" * 20, "0x" + "ab" * 20 + "\x00",
                                     "0x" + "ab" * 21, "0x" + "g" * 40])
def test_an_address_must_be_the_whole_string(address: str) -> None:
    with pytest.raises(ValidationError):
        api_chain.WithdrawIn(amount=1, address=address)
    assert not books.is_address(address)
    assert books.is_address("0x" + "aB" * 20)


def test_a_bad_stored_address_stops_no_epoch_and_is_reported(w: World) -> None:
    c = w.chain
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 3_000_000)
    w.deposit(payer, MALLORY, 10)
    w.lc.tester.mine_blocks(c.dep.confirmations)
    assert rail.watch_deposits(w.db, c, w.port.post, w.clock.now()) == 2
    # What the old check let in: the journal already holds it.
    bad = w.post(ledger.withdrawal(MALLORY, 1, BAD))
    payee = w.lc.account("payee")
    w.post(ledger.withdrawal(ALICE, 1_000_000, payee.address))
    epoch = rail.commit_epoch(w.db, c, w.clock.now(), force=True)
    assert epoch == 1
    w.lc.skip(600)
    tree = merkle.Tree(c.dep.settlement, {payee.address: 1_000_000})
    c.send(payee, c.settlement.functions.withdraw(epoch, payee.address, 1_000_000,
                                                   tree.proof(payee.address)))
    assert c.token_balance(payee.address) == 1_000_000
    rep = audit_chain(w.entries(), c)
    assert not rep.ok
    assert len(rep.problems) == 1 and f"entry {bad.seq}: withdrawal of 1 µ" in rep.problems[0]
    # The 1 µ left the journal and stays in the contract, claimable by nobody.
    assert rep.facts["held"] == 3_000_010 - 1_000_000
    assert rep.facts["sent_to_chain"] == 1_000_000 and rep.facts["journal_withdrawals"] == \
        1_000_001


def _pending(w: World) -> dict[str, Any]:
    with w.db.read() as s:
        (e,) = s.scalars(select(ChainEpoch).where(ChainEpoch.status == "pending")).all()
        return {"attempts": e.attempts, "error": e.error, "retry_at": e.retry_at,
                "root": e.root}


def test_an_epoch_that_cannot_be_built_backs_off_and_recovers(
        w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    interval = w.chain.dep.epoch_interval
    payee = w.lc.account("payee")
    payer = w.lc.account("payer", tokens=1_000_000)
    w.deposit(payer, ALICE, 1_000_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now())
    w.post(ledger.withdrawal(ALICE, 500_000, payee.address))
    calls = []

    def broken(s: Any, head_seq: int) -> dict[str, int]:
        calls.append(head_seq)
        raise ValueError("a fault in one entry")

    monkeypatch.setattr(rail, "leaves_at", broken)
    assert rail.commit_epoch(w.db, w.chain, w.clock.now()) is None  # recorded, not raised
    first = _pending(w)
    assert first["attempts"] == 1 and "a fault in one entry" in first["error"]
    assert first["root"] == "" and first["retry_at"] == w.clock.now() + interval
    assert rail.commit_epoch(w.db, w.chain, w.clock.now()) is None
    assert len(calls) == 1  # backing off: not built again every tick
    w.clock.advance(interval)
    assert rail.commit_epoch(w.db, w.chain, w.clock.now()) is None
    assert _pending(w)["attempts"] == 2 and _pending(w)["retry_at"] == w.clock.now() + \
        2 * interval
    monkeypatch.undo()
    w.clock.advance(2 * interval)
    assert rail.commit_epoch(w.db, w.chain, w.clock.now()) == 1
    assert audit_chain(w.entries(), w.chain).ok


def test_a_non_chain_error_on_sending_is_counted_too(
        w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w.post(ledger.faucet(ALICE, 5))

    def down(*_a: Any, **_k: Any) -> Any:
        raise ConnectionError("node away")

    monkeypatch.setattr(w.chain, "send", down)
    with pytest.raises(ConnectionError):
        rail.commit_epoch(w.db, w.chain, w.clock.now(), force=True)
    got = _pending(w)
    assert got["attempts"] == 1 and "ConnectionError: node away" in got["error"]
    assert got["retry_at"] is not None
    assert rail.commit_epoch(w.db, w.chain, w.clock.now()) is None  # waits for its back-off
