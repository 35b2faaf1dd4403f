"""Payments the settlement port clamps to a balance (a check paid by the treasury as
far as it holds), two at once on one account: each reads the balance with the
journal's head locked, so the second sees what the first left. Read unlocked, both
saw the whole treasury and the second payment was refused: the verdict it belonged
to failed with it (PostgreSQL; on SQLite writes run one at a time)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.store import journal
from tests.races import ENGINES, coordinator, gate, race

TREASURY = 100
CHECKERS = ["c1" * 32, "c2" * 32]


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def test_two_checks_paid_at_once_share_what_the_treasury_holds(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    c.db.run(lambda s: c.settlement.post(s, ledger.treasury_grant(TREASURY, "test")))
    meet, balances = gate(), journal.balances

    def read_together(*args: Any, **kw: Any) -> dict[str, int]:
        got = balances(*args, **kw)
        meet()  # both have read the treasury before either pays
        return got

    monkeypatch.setattr(journal, "balances", read_together)
    paid: list[int] = []

    def pay(who: str) -> None:
        paid.append(c.db.run(lambda s: c.settlement.pay_check(s, who, 80, f"asg_{who[:4]}",
                                                               "replica"))[1])

    assert race(*(lambda who=who: pay(who) for who in CHECKERS)) == []
    monkeypatch.undo()
    assert sorted(paid) == [20, 80]
    with c.db.read() as s:
        assert journal.balance(s, ledger.FEE) == 0
