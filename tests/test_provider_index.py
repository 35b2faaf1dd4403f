"""The providers' index (``coordinator.provider_index``) and its change hints (``touch``).

The index is a hint the matcher and the /v1 decision plan on; the database stays the
authority. These tests check that it agrees with a direct read after the ordinary
writes (which report what they touched), that a stale entry never yields a wrong lease
(every choice is re-read at commit), that its single decision is ``core.market.place``'s,
that beats heard in memory count, and that only committed transactions report.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String, Text, select, text
from sqlalchemy.orm import Session

from deai.client.keys import Identity
from deai.coordinator import admission, matching, provider_index, touch
from deai.coordinator.openai import gateway, keys
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import hwcheck as hc
from deai.core import ledger, market, wire
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, TaskStatus
from deai.store import migrate
from deai.store.models import Assignment, HwClaim, Job, Provider, Task
from tests.helpers import MODEL

OTHER = "SmolLM2-135M-Instruct"
VERIFIER = Identity.generate()  # listed in every test coordinator's settings


PG = pytest.mark.postgres


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=PG)])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 heartbeat_timeout=30.0, verify_seed=3,
                                 verifiers=frozenset({VERIFIER.id})), clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    try:
        yield coord
    finally:
        coord.db.dispose()


def index(c: Coordinator) -> provider_index.ProviderIndex:
    """The coordinator's index, with no background resync: what it knows is only what it
    built, was told or re-read (a resync would hide a stale entry)."""
    idx = provider_index.of(c)
    idx.resync_s = math.inf
    return idx


def provider(c: Coordinator, k: int, *, price: int, slots: int = 1, memory_mb: int = 4096,
             stake: int = 10_000_000, other: bool = False, pid: str | None = None) -> str:
    pid = pid or Identity.generate().id
    c.faucet(pid, 50_000_000)
    offers = [wire.OfferIn(workload="embeddings", model=MODEL, price=price)]
    if other:
        offers.append(wire.OfferIn(workload="chat", model=OTHER, price=price + 7))
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=memory_mb + k),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=slots,
        offers=offers), address=f"10.3.{k}.1")
    if stake:
        c.bond(pid, stake)
    return pid


def queue(c: Coordinator, n: int, max_price: int = 2000) -> list[str]:
    digest = c.blobs.put(b"shard")
    spec = {"kind": "embeddings", "model": MODEL, "max_price": max_price, "deadline": 600,
            "shard_size": 1}
    c.faucet("c" * 64, 1_000_000)
    _, tasks = c.db.run(lambda s: admission.create(
        c, s, owner="c" * 64, kind="embeddings", model=MODEL, spec=spec,
        input_digest=digest, max_price=max_price,
        shards=[admission.ShardIn(digest, 1, 1) for _ in range(n)], escrow=0, deadline=600))
    return [t.id for t in tasks]


def leased(c: Coordinator, tids: list[str]) -> dict[str, list[str]]:
    """Task -> the providers holding a live lease on it, for these tasks only (a round
    may plant canary jobs of its own)."""
    out: dict[str, list[str]] = defaultdict(list)
    with c.db.read() as s:
        for tid, pid in s.execute(select(Assignment.task_id, Assignment.provider_id).where(
                Assignment.status == AssignmentStatus.LEASED, Assignment.task_id.in_(tids))):
            out[tid].append(pid)
    return dict(out)


def status(c: Coordinator, tid: str) -> TaskStatus:
    with c.db.read() as s:
        return TaskStatus(s.scalars(select(Task.status).where(Task.id == tid)).one())


def by_id(xs: list[market.ProviderState]) -> dict[str, market.ProviderState]:
    out = {p.id: p for p in xs}
    assert len(out) == len(xs), "a provider listed twice"
    return out


def both(c: Coordinator, idx: provider_index.ProviderIndex
         ) -> tuple[dict[str, market.ProviderState], dict[str, market.ProviderState]]:
    """(the index's states, a direct read of the database), by provider."""
    with c.db.read() as s:
        got = by_id(idx.states(s))
    with c.db.read() as s:
        want = by_id(matching.provider_states(c, s))
    return got, want


def sql(c: Coordinator, stmt: str, **params: object) -> None:
    """A change behind the index's back: no ``touch``."""
    c.db.run(lambda s: s.execute(text(stmt), params))


# --- 1. the index agrees with a direct read after the ordinary writes -----------------------


def test_the_index_agrees_with_a_direct_read_through_ordinary_changes(c: Coordinator) -> None:
    rng = random.Random(7)
    ids = [provider(c, k, price=rng.randint(100, 900), slots=rng.randint(1, 3),
                    stake=rng.choice([0, 10_000_000]), other=k % 2 == 0) for k in range(6)]
    idx = index(c)
    got, want = both(c, idx)
    assert got == want and set(got) == set(ids)
    assert idx.builds == 1
    # A new provider (registration and bond, each its own transaction).
    ids.append(provider(c, 6, price=150, slots=2))
    got, want = both(c, idx)
    assert got == want and ids[-1] in got
    # A bond on one that had none, more on one that had some.
    unstaked = next(p for p in ids if want[p].stake == 0)
    c.bond(unstaked, 3_000_000)
    c.bond(ids[-1], 1_000_000)
    got, want = both(c, idx)
    assert got == want
    assert got[unstaked].stake == 3_000_000 and got[ids[-1]].stake == 11_000_000
    # Leases: load.
    tids = queue(c, 4)
    placed = matching.match_once(c)
    assert placed and leased(c, tids)
    got, want = both(c, idx)
    assert got == want
    assert sum(st.load for st in got.values()) >= len(leased(c, tids))
    # Registering again: other offers, slots and hardware.
    again = ids[1]
    c.register(again, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=8192),
        benchmark=wire.Benchmark(gflops=80.0, mem_gbps=10.0), threads=1, slots=4,
        offers=[wire.OfferIn(workload="chat", model=OTHER, price=333)]), address="10.9.9.1")
    # A slash through the settlement port.
    c.db.run(lambda s: c.settlement.slash(s, ids[-1], 4_000_000, None, 0, {"why": "test"}))
    got, want = both(c, idx)
    assert got == want
    assert got[again].slots == 4 and got[again].offers == (market.Offer("chat", OTHER, 333),)
    assert got[ids[-1]].stake == 7_000_000
    assert idx.builds == 1  # all of it from re-reads of the changed providers


