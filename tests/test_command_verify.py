"""Verification of command results: the wall clock is part of the claim, CPU time is not.

A provider that skips the work and claims it hit the wall-clock limit must disagree
with an honest run that finished far inside it; an honest run that hit the wall
on slower hardware must not be convicted by a referee whose run came near the limit
too. CPU times are never evidence: they grow with a machine's core count, and
comparing them let a client get honest providers slashed. Pure comparisons first,
then the referee's verdict through ``core.lifecycle.decide``, then real sandboxed runs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.core.kinds import command as cmd
from deai.core.lifecycle import JobStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from deai.core.lifecycle.effects import Accept, Slash
from deai.core.verify import policy
from tests.test_kind_command import KIND, one_shard, output

# one_shard(): cpu_seconds 3 (limit 3,000 CPU-ms), wall_seconds 30 (30,000 ms)
FILES = {"x": b"hi\n"}


def honest(p: dict[str, Any], cpu_ms: int = 12, wall_ms: int = 30) -> bytes:
    return output(p, FILES, cpu_ms=cpu_ms, wall_ms=wall_ms)


def stopped(p: dict[str, Any], limit: str, cpu_ms: int, wall_ms: int) -> bytes:
    """A run the sandbox stopped at ``limit``: no files yet, killed by the watcher."""
    return output(p, status="error", error=f"{limit} limit", limit=limit, exit_code=None,
                  signal="SIGKILL", cpu_ms=cpu_ms, wall_ms=wall_ms)


def both_ways(a: bytes, b: bytes, **spec: Any) -> tuple[bool, bool]:
    s, shard, _ = one_shard(**spec)
    return KIND.compare(s, shard, a, b).match, KIND.compare(s, shard, b, a).match


# --- a claimed limit hit -------------------------------------------------------------------

def test_a_lazy_limit_claim_billing_the_maximum_disagrees_with_an_honest_run() -> None:
    """The reviewer's exploit: no work, "wall" hit, the whole CPU budget billed."""
    s, shard, p = one_shard()
    lazy = stopped(p, "wall", cpu_ms=3000, wall_ms=0)
    assert KIND.meter(s, shard, lazy) == 3000
    assert both_ways(honest(p), lazy) == (False, False)
    assert both_ways(honest(p), stopped(p, "wall", 3000, 30_000)) == (False, False)


def test_a_wall_limit_the_other_run_finished_far_inside_of_is_a_disagreement() -> None:
    _, _, p = one_shard()
    # the other run took 7,400 ms; 4 x 7,400 + 250 = 29,850 < 30,000
    assert both_ways(honest(p, cpu_ms=10, wall_ms=7400),
                     stopped(p, "wall", 10, 30_000)) == (False, False)


def test_a_limit_within_reach_or_not_on_the_wall_clock_is_inconclusive() -> None:
    """Genuinely timing-dependent: a machine 4x slower could have hit it; and a CPU or
    disk limit depends on the machine's cores or a quota sample, which no output shows."""
    s, shard, p = one_shard()
    slow_wall = stopped(p, "wall", cpu_ms=2000, wall_ms=30_001)
    cmp = KIND.compare(s, shard, slow_wall, honest(p, cpu_ms=700, wall_ms=7500))
    assert cmp.match and "inconclusive" in cmp.detail
    # a parallel command: one core would need its CPU time in wall time
    # (4 x 1,000 + 250 < 10,000 <= 4 x 2,900 + 250)
    assert both_ways(honest(p, cpu_ms=2900, wall_ms=1000), stopped(p, "wall", 2900, 10_000),
                     wall_seconds=10) == (True, True)
    for limit in ("cpu", "disk"):  # 64 spinning cores reach a CPU limit 2 cores never do
        assert both_ways(honest(p, cpu_ms=100, wall_ms=200),
                         stopped(p, limit, 3000, 100)) == (True, True), limit


def test_runs_both_stopped_by_the_sandbox_are_inconclusive() -> None:
    _, _, p = one_shard()
    assert both_ways(stopped(p, "wall", 50, 30_000), stopped(p, "cpu", 3000, 3100)) == (True,
                                                                                       True)
    # a fork bomb the watcher killed reports "processes" but stopped at the clock too
    bomb = output(p, status="error", error="process limit", limit="processes",
                  exit_code=None, signal="SIGKILL", cpu_ms=400, wall_ms=30_000)
    assert both_ways(bomb, stopped(p, "cpu", 3000, 3100)) == (True, True)


def test_deterministic_differences_still_disagree() -> None:
    _, _, p = one_shard()
    assert both_ways(honest(p), output(p, {"x": b"other\n"})) == (False, False)
    mem = output(p, status="error", error="memory limit", limit="memory", exit_code=1)
    assert both_ways(honest(p), mem) == (False, False)
    s, shard, _ = one_shard()
    assert not KIND.compare(s, shard, b"junk", honest(p)).match
    no_limit = json.dumps({k: v for k, v in json.loads(honest(p)).items() if k != "limit"})
    assert not KIND.compare(s, shard, no_limit.encode(), stopped(p, "wall", 0, 0)).match


# --- the bill ------------------------------------------------------------------------------

def test_cpu_times_are_no_evidence_between_machines_of_other_core_counts() -> None:
    """A command whose threads spin on every core bills CPU in proportion to the cores:
    honest runs on 2 and 64 cores are 32x apart. A padded bill is bounded by the
    ``cpu_seconds`` the client chose, not refuted."""
    _, _, p = one_shard()
    assert both_ways(honest(p, cpu_ms=80), honest(p, cpu_ms=2560)) == (True, True)
    assert both_ways(honest(p), honest(p, cpu_ms=3000)) == (True, True)


