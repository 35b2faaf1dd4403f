"""A provider's mirrors can revert (here: its id given to a native owner with
``assign``, after which every mirror of it reverts; before the vault reserved ids for the
settlement key, anyone could do that with a first ``bond``). The outbox once stopped at
the first row that failed, so that one provider held back every other provider's
mirroring for ``MAX_ATTEMPTS`` ticks per row; now a failing row holds back only the later
rows of its own provider (which may depend on it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from deai.chain import rail
from deai.core import ledger
from deai.store.models import ChainOutbox
from tests.test_chain_rail import World

SQUATTED, OTHER = "b2" * 32, "d4" * 32


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(f"sqlite:///{tmp_path / 'deai.sqlite3'}")
    yield world
    world.db.dispose()


def _rows(w: World) -> list[tuple[str, str, str, int]]:
    with w.db.read() as s:
        return [(r.provider[:2], r.op, r.status, r.attempts) for r in
                s.scalars(select(ChainOutbox).order_by(ChainOutbox.id))]


def _owned_elsewhere(w: World) -> None:
    """The id ``SQUATTED`` owned by another address than the settlement key's."""
    owner = w.lc.account("native owner", tokens=10)
    w.chain.send(w.lc.settler, w.chain.vault.functions.assign(bytes.fromhex(SQUATTED),
                                                              owner.address))


def test_a_squatted_provider_holds_back_only_its_own_rows(w: World) -> None:
    c = w.chain
    _owned_elsewhere(w)
    for pid in (SQUATTED, OTHER):
        w.post(ledger.faucet(pid, 50_000_000))
    w.post(ledger.bond(SQUATTED, 20_000_000))
    w.post(ledger.slash(SQUATTED, 5_000_000, None, 0, {"task": "t1", "verdict": "wrong"}))
    w.post(ledger.bond(OTHER, 20_000_000))
    w.post(ledger.slash(OTHER, 1_000_000, None, 0, {"task": "t2", "verdict": "wrong"}))
    assert rail.send_outbox(w.db, c, w.clock.now()) == 2  # the other provider's, at once
    assert c.vault.functions.stake(bytes.fromhex(OTHER)).call() == 19_000_000
    # The squatted provider's bond failed once; its slash, which depends on it, waited.
    assert _rows(w) == [("b2", "bond", "pending", 1), ("b2", "slash", "pending", 0),
                        ("d4", "bond", "done", 1), ("d4", "slash", "done", 1)]
    w.post(ledger.bond(OTHER, 1_000_000))  # later work of others is not held back either
    assert rail.send_outbox(w.db, c, w.clock.now()) == 1
    assert c.vault.functions.stake(bytes.fromhex(OTHER)).call() == 20_000_000


def test_the_limit_counts_rows_tried_not_rows_skipped(w: World) -> None:
    c = w.chain
    _owned_elsewhere(w)
    w.post(ledger.faucet(SQUATTED, 50_000_000))
    w.post(ledger.faucet(OTHER, 50_000_000))
    for _ in range(4):
        w.post(ledger.bond(SQUATTED, 1_000_000))
    w.post(ledger.bond(OTHER, 1_000_000))
    assert rail.send_outbox(w.db, c, w.clock.now(), limit=2) == 1
    assert c.vault.functions.stake(bytes.fromhex(OTHER)).call() == 1_000_000
