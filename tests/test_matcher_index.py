"""The matcher's reads and its batched commit (``coordinator.matching``).

``provider_states`` reads plain columns in a few bulk queries: it must agree with a
straightforward read of the ORM rows (the reference below) after registrations,
heartbeats, providers falling silent, leases, bonds and slashes. ``match_once`` plans
a round on a read snapshot and commits it in batches: it must place exactly what
``core.market.place`` decides on the same inputs, and a placement whose task moved
or whose provider filled up between the plan and the commit must be dropped, never
leased twice or over a provider's slots.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from deai.client.keys import Identity
from deai.coordinator import admission, hardware, matching, provider_index
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger, market, wire
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, JobStatus, ProviderStatus, TaskStatus
from deai.store import migrate
from deai.store.models import Assignment, Event, Job, Offer, Provider, Task
from tests.helpers import MODEL

OTHER = "SmolLM2-135M-Instruct"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 heartbeat_timeout=30.0, verify_seed=3), clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    try:
        yield coord
    finally:
        coord.db.dispose()


def provider(c: Coordinator, k: int, *, price: int, slots: int = 1, memory_mb: int = 4096,
             stake: int = 10_000_000, other: bool = False) -> str:
    p = Identity.generate()
    c.faucet(p.id, 50_000_000)
    offers = [wire.OfferIn(workload="embeddings", model=MODEL, price=price)]
    if other:
        offers.append(wire.OfferIn(workload="chat", model=OTHER, price=price + 7))
    c.register(p.id, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=memory_mb),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=slots,
        offers=offers), address=f"10.2.{k}.1")
    if stake:
        c.bond(p.id, stake)
    return p.id


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


def reference_states(c: Coordinator) -> list[market.ProviderState]:
    """What ``provider_states`` must return, read the plain way: ORM rows, one by one."""
    since = c.now() - c.settings.heartbeat_timeout
    with c.db.read() as s:
        rows = s.scalars(select(Provider).where(Provider.status == ProviderStatus.ACTIVE,
                                                Provider.last_seen >= since)).all()
        out = []
        for p in rows:
            offers = tuple(market.Offer(o.workload, o.model, o.price) for o in s.scalars(
                select(Offer).where(Offer.provider_id == p.id)))
            load = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.provider_id == p.id,
                Assignment.status == AssignmentStatus.LEASED)) or 0
            stake = c.settlement.balance(s, ledger.stake(p.id))
            out.append(market.ProviderState(
                id=p.id, online=True, stake=stake, memory_mb=int(p.hardware["memory_mb"]),
                slots=p.slots, load=load, reputation=p.reputation,
                compute_units=p.compute_units, offers=offers, operator=p.operator or p.id,
                origin=p.origin or "", fingerprint=p.fingerprint or "",
                verifier=p.id in c.settings.verifiers))
        return hardware.apply_verified(c, s, out, rows)


def states(c: Coordinator, ids: list[str] | None = None) -> list[market.ProviderState]:
    with c.db.read() as s:
        return matching.provider_states(c, s, ids)


def by_id(xs: list[market.ProviderState]) -> dict[str, market.ProviderState]:
    return {p.id: p for p in xs}


def leased(c: Coordinator) -> dict[str, list[str]]:
    """Task -> the providers holding a live lease on it."""
    out: dict[str, list[str]] = defaultdict(list)
    with c.db.read() as s:
        for tid, pid in s.execute(select(Assignment.task_id, Assignment.provider_id).where(
                Assignment.status == AssignmentStatus.LEASED)):
            out[tid].append(pid)
    return out


def check_slots(c: Coordinator) -> None:
    with c.db.read() as s:
        slots = dict(s.execute(select(Provider.id, Provider.slots)).all())
        for pid, n in s.execute(select(Assignment.provider_id, func.count()).where(
                Assignment.status == AssignmentStatus.LEASED).group_by(Assignment.provider_id)):
            assert n <= slots[pid], f"{pid} holds {n} leases for {slots[pid]} slots"


def test_provider_states_agree_with_a_plain_read_through_every_change(c: Coordinator) -> None:
    rng = random.Random(5)
    ids = [provider(c, k, price=rng.randint(100, 900), slots=rng.randint(1, 3),
                    memory_mb=rng.choice([512, 4096]), stake=rng.choice([0, 10_000_000]),
                    other=k % 2 == 0) for k in range(12)]
    assert by_id(states(c)) == by_id(reference_states(c))
    # Leases: load per provider.
    queue(c, 9)
    matching.match_once(c)
    assert sum(len(v) for v in leased(c).values()) > 0
    assert by_id(states(c)) == by_id(reference_states(c))
    # Time passes: only those that heartbeat stay online; one registers again with
    # other offers and slots; stakes move (bond, slash).
    c.clock.advance(20.0)  # type: ignore[attr-defined]
    for pid in ids[:6]:
        c.heartbeat(pid, [])
    c.clock.advance(15.0)  # type: ignore[attr-defined]
    provider_again = ids[1]
    c.register(provider_again, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=8192),
        benchmark=wire.Benchmark(gflops=80.0, mem_gbps=10.0), threads=1, slots=4,
        offers=[wire.OfferIn(workload="chat", model=OTHER, price=333)]),
        address="10.9.9.1")
    c.bond(ids[2], 5_000_000)
    c.bond(ids[3], 5_000_000)
    c.db.run(lambda s: c.settlement.slash(s, ids[3], 4_000_000, None, 0, {"why": "test"}))
    got, want = by_id(states(c)), by_id(reference_states(c))
    assert got == want
    assert set(got) == set(ids[:6])  # the silent ones are gone
    assert got[provider_again].slots == 4 and got[provider_again].offers == (
        market.Offer("chat", OTHER, 333),)
    # Only some asked for: the same states, restricted.
    some = [ids[0], ids[4], ids[9]]
    assert by_id(states(c, some)) == {k: v for k, v in want.items() if k in some}


def test_a_round_places_what_core_market_place_decides(c: Coordinator) -> None:
    rng = random.Random(9)
    for k in range(15):
        provider(c, k, price=rng.randint(100, 1900), slots=rng.randint(1, 3),
                 stake=rng.choice([0, 10_000_000, 10_000_000]))
    tids = queue(c, 30, max_price=1500)
    with c.db.read() as s:
        rows = s.execute(select(Task, Job).join(Job).where(Task.id.in_(tids))
                         .order_by(Task.idx)).all()
        demands = [matching.demand(c, j, t) for t, j in rows]
        expected = market.place(demands, [p for p in matching.provider_states(c, s)
                                          if not p.verifier],
                                c.settings.min_stake, c.settings.strategy)
    assert expected, "the market should place something"
    placed = matching.match_once(c)
    got = leased(c)
    assert {t: ps for t, ps in got.items()} == {p.task_id: [p.provider_id] for p in expected}
    assert placed == sorted({p.provider_id for p in expected})
    with c.db.read() as s:
        prices = dict(s.execute(select(Assignment.task_id, Assignment.price)).all())
        queued = set(s.scalars(select(Task.id).where(Task.status == TaskStatus.QUEUED)))
    assert prices == {p.task_id: p.price for p in expected}
    assert queued == set(tids) - {p.task_id for p in expected}
    check_slots(c)
    # One ``task_assigned`` event a lease, in the order they were placed, saying what
    # its row says (the database builds them from the rows: ``_insert_leases``).
    with c.db.read() as s:
        rows = {a.task_id: a for a in s.scalars(select(Assignment))}
        events = s.scalars(select(Event).where(Event.kind == "task_assigned")
                           .order_by(Event.id)).all()
        assert [e.subject for e in events] == [p.task_id for p in expected]
        for e in events:
            a = rows[e.subject]
            assert e.ts == a.leased_at
            assert e.body == {"job": a.job_id, "provider": a.provider_id, "price": a.price,
                              "role": "primary"}


def test_a_placement_that_went_stale_between_plan_and_commit_is_dropped(
        c: Coordinator) -> None:
    best = provider(c, 0, price=100)
    second = provider(c, 1, price=200)
    third = provider(c, 2, price=300)
    t0, t1, t2 = queue(c, 3)
    idx = provider_index.of(c)
    plan = matching._plan(c, idx)
    assert plan is not None
    placements, seen, demands, planned = plan
    assert [(p.task_id, p.provider_id) for p in placements] == [
        (t0, best), (t1, second), (t2, third)]
    # Between the plan and its commit, a /v1-style placement takes t2, on the best
    # provider (its only slot): the round must neither lease t2 again nor put t0 on
    # the now full provider.
    with c.db.write() as s:
        task = s.get(Task, t2)
        assert task is not None
        job = s.get(Job, task.job_id)
        assert job is not None
        assert matching.place_now(c, s, task, job) == best
    done, real, stale = c.db.run(lambda s: matching._commit(
        c, s, idx=idx, part=placements, seen=seen, demands=demands, planned=planned))
    assert [(p.task_id, p.provider_id) for p in done] == [(t1, second)]
    assert real == 1
    assert stale == 1  # t0's provider, full since the plan (its index entry was not)
    assert leased(c) == {t1: [second], t2: [best]}
    check_slots(c)
    # The dropped task waits for the next round, which finds it a free provider.
    assert matching.match_once(c) == [third]
    assert leased(c) == {t0: [third], t1: [second], t2: [best]}
    check_slots(c)


def test_a_task_cancelled_after_the_plan_is_not_leased(c: Coordinator) -> None:
    provider(c, 0, price=100, slots=3)
    tids = queue(c, 2)
    idx = provider_index.of(c)
    plan = matching._plan(c, idx)
    assert plan is not None
    placements, seen, demands, planned = plan
    with c.db.read() as s:
        owner = s.scalars(select(Job.owner).join(Task).where(Task.id == tids[0])).one()
        job_id = s.scalars(select(Task.job_id).where(Task.id == tids[0])).one()
    from deai.coordinator import jobs
    jobs.cancel(c, owner, job_id)
    done, _, _ = c.db.run(lambda s: matching._commit(
        c, s, idx=idx, part=placements, seen=seen, demands=demands, planned=planned))
    assert done == []
    assert leased(c) == {}


def test_a_batch_that_loses_a_race_is_run_again_from_the_plan(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's first attempt writes its moves, then fails as a lost race does; the
    re-run starts from the plan's rows again (nothing of the failed attempt is kept in
    memory): each task leased once, moved once, its job started once."""
    pids = [provider(c, k, price=100 + k, slots=2) for k in range(3)]
    tids = queue(c, 5)
    real = matching.effects.placed_many
    calls = []

    def lose_first(*a: object, **kw: object) -> None:
        real(*a, **kw)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE tasks ...", {}, Exception("database is locked"))

    monkeypatch.setattr(matching.effects, "placed_many", lose_first)
    retries = c.db.retries
    assert set(matching.match_once(c)) <= set(pids)
    assert len(calls) == 2 and c.db.retries == retries + 1
    assert sorted(leased(c)) == sorted(tids)
    assert all(len(v) == 1 for v in leased(c).values())
    with c.db.read() as s:
        rows = s.execute(select(Task.status, Task.attempts).where(Task.id.in_(tids))).all()
        job = s.scalars(select(Job.status).join(Task).where(Task.id == tids[0])).one()
    assert rows and all(st == TaskStatus.ASSIGNED and n == 1 for st, n in rows)
    assert job == JobStatus.RUNNING
    check_slots(c)


