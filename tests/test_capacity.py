"""The submission's capacity check (``coordinator.capacity``) against the full quote.

``any_eligible`` reads candidates a few at a time instead of every provider; it
must agree with ``market.quote`` over all of them, whichever provider is the
one that can run the job, and an admission it remembers must not outlive the
provider by more than ``FRESH_S``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client.keys import Identity
from deai.coordinator import capacity, jobs
from deai.coordinator.matching import all_provider_states
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import specs, wire
from deai.core.clock import ManualClock
from deai.store import migrate
from tests.helpers import MODEL, SPEC

N = 40


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 heartbeat_timeout=30.0), clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    try:
        yield coord
    finally:
        coord.db.dispose()


def provider(c: Coordinator, k: int, *, price: int, memory_mb: int = 4096,
             stake: int = 10_000_000) -> str:
    p = Identity.generate()
    c.faucet(p.id, 50_000_000)
    c.register(p.id, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=memory_mb),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=price)]),
        address=f"10.1.{k}.1")
    if stake:
        c.bond(p.id, stake)
    return p.id


def verdicts(c: Coordinator) -> tuple[bool, bool]:
    """(capacity.any_eligible, the full quote has someone eligible), read afresh."""
    spec = specs.parse_spec({**SPEC, "shard_size": 1})
    demand = jobs._demand(c, spec, [1])
    capacity._seen.pop(c, None)
    with c.db.read() as s:
        quick = capacity.any_eligible(c, s, demand)
        full = bool(jobs._quote_out(c, spec, [1], all_provider_states(c, s)).eligible)
    return quick, full


def test_agrees_with_the_full_quote_wherever_the_one_eligible_provider_is(
        c: Coordinator) -> None:
    # Forty providers that serve the model but cannot run the job (too dear, too little
    # memory, no stake): every read of candidates finds none, up to the last.
    for k in range(N):
        if k % 3 == 0:
            provider(c, k, price=SPEC["max_price"] + 1)
        elif k % 3 == 1:
            provider(c, k, price=10, memory_mb=64)
        else:
            provider(c, k, price=10, stake=0)
    assert verdicts(c) == (False, False)
    provider(c, N, price=SPEC["max_price"])  # at the price: eligible
    assert verdicts(c) == (True, True)
    c.clock.advance(31.0)  # type: ignore[attr-defined] - everyone falls silent
    assert verdicts(c) == (False, False)


def test_a_remembered_admission_lasts_at_most_fresh_s(c: Coordinator) -> None:
    pid = provider(c, 0, price=100)
    spec = specs.parse_spec({**SPEC, "shard_size": 1})
    demand = jobs._demand(c, spec, [1])
    with c.db.read() as s:
        assert capacity.any_eligible(c, s, demand)
    c.clock.advance(29.5)  # type: ignore[attr-defined]
    with c.db.read() as s:  # still online (30 s timeout) and remembered again now
        assert capacity.any_eligible(c, s, demand)
    c.clock.advance(1.0)  # type: ignore[attr-defined] - offline now; remembered 1 s ago
    with c.db.read() as s:
        assert capacity._seen[c]  # what it would answer from, had it not expired
        assert not capacity.any_eligible(c, s, demand)
    assert pid
