"""The verification simulator: core's policies restated over arrays, and the runs built on them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deai.coordinator.settings import Settings
from deai.core.verify import policy
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.sim import agents, engine, report, run, vec

PARAMS = [VerifyParams(), VerifyParams(rho_min=0.1, cv_bootstrap=3, probation_tasks=7),
          VerifyParams(replicate=False), VerifyParams(rho_min=0.0, decay_half_life=50.0)]


def random_reps(rng: np.random.Generator, n: int) -> list[Reputation]:
    return [Reputation(cv=int(rng.integers(0, 200)), passes=float(rng.uniform(0, 300)),
                       fails=float(rng.uniform(0, 5)), probation=int(rng.integers(0, 3) * 10),
                       updated_at=float(rng.choice([0.0, rng.uniform(1, 1e6)])))
            for _ in range(n)]


def arrays(reps: list[Reputation]) -> vec.Reputations:
    r = vec.Reputations.new(len(reps))
    for i, x in enumerate(reps):
        r.cv[i], r.passes[i], r.fails[i] = x.cv, x.passes, x.fails
        r.probation[i], r.updated_at[i] = x.probation, x.updated_at
    return r


@pytest.mark.parametrize("p", PARAMS)
def test_vectorised_rho_equals_core(p: VerifyParams) -> None:
    rng = np.random.default_rng(1)
    reps = random_reps(rng, 3_000)
    r = arrays(reps)
    always = rng.random(len(reps)) < 0.1
    got = vec.rho(r.cv, r.probation, p, always)
    want = [policy.replication_probability(x, p, always=bool(a))
            for x, a in zip(reps, always, strict=True)]
    assert got.tolist() == want


@pytest.mark.parametrize("p", PARAMS)
def test_vectorised_reputation_updates_equal_core(p: VerifyParams) -> None:
    rng = np.random.default_rng(2)
    reps = random_reps(rng, 1_000)
    now = 5e5
    who = rng.integers(0, len(reps), 1_500)  # some providers pass (or fail) several times
    for update, core_update in ((vec.passed, Reputation.passed),
                                (vec.failed, Reputation.failed)):
        r = arrays(reps)
        update(r, who, now, p)
        for i, x in enumerate(reps):
            for _ in range(int((who == i).sum())):
                x = core_update(x, now, p)
            got = r.get(i)
            assert (got.cv, got.probation, got.updated_at) == (x.cv, x.probation, x.updated_at)
            assert got.passes == pytest.approx(x.passes, rel=1e-12)
            assert got.fails == pytest.approx(x.fails, rel=1e-12)


def test_constants_match_the_coordinator() -> None:
    s = Settings()
    assert (s.min_stake, s.fee_bps) == (engine.MIN_STAKE, engine.FEE_BPS)
    assert engine.World().params == s.verify


def test_largest_task_is_what_stake_for_allows() -> None:
    from deai.core.market import stake_for

    w = engine.World()
    v = engine.max_task_value(w)
    p = run.floor_check_probability(w.params)
    assert stake_for(v, w.params.slash_fraction, p) <= w.stake
    assert stake_for(v + 1, w.params.slash_fraction, p) > w.stake


def test_same_seed_same_report() -> None:
    plan = replace(run.Plan.fast(), providers=200, tasks=5_000)
    a, b = run.network(plan, engine.World(), 7), run.network(plan, engine.World(), 7)
    assert a == b
    assert run.network(plan, engine.World(), 8) != a


def test_honest_network_slashes_nobody_and_overhead_meets_the_formula() -> None:
    # An ill-conditioned task every 100: honest classes disagree, the referee clears them.
    w = engine.World(tail=1e-2)
    plan = replace(run.Plan.fast(), honest_providers=200, honest_tasks=60_000)
    h = run.honest_run(plan, w, 3)
    assert h["honest_slashed"] == 0
    assert h["escalations"] > 0 and h["escalations_cleared"] == h["escalations"]
    # referee runs on those mismatches are overhead too, on top of the formula
    assert h["formula"] < h["overhead_steady"] < h["formula"] + 2e-3
    h = run.honest_run(replace(plan, honest_tasks=200_000), engine.World(), 3)
    assert h["honest_slashed"] == 0
    # (within 1 %: a forced error is a second check on re-scoring kinds, which the closed
    # form counts only approximately)
    assert h["overhead_steady"] == pytest.approx(h["formula"], rel=1e-2)
    assert h["overhead_steady_drawn"] == pytest.approx(h["formula"], rel=0.15)


def test_established_honest_overhead_is_the_formula_at_other_knobs() -> None:
    w = engine.World(params=VerifyParams(canary_share=0.05, rho_min=0.1))
    d = run.detection(10, 300, w, 4, established=True, horizon=200)
    assert d["honest_overhead"] == pytest.approx(
        run.formula_overhead(w.params, w.rescore_share), rel=0.01)


def test_always_wrong_cheater_is_caught_and_never_paid_more_than_honest() -> None:
    rng = np.random.default_rng(5)
    slots = np.array([1] * 20 + [0] * 200)
    net = engine.Network(replace(engine.World(), churn=False),
                         [agents.HONEST, agents.ALWAYS_WRONG], slots, rng)
    for _ in range(100):
        net.step()
    caught = {s for s, _, _ in net.catches}
    assert caught == set(range(20))  # bootstrap replicates everything: caught at once
    assert not net.active[:20].any() and net.active[20:].all()
    assert net.honest_slashed == set()
    assert net.bad_accepted[:20].sum() == 0


def test_referee_errors_can_slash_honest_providers() -> None:
    """The zero-false-slash result rests on the deterministic referee: inject errors."""
    w = engine.World(tail=0.05, referee_error=0.5)
    plan = replace(run.Plan.fast(), honest_providers=100, honest_tasks=20_000)
    assert run.honest_run(plan, w, 6)["honest_slashed"] > 0


TINY = replace(run.Plan.fast(), detect_cheaters=100, detect_honest=100, fresh_cheaters=50,
               sweep_q=(0.02,), sweep_rho=(0.029,), sweep_cheaters=50, sweep_honest=50,
               class_cheaters=20, class_providers=100, class_horizon=100, honest_tasks=20_000)


def test_fast_verify_writes_the_report_and_the_png(tmp_path: Path) -> None:
    r = run.verify(TINY, seed=0)
    assert all(s >= 0 for s in r["seconds"].values())  # timed, but no threshold in a unit test
    names = [t["target"] for t in r["targets"]]
    assert len(names) == 8
    assert r["network"]["honest_slashed"] == r["honest"]["honest_slashed"] == 0
    js, png = report.write(r, tmp_path)
    assert json.loads(js.read_text())["seed"] == 0
    assert png.name == "detection_vs_overhead.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_sim_verify_fast(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deai.client.cli import app

    res = CliRunner().invoke(app, ["sim", "verify", "--fast", "--out", str(tmp_path)])
    assert "targets" in res.output
    assert (tmp_path / "report.json").exists()
    assert (tmp_path / "detection_vs_overhead.png").exists()
