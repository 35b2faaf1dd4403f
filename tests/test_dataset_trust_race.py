"""A dataset's list of providers (``datasets.set_providers``) changing while the matcher
places the dataset's jobs, the owner releases its key to the providers ``pending`` names
and refuses the ones it leaves out (``deai dataset serve`` does both), all at once.

The matcher reads a job's list when it plans a round and commits the round later: a
lease planned as the list changed may go to a provider the new list leaves out. That
provider is never released the key: ``release`` reads the list again under the
dataset's row lock, which ``set_providers`` takes too, so the two are serialized and
every key released was to a provider on the list in force when it committed. Checked
from the journal of events, whose ids follow that order (each side emits its event
after it holds the lock). Both engines, the real matcher; no request fails but with the
409 that names the key, and the money audits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from deai.coordinator import dataset_refusals, datasets, jobs, matching
from deai.coordinator.service import Coordinator
from deai.core import wire_datasets as W
from deai.core.errors import Conflict, InvalidInput, NotFound
from deai.core.lifecycle import AssignmentStatus
from deai.store.models import Assignment, Event
from deai.store.models_datasets import DatasetKey
from tests.helpers import db_audit
from tests.races import ENGINES, coordinator, race
from tests.test_dataset_hold import BUYER, OWNER, SCARCE, dataset, use
from tests.test_dataset_refuse import trainers

JOBS = 16
SWITCHES = 30
WRAPPED = "a2V5"  # the wrapped key's bytes do not matter here


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def trust(c: Coordinator, providers: list[str]) -> None:
    datasets.set_providers(c, OWNER, SCARCE, W.ProvidersIn(providers=providers))


class Market:
    """The owner switching its list, the matcher's rounds and the owner's serve loop."""

    def __init__(self, c: Coordinator) -> None:
        self.c = c
        self.pool = trainers(c, 4)
        self.lists = [self.pool[:2], self.pool[2:]]
        trust(c, self.lists[0])
        self.set_in_order = [self.lists[0]]  # each list as it committed (one thread sets)
        self.jobs = [use(c, SCARCE) for _ in range(JOBS)]
        self.done = threading.Event()
        self.released: list[str] = []

    def switch(self) -> None:
        try:
            for i in range(1, SWITCHES + 1):
                trust(self.c, self.lists[i % 2])
                self.set_in_order.append(self.lists[i % 2])
                self.drop_the_old(self.lists[i % 2])
                time.sleep(0.05)
        finally:
            self.done.set()

    def drop_the_old(self, listed: list[str]) -> None:
        """The live leases of the providers the list no longer names end, so that their
        slots free: the owner refuses one not released the key yet; the buyer cancels
        a job whose key its provider holds (the owner may no longer refuse it) and
        submits another."""
        with self.c.db.read() as s:
            held = s.execute(select(Assignment.job_id, Assignment.provider_id).where(
                Assignment.job_id.in_(self.jobs),
                Assignment.status == AssignmentStatus.LEASED,
                Assignment.provider_id.not_in(listed))).all()
            keyed = {(k.job_id, k.provider_id) for k in s.scalars(select(DatasetKey))}
        for job_id, pid in held:
            if (job_id, pid) in keyed:
                jobs.cancel(self.c, BUYER, job_id)
                self.jobs.append(use(self.c, SCARCE))
                continue
            try:
                dataset_refusals.refuse(self.c, OWNER, SCARCE, W.RefuseIn(
                    job_id=job_id, providers=[pid]))
            except Conflict as e:  # released the key since this read it
                assert "released the key" in str(e), e

    def match(self) -> None:
        while not self.done.is_set():
            self.round()

    def round(self) -> None:
        for pid in self.pool:
            self.c.heartbeat(pid, [])
        matching.match_once(self.c)

    def serve(self) -> None:
        while not self.done.is_set():
            self.serve_once()

    def serve_once(self) -> None:
        """The key to the listed, a refusal to the rest (which frees their slot)."""
        for p in datasets.pending(self.c, OWNER):
            if p.providers:
                try:
                    self.released += datasets.release(self.c, OWNER, SCARCE, W.ReleaseIn(
                        job_id=p.job_id, keys={x: WRAPPED for x in p.providers}))
                except Conflict as e:  # the list changed since ``pending`` read it
                    assert e.field == "keys", e
                except (InvalidInput, NotFound) as e:  # the lease or the job ended since
                    assert e.field in ("keys", "job_id"), e
            if p.unlisted:
                dataset_refusals.refuse(self.c, OWNER, SCARCE, W.RefuseIn(
                    job_id=p.job_id, providers=p.unlisted))


def test_a_list_changing_under_the_matcher_never_lets_the_key_out(c: Coordinator) -> None:
    c.faucet(BUYER, 100_000_000)
    dataset(c, SCARCE, max_uses=None)
    m = Market(c)
    errors = race(m.switch, m.match, m.serve, join_s=240.0)
    assert not errors, errors

    # Every key released went to a provider on the list in force when it committed.
    with c.db.read() as s:
        events = s.execute(select(Event.kind, Event.body).where(
            Event.subject == SCARCE,
            Event.kind.in_(("dataset_providers", "dataset_key_released")))
            .order_by(Event.id)).all()
        keys = s.execute(select(DatasetKey.job_id, DatasetKey.provider_id)).all()
        leased = s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id.in_(m.jobs))).all()
    lists_seen = iter(m.set_in_order)
    now: list[str] = []
    given = 0
    for kind, body in events:
        if kind == "dataset_providers":
            now = next(lists_seen)
            assert body["providers"] == len(now)
        else:
            assert set(body["providers"]) <= set(now), (body, now)
            given += len(body["providers"])
    assert next(lists_seen, None) is None  # every switch is in the journal, in order
    assert given == len(keys) == len(m.released) > 0  # the rounds released some keys
    assert leased and set(leased) <= set(m.pool)

    # A round planned after the last switch places only on the last list.
    last = set(m.set_in_order[-1])
    for _ in range(3):
        m.serve_once()
        before = _lease_ids(c)
        m.round()
        with c.db.read() as s:
            fresh = s.scalars(select(Assignment.provider_id).where(
                Assignment.job_id.in_(m.jobs), Assignment.id.not_in(before))).all()
        assert set(fresh) <= last, (fresh, last)
    db_audit(c)


def _lease_ids(c: Coordinator) -> list[str]:
    with c.db.read() as s:
        return list(s.scalars(select(Assignment.id)))