# --- 2. a stale index never makes a wrong lease ----------------------------------------------


STALE: dict[str, Callable[[Coordinator, str], None]] = {
    "no slots": lambda c, pid: sql(c, "UPDATE providers SET slots = 0 WHERE id = :p", p=pid),
    "too dear": lambda c, pid: sql(c, "UPDATE offers SET price = 5000 WHERE provider_id = :p",
                                   p=pid),
    "unstaked": lambda c, pid: sql(c, "UPDATE balances SET amount = 0 WHERE account = :a",
                                   a=ledger.stake(pid)),
}


def fill(c: Coordinator, pid: str) -> None:
    """Its only slot taken by a lease written behind the index's back."""
    (other,) = queue(c, 1)

    def body(s: Session) -> None:
        t = s.get(Task, other)
        assert t is not None
        s.add(Assignment(id="asg_behind", task_id=other, job_id=t.job_id, provider_id=pid,
                         role="primary", status=AssignmentStatus.LEASED, price=100,
                         leased_at=c.now(), lease_deadline=c.now() + 60, delivered=False))
        t.status = TaskStatus.ASSIGNED

    c.db.run(body)


STALE["slot filled"] = fill


def flag(c: Coordinator, pid: str) -> None:
    """Flagged by a hardware challenge it answered wrongly: not matched (``hardware``)."""

    def body(s: Session) -> None:
        p = s.get(Provider, pid)
        assert p is not None
        s.add(HwClaim(provider_id=pid, fingerprint=hc.fingerprint(p.hardware, p.benchmark),
                      status="flagged", wrong=True, ratios=[], verified={}, next_at=0.0,
                      updated_at=c.now()))

    c.db.run(body)


STALE["flagged"] = flag


