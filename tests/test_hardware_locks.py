"""Hardware challenges judged by two writers at once: a provider's late answer (a
commitment that reports an error, an opening past the grace period) and the
background expiry (``hardware.expire``) racing on the same challenges.

Each challenge must be judged exactly once, whichever writer wins: judged twice, an
expiry would overwrite a verdict already given and count a second failure against
the provider. And on PostgreSQL no request may fail on a deadlock: every hardware
write locks the provider's row first (``hardware._locked``), where before a judging
request locked the challenge and claim and then (through the claim's version
trigger) the provider, while the expiry's flush locked them the other way round.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from deai.client.keys import Identity
from deai.coordinator import hardware
from deai.coordinator.service import Coordinator
from deai.core import hwcheck as hc
from deai.core import wire
from deai.core import wire_hardware as wh
from deai.core.clock import ManualClock
from deai.core.errors import Conflict
from deai.store.models import Event, HwChallenge, HwClaim
from tests.helpers import MODEL
from tests.races import ENGINES, coordinator, race

PROVIDERS = 8


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path,
      monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    # Production's slashing rule (a devnet never slashes): judged twice, a provider
    # would pay twice.
    monkeypatch.setenv("DEAI_HW_SLASH_AFTER", "1")
    yield from coordinator(request, tmp_path)


def provider(c: Coordinator, k: int) -> str:
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=600),
        benchmark=wire.Benchmark(gflops=5.0, mem_gbps=4.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=1000)]),
        address=f"10.9.{k}.1")
    c.bond(pid, 10_000_000)
    return pid


def shaped(c: Coordinator, cid: str) -> wh.OpenIn:
    """An opening of the right shape (its rows zero, its proofs empty): judged, not
    refused."""
    with c.db.read() as s:
        ch = s.get(HwChallenge, cid)
        assert ch is not None and ch.open_seed is not None
        spec = hc.Spec.from_dict(ch.spec)
        op = hc.openings(spec, int(ch.open_seed), hardware.params(c))
    return wh.OpenIn(rows=[base64.b64encode(bytes(4 * spec.parts[p].n)).decode()
                           for p, _, _ in op.rows],
                     proofs=[[] for _ in op.rows], values=[0] * len(op.positions))


def test_a_late_answer_and_the_expiry_judge_each_challenge_once(c: Coordinator) -> None:
    pids = [provider(c, k) for k in range(PROVIDERS)]
    issued: dict[str, str] = {}
    for pid in pids:
        got = hardware.poll(c, pid).challenge
        assert got is not None
        issued[pid] = got.id
    # Half commit in time and will open too late; the other half will commit too late,
    # reporting that the device failed. Both are judgments, as is the expiry's.
    committed = pids[::2]
    for pid in committed:
        assert hardware.commit(c, pid, issued[pid], wh.CommitIn(root="0" * 64)).opening
    bodies = {pid: shaped(c, issued[pid]) for pid in committed}
    prm = hardware.params(c)
    with c.db.read() as s:
        longest = max(float(ch.spec["deadline_s"]) for ch in s.scalars(select(HwChallenge)))
    assert isinstance(c.clock, ManualClock)
    c.clock.advance(longest + prm.grace_s + 1.0)

    def answer(pid: str) -> Callable[[], Any]:
        if pid in bodies:
            return lambda: hardware.open_(c, pid, issued[pid], bodies[pid])
        return lambda: hardware.commit(c, pid, issued[pid], wh.CommitIn(error="no device"))

    errors = race(*(answer(pid) for pid in pids), lambda: hardware.expire(c),
                  lambda: hardware.expire(c))
    # The only error a loser may get: the challenge was judged already.
    assert all(isinstance(e, Conflict) for e in errors), errors
    assert hardware.expire(c) == 0  # nothing left to judge
    with c.db.read() as s:
        status = dict(s.execute(select(HwChallenge.provider_id, HwChallenge.status)).all())
        fails = {r.provider_id: (r.fails, r.failures) for r in s.scalars(select(HwClaim))}
        verdicts = dict(s.execute(select(Event.subject, func.count()).where(
            Event.kind == "hardware_verdict").group_by(Event.subject)).all())
        slashes = dict(s.execute(select(Event.subject, func.count()).where(
            Event.kind == "slash").group_by(Event.subject)).all())
    for pid in pids:
        assert status[pid] in ("expired", "error"), status[pid]
        assert verdicts.get(pid) == 1, (pid, verdicts.get(pid))  # judged once
        assert fails[pid] == (1, 1), fails[pid]
    assert all(slashes.get(pid) == 1 for pid in pids), slashes  # and slashed once
    # A late commitment that lost was told so (one that won is judged "error"); a late
    # opening is judged "expired" by whichever writer wins.
    late_commits = [pid for pid in pids if pid not in bodies]
    assert len(errors) >= sum(status[pid] == "expired" for pid in late_commits)
