"""A lapse and a rating of one provider at once (PostgreSQL lets them overlap): the
lapse's penalty (``hoarding.on_lapse``, in the lease expiry) and a check's verdict
both land in the provider's record. Read without a lock, the lapse wrote back the
record as it read it, and the verdict committed in between was lost."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deai.coordinator import hoarding
from deai.coordinator import reputation as rep
from deai.coordinator.service import Coordinator
from deai.core.verify.reputation import Reputation
from deai.store.models import Assignment, Provider
from deai.store.models import Reputation as RepRow
from tests.helpers import register
from tests.races import ENGINES, coordinator, gate, race

WORKLOAD = "embeddings"


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def test_a_lapse_and_a_failed_check_at_once_both_count(c: Coordinator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pid = register(c, "10.8.0.1")
    c.db.run(lambda s: rep.put(s, pid, WORKLOAD, Reputation(updated_at=c.now())))
    meet, get = gate(), rep.get

    def read_together(*args: Any, **kw: Any) -> Reputation:
        got = get(*args, **kw)
        meet()  # both have read the record before either writes it
        return got

    monkeypatch.setattr(rep, "get", read_together)

    def lapse() -> None:
        lapsed = Assignment(id="asg_lapsed", provider_id=pid, task_id="t")
        c.db.run(lambda s: hoarding.on_lapse(c, s, lapsed, WORKLOAD))

    def verdict(s: Any) -> None:  # the parties locked first, as the lifecycle does
        s.get(Provider, pid, with_for_update=True)
        s.get(RepRow, (pid, WORKLOAD), with_for_update=True)
        rep.rate(s, pid, WORKLOAD, False, c.now(), c.settings.verify)  # a wrong result

    assert race(lapse, lambda: c.db.run(verdict)) == []
    # The record is one of the two orders run one after the other: two failures (not
    # the lapse's count, computed without the verdict's, written over it).
    now, vp = c.now(), c.settings.verify
    r0 = Reputation(updated_at=now)

    def lapsed(r: Reputation) -> Reputation:
        r = r.decayed(now, vp)
        return replace(r, fails=r.fails + 1.0)

    orders = [lapsed(r0).failed(now, vp), lapsed(r0.failed(now, vp))]
    with c.db.read() as s:
        got = rep.get(s, pid, WORKLOAD)
    assert got in orders, (got, orders)
