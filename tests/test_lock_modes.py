"""A provider's row locked by a writer that does not change its key (a rating, a hardware
verdict) must not hold up a lease being written for that provider (PostgreSQL).

An insert's foreign key takes a KEY SHARE lock on the row it names; ``FOR UPDATE``
conflicts with it, ``FOR NO KEY UPDATE`` does not. With ``FOR UPDATE`` a /v1 request
(its lease inserted after the journal's head) and a result (the provider locked, then
the head) deadlocked; here the lease's insert would wait for the writer's commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from deai.coordinator import admission, hardware
from deai.coordinator import reputation as rep
from deai.coordinator.service import Coordinator
from deai.store.models import Assignment
from tests.helpers import MODEL, register
from tests.races import coordinator

pytestmark = pytest.mark.postgres

LOCKERS: dict[str, Callable[[Coordinator, Session, str], Any]] = {
    "rating": lambda c, s, pid: rep.get(s, pid, "embeddings", lock=True),
    "hardware challenge": lambda c, s, pid: hardware._locked(c, s, pid),
}


@pytest.fixture(params=["postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


@pytest.mark.parametrize("locker", sorted(LOCKERS))
def test_a_provider_held_by_a_writer_still_takes_a_lease(c: Coordinator, locker: str) -> None:
    pid = register(c, "10.7.0.1")
    owner = "d" * 64
    c.faucet(owner, 1_000_000)
    spec = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600,
            "shard_size": 1}
    _, (task,) = c.db.run(lambda s: admission.create(
        c, s, owner=owner, kind="embeddings", model=MODEL, spec=spec,
        input_digest=c.blobs.put(b"x"), max_price=2000,
        shards=[admission.ShardIn(c.blobs.put(b"x"), 1, 1)], escrow=0, deadline=600))
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with c.db.write() as s:
            LOCKERS[locker](c, s, pid)
            held.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with c.db.write() as s:  # refused after 2 s if it had to wait for the holder
            s.execute(text("SET LOCAL lock_timeout = '2s'"))
            s.add(Assignment(id="asg_while_held", task_id=task.id, job_id=task.job_id,
                             provider_id=pid, role="primary", status="leased", price=1000,
                             leased_at=c.now(), lease_deadline=c.now() + 60,
                             delivered=False))
    finally:
        done.set()
        holder.join(30)
    with c.db.read() as s:
        assert s.get(Assignment, "asg_while_held") is not None
