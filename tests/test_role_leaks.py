"""Role-reader leaks closed: an audit's verdict holds the earnings, and jobs that can
never be canaries (which anyone can tell) are staked without the canary share.

The public job faces while a lease is held (a replica's shard, a canary's deadline)
are asserted in ``tests/test_blind.py``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from deai.coordinator import admission, canaries, jobs, matching
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import market, specs
from deai.core.lifecycle import AssignmentStatus, Role
from deai.core.money import cost_for_units
from deai.core.verify import economics, policy
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.store import migrate
from deai.store.models import Assignment, Canary, Job, Task
from tests.helpers import MODEL, audited_job
from tests.netutil import Network

WINDOW = 4.0
ESTABLISHED = Reputation(cv=2**31)  # at the replication floor, as matching sizes stakes


def payouts(net: Network, job_id: str) -> list[tuple[str, int]]:
    db = sqlite3.connect(net.root / "coordinator" / "deai.sqlite3")
    try:
        return db.execute("SELECT provider_id, released FROM payouts WHERE job_id = ?",
                          (job_id,)).fetchall()
    finally:
        db.close()


def test_earnings_wait_while_an_audit_is_leased_and_the_job_reads_final_only_after(
        tmp_path: Path) -> None:
    """``decide.on_placed`` clears a task's wanted role once its audit is leased; before,
    the job then read final and its earnings were released a window after it finished,
    while the verifier still held the audit: a cheater could withdraw before the
    verdict. And publicly the job reads final a window after it finished whatever waits
    (a blank ``final_at`` told its providers an audit was coming)."""
    with audited_job(tmp_path, heartbeat_timeout=30.0, lease_ttl=60.0,
                     challenge_window=WINDOW) as w:
        net, v, c, job = w.net, w.verifier, w.owner, w.job
        face = httpx.get(f"{net.url}/api/explorer/jobs/{job}").json()["job"]
        assert face["final"] is False
        assert face["final_at"] == pytest.approx(face["finished_at"] + WINDOW), face

        audit = v.take_one(within=30.0)  # held, not answered yet
        held_until = c.job(job).finished_at + WINDOW + 3.0  # past the window, and a tick
        while time.time() < held_until:
            v.c.heartbeat([audit.id])
            time.sleep(0.5)
        assert payouts(net, job) and not any(r for _, r in payouts(net, job)), \
            "earnings released while the audit was still leased"
        out = c.job(job)
        assert not out.final and out.final_at is None, out

        v.answer(audit)  # the honest answer: the audit passes
        end = time.time() + 20
        while not all(r for _, r in payouts(net, job)) or not c.job(job).final:
            assert time.time() < end, (payouts(net, job), c.job(job))
            time.sleep(0.3)


# --- stakes for jobs that can never be canaries ------------------------------------------

def test_a_job_that_can_never_be_a_canary_is_one_anyone_can_tell() -> None:
    assert policy.may_be_canary({"kind": "embeddings"}, policy.MAX_CANARY_SHARDS)
    assert not policy.may_be_canary({"kind": "embeddings"}, policy.MAX_CANARY_SHARDS + 1)
    assert not policy.may_be_canary({"sealed": True}, 1)
    assert not policy.may_be_canary({"dataset_id": "ds_1"}, 1)


@given(value=st.integers(1, 10**12))
def test_at_the_stake_without_the_canary_share_cheating_loses(value: int) -> None:
    """p = 1 − (1 − ρ)(1 − a) for a job no canary can imitate: at the stake sized with
    it, a cheated task has negative expected profit; at the stake sized with q (what
    matching asked for before) it did not, for any value worth a micro-unit of stake."""
    vp = VerifyParams()
    p_none = policy.check_probability(ESTABLISHED, vp, canary=False)
    rho = policy.replication_probability(ESTABLISHED, vp)
    assert p_none == pytest.approx(1 - (1 - rho) * (1 - vp.audit_share))
    stake = market.stake_for(value, vp.slash_fraction, p_none)
    loss = int(stake * vp.slash_fraction)
    assert economics.expected_profit_per_cheat(value, loss, p_none) < 0
    with_q = market.stake_for(value, vp.slash_fraction,
                              policy.check_probability(ESTABLISHED, vp))
    assert with_q <= stake
    if value >= 1000:
        assert economics.expected_profit_per_cheat(
            value, int(with_q * vp.slash_fraction), p_none) > 0


def _job(c: Coordinator, spec: dict[str, Any], shards: int) -> str:
    def create(s: Any) -> str:
        job, _ = admission.create(
            c, s, owner="client", kind="embeddings", model=MODEL, spec=spec,
            input_digest="0" * 64, max_price=2000,
            shards=[admission.ShardIn(f"{i:064x}", 1, 1000) for i in range(shards)],
            escrow=0, deadline=600)
        return job.id
    return c.db.run(create)


def test_matching_stakes_jobs_that_can_never_be_canaries_without_the_canary_share(
        tmp_path: Path) -> None:
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    migrate.upgrade(c.db.engine)
    try:
        _stakes(c)
    finally:
        c.db.dispose()


def _stakes(c: Coordinator) -> None:
    vp = c.settings.verify
    value = cost_for_units(1000, 2000)
    plain = {"kind": "embeddings", "model": MODEL, "max_price": 2000}
    cases = {
        _job(c, plain, policy.MAX_CANARY_SHARDS): policy.check_probability(ESTABLISHED, vp),
        _job(c, plain, policy.MAX_CANARY_SHARDS + 1):
            policy.check_probability(ESTABLISHED, vp, canary=False),
        _job(c, {**plain, "sealed": True}, 1):
            policy.check_probability(ESTABLISHED, vp, canary=False),
        _job(c, {**plain, "dataset_id": "ds_x"}, 1):
            policy.check_probability(ESTABLISHED, vp, canary=False),
        # shorter than any canary source's (``canaries.min_deadline``): never imitated
        _job(c, {**plain, "deadline": 60}, 1):
            policy.check_probability(ESTABLISHED, vp, canary=False),
    }
    with c.db.read() as s:
        round_of = matching._Demands(c)  # a matching round's: every job's shards at once
        round_of.know(s, [s.get(Job, job_id) for job_id in cases])
        for job_id, p in cases.items():
            job = s.get(Job, job_id)
            assert job is not None
            for task in s.scalars(select(Task).where(Task.job_id == job_id)):
                want = market.stake_for(value, vp.slash_fraction, p)
                assert matching.demand(c, job, task).stake_needed == want, (job.spec, task.idx)
                assert round_of(job, task).stake_needed == want, (job.spec, task.idx)
    big = [j for j in cases if cases[j] < policy.check_probability(ESTABLISHED, vp)]
    assert len(big) == 4


def test_a_quote_asks_the_stake_matching_will(tmp_path: Path) -> None:
    """Admission quotes with the stake matching then asks for: a job that can never be a
    canary was quoted with the canary share, so it could be admitted on providers whose
    stake matching then refused, and wait for ever."""
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    migrate.upgrade(c.db.engine)
    try:
        vp = c.settings.verify
        value = cost_for_units(1000, 2000)
        spec = specs.parse_spec({"kind": "embeddings", "model": MODEL, "max_price": 2000})
        for shards, canary in ((policy.MAX_CANARY_SHARDS, True),
                               (policy.MAX_CANARY_SHARDS + 1, False)):
            need = jobs._demand(c, spec, [1000] * shards).stake_needed
            p = policy.check_probability(ESTABLISHED, vp, canary=canary)
            assert need == market.stake_for(value, vp.slash_fraction, p), shards
    finally:
        c.db.dispose()


# --- canaries' deadlines -------------------------------------------------------------------

def test_canaries_are_drawn_only_from_sources_with_time_for_a_verdict(tmp_path: Path) -> None:
    """A canary takes its source job's deadline (a span no client job has would name it),
    counted from planting. A source of a short deadline made canaries that expired while
    queued or waiting for a referee (failed, nobody slashed) yet counted in the canary
    share: such sources are neither remembered nor drawn."""
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    migrate.upgrade(c.db.engine)
    try:
        floor = canaries.min_deadline(c)
        assert floor >= max(600.0, c.settings.verify_timeout + c.settings.lease_ttl)
        plain = {"kind": "embeddings", "model": MODEL, "max_price": 2000}
        with c.db.write() as s:
            for i, deadline in enumerate((60, int(floor) - 1, int(floor), 3600)):
                s.add(Canary(kind="embeddings", model=MODEL,
                             spec={**plain, "deadline": deadline}, input_digest=f"{i:064x}",
                             output_digest="a" * 64, items=1, units=1,
                             source_task=f"t{i}", created_at=0.0, active=True, uses=0))
        client_id = _job(c, {**plain, "deadline": 60}, 1)
        client = c.db.run(lambda s: s.get(Job, client_id))
        for _ in range(20):
            c.db.run(lambda s: canaries.plant_jobs(c, s, 1, [client]))
        with c.db.read() as s:
            used = {r.spec["deadline"]: r.uses for r in s.scalars(select(Canary))}
            spans = {j.deadline_at - j.created_at for j in s.scalars(
                select(Job).where(Job.owner == admission.NETWORK))}
        with c.db.write() as s:
            short = s.scalars(select(Job).where(Job.id == client.id)).one()
            task = s.scalars(select(Task).where(Task.job_id == client.id)).one()
            a = Assignment(id="asg_x", task_id=task.id, job_id=client.id,
                           provider_id="p", role=Role.PRIMARY,
                           status=AssignmentStatus.ACCEPTED, price=1, leased_at=0.0,
                           lease_deadline=1.0, delivered=True, output_digest="b" * 64)
            before = s.scalar(select(func.count()).select_from(Canary))
            canaries.remember(c, s, short, task, a)  # a short deadline: not remembered
            assert s.scalar(select(func.count()).select_from(Canary)) == before
        assert used[60] == used[int(floor) - 1] == 0
        assert used[int(floor)] + used[3600] >= 20
        assert spans <= {floor, 3600.0}  # each canary its source's own deadline
    finally:
        c.db.dispose()


def test_one_owner_fills_no_more_than_its_share_of_the_canary_pool(tmp_path: Path) -> None:
    """A client whose jobs filled a model's pool (small jobs, each result verified and
    remembered) knew every canary by marks it chose (a max_price, custom ids) and told
    its providers: an owner's results are remembered up to ``OWNER_SHARE`` of the pool,
    and the least used canary is planted first, so the same answer comes back only once
    every other of its model came as often."""
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    migrate.upgrade(c.db.engine)
    try:
        spec = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 3600}
        n = canaries.OWNER_SHARE + 5
        job_id = _job(c, spec, n)
        with c.db.write() as s:
            job = s.get(Job, job_id)
            assert job is not None
            for i, task in enumerate(s.scalars(select(Task).where(Task.job_id == job_id)
                                               .order_by(Task.id))):
                a = Assignment(id=f"asg_{i}", task_id=task.id, job_id=job_id,
                               provider_id="p", role=Role.PRIMARY,
                               status=AssignmentStatus.ACCEPTED, price=1, leased_at=0.0,
                               lease_deadline=1.0, delivered=True, output_digest="b" * 64)
                canaries.remember(c, s, job, task, a)  # its answer, verified
            assert s.scalar(select(func.count()).select_from(Canary)) == canaries.OWNER_SHARE
        for _ in range(canaries.OWNER_SHARE):
            c.db.run(lambda s: canaries.plant_jobs(c, s, 1, [job]))
        with c.db.read() as s:
            uses = [r.uses for r in s.scalars(select(Canary))]
        assert sum(uses) >= canaries.OWNER_SHARE and max(uses) - min(uses) <= 1
    finally:
        c.db.dispose()
