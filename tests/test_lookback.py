"""Look-back: which of a caught provider's results are re-checked, and what follows.

Core's reach (``core.verify.lookback``) as examples and properties; the simulator's
array version proven equal to it; the simulator showing what each reach leaves
standing; and the coordinator's applier on a real database: a result past its
challenge window, its earnings released, is queued again when its provider is
caught, a verifier proves it wrong, the shard is corrected and the earnings are
clawed back through the journal (balance first, then stake; nothing negative).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from deai.coordinator import jobs, lookback
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.lifecycle import JobStatus, Role
from deai.core.lifecycle import decide as D
from deai.core.lifecycle import effects as E
from deai.core.verify.lookback import Marks, Reach, batch, in_reach, since
from deai.core.verify.lookback import select as pick
from deai.sim import agents, vec
from deai.sim.engine import Network, World
from deai.store import journal
from deai.store.models import (
    ApiBatch,
    ApiFile,
    Assignment,
    Event,
    Job,
    JournalEntry,
    Payout,
    Task,
)
from tests.lifecycle_worlds import DbWorld

W = 3600.0


# --- core --------------------------------------------------------------------------------------

def test_each_reach_by_example() -> None:
    now = 10_000.0
    never = Marks()
    assert since(Reach.WINDOW, never, now=now, window=W) == now - W
    assert since(Reach.RECORD, never, now=now, window=W) == -math.inf  # its whole record
    assert since(Reach.LAST_PASS, never, now=now, window=W) == -math.inf
    marks = Marks(last_pass=9_000.0, last_review=1_000.0)
    # a pass inside the window: the window is still covered in full
    assert since(Reach.LAST_PASS, marks, now=now, window=W) == now - W
    assert since(Reach.LAST_PASS, Marks(last_pass=2_000.0), now=now, window=W) == 2_000.0
    assert since(Reach.RECORD, marks, now=now, window=W) == 1_000.0
    results = [("c", 9_500.0), ("a", 500.0), ("b", 1_500.0), ("d", 6_000.0)]
    assert pick(results, Reach.WINDOW, marks, now=now, window=W) == ["c"]
    assert pick(results, Reach.LAST_PASS, marks, now=now, window=W) == ["c"]
    earlier = Marks(last_pass=5_000.0, last_review=1_000.0)  # a pass before the window
    assert pick(results, Reach.LAST_PASS, earlier, now=now, window=W) == ["d", "c"]
    assert pick(results, Reach.RECORD, earlier, now=now, window=W) == ["b", "d", "c"]
    with pytest.raises(ValueError):
        since(Reach.RECORD, marks, now=now, window=-1.0)


times = st.floats(0.0, 1e7, allow_nan=False)
maybe = st.none() | times


@settings(max_examples=300, deadline=None)
@given(reach=st.sampled_from(list(Reach)), last_pass=maybe, last_review=maybe, now=times,
       window=st.floats(0.0, 1e6, allow_nan=False), accepted=times)
def test_every_reach_covers_the_window_and_only_grows_back(
        reach: Reach, last_pass: float | None, last_review: float | None, now: float,
        window: float, accepted: float) -> None:
    marks = Marks(last_pass, last_review)
    inside = now - window <= accepted
    if inside:
        assert in_reach(accepted, reach, marks, now=now, window=window)
    # the record reaches at least as far back as the window alone
    assert (since(reach, marks, now=now, window=window)
            <= since(Reach.WINDOW, marks, now=now, window=window))
    # the sim's arrays agree with core
    a = vec.look_back_since(reach, np.array([np.nan if last_pass is None else last_pass]),
                            np.array([np.nan if last_review is None else last_review]),
                            now=now, window=window)
    assert a[0] == since(reach, marks, now=now, window=window)


# --- the simulator --------------------------------------------------------------------------------

def _rare(reach: Reach, seed: int = 3) -> tuple[Network, np.ndarray]:
    w = World(window_tasks=10, churn=False, look_back=reach)
    slots = np.concatenate([np.zeros(100, np.int64), np.ones(100, np.int64)])
    net = Network(w, [agents.HONEST, replace(agents.RARE, cheat_rate=0.05)], slots,
                  np.random.default_rng(seed))
    for _ in range(300):
        net.step()
    return net, slots


def test_the_sims_reach_decides_what_stands() -> None:
    """Same draws, three reaches: only the record leaves nothing standing, and every
    wrong result is then corrected, still in the window, or awaiting its provider's catch."""
    window, last_pass, record = (_rare(r)[0] for r in
                                 (Reach.WINDOW, Reach.LAST_PASS, Reach.RECORD))
    bad = window.bad_accepted.sum()
    assert bad > 0 and record.bad_accepted.sum() == bad  # the reach changes no draw
    assert window.standing.sum() > 0 and last_pass.standing.sum() > 0
    assert record.standing.sum() == 0
    assert record.corrected.sum() > window.corrected.sum()
    left = record.provisional().sum() + record.reachable().sum()
    assert record.corrected.sum() + left == bad
    # what stays reachable at the end belongs to cheaters not caught yet
    net, slots = _rare(Reach.RECORD)
    caught = {s for s, _, _ in net.catches}
    for s in np.flatnonzero(net.reachable() > 0):
        assert s not in caught and slots[s] == 1


