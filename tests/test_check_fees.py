"""What the treasury pays a check: the checked result's price, for at most the units that
result was metered at (a canary: its task's units). A check's output is the checker's to
write, and a chat check's prompt count is its own claim: two billion tokens were paid
for, up to the whole treasury."""

from __future__ import annotations

from pathlib import Path

import pytest

from deai.core import ledger
from deai.core.lifecycle import Role
from deai.core.lifecycle import effects as E
from deai.core.money import cost_for_units
from deai.store.models import Assignment, JournalEntry
from tests.lifecycle_worlds import UNITS, DbWorld, price


def fees(w: DbWorld) -> list[dict[str, object]]:
    from sqlalchemy import select

    with w.c.db.read() as s:
        return [dict(e.body) for e in s.scalars(select(JournalEntry).where(
            JournalEntry.kind == "check_fee").order_by(JournalEntry.seq))]


@pytest.mark.parametrize("claimed", [UNITS // 2, UNITS, 2_000_000_000])
def test_a_check_is_paid_for_at_most_the_units_of_the_result_it_checks(
        tmp_path: Path, claimed: int) -> None:
    w = DbWorld(tmp_path)
    primary, replica = w.seat(Role.PRIMARY), w.seat(Role.REPLICA)
    with w.c.db.write() as s:
        row = s.get(Assignment, replica.id)
        assert row is not None
        row.check_of, row.units = primary.id, claimed
    treasury = w._money()[ledger.FEE]
    w.apply([E.PayCheck(replica.id)])
    (fee,) = fees(w)
    assert fee["amount"] == cost_for_units(min(claimed, UNITS), price(0))
    assert w._money()[ledger.FEE] == treasury - fee["amount"]


def test_a_canary_is_paid_for_at_most_its_tasks_units(tmp_path: Path) -> None:
    w = DbWorld(tmp_path)
    canary = w.seat(Role.CANARY)
    with w.c.db.write() as s:
        row = s.get(Assignment, canary.id)
        assert row is not None
        row.units = 2_000_000_000
    w.apply([E.PayCheck(canary.id)])
    (fee,) = fees(w)
    assert fee["amount"] == cost_for_units(UNITS, price(0))