def test_a_round_wakes_whom_it_leased_to_even_when_a_later_batch_fails(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``match_once`` wakes each provider it leased to once, after the round's batches;
    when a later batch fails for good, the providers of the batches already committed
    are still woken (their long-polls would otherwise wait out their timeout)."""
    pids = [provider(c, k, price=100 + k, slots=40) for k in range(4)]
    queue(c, 6)
    woken: list[list[str]] = []
    monkeypatch.setattr(c.notifier, "wake", lambda ids: woken.append(list(ids)))
    placed = matching.match_once(c)
    assert woken == [placed] and placed and set(placed) <= set(pids)

    tids = queue(c, 100)  # more than a first batch (64): a second one follows
    real, calls = matching._commit, []

    def fail_second(*a: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a batch that fails for good")
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(matching, "_commit", fail_second)
    woken.clear()
    with pytest.raises(RuntimeError):
        matching.match_once(c)
    now = leased(c)
    holders = sorted({pid for tid in tids for pid in now.get(tid, [])})
    assert holders and woken == [holders]
    check_slots(c)


def test_a_wanted_replica_is_leased_by_the_batched_commit_to_another_identity(
        c: Coordinator) -> None:
    from deai.core.lifecycle import Role
    # Hardware that differs, so no two share a fingerprint (``core.diversity``).
    first = provider(c, 0, price=100)
    others = {provider(c, k, price=100 + k, memory_mb=4096 + k) for k in (1, 2, 3)}
    (tid,) = queue(c, 1)
    assert matching.match_once(c) == [first]
    # The primary's result is in and the task waits for a replica (what
    # ``jobs.submit_result`` leaves behind under full replication).
    out = c.blobs.put(b"result")
    with c.db.write() as s:
        a = s.scalars(select(Assignment).where(Assignment.task_id == tid)).one()
        a.status, a.output_digest, a.units = AssignmentStatus.SUBMITTED, out, 1
        t = s.get(Task, tid)
        assert t is not None
        t.status, t.pending_role, t.updated_at = TaskStatus.VERIFYING, Role.REPLICA, c.now()
        primary = a.id
    placed = matching.match_once(c)
    assert len(placed) == 1 and placed[0] in others
    with c.db.read() as s:
        r = s.scalars(select(Assignment).where(Assignment.task_id == tid,
                                               Assignment.role == Role.REPLICA)).one()
        t = s.get(Task, tid)
        assert t is not None and t.pending_role is None and t.status == TaskStatus.VERIFYING
        got = (r.provider_id, r.check_of, r.status)
    assert got == (placed[0], primary, AssignmentStatus.LEASED)
    check_slots(c)


def test_a_checker_that_noticed_a_forced_error_may_run_the_real_check(
        c: Coordinator) -> None:
    """A forced error shows the checker only the network's forged claim; the checker that
    noticed it is not a party to the task, so with one eligible checker the real check
    still finds it (before, every forced error used up one checker for good)."""
    from deai.core.lifecycle import Role
    first = provider(c, 0, price=100)
    checker = provider(c, 1, price=101, memory_mb=4097)
    (tid,) = queue(c, 1)
    assert matching.match_once(c) == [first]
    out = c.blobs.put(b"result")
    with c.db.write() as s:
        a = s.scalars(select(Assignment).where(Assignment.task_id == tid)).one()
        a.status, a.output_digest, a.units = AssignmentStatus.SUBMITTED, out, 1
        # The checker was handed a forged claim, noticed it and was paid (``on_forced``).
        s.add(Assignment(id="asg_forced", task_id=tid, job_id=a.job_id, provider_id=checker,
                         role=Role.REPLICA, status=AssignmentStatus.ACCEPTED, price=101,
                         leased_at=c.now(), lease_deadline=c.now() + 60, delivered=True,
                         check_of=a.id, forced={"token": 1}, units=1))
        t = s.get(Task, tid)
        assert t is not None
        t.status, t.pending_role, t.updated_at = TaskStatus.VERIFYING, Role.REPLICA, c.now()
    assert matching.match_once(c) == [checker]
    with c.db.read() as s:
        real = s.scalars(select(Assignment).where(
            Assignment.task_id == tid, Assignment.role == Role.REPLICA,
            Assignment.status == AssignmentStatus.LEASED)).one()
        assert real.provider_id == checker and real.forced is None


def test_a_verifier_that_audited_a_task_may_audit_it_again(tmp_path: Path) -> None:
    """A look-back can ask for an audit of a result the only verifier audited before (the
    caught provider was its checker): the verifier is not a conflicting party, or the
    task would wait for an auditor for ever (found by the live rubber-stamper test)."""
    from deai.core.lifecycle import Role
    v = Identity.generate()
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True, heartbeat_timeout=30.0,
                             verify_seed=3, verifiers=frozenset({v.id})), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    try:
        first = provider(c, 0, price=100)
        c.register(v.id, wire.RegisterIn(
            hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=8192),
            benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=1,
            offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=0)]),
            address="10.9.0.1")
        (tid,) = queue(c, 1)
        assert matching.match_once(c) == [first]
        out = c.blobs.put(b"result")
        with c.db.write() as s:
            a = s.scalars(select(Assignment).where(Assignment.task_id == tid)).one()
            a.status, a.output_digest, a.units = AssignmentStatus.ACCEPTED, out, 1
            s.add(Assignment(id="asg_audited", task_id=tid, job_id=a.job_id, provider_id=v.id,
                             role=Role.AUDIT, status=AssignmentStatus.ACCEPTED, price=0,
                             leased_at=c.now(), lease_deadline=c.now() + 60, delivered=True,
                             check_of=a.id, output_digest=out, units=1))
            t = s.get(Task, tid)
            assert t is not None
            t.status, t.output_digest = TaskStatus.DONE, out
            t.pending_role, t.updated_at = Role.AUDIT, c.now()  # queued again by a look-back
        assert matching.match_once(c) == [v.id]
        with c.db.read() as s:
            again = s.scalars(select(Assignment).where(
                Assignment.task_id == tid, Assignment.status == AssignmentStatus.LEASED)).one()
            assert (again.provider_id, again.role) == (v.id, Role.AUDIT)
    finally:
        c.db.dispose()


def test_a_task_that_cannot_be_planned_is_left_out_and_the_rest_placed(
        c: Coordinator) -> None:
    """A queued job whose model the catalog no longer knows (an upgrade dropped it): its
    tasks raise when planned. They are left out of the round (and logged), and every
    other task is placed; before, the round failed, every round, and nobody got work."""
    for k in range(4):
        provider(c, k, price=100, slots=2)
    good = queue(c, 3)
    bad = queue(c, 2)
    with c.db.write() as s:
        s.execute(update(Job).where(Job.id == select(Task.job_id).where(
            Task.id == bad[0]).scalar_subquery()).values(model="a-model-since-removed"))
    matching.match_once(c)
    got = leased(c)
    assert set(got) == set(good) and not set(got) & set(bad)
    check_slots(c)


def test_leases_ids_sort_by_when_they_were_made(c: Coordinator) -> None:
    """A round's leases land at the end of ``assignments``' primary key, not at random
    places in it (a page written per lease once the table is large): their ids sort by
    the time they were made, and still carry 64 random bits each."""
    import time

    for k in range(6):
        provider(c, k, price=1000, slots=2)
    queue(c, 6)
    matching.match_once(c)
    with c.db.read() as s:
        first = set(s.scalars(select(Assignment.id)))
    time.sleep(0.005)  # the next round's ids in a later millisecond
    queue(c, 6)
    matching.match_once(c)
    with c.db.read() as s:
        second = set(s.scalars(select(Assignment.id))) - first
    assert len(first) == len(second) == 6
    assert max(first) < min(second)
    ids = [*first, *second]
    assert all(len(i) <= Assignment.__table__.c.id.type.length for i in ids)
    assert len({i[-16:] for i in ids}) == len(ids)  # the random part: not a counter