# --- the coordinator ---------------------------------------------------------------------------

def _accept_unchecked(w: DbWorld) -> str:
    """p0's result is accepted without a check: the job completes, p0 is paid."""
    seat = w.seat(Role.PRIMARY)
    w.apply(D.on_placed(w.ctx(), Role.PRIMARY))
    w.apply(D.on_primary(w.ctx(), D.Party(seat.id, seat.provider, Role.PRIMARY),
                         replicate=False, rho=0.0))
    return seat.provider


def _balances(w: DbWorld, *accounts: str) -> list[int]:
    with w.c.db.read() as s:
        return [journal.balance(s, a) for a in accounts]


def test_a_look_back_reaches_past_the_window_and_claws_back_released_earnings(
        tmp_path: Path) -> None:
    w = DbWorld(tmp_path)
    clock = w.c.clock
    assert isinstance(clock, ManualClock)
    p0 = _accept_unchecked(w)
    with w.c.db.read() as s:
        job = s.get(Job, w.job_id)
        assert job is not None and job.status == JobStatus.COMPLETED
        paid, cost = job.cost, job.cost
        wrong = job.output_digest
    clock.advance(w.c.settings.challenge_window + 1)
    assert jobs.release_earnings(w.c) == 1
    acct0, stake0 = _balances(w, ledger.acct(p0), ledger.stake(p0))
    client0 = _balances(w, ledger.acct(w.client))[0]
    assert acct0 > 0

    # the job was a /v1 batch: its output file is the (wrong) result for now
    with w.c.db.write() as s:
        s.add(ApiFile(id="file-out", account=w.client, purpose="batch_output",
                      filename="out.jsonl", size=1, digest=wrong, created_at=clock.now()))
        s.add(ApiBatch(id="batch_1", account=w.client, api_key_id="k", endpoint="/v1/embeddings",
                       input_file_id="file-in", job_id=w.job_id, completion_window="24h",
                       created_at=clock.now(), output_file_id="file-out"))

    # p0 is caught elsewhere: its look-back reaches this result, past the window
    clock.advance(10)
    w.apply([E.LookBack(p0)])
    assert w.need() == Role.AUDIT
    with w.c.db.read() as s:
        ev = s.scalars(select(Event).where(Event.kind == "look_back")).one()
        assert ev.body["tasks"] == 1 and ev.body["past_window"] == 1
        assert ev.body["since"] is None  # never looked back at before: its whole record
        assert lookback.marks(s, p0).last_review == ev.ts

    # a trusted verifier re-runs it and disagrees: slash, correct, claw back
    audit = w.seat(Role.AUDIT)
    fixed = w.c.blobs.put(b'{"custom_id": "r0", "embeddings": [[0.25]], "prompt_tokens": 4}\n')
    with w.c.db.write() as s:
        a = s.get(Assignment, audit.id)
        assert a is not None
        a.output_digest = fixed
    w.apply(D.on_audit(w.ctx(), D.Party(audit.id, audit.provider, Role.AUDIT),
                       [D.Party("asg_0", p0, Role.PRIMARY)], match=False, evidence={}))
    acct1, stake1 = _balances(w, ledger.acct(p0), ledger.stake(p0))
    client1 = _balances(w, ledger.acct(w.client))[0]
    with w.c.db.read() as s:
        job = s.get(Job, w.job_id)
        task = s.get(Task, w.task_id)
        assert job is not None and task is not None
        assert task.output_digest == fixed and job.output_digest != wrong
        out = s.get(ApiFile, "file-out")  # the batch's output file follows the correction
        assert out is not None and out.digest == job.output_digest
        claw = s.scalars(select(JournalEntry).where(JournalEntry.kind == "clawback")).one()
        body = claw.body
        assert body["from_balance"] == acct0  # the balance first, all of it here
        assert body["from_balance"] + body["from_stake"] + body["from_treasury"] == paid
        assert client1 - client0 == paid  # the client paid nothing for the wrong shard
        assert job.cost == cost - paid
        payout = s.scalars(select(Payout).where(Payout.provider_id == p0)).one()
        assert payout.forfeited
        slash = s.scalars(select(Event).where(Event.kind == "slash")).one()
        assert slash.body["clawed_back"] == paid
        assert s.scalars(select(Event).where(Event.kind == "result_corrected")).one()
        entries = [journal.to_entry(r) for r in s.scalars(
            select(JournalEntry).order_by(JournalEntry.seq))]
    assert acct1 == 0 and stake1 >= 0 and stake1 < stake0
    rep = ledger.audit(entries)
    assert rep.ok, rep.problems

    # caught again later: nothing before that look-back is queued a second time
    clock.advance(w.c.settings.challenge_window + 1)
    w.apply([E.LookBack(p0)])
    with w.c.db.read() as s:
        last = s.scalars(select(Event).where(Event.kind == "look_back")
                         .order_by(Event.id.desc())).first()
        assert last is not None and last.body["tasks"] == 0