def stale_setup(c: Coordinator, how: str, *, second: bool = True
                ) -> tuple[provider_index.ProviderIndex, str, str | None]:
    best = provider(c, 0, price=100)
    other = provider(c, 1, price=200) if second else None
    idx = index(c)
    with c.db.read() as s:
        assert best in by_id(idx.states(s))  # built, with the best one as it was
    STALE[how](c, best)
    with c.db.read() as s:
        assert best in by_id(idx.states(s))  # still there: nobody told it
        fresh = by_id(matching.provider_states(c, s))
    assert best not in fresh or market.failures(
        market.TaskDemand("x", "embeddings", MODEL, 2000, 0), fresh[best],
        c.settings.min_stake, fresh[best].price_for("embeddings", MODEL)) != 0
    return idx, best, other


def on(*pg: str, hows: list[str] | None = None) -> pytest.MarkDecorator:
    """Every way of going stale on SQLite; on PostgreSQL only ``pg`` (each test there
    costs a database of its own)."""
    return pytest.mark.parametrize(
        "c,how", [("sqlite", h) for h in (hows or sorted(STALE))]
        + [pytest.param("postgres", h, marks=PG) for h in pg], indirect=["c"])


@on("slot filled", "flagged")
def test_a_stale_provider_gets_no_lease_from_the_matcher(c: Coordinator, how: str) -> None:
    idx, best, other = stale_setup(c, how)
    (tid,) = queue(c, 1)
    before = idx.rereads
    assert matching.match_once(c) == [other]  # one call: the round is planned again
    assert leased(c, [tid]) == {tid: [other]}
    assert idx.rereads > before
    got, want = both(c, idx)
    assert got == want  # the commit's re-read corrected the stale entry


@on("too dear")
def test_a_stale_only_provider_leaves_the_task_queued(c: Coordinator, how: str) -> None:
    idx, best, _ = stale_setup(c, how, second=False)
    (tid,) = queue(c, 1)
    assert matching.match_once(c) == []
    assert leased(c, [tid]) == {}
    assert status(c, tid) == TaskStatus.QUEUED


@on("no slots")
def test_a_stale_provider_gets_no_lease_from_place_now(c: Coordinator, how: str) -> None:
    idx, best, other = stale_setup(c, how)
    (tid,) = queue(c, 1)
    with c.db.write() as s:
        task = s.get(Task, tid)
        assert task is not None
        job = s.get(Job, task.job_id)
        assert job is not None
        assert matching.place_now(c, s, task, job) == other
    assert leased(c, [tid]) == {tid: [other]}


@on("flagged", hows=["flagged", "too dear", "no slots"])
def test_a_stale_provider_gets_no_lease_from_the_gateway(c: Coordinator, how: str) -> None:
    idx, best, other = stale_setup(c, how)
    c.faucet("d" * 64, 1_000_000)
    key = keys.authenticate(c, keys.create(c, "d" * 64, wire.ApiKeyIn(name="t")).key or "")
    started = gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})
    assert started.provider == other
    assert leased(c, [started.task_id]) == {started.task_id: [other]}


def test_a_stale_only_provider_leaves_a_gateway_request_queued(c: Coordinator) -> None:
    idx, best, _ = stale_setup(c, "flagged", second=False)
    c.faucet("d" * 64, 1_000_000)
    key = keys.authenticate(c, keys.create(c, "d" * 64, wire.ApiKeyIn(name="t")).key or "")
    started = gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})
    assert started.provider is None
    assert leased(c, [started.task_id]) == {}
    assert status(c, started.task_id) == TaskStatus.QUEUED


# --- 3. the single decision is core.market.place's ------------------------------------------


def expected(c: Coordinator, tid: str, *, with_verifiers: bool = False
             ) -> tuple[market.TaskDemand, market.Placement | None]:
    with c.db.read() as s:
        task = s.get(Task, tid)
        assert task is not None
        job = s.get(Job, task.job_id)
        assert job is not None
        d = matching.demand(c, job, task)
        states = [p for p in matching.provider_states(c, s) if with_verifiers or not p.verifier]
    got = market.place([d], states, c.settings.min_stake, c.settings.strategy)
    return d, (got[0] if got else None)


