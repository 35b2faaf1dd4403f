"""Registering again is no way out of a hardware verdict: a claim flagged for a wrong
answer stays flagged (and unmatched), and its run of failures stays counted, across a
new identity, until that identity passes a challenge.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client.keys import Identity
from deai.coordinator import hardware, matching
from deai.coordinator.service import Coordinator
from deai.core import hwcheck as hc
from deai.core import wire
from deai.core import wire_hardware as wh
from deai.provider import challenge
from deai.store.models import HwClaim
from tests.helpers import MODEL, small_challenges


@pytest.fixture
def c(tmp_path: Path, fresh_url: str,
      monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    monkeypatch.setenv("DEAI_HW_TARGET_S", "0.05")
    monkeypatch.setenv("DEAI_HW_MEM_FRACTION", "0.05")
    with small_challenges(tmp_path, fresh_url, 1e9) as c:
        yield c


def register(c: Coordinator, pid: str, gflops: float) -> None:
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="test cpu", cores=1, memory_mb=600),
        benchmark=wire.Benchmark(gflops=gflops, mem_gbps=4.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=500)]))


def matchable(c: Coordinator, pid: str) -> bool:
    with c.db.read() as s:
        return pid in {p.id for p in matching.provider_states(c, s)}


def answer(c: Coordinator, pid: str, cheat: challenge.Cheat,
           ch: wh.ChallengeOut | None = None) -> wh.VerdictOut:
    ch = ch or hardware.poll(c, pid).challenge
    assert ch is not None
    run = challenge.Runner(1, cheat)
    try:
        root = run.commit(hc.Spec.from_dict(ch.spec))
        got = hardware.commit(c, pid, ch.id, wh.CommitIn(root=root))
        assert got.opening is not None
        return hardware.open_(c, pid, ch.id,
                              run.answer(got.opening.rows, got.opening.positions))
    finally:
        run.release()


def claim_row(c: Coordinator, pid: str) -> tuple[str, bool, int]:
    with c.db.read() as s:
        row = s.get(HwClaim, pid)
        assert row is not None
        return row.status, row.wrong, row.failures


def test_a_wrong_answer_is_not_shed_by_registering_again(c: Coordinator) -> None:
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    register(c, pid, 5.0)
    c.bond(pid, c.settings.min_stake)
    v = answer(c, pid, challenge.Cheat(wrong=True))
    assert v.outcome == "wrong" and v.status == "flagged"
    assert not matchable(c, pid)

    register(c, pid, 5.001)  # a new "identity", and no challenge answered for it
    assert not matchable(c, pid), "re-registering cleared a wrong answer's flag"
    ch = hardware.poll(c, pid).challenge  # the identity's: the flag and count stay
    assert ch is not None and ch.id
    assert claim_row(c, pid) == ("flagged", True, 1)
    assert not matchable(c, pid)

    v = answer(c, pid, challenge.Cheat(), ch)  # an honest pass on the new identity
    assert v.outcome == "passed" and v.status == "verified"
    assert claim_row(c, pid) == ("verified", False, 0)
    assert matchable(c, pid)


def test_the_reset_keeps_the_record_and_drops_the_proof() -> None:
    st = hc.ClaimState("flagged", failures=2, passes=3, fails=2, ratios=(0.9,), wrong=True,
                       flags=1)
    assert hc.reset(st) == hc.ClaimState("flagged", 2, 3, 2, (), True, 1)
    slow = hc.ClaimState("flagged", failures=2, ratios=(0.4,))
    assert hc.reset(slow) == hc.ClaimState("unverified", failures=2)