def test_a_clawback_never_takes_an_account_below_zero() -> None:
    d = ledger.clawback("p", "j", "t", 5, 7, 3, ledger.acct("c"))
    assert sum(v for _, v in d.postings) == 0
    assert dict(d.postings) == {ledger.acct("p"): -5, ledger.stake("p"): -7, ledger.FEE: -3,
                                ledger.acct("c"): 15}
    with pytest.raises(ValueError):
        ledger.clawback("p", "j", "t", -1, 7, 3, ledger.acct("c"))


# --- the rate: a batch at a time, newest first, nothing dropped ---------------------------------

def test_batch_splits_newest_first_and_keeps_everything() -> None:
    picked = [("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 3.0)]
    assert batch(picked, 2) == (["b", "d"], ["c", "a"])
    assert batch(picked, 10) == (["b", "d", "c", "a"], [])
    with pytest.raises(ValueError):
        batch(picked, 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=3), st.floats(0, 100)),
                unique_by=lambda x: x[0], max_size=30), st.integers(1, 40))
def test_a_batch_and_its_backlog_are_the_whole_look_back(
        picked: list[tuple[str, float]], cap: int) -> None:
    now, rest = batch(picked, cap)
    assert len(now) == min(cap, len(picked)) and sorted(now + rest) == sorted(k for k, _ in picked)
    when = dict(picked)
    assert all(when[a] >= when[b] for a in now for b in rest)


def _more_results(w: DbWorld, n: int) -> list[str]:
    """``n`` more accepted results of the first seat's provider, one a second apart,
    copied from the one ``_accept_unchecked`` produced; their task ids, oldest first."""
    ids = []
    with w.c.db.write() as s:
        task = s.get(Task, w.task_id)
        asg = s.get(Assignment, "asg_0")
        pay = s.scalars(select(Payout).where(Payout.assignment_id == "asg_0")).one()
        assert task is not None and asg is not None
        for i in range(1, n + 1):
            def copy(row: object, **update: object) -> dict[str, object]:
                cols = type(row).__table__.columns  # type: ignore[attr-defined]
                return {c.name: getattr(row, c.name) for c in cols} | update
            tid = f"{w.task_id}-{i}"
            s.add(Task(**copy(task, id=tid, idx=task.idx + i)))
            s.flush()  # the task before what refers to it
            s.add(Assignment(**copy(asg, id=f"asg_0-{i}", task_id=tid)))
            s.add(Payout(**copy(pay, id=None, assignment_id=f"asg_0-{i}", task_id=tid,
                                release_at=pay.release_at + i)))
            ids.append(tid)
    return [w.task_id, *ids]


def test_a_long_record_is_looked_back_at_a_batch_at_a_time(tmp_path: Path) -> None:
    """A look-back over 5 results with a batch of 2 queues the 2 newest; the upkeep
    queues the next 2 only once the verifiers have taken the first (none waits to be
    placed), then the last one; every result is queued exactly once, newest first, and
    until the backlog is done a new catch still reaches back to the beginning."""
    w = DbWorld(tmp_path)
    w.c.settings = replace(w.c.settings, look_back_batch=2)
    p0 = _accept_unchecked(w)
    order = _more_results(w, 4)[::-1]  # newest first
    clock = w.c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(10)

    def queued() -> list[str]:
        with w.c.db.read() as s:
            return sorted(t.id for t in s.scalars(select(Task).where(
                Task.pending_role == Role.AUDIT)))

    def placed() -> None:  # what placing an audit does to the task's pending role
        with w.c.db.write() as s:
            for t in s.scalars(select(Task).where(Task.pending_role == Role.AUDIT)):
                t.pending_role = None

    def last_event() -> dict[str, object]:
        with w.c.db.read() as s:
            ev = s.scalars(select(Event).where(Event.kind == "look_back")
                           .order_by(Event.id.desc())).first()
            assert ev is not None
            return dict(ev.body)

    w.apply([E.LookBack(p0)])
    assert queued() == sorted(order[:2])
    assert last_event()["tasks"] == 2 and last_event()["backlog"] == 3
    with w.c.db.read() as s:
        assert lookback.marks(s, p0).last_review is None  # not covered yet
    assert lookback.resume(w.c) == 0  # the first batch still waits to be placed
    placed()
    assert lookback.resume(w.c) == 2 and queued() == sorted(order[2:4])
    assert last_event()["backlog"] == 1
    placed()
    assert lookback.resume(w.c) == 1 and queued() == [order[4]]
    first_at = last_event()["at"]
    assert last_event()["backlog"] == 0
    placed()
    assert lookback.resume(w.c) == 0 and queued() == []  # done: nothing queued twice
    with w.c.db.read() as s:
        assert lookback.marks(s, p0).last_review == first_at  # the review's own time