def test_place_picks_what_market_place_picks_ties_by_load_then_id(c: Coordinator) -> None:
    # Four of one score (one price, one reputation), a dearer one, a cheap one without
    # stake, and the network's verifier asking nothing (market.place would take it).
    tied = sorted(provider(c, k, price=150, slots=2) for k in range(4))
    dear = provider(c, 4, price=400, slots=3)
    provider(c, 5, price=50, slots=3, stake=0)
    provider(c, 6, price=0, slots=9, pid=VERIFIER.id)
    idx = index(c)
    tids = queue(c, 10)
    chosen = []
    for tid in tids:
        d, want = expected(c, tid)
        _, with_v = expected(c, tid, with_verifiers=True)
        assert with_v is not None and with_v.provider_id == VERIFIER.id
        with c.db.write() as s:
            got = idx.place(s, d, c.settings.min_stake)
            assert got == want
            if got is None:
                continue
            task = s.get(Task, tid)
            assert task is not None
            job = s.get(Job, task.job_id)
            assert job is not None
            assert matching.place_now(c, s, task, job) == got.provider_id
        idx.leased(got.provider_id)  # as the gateway does after its commit
        chosen.append(got.provider_id)
    # Ties by load, then id: each of the tied in id order, twice over; then the dearer.
    assert chosen == tied + tied + [dear, dear]


def test_place_agrees_with_market_place_on_random_providers(c: Coordinator) -> None:
    rng = random.Random(11)
    ids = [provider(c, k, price=rng.choice([100, 150, 200, 250, 2500]),
                    slots=rng.randint(1, 2), stake=rng.choice([0, 10_000_000, 10_000_000]),
                    memory_mb=rng.choice([64, 4096])) for k in range(10)]
    # Reputations written straight to the rows, then told to the index (``touch``).
    for pid in ids:
        sql(c, "UPDATE providers SET reputation = :r WHERE id = :p",
            r=rng.choice([0.2, 0.5, 0.5, 0.9]), p=pid)
    idx = index(c)
    with c.db.read() as s:
        idx.states(s)
    idx.touch(ids)
    got_all, want_all = both(c, idx)
    assert got_all == want_all
    tids = queue(c, 14)
    n = 0
    for tid in tids:
        d, want = expected(c, tid)
        with c.db.write() as s:
            got = idx.place(s, d, c.settings.min_stake)
            assert got == want
            if got is None:
                continue
            task = s.get(Task, tid)
            assert task is not None
            job = s.get(Job, task.job_id)
            assert job is not None
            matching.place_now(c, s, task, job)
        idx.leased(got.provider_id)
        n += 1
    assert n > 0


# --- 4. beats heard in memory ----------------------------------------------------------------


def test_a_beat_in_memory_keeps_a_provider_online_past_its_rows_last_seen(
        c: Coordinator) -> None:
    pid = provider(c, 0, price=100)
    idx = index(c)
    with c.db.read() as s:
        assert pid in by_id(idx.states(s))
    c.clock.advance(40.0)  # type: ignore[attr-defined]
    got, want = both(c, idx)
    assert pid not in got and pid not in want  # silent: offline both ways
    idx.beat(pid, c.now())  # heard here, not yet written
    got, want = both(c, idx)
    assert pid in got and pid not in want
    assert got[pid].online
    (tid,) = queue(c, 1)
    assert matching.match_once(c) == [pid]  # the commit's re-read counts the beat too
    assert leased(c, [tid]) == {tid: [pid]}


def test_an_unknown_provider_that_beats_is_read_on_next_use(c: Coordinator) -> None:
    early = provider(c, 0, price=100)
    c.clock.advance(40.0)  # type: ignore[attr-defined]
    other = provider(c, 1, price=300)
    idx = index(c)
    with c.db.read() as s:
        assert set(by_id(idx.states(s))) == {other}  # built without the silent one
    rereads = idx.rereads
    idx.beat(early, c.now())
    with c.db.read() as s:
        got = by_id(idx.states(s))
    assert set(got) == {early, other}
    assert idx.rereads == rereads + 1 and idx.builds == 1
    assert got[early].stake == 10_000_000 and got[early].price_for("embeddings", MODEL) == 100
    (tid,) = queue(c, 1)
    assert matching.match_once(c) == [early]
    assert leased(c, [tid]) == {tid: [early]}


def test_a_beat_before_the_first_build_is_harmless(c: Coordinator) -> None:
    pid = provider(c, 0, price=100)
    idx = index(c)
    idx.beat(pid, c.now())  # nothing built yet: the build reads it
    got, want = both(c, idx)
    assert got == want and set(got) == {pid}


