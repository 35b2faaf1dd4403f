"""Two withdrawals at once against the settlement contract's reserve (what deposits
brought in, less every withdrawal), on a coordinator over SQLite and PostgreSQL: each
checks the reserve before it writes; together they must never take more than it
holds. Before the journal's head was locked first, both passed the check on
PostgreSQL and the second withdrawal's claim could not be paid on chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.chain import rail
from deai.coordinator import api_chain
from deai.coordinator.service import Coordinator
from deai.core.errors import Conflict, InvalidInput
from deai.store.models import ChainDeposit
from tests.races import ENGINES, coordinator, gate, race

ALICE, BOB, SOMEONE = "a1" * 32, "b2" * 32, "c3" * 32
RESERVE = 1_000_000


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    for coord in coordinator(request, tmp_path):
        with coord.db.write() as s:  # a deposit the rail credited (its journal entry aside)
            s.add(ChainDeposit(tx_hash="0x" + "11" * 32, log_index=0, block=1,
                               account=SOMEONE, sender="0x" + "22" * 20, amount=RESERVE,
                               journal_seq=0, credited_at=coord.now()))
        yield coord


def test_two_withdrawals_at_once_never_exceed_the_reserve(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    for who in (ALICE, BOB):  # devnet money: more than the contract holds in all
        c.faucet(who, 800_000)
    meet, reserve = gate(), rail.reserve

    def read_together(s: object) -> int:
        held = reserve(s)  # type: ignore[arg-type]
        meet()  # both have checked before either writes
        return held

    monkeypatch.setattr(rail, "reserve", read_together)
    done: list[str] = []

    def withdraw(who: str) -> None:
        api_chain.withdraw(c, who, api_chain.WithdrawIn(amount=800_000,
                                                        address="0x" + "ab" * 20))
        done.append(who)

    errors = race(lambda: withdraw(ALICE), lambda: withdraw(BOB))
    assert len(done) == 1 and len(errors) == 1 and isinstance(errors[0], Conflict), errors
    with c.db.read() as s:
        assert reserve(s) == RESERVE - 800_000


def test_a_withdrawal_below_the_minimum_is_refused_and_moves_nothing(c: Coordinator) -> None:
    """Each address withdrawn to is a leaf of every epoch from then on: 1 µ withdrawals to
    a million addresses cost 1 DEAI. The least a withdrawal takes is a setting (0.01 DEAI;
    a devnet's, 1 µ)."""
    assert c.settings.min_withdrawal == 10_000
    c.faucet(ALICE, 100_000)
    with pytest.raises(InvalidInput) as out:
        api_chain.withdraw(c, ALICE, api_chain.WithdrawIn(amount=9_999,
                                                          address="0x" + "ab" * 20))
    assert out.value.field == "amount" and out.value.details["minimum"] == 10_000
    with c.db.read() as s:
        assert rail.reserve(s) == RESERVE
    assert c.balance(ALICE).available == 100_000
    api_chain.withdraw(c, ALICE, api_chain.WithdrawIn(amount=10_000, address="0x" + "ab" * 20))
    assert c.balance(ALICE).available == 90_000
