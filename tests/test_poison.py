"""One bad row must not stop a background loop's work for everyone, pass after pass.

``store.db.each_alone`` runs each item of a loop's pass in a savepoint: an item that
raises is rolled back alone and logged, and the rest commit; a lost race still
propagates, for ``Database.run`` to run the whole pass again. The upkeep loop runs
each of its steps on its own. (The matcher's own case, a task it cannot plan, is in
``test_matcher_index``.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from deai.coordinator import app, jobs
from deai.coordinator.service import Coordinator
from deai.store import db
from deai.store.models import Event
from tests.races import ENGINES, coordinator


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def test_an_item_that_raises_is_rolled_back_alone(c: Coordinator) -> None:
    def body(s: Session) -> list[int]:
        def step(i: int) -> None:
            c.emit(s, f"step-{i}")
            s.flush()  # written, then undone with its savepoint
            if i == 2:
                raise ValueError("a row this code cannot handle")

        return db.each_alone(s, [1, 2, 3], step, what=lambda i: f"item {i}")

    assert c.db.run(body) == [2]
    with c.db.read() as s:
        kinds = set(s.scalars(select(Event.kind).where(Event.kind.like("step-%"))))
    assert kinds == {"step-1", "step-3"}


def test_a_lost_race_still_runs_the_whole_pass_again(c: Coordinator) -> None:
    tries: list[int] = []

    def body(s: Session) -> None:
        tries.append(1)

        def step(i: int) -> None:
            c.emit(s, f"race-{i}-{len(tries)}")
            if len(tries) == 1 and i == 2:  # as SQLite says when another writer wins
                raise OperationalError("UPDATE", {}, sqlite3.OperationalError(
                    "database is locked"))

        db.each_alone(s, [1, 2, 3], step, what=lambda i: f"item {i}")

    c.db.run(body)
    with c.db.read() as s:
        kinds = set(s.scalars(select(Event.kind).where(Event.kind.like("race-%"))))
    assert len(tries) == 2 and kinds == {"race-1-2", "race-2-2", "race-3-2"}


def test_an_upkeep_step_that_fails_does_not_stop_the_others(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def broken(_: Coordinator) -> int:
        raise RuntimeError("a bad row in the first step")

    def recorded(name: str, real: object) -> object:
        def step(cc: Coordinator) -> object:
            ran.append(name)
            return real(cc)  # type: ignore[operator]
        step.__name__ = name
        return step

    monkeypatch.setattr(jobs, "expire_leases", broken)
    for name in ("give_up_checks", "enforce_deadlines", "release_earnings"):
        monkeypatch.setattr(jobs, name, recorded(name, getattr(jobs, name)))
    app._upkeep(c)
    assert ran == ["give_up_checks", "enforce_deadlines", "release_earnings"]