def test_a_resync_keeps_a_provider_online_by_a_beat_heard_here(c: Coordinator) -> None:
    pid = provider(c, 0, price=100)
    idx = index(c)
    c.clock.advance(40.0)  # type: ignore[attr-defined]
    idx.beat(pid, c.now())
    with c.db.read() as s:
        assert pid in by_id(idx.states(s))
    idx._resync()  # what the background thread does, here and now
    with c.db.read() as s:
        assert pid in by_id(idx.states(s))


# --- 5. only committed transactions report ---------------------------------------------------


class Ear:
    """A callback for ``touch.on_commit`` (a bound method, held while the test runs)."""

    def __init__(self) -> None:
        self.heard: list[set[str]] = []

    def hear(self, ids: set[str]) -> None:
        self.heard.append(set(ids))


def test_touched_ids_are_told_after_commit_only(c: Coordinator) -> None:
    ear = Ear()
    heard = ear.heard
    touch.on_commit(c.db.engine, ear.hear)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), c.db.write() as s:
        touch.touched(s, ["rolled-back"])
        s.execute(text("SELECT 1"))
        raise Boom
    assert heard == []
    c.db.run(lambda s: touch.touched(s, ["p1", "p2", ""]))
    assert heard == [{"p1", "p2"}]
    c.db.run(lambda s: s.execute(text("SELECT 1")))  # nothing touched: nothing told
    assert heard == [{"p1", "p2"}]
    # A session that rolled back, then committed other work, tells only the latter.
    with Session(c.db.engine) as s:
        touch.touched(s, ["lost"])
        s.execute(text("SELECT 1"))
        s.rollback()
        touch.touched(s, ["kept"])
        s.execute(text("SELECT 1"))
        s.commit()
    assert heard == [{"p1", "p2"}, {"kept"}]


class Broken:
    def hear(self, ids: set[str]) -> None:
        raise RuntimeError("a broken cache")


class Messages(logging.Handler):
    """Keeps only what was logged, not the records: a record's traceback would keep the
    failed callback's frame (and the callbacks it was walking) alive past the test."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.got.append(record.getMessage())


def test_a_failing_callback_neither_fails_the_commit_nor_silences_others(
        c: Coordinator) -> None:
    bad, ear = Broken(), Ear()
    heard = ear.heard
    touch.on_commit(c.db.engine, bad.hear)
    touch.on_commit(c.db.engine, ear.hear)
    log, messages = logging.getLogger("deai.coordinator.touch"), Messages()
    log.addHandler(messages)
    log.propagate = False
    try:
        pid = provider(c, 0, price=100, stake=0)  # registration touches the provider
    finally:
        log.removeHandler(messages)
        log.propagate = True
    assert {pid} in heard
    assert "a provider-change callback failed" in messages.got
    with c.db.read() as s:
        assert s.scalar(text("SELECT count(*) FROM providers")) == 1


def test_the_index_hears_ordinary_writes_and_ignores_rolled_back_ones(c: Coordinator) -> None:
    pid = provider(c, 0, price=100)
    idx = index(c)
    with c.db.read() as s:
        idx.states(s)
    assert idx._dirty == set()
    with pytest.raises(RuntimeError), c.db.write() as s:
        c.settlement.bond(s, pid, 1_000_000)  # a stake posting touches the provider
        raise RuntimeError("rolled back")
    assert idx._dirty == set()
    c.bond(pid, 1_000_000)
    assert idx._dirty == {pid}
    got, want = both(c, idx)
    assert got == want and got[pid].stake == 11_000_000
    assert idx._dirty == set()


def test_re_reads_keep_each_provider_ranked_once_at_its_current_score(c: Coordinator) -> None:
    """A re-read that finds only the load changed leaves the provider where it is in the
    sorted lists; one that finds its price or reputation changed moves it. Either way the
    lists are what a build from the same states makes."""
    ids = [provider(c, k, price=100 + 10 * k, slots=3, other=k % 2 == 0) for k in range(5)]
    idx = index(c)

    def consistent() -> None:
        with idx._lock:
            _, ranked = idx._structures(list(idx._states.values()))
            assert idx._ranked == ranked

    with c.db.read() as s:
        idx.states(s)
    consistent()
    queue(c, 4)
    assert matching.match_once(c)  # batches re-read their providers: loads only
    with c.db.read() as s:
        idx.reread(s, ids)
    consistent()
    sql(c, "UPDATE offers SET price = 90 WHERE provider_id = :p", p=ids[3])  # now the cheapest
    sql(c, "UPDATE providers SET reputation = 0.95 WHERE id = :p", p=ids[4])
    with c.db.read() as s:
        idx.reread(s, ids)
    consistent()
    key = ("embeddings", MODEL)
    assert [(pid, price) for _, pid, price in idx._ranked[key] if pid == ids[3]] == [(ids[3], 90)]
    assert idx._ranked[key][0][1] == ids[4]  # 140 at reputation 0.95 scores 77: the best


# --- 5. a re-read builds a state again whenever a column it was built from changed ------------

MEMO_CHANGES: dict[str, str] = {
    "reputation": "UPDATE providers SET reputation = 0.93 WHERE id = :p",
    "compute units": "UPDATE providers SET compute_units = 2.5 WHERE id = :p",
    "slots": "UPDATE providers SET slots = 3 WHERE id = :p",
    "operator": "UPDATE providers SET operator = 'someone-else' WHERE id = :p",
    "origin": "UPDATE providers SET origin = '10.77.0.0/16' WHERE id = :p",
    "fingerprint": "UPDATE providers SET fingerprint = 'f00d' WHERE id = :p",
    "offer price": "UPDATE offers SET price = 444 WHERE provider_id = :p",
    "offer added": "INSERT INTO offers (provider_id, workload, model, price) "
                   f"VALUES (:p, 'embeddings', '{OTHER}', 321)",
    "offer gone": "DELETE FROM offers WHERE provider_id = :p",
    "stake": f"UPDATE balances SET amount = 1234 WHERE account = '{ledger.stake('')}' || :p",
}


def verified(c: Coordinator, pid: str) -> None:
    """A verified hardware claim on the provider's current hardware."""
    def body(s: Session) -> None:
        p = s.get(Provider, pid)
        assert p is not None
        s.add(HwClaim(provider_id=pid, fingerprint=hc.fingerprint(p.hardware, p.benchmark),
                      status="verified", wrong=False, ratios=[], verified={"memory_mb": 2048},
                      verified_units=0.25, next_at=0.0, updated_at=c.now()))

    c.db.run(body)


