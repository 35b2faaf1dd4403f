"""One owner's volumes created at once, from two coordinators on one database (SQLite and
PostgreSQL): one volume per name and at most ``MAX_VOLUMES``, every refusal a 409
naming ``name``.

Before, the name and the count were read without a lock: on PostgreSQL concurrent
creations of one name each passed the check and all but one hit the unique constraint
(an ``IntegrityError``, answered 500), and an account near the cap went past it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from deai.coordinator import volumes
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import volumes as core
from deai.core.errors import Conflict
from deai.core.wire_volumes import VolumeIn
from deai.store import migrate
from deai.store.models_volumes import Volume
from tests.races import race

OWNER = "a" * 64


@pytest.fixture
def two(fresh_url: str, tmp_path: Path) -> Iterator[list[Coordinator]]:
    """Two replicas' coordinators on one database."""
    cs = [Coordinator(Settings(data_dir=tmp_path / f"r{i}", database_url=fresh_url,
                               devnet=True)) for i in range(2)]
    migrate.upgrade(cs[0].db.engine)
    try:
        yield cs
    finally:
        for c in cs:
            c.db.dispose()


def refused_by_name(failed: list[BaseException]) -> bool:
    """Every refusal a 409 naming ``name``: none that a route would answer 500."""
    return all(isinstance(e, Conflict) and e.status == 409 and e.field == "name"
               for e in failed)


def count(c: Coordinator) -> int:
    with c.db.read() as s:
        return s.scalar(select(func.count()).select_from(Volume)
                        .where(Volume.owner == OWNER)) or 0


def test_one_volume_per_name_when_created_at_once(two: list[Coordinator]) -> None:
    failed = race(*[lambda i=i: volumes.create(two[i % 2], OWNER, VolumeIn(name="data"))
                    for i in range(8)])
    assert len(failed) == 7, failed
    assert refused_by_name(failed), [repr(e) for e in failed]
    assert count(two[0]) == 1


def test_the_cap_holds_when_created_at_once(two: list[Coordinator]) -> None:
    held = core.MAX_VOLUMES - 2
    for i in range(held):
        volumes.create(two[0], OWNER, VolumeIn(name=f"v{i}"))
    failed = race(*[lambda i=i: volumes.create(two[i % 2], OWNER, VolumeIn(name=f"w{i}"))
                    for i in range(8)])
    assert len(failed) == 6, failed
    assert refused_by_name(failed), [repr(e) for e in failed]
    assert count(two[0]) == core.MAX_VOLUMES


def test_other_owners_are_not_held_up(two: list[Coordinator]) -> None:
    """The lock is per owner: eight owners' first volumes, all at once, all made."""
    owners = [str(i) * 64 for i in range(8)]
    failed = race(*[lambda o=o, i=i: volumes.create(two[i % 2], o, VolumeIn(name="data"))
                    for i, o in enumerate(owners)])
    assert not failed
    with two[1].db.read() as s:
        assert sorted(s.scalars(select(Volume.owner))) == sorted(owners)
