"""A new leader forgives providers only after an outage of the whole fleet.

``jobs.recover`` runs on every election. After a restart (this replica has just
started) or a silence of every replica (nothing stamped ``fleet_alive`` for longer than
a heartbeat interval), providers seen shortly before are seen now and lapsing leases
are extended: the coordinator was down, not they. A takeover on a live fleet changes
neither: before, every takeover did, so with leadership changing hands every few
seconds a dead provider stayed online for ever and its deadlines kept moving.

The rules in process on each engine (the clock driven by the test; the fleet's stamp by
the database's clock), then real replicas on PostgreSQL whose leader sessions are ended
again and again, as a dropped connection would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import func, select, text

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import admission, jobs, leader
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core.clock import ManualClock
from deai.store.models import Assignment, Event, Provider
from tests.helpers import MODEL, register
from tests.races import ENGINES, coordinator
from tests.test_replicas import Replicas

SERVED = 3600.0  # a replica that has served for an hour: not a restart


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """PostgreSQL only: SQLite has one process, whose every election is a restart."""
    yield from coordinator(request, tmp_path)


def provider_and_lease(c: Coordinator) -> tuple[str, str]:
    """A provider last seen 4 s ago (inside the heartbeat timeout, 15 s) holding a lease
    due in 6 s."""
    pid = register(c)
    spec = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600,
            "shard_size": 1}
    _, (task,) = c.db.run(lambda s: admission.create(
        c, s, owner="d" * 64, kind="embeddings", model=MODEL, spec=spec,
        input_digest=c.blobs.put(b"x"), max_price=2000,
        shards=[admission.ShardIn(c.blobs.put(b"x"), 1, 1)], escrow=0, deadline=600))
    with c.db.write() as s:
        s.add(Assignment(id="asg_held", task_id=task.id, job_id=task.job_id,
                         provider_id=pid, role="primary", status="leased", price=1000,
                         leased_at=c.now(), lease_deadline=c.now() + 10, delivered=False))
    tick(c, 4)
    return pid, "asg_held"


def tick(c: Coordinator, seconds: float) -> None:
    clock = c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)


def state(c: Coordinator, pid: str, aid: str) -> tuple[float, float, int]:
    """The provider's last_seen, the lease's deadline, and how many grace events."""
    with c.db.read() as s:
        p, a = s.get(Provider, pid), s.get(Assignment, aid)
        assert p is not None and a is not None
        starts = s.scalar(select(func.count()).select_from(Event)
                          .where(Event.kind == "coordinator_started")) or 0
        return p.last_seen, a.lease_deadline, starts


def test_a_restart_still_gives_the_grace(c: Coordinator) -> None:
    """A replica that has just started: on SQLite every election is one, on PostgreSQL
    whatever the fleet's stamp says (the stamp may be its own previous process's)."""
    pid, aid = provider_and_lease(c)
    leader.stamp(c.db)
    jobs.recover(c)
    seen, deadline, starts = state(c, pid, aid)
    assert seen == c.now() and deadline == c.now() + c.settings.lease_ttl and starts == 1


def test_takeovers_on_a_live_fleet_change_nothing(pg: Coordinator) -> None:
    c = pg
    pid, aid = provider_and_lease(c)
    before = state(c, pid, aid)
    for _ in range(10):  # leadership changes hands every 2 s; the replicas stamp on
        leader.stamp(c.db)
        jobs.recover(c, SERVED)
        assert state(c, pid, aid) == before
        tick(c, 2)
    seen, deadline, _ = before
    assert c.now() - seen > c.settings.heartbeat_timeout  # gone, as it should be
    assert c.now() > deadline
    assert jobs.expire_leases(c) == 1


def test_a_silent_fleet_is_an_outage(pg: Coordinator) -> None:
    """Every replica served for long, but none reached the database for a while (the
    database was down): heartbeats were lost, so the grace is given."""
    c = pg
    pid, aid = provider_and_lease(c)
    leader.stamp(c.db)
    with c.db.write() as s:
        s.execute(text("UPDATE network_meta SET value = CAST(CAST(value AS DOUBLE PRECISION) "
                       "- 30 AS TEXT) WHERE key = :k"), {"k": leader.FLEET_ALIVE})
    jobs.recover(c, SERVED)
    seen, deadline, starts = state(c, pid, aid)
    assert seen == c.now() and deadline == c.now() + c.settings.lease_ttl and starts == 1


def test_no_stamp_is_an_outage(pg: Coordinator) -> None:
    """A database no replica ever stamped (a fleet of an earlier version): as before."""
    c = pg
    pid, aid = provider_and_lease(c)
    jobs.recover(c, SERVED)
    seen, _, starts = state(c, pid, aid)
    assert seen == c.now() and starts == 1


def test_the_stamp(c: Coordinator) -> None:
    with c.db.read() as s:
        assert leader.silence(s) is None
    leader.stamp(c.db)
    leader.stamp(c.db)  # the same row, moved on
    with c.db.read() as s:
        quiet = leader.silence(s)
    if c.db.is_sqlite:  # one process: nothing to stamp
        assert quiet is None
    else:
        assert quiet is not None and 0 <= quiet < 5


# --- real replicas ------------------------------------------------------------------------

def end_leader_sessions(url: str) -> int:
    with psycopg.connect(leader.conninfo(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name LIKE 'deai-leader-%'").fetchone()
    return int(row[0]) if row else 0


def read(url: str, sql: str, *args: object) -> object:
    with psycopg.connect(leader.conninfo(url)) as conn:
        row = conn.execute(sql, args).fetchone()
    return row[0] if row else None


def leaders(ports: list[int]) -> list[int]:
    out = []
    for p in ports:
        r = httpx.get(f"http://127.0.0.1:{p}/health", timeout=5)
        if r.json().get("leader") is True:
            out.append(p)
    return out


@pytest.mark.slow
@pytest.mark.postgres
def test_leadership_flapping_keeps_no_dead_provider_alive(tmp_path: Path,
                                                          fresh_pg_url: str) -> None:
    replicas = Replicas(tmp_path, fresh_pg_url)
    try:
        replicas.start(2)
        ports = list(replicas.procs)
        timeout = float(httpx.get(f"http://127.0.0.1:{ports[0]}/api/network", timeout=5)
                        .json()["heartbeat_timeout"])
        me = Identity.generate()
        cl = Client(f"http://127.0.0.1:{ports[0]}", me)
        cl.faucet(50_000_000)
        cl.register(wire.RegisterIn(
            hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096),
            benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=1,
            offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=1000)]))
        cl.heartbeat([])  # its last: the provider dies here
        time.sleep(timeout + 1)  # both replicas have served longer than a restart's grace
        seen = read(fresh_pg_url, "SELECT last_seen FROM providers WHERE id = %s", me.id)
        starts = read(fresh_pg_url, "SELECT count(*) FROM events "
                                    "WHERE kind = 'coordinator_started'")
        for _ in range(3):
            terms = [httpx.get(f"http://127.0.0.1:{p}/health", timeout=5).json()["leader"]
                     for p in ports]
            assert end_leader_sessions(fresh_pg_url) >= 1, terms
            end = time.time() + 20
            time.sleep(1.0)
            while len(leaders(ports)) != 1 and time.time() < end:
                time.sleep(0.2)
            assert len(leaders(ports)) == 1
            time.sleep(1.0)  # the new leader's recovery is done
            assert read(fresh_pg_url, "SELECT last_seen FROM providers WHERE id = %s",
                        me.id) == seen
            assert read(fresh_pg_url, "SELECT count(*) FROM events "
                                      "WHERE kind = 'coordinator_started'") == starts
    finally:
        replicas.stop()