def test_cpu_of_runs_the_sandbox_stopped_is_not_compared() -> None:
    """Where the watcher killed both runs depends on each machine's speed and load."""
    _, _, p = one_shard()
    a, b = stopped(p, "wall", 100, 30_000), stopped(p, "wall", 2900, 30_000)
    assert cmd.same_output(a, b)
    assert both_ways(a, b) == (True, True)


@given(work=st.integers(0, 700), speeds=st.tuples(st.floats(1, 4), st.floats(1, 4)),
       wall=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)))
def test_honest_runs_on_machines_up_to_4x_apart_agree(work: int, speeds: tuple[float, float],
                                                      wall: tuple[int, int]) -> None:
    _, _, p = one_shard()
    a, b = (honest(p, cpu_ms=int(work * x), wall_ms=w) for x, w in zip(speeds, wall, strict=True))
    assert both_ways(a, b) == (True, True)


@given(cpu=st.tuples(st.integers(0, 3000), st.integers(0, 3000)),
       wall=st.tuples(st.integers(0, 40_000), st.integers(0, 40_000)),
       limit=st.sampled_from([None, "cpu", "wall", "disk", "memory"]),
       exit_code=st.sampled_from([None, 0, 1]), same=st.booleans())
def test_the_verdict_does_not_depend_on_the_order(cpu: tuple[int, int], wall: tuple[int, int],
                                                  limit: str | None, exit_code: int | None,
                                                  same: bool) -> None:
    _, _, p = one_shard()
    a = honest(p, cpu_ms=cpu[0], wall_ms=wall[0])
    err = {} if limit is None else {"status": "error", "error": "x"}
    b = output(p, FILES if same else {}, limit=limit, exit_code=exit_code, cpu_ms=cpu[1],
               wall_ms=wall[1], **err)
    m = both_ways(a, b)
    assert m[0] == m[1]


# --- what the referee then does ------------------------------------------------------------

CTX = D.TaskCtx("t", "j", 0, JobStatus.VERIFYING, TaskStatus.VERIFYING, 1, 3)
PRIMARY, REPLICA = D.Party("pa", "P", Role.PRIMARY), D.Party("ra", "R", Role.REPLICA)
REFEREE = D.Party("va", "V", Role.REFEREE)


def referee(subject: bytes, checker: bytes, ref: bytes) -> tuple[set[str], set[str]]:
    """As ``coordinator.verify``: the replica disagreed; who is slashed, whose output stands."""
    s, shard, _ = one_shard()
    assert not KIND.check(s, shard, subject, checker).match
    v = policy.verdict([KIND.check(s, shard, subject, ref).match],
                       [KIND.compare_checks(s, shard, checker, ref).match])
    fx = D.on_verdict(CTX, v.fault, REFEREE, PRIMARY, REPLICA, reexec=True, evidence={})
    return ({e.provider for e in fx if isinstance(e, Slash)},
            {e.assignment for e in fx if isinstance(e, Accept)})


def test_an_honest_wall_hit_on_slow_hardware_is_not_slashed_by_a_referee_near_the_limit() -> None:
    _, _, p = one_shard()
    slow = stopped(p, "wall", cpu_ms=2400, wall_ms=30_000)
    fast = honest(p, cpu_ms=600, wall_ms=6000)  # 4 x 6,000 + 250 < 30,000: a disagreement
    near = honest(p, cpu_ms=1800, wall_ms=9000)  # the referee's run: 4 x 9,000 > 30,000
    slashed, stands = referee(slow, fast, near)
    assert slashed == set() and stands == {"pa"}


def test_a_lazy_wall_claim_is_slashed_by_the_referee() -> None:
    _, _, p = one_shard()
    slashed, stands = referee(stopped(p, "wall", 3000, 0), honest(p, cpu_ms=12),
                              honest(p, cpu_ms=20))
    assert slashed == {"P"} and stands == {"ra"}


def test_no_honest_party_is_slashed_for_its_core_count() -> None:
    """A lazy claim, a 2-core replica and a 64-core referee: only the liar is slashed,
    whatever CPU each honest run billed."""
    _, _, p = one_shard()
    slashed, stands = referee(stopped(p, "wall", 3000, 30_000), honest(p, cpu_ms=80),
                              honest(p, cpu_ms=2560))
    assert slashed == {"P"} and stands == {"ra"}


# --- real sandboxed runs -------------------------------------------------------------------

def test_real_runs_agree_and_a_fabricated_wall_limit_does_not() -> None:
    from deai.provider import sandbox
    from deai.workloads import get

    ok, why = sandbox.available()
    if not ok:
        pytest.fail(f"bubblewrap is required for command jobs: {why}")
    s, shard, p = one_shard()
    runs = [get("command").run("bwrap-sandbox", shard)[0] for _ in range(2)]
    assert json.loads(runs[0])["status"] == "ok", runs[0]
    assert KIND.compare(s, shard, runs[0], runs[1]).match
    real = json.loads(runs[0])
    lazy = stopped(p, "wall", 3000, 0)
    assert KIND.meter(s, shard, lazy) == 3000
    assert not KIND.compare(s, shard, runs[1], lazy).match
    assert not KIND.compare(s, shard, lazy, runs[1]).match
    padded = cmd.canonical({**real, "cpu_ms": 3000})  # not refutable: bounded by the budget
    assert KIND.compare(s, shard, runs[1], padded).match
