"""Re-challenges are not left to the provider's goodwill: a challenge that came due
while its provider was online, and that it did not ask for within its deadline and
grace, is issued by the leader (``hardware.expire``), handed over at the next poll, and
expires like any other if it is not answered in time from then. A provider that is
offline is left alone; one back online gets the same time to answer as any other (its
challenge thread polls a few seconds after its first heartbeat).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from deai.client.keys import Identity
from deai.coordinator import hardware
from deai.coordinator.service import Coordinator
from deai.core import hwcheck as hc
from deai.core import wire
from deai.core import wire_hardware as wh
from deai.provider import challenge
from deai.store.models import HwChallenge, HwClaim, Provider
from tests.helpers import MODEL, small_challenges

HEARTBEAT_TIMEOUT = 60.0


@pytest.fixture
def c(tmp_path: Path, fresh_url: str,
      monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    monkeypatch.setenv("DEAI_HW_TARGET_S", "0.05")
    monkeypatch.setenv("DEAI_HW_MEM_FRACTION", "0.05")
    with small_challenges(tmp_path, fresh_url, HEARTBEAT_TIMEOUT) as c:
        yield c


def answer(c: Coordinator, pid: str, ch: wh.ChallengeOut) -> hc.Verdict | wh.VerdictOut:
    run = challenge.Runner(1)
    try:
        root = run.commit(hc.Spec.from_dict(ch.spec))
        got = hardware.commit(c, pid, ch.id, wh.CommitIn(root=root))
        assert got.opening is not None
        return hardware.open_(c, pid, ch.id, run.answer(got.opening.rows, got.opening.positions))
    finally:
        run.release()


def verified_provider(c: Coordinator) -> str:
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="test cpu", cores=1, memory_mb=600),
        benchmark=wire.Benchmark(gflops=5.0, mem_gbps=4.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=500)]))
    ch = hardware.poll(c, pid).challenge
    assert ch is not None
    v = answer(c, pid, ch)
    assert v.outcome == "passed" and v.status == "verified"  # type: ignore[union-attr]
    return pid


def status(c: Coordinator, pid: str) -> str:
    with c.db.read() as s:
        return hardware.verified_state(s, [s.get(Provider, pid)])[pid].status


def outcomes(c: Coordinator, pid: str) -> list[tuple[str, str]]:
    with c.db.read() as s:
        return [(ch.reason, ch.status) for ch in s.scalars(
            select(HwChallenge).where(HwChallenge.provider_id == pid)
            .order_by(HwChallenge.issued_at)).all()]


def live_for(c: Coordinator, pid: str, seconds: float) -> None:
    """Heartbeat (as its job agent does) while the clock runs; never poll challenges."""
    for _ in range(int(seconds // (HEARTBEAT_TIMEOUT / 2))):
        c.clock.advance(HEARTBEAT_TIMEOUT / 2)  # type: ignore[attr-defined]
        c.heartbeat(pid, [])


def test_a_due_challenge_never_asked_for_is_issued_then_expires(c: Coordinator) -> None:
    pid = verified_provider(c)
    prm = hardware.params(c)
    with c.db.read() as s:
        due = s.get(HwClaim, pid).next_at
    live_for(c, pid, due - c.now() + 1)  # due now, not yet overdue
    assert hardware.expire(c) == 0 and status(c, pid) == "verified"

    live_for(c, pid, 200 * prm.latency_s + prm.grace_s + 60)  # past any deadline and grace
    assert hardware.expire(c) == 1  # issued, unasked: not judged yet
    assert status(c, pid) == "verified" and outcomes(c, pid)[-1] == ("random", "issued")
    assert hardware.expire(c) == 0  # issued once

    live_for(c, pid, 200 * prm.latency_s + prm.grace_s + 60)  # and never answered
    assert hardware.expire(c) == 1
    assert status(c, pid) == "flagged"
    assert outcomes(c, pid)[-1] == ("random", "expired")
    with c.db.read() as s:
        row = s.get(HwClaim, pid)
        assert (row.failures, row.last_outcome, row.verified_units) == (1, "expired", 0.0)
        assert row.next_at > c.now()  # the next one is due a retry later, not at once
    assert hardware.expire(c) == 0  # judged once


def test_an_issued_challenge_is_handed_over_at_the_next_poll(c: Coordinator) -> None:
    """An honest agent back from an outage: its first heartbeat makes it online, the
    leader issues the overdue challenge, and the challenge thread's poll a few seconds
    later gets it and answers in time. Before, the leader judged it expired at once."""
    pid = verified_provider(c)
    c.clock.advance(50 * hardware.params(c).period_s)  # type: ignore[attr-defined]
    assert hardware.expire(c) == 0 and status(c, pid) == "verified"  # offline: left alone
    c.heartbeat(pid, [])  # back
    assert hardware.expire(c) == 1 and status(c, pid) == "verified"
    c.clock.advance(4.0)  # type: ignore[attr-defined]  # its challenge thread polls later
    ch = hardware.poll(c, pid).challenge
    assert ch is not None and outcomes(c, pid)[-1] == ("random", "issued")
    with c.db.read() as s:  # its clock started when it was handed over, not before
        assert s.get(HwChallenge, ch.id).issued_at == c.now()
    assert hardware.poll(c, pid).challenge == ch  # asked again (an answer lost): the same
    v = answer(c, pid, ch)
    assert v.outcome == "passed" and status(c, pid) == "verified"  # type: ignore[union-attr]
    assert hardware.expire(c) == 0


def test_offline_providers_cost_the_leader_nothing(c: Coordinator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Providers that polled once and left get no transaction every pass."""
    pids = [verified_provider(c) for _ in range(3)]
    c.clock.advance(50 * hardware.params(c).period_s)  # type: ignore[attr-defined]
    ran: list[str] = []
    real = hardware._missed_of

    def counted(c: Coordinator, s: object, *, pid: str) -> int:
        ran.append(pid)
        return real(c, s, pid=pid)  # type: ignore[arg-type]

    monkeypatch.setattr(hardware, "_missed_of", counted)
    assert hardware.expire(c) == 0
    assert ran == [] and all(status(c, p) == "verified" for p in pids)
