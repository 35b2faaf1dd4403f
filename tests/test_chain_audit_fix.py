"""The chain audit against what anyone can do to the chain, and against a coordinator
that misreports its deployment: a token sent straight to the settlement contract is a
surplus, reported but no failure; a huge ``confirmations`` counts only up to the
auditor's cap; a start block set after the deposits cannot hide them, because events
must add up to the contracts' own counters; and the auditor can pin what it knows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.chain import rail
from deai.chain.adapter import Chain
from deai.chain.audit import audit_chain
from deai.client.cli_chain import Pins
from deai.core.errors import InvalidInput
from tests.test_chain_rail import World

ALICE = "a1" * 32


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(f"sqlite:///{tmp_path / 'deai.sqlite3'}")
    yield world
    world.db.dispose()


def test_a_gift_to_the_settlement_contract_is_a_surplus_not_a_failure(w: World) -> None:
    c = w.chain
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 1_000_000)
    w.lc.tester.mine_blocks(c.dep.confirmations)
    rail.watch_deposits(w.db, c, w.port.post, w.clock.now())
    assert audit_chain(w.entries(), c).ok
    griefer = w.lc.account("griefer", tokens=1)
    c.send(griefer, c.token.functions.transfer(c.dep.settlement, 1))
    rep = audit_chain(w.entries(), c)
    assert rep.ok, rep.problems
    assert rep.facts["surplus"] == 1 and rep.facts["held"] == 1_000_001


def test_a_reported_huge_confirmations_hides_no_uncredited_deposit(w: World) -> None:
    c = w.chain
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 3_000_000)  # never credited by the (dishonest) coordinator
    w.lc.tester.mine_blocks(70)
    lying = Chain(c.w3, dataclasses.replace(c.dep, confirmations=10**12))
    rep = audit_chain(w.entries(), lying)
    assert not rep.ok
    assert any("is not credited in the journal" in p for p in rep.problems)
    assert rep.facts["confirmations"] == f"{10**12} reported, 64 used"
    # An auditor may allow more, knowingly.
    assert audit_chain(w.entries(), lying, max_confirmations=10**12).ok


def test_a_late_start_block_hides_no_event(w: World) -> None:
    c = w.chain
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 3_000_000)  # never credited
    w.lc.tester.mine_blocks(5)
    late = Chain(c.w3, dataclasses.replace(c.dep, start_block=c.block_number()))
    rep = audit_chain(w.entries(), late)
    assert not rep.ok
    assert any("Deposited events from block" in p and "counts 3000000 µ" in p
               for p in rep.problems)


def test_the_auditor_pins_what_it_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    reported = {"rpc": "http://x", "settlement": "0x" + "11" * 20, "vault": "0x" + "22" * 20,
                "token": "0x" + "33" * 20, "start_block": 900, "confirmations": 10**12}
    pinned = Pins(settlement="0x" + "aa" * 20, start_block=3).apply(reported)
    assert pinned["settlement"] == "0x" + "aa" * 20 and pinned["start_block"] == 3
    assert pinned["vault"] == reported["vault"]
    with pytest.raises(InvalidInput):
        Pins(vault="0x" + "aa" * 20 + "\n").apply(reported)
    monkeypatch.setenv("DEAI_AUDIT_TOKEN", "0x" + "bb" * 20)
    monkeypatch.setenv("DEAI_AUDIT_START_BLOCK", "7")
    monkeypatch.setenv("DEAI_AUDIT_MAX_CONFIRMATIONS", "12")
    env = Pins.from_env()
    assert (env.token, env.start_block, env.max_confirmations) == ("0x" + "bb" * 20, 7, 12)
    monkeypatch.setenv("DEAI_AUDIT_START_BLOCK", "soon")
    with pytest.raises(InvalidInput):
        Pins.from_env()
