"""A /v1 request placed at once (``gateway.start`` → ``matching.place_now``) draws its
canaries as a matcher round does for the work it places: otherwise the interactive
traffic, which never passes through a round, would thin the canary share that stakes
are sized against."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from deai.client.keys import Identity
from deai.coordinator import admission
from deai.coordinator.openai import gateway, keys
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import wire
from deai.core.clock import ManualClock
from deai.core.lifecycle import TaskStatus
from deai.core.verify.params import VerifyParams
from deai.store import migrate
from deai.store.models import Canary, Job, Task
from tests.helpers import MODEL

CLIENT = "d" * 64


def coordinator(tmp_path: Path, canary_share: float, url: str = "",
                slots: int = 8) -> Coordinator:
    c = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                             heartbeat_timeout=30.0, verify_seed=5,
                             verify=VerifyParams(canary_share=canary_share)),
                    clock=ManualClock())
    migrate.upgrade(c.db.engine)
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=slots,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=100)]),
        address="10.4.0.1")
    c.bond(pid, 10_000_000)
    digest, answer = c.blobs.put(b'{"custom_id": "k", "input": ["x"]}\n'), c.blobs.put(b"a")
    with c.db.write() as s:  # one known answer in the pool for the model
        s.add(Canary(kind="embeddings", model=MODEL,
                     spec={"kind": "embeddings", "model": MODEL, "max_price": 2000,
                           "deadline": 600, "shard_size": 1},
                     input_digest=digest, output_digest=answer, items=1, units=1,
                     source_task="t-earlier", created_at=0.0, active=True, uses=0))
    c.faucet(CLIENT, 1_000_000)
    return c


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def every(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    c = coordinator(tmp_path, canary_share=0.5, url=url)  # odds 1: one per placement
    yield c
    c.db.dispose()


@pytest.fixture
def never(tmp_path: Path) -> Iterator[Coordinator]:
    c = coordinator(tmp_path, canary_share=0.0)
    yield c
    c.db.dispose()


def _canary_tasks(c: Coordinator) -> list[str]:
    with c.db.read() as s:
        return list(s.scalars(select(Task.status).join(Job, Job.id == Task.job_id)
                              .where(Job.owner == admission.NETWORK)))


def _request(c: Coordinator) -> gateway.Started:
    key = keys.authenticate(c, keys.create(c, CLIENT, wire.ApiKeyIn(name="t")).key or "")
    return gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})


def test_a_v1_request_placed_at_once_plants_canaries_at_the_share(every: Coordinator) -> None:
    started = _request(every)
    assert started.provider is not None  # placed in the request, not by a round
    planted = _canary_tasks(every)
    assert planted and set(planted) == {TaskStatus.QUEUED}  # waiting like any job
    with every.db.read() as s:
        assert s.scalar(select(func.sum(Canary.uses))) == len(planted)
        job = s.scalars(select(Job).where(Job.owner == admission.NETWORK)).one()
        assert job.escrow == 0 and job.model == MODEL  # the network's, the request's model


def test_no_canary_share_plants_none(never: Coordinator) -> None:
    assert _request(never).provider is not None
    assert _canary_tasks(never) == []


def test_concurrent_v1_requests_on_postgres_each_plant_and_none_fails(
        tmp_path: Path, fresh_pg_url: str) -> None:
    """Many requests at once, each placed and each planting (its own transaction after
    the request's, retried on a deadlock): every request answers, every placement has
    its canary, and the pool's use counts add up."""
    c = coordinator(tmp_path, canary_share=0.5, url=fresh_pg_url, slots=64)
    try:
        n = 24
        with ThreadPoolExecutor(8) as pool:
            started = list(pool.map(lambda _: _request(c), range(n)))
        assert all(st.provider is not None for st in started)
        planted = _canary_tasks(c)
        assert len(planted) >= n  # one draw each, one to four shards a canary job
        with c.db.read() as s:
            assert s.scalar(select(func.sum(Canary.uses))) == len(planted)
            assert s.scalar(select(func.count()).select_from(Job)
                            .where(Job.owner == admission.NETWORK)) <= n
    finally:
        c.db.dispose()