def hardware_changed(c: Coordinator, pid: str) -> None:
    """Registered with other hardware: its memory, and a verified claim that no longer
    matches the new fingerprint (so it proves nothing)."""
    verified(c, pid)
    with c.db.read() as s:  # the index holds the state the claim made
        assert provider_index.of(c).reread(s, [pid])[pid].compute_units == 0.25
    sql(c, "UPDATE providers SET hardware = :h WHERE id = :p",
        h='{"cpu_model": "cpu", "cores": 2, "memory_mb": 99999, "gpus": []}', p=pid)


@pytest.mark.parametrize("c,change", [("sqlite", k) for k in [*sorted(MEMO_CHANGES), "hardware"]]
                         + [pytest.param("postgres", k, marks=PG)
                            for k in ("offer price", "hardware")], indirect=["c"])
def test_a_re_read_reuses_a_state_only_while_its_columns_are_unchanged(
        c: Coordinator, change: str) -> None:
    """The index keeps each state with the version it was built at (``load``'s memo) and
    reuses it while the version is unchanged. A change to any column it was built from,
    behind the index's back (no ``touch``, raw SQL), moves the version (the database's
    triggers) and is in the next re-read, as a direct read has it; the moving parts
    (load, stake, reputation) are read each time and set on the reused state."""
    pid = provider(c, 0, price=150, slots=2, other=True)
    provider(c, 1, price=160)
    idx = index(c)
    with c.db.read() as s:
        first = idx.reread(s, [pid])[pid]
        again = idx.reread(s, [pid])[pid]
    assert again is first or again == first  # nothing changed: the same state
    fill(c, pid)  # the load alone
    with c.db.read() as s:
        loaded = idx.reread(s, [pid])[pid]
    assert loaded.load == first.load + 1 and loaded.with_(load=first.load) == first
    if change == "hardware":
        hardware_changed(c, pid)
    else:
        sql(c, MEMO_CHANGES[change], p=pid)
    with c.db.read() as s:
        got = idx.reread(s, [pid]).get(pid)
        want = by_id(matching.provider_states(c, s)).get(pid)
    assert got == want
    assert got != loaded  # the change is seen (gone, or a field differs)


def version(c: Coordinator, pid: str) -> int:
    with c.db.read() as s:
        return int(s.execute(text("SELECT version FROM providers WHERE id = :p"),
                             {"p": pid}).scalar_one())


def test_the_version_moves_with_what_a_state_is_built_from_and_only_with_that(
        c: Coordinator) -> None:
    """The database's triggers (migrations 0019, 0020) move a provider's version on every
    write of a column its state is built from, in its row, its offers or its hardware
    claim, whoever writes it; a heartbeat, a rating, a bond or a challenge's bookkeeping
    leaves it alone (those are read at every re-read)."""
    pid = provider(c, 0, price=150, slots=2, other=True)
    provider(c, 1, price=160)
    hardware_changed(c, pid)  # a claim row to change
    moves = {k: v for k, v in MEMO_CHANGES.items() if k not in ("reputation", "stake")}
    moves |= {
        "claim flagged": "UPDATE hw_claims SET status = 'flagged', wrong = TRUE "
                         "WHERE provider_id = :p",
        "claim units": "UPDATE hw_claims SET verified_units = 0.5 WHERE provider_id = :p",
        "claim gone": "DELETE FROM hw_claims WHERE provider_id = :p",
    }
    for what, stmt in moves.items():
        before = version(c, pid)
        sql(c, stmt, p=pid)
        assert version(c, pid) != before, what
    before = version(c, pid)
    for stmt in ("UPDATE providers SET last_seen = last_seen + 1, reputation = 0.11, "
                 "tasks_done = tasks_done + 1 WHERE id = :p",
                 MEMO_CHANGES["stake"]):
        sql(c, stmt, p=pid)
    c.bond(pid, 1_000_000)
    assert version(c, pid) == before
    hardware_changed(c, pid)
    before = version(c, pid)
    sql(c, "UPDATE hw_claims SET next_at = 99, passes = passes + 1 WHERE provider_id = :p",
        p=pid)
    assert version(c, pid) == before


class _RolledBack(Exception):
    pass


def test_a_version_rolled_back_is_never_drawn_again(c: Coordinator) -> None:
    """A transaction changes a provider, re-reads it (the index keeps the state with its
    new version) and rolls back; a later change that commits must not reach the same
    version, or the index would take the rolled-back state for it. With versions counted
    up by one (migration 0019), it did: both changes made version + 1."""
    pid = provider(c, 0, price=150, slots=2)
    provider(c, 1, price=160)
    idx = index(c)
    with c.db.read() as s:
        idx.reread(s, [pid])
    before = version(c, pid)
    with pytest.raises(_RolledBack), c.db.write() as s:
        s.execute(text("UPDATE providers SET slots = 5 WHERE id = :p"), {"p": pid})
        assert idx.reread(s, [pid])[pid].slots == 5
        raise _RolledBack
    assert version(c, pid) == before
    sql(c, "UPDATE providers SET compute_units = 2.5 WHERE id = :p", p=pid)
    with c.db.read() as s:
        got = idx.reread(s, [pid])[pid]
        want = by_id(matching.provider_states(c, s))[pid]
    assert got == want and got.slots == 2 and got.compute_units == 2.5


def _rolled_back_then_committed(c: Coordinator, pid: str) -> tuple[int, int]:
    """The version a change rolled back reached, and then one a change committed did."""
    with pytest.raises(_RolledBack), c.db.write() as s:
        s.execute(text("UPDATE providers SET slots = slots + 1 WHERE id = :p"), {"p": pid})
        rolled = int(s.execute(text("SELECT version FROM providers WHERE id = :p"),
                               {"p": pid}).scalar_one())
        raise _RolledBack
    sql(c, "UPDATE providers SET slots = slots + 2 WHERE id = :p", p=pid)
    return rolled, version(c, pid)


def test_unique_versions_downgrade_to_counting_and_back(c: Coordinator) -> None:
    """Migration 0020 down: a change counts the version up by one again (0019's
    triggers), and a number rolled back is given out again; up again, never."""
    pid = provider(c, 0, price=150)
    migrate.downgrade(c.db.engine, "0019v")
    before = version(c, pid)
    rolled, committed = _rolled_back_then_committed(c, pid)
    assert rolled == committed == before + 1
    migrate.upgrade(c.db.engine)
    rolled, committed = _rolled_back_then_committed(c, pid)
    assert rolled != committed and before + 1 not in (rolled, committed)
    assert version(c, provider(c, 1, price=160)) != 0  # a new provider draws one too


def _changed_value(col: Any) -> str | None:
    """SQL that writes a different valid value into ``col`` (None: leave it alone)."""
    name = col.name
    if isinstance(col.type, JSON):
        return (f"{name} = '{{\"cpu_model\": \"other\", \"cores\": 64, \"memory_mb\": 77777, "
                "\"gpus\": [], \"gflops\": 999.0, \"mem_gbps\": 99.0, \"devices\": [], "
                "\"units\": 3.5}'")
    if isinstance(col.type, Boolean):
        return f"{name} = NOT {name}"
    if isinstance(col.type, (Integer, BigInteger, Float)):
        return f"{name} = {name} + 3"
    if isinstance(col.type, (String, Text)):  # its first letter changed: its length kept
        v = f"COALESCE({name}, '')"
        return (f"{name} = CASE WHEN substr({v}, 1, 1) = 'y' THEN 'z' ELSE 'y' END "
                f"|| substr({v}, 2)")
    return None


@pytest.mark.parametrize("table", ["providers", "hw_claims"])
def test_every_column_a_state_is_built_from_moves_the_version(
        c: Coordinator, table: str) -> None:
    """Column by column, whatever a state is built from: a write of any column of
    ``providers`` or ``hw_claims`` that changes what a fresh build makes of the provider
    (beyond its moving parts, read at every re-read) moves its version. A column that
    ``load`` starts to read, and the triggers of migration 0019 do not cover, fails here."""
    cols = (Provider if table == "providers" else HwClaim).__table__.columns
    moving = {"stake", "load", "reputation"}
    for col in cols:
        if col.name in ("id", "provider_id", "version", "status"):  # the key; the
            continue  # version itself; status has one legal value ('active', its check)
        setter = _changed_value(col)
        if setter is None:
            continue
        pid = provider(c, len(col.name), price=150, slots=2)
        verified(c, pid)
        with c.db.read() as s:
            before = provider_index.load(c, s, [pid])[0]
        assert before and before[0].compute_units == 0.25  # the claim counts
        v = version(c, pid)
        key = "id" if table == "providers" else "provider_id"
        sql(c, f"UPDATE {table} SET {setter} WHERE {key} = :p", p=pid)
        with c.db.read() as s:
            after = provider_index.load(c, s, [pid])[0]

        def fixed(states: list[market.ProviderState]) -> list[Any]:
            return [{k: v for k, v in vars(st).items() if k not in moving} for st in states]

        if fixed(after) != fixed(before):
            assert version(c, pid) != v, f"{table}.{col.name} changes a state, not the version"


def test_load_reads_long_id_lists_in_parts_and_few_changed_by_id(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """An id list longer than ``IN_MAX`` is read in parts (SQLite and PostgreSQL bound a
    statement's parameters); a full read where few providers changed builds those by id,
    one where most did reads every row once. All give what one plain read gives."""
    ids = sorted(provider(c, k, price=100 + k, slots=2, other=k % 2 == 0) for k in range(7))

    def read(ids: list[str] | None, memo: provider_index.Memo | None
             ) -> dict[str, market.ProviderState]:
        with c.db.read() as s:
            return by_id(provider_index.load(c, s, ids, memo=memo)[0])

    want = read(None, None)
    assert set(want) == set(ids)
    monkeypatch.setattr(provider_index, "IN_MAX", 3)
    assert read(ids, None) == want  # 3 + 3 + 1
    memo: provider_index.Memo = {}
    assert read(None, memo) == want and set(memo) == set(ids)  # all changed: every row
    sql(c, "UPDATE offers SET price = 777 WHERE provider_id = :p", p=ids[2])
    want = read(None, None)
    assert want[ids[2]].price_for("embeddings", MODEL) == 777
    assert read(None, memo) == want  # one changed: by id
    assert read(ids, memo) == want
