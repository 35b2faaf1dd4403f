"""The simulator models every verification class of the threat model, with core's decisions.

Small networks, fixed seeds, no timing: each test shows one mechanism catching
(or, with the mechanism turned off, failing to catch) one adversary class.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deai.core.lifecycle import decide
from deai.core.lifecycle import effects as E
from deai.core.verify.lookback import Reach
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.sim import agents, checkers, classes, rules, vec
from deai.sim.engine import CAUSES, Network, World

ESTABLISHED = Reputation(cv=10**6)


def net_of(mix: list[tuple[agents.Behaviour, int]], w: World, seed: int = 0,
           start: Reputation | None = ESTABLISHED) -> tuple[Network, np.ndarray]:
    slots = np.concatenate([np.full(k, i, np.int64) for i, (_, k) in enumerate(mix)])
    return Network(replace(w, churn=False), [b for b, _ in mix], slots,
                   np.random.default_rng(seed), start=start), slots


def run(net: Network, steps: int) -> Network:
    for _ in range(steps):
        net.step()
    return net


def causes(net: Network, slots: np.ndarray, kind: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for s, _, c in net.catches:
        if slots[s] == kind:
            out[CAUSES[c]] = out.get(CAUSES[c], 0) + 1
    return out


# --- the decisions are core's -------------------------------------------------------------

def test_forced_and_audit_rules_are_read_off_core() -> None:
    slashed = rules.audit(False, True).slashed
    ctx = decide.TaskCtx("t", "j", 0, decide.JobStatus.COMPLETED, decide.TaskStatus.DONE, 1, 5)
    a = decide.Party("v", "v", decide.Role.AUDIT)
    stood = [decide.Party("s", "s", decide.Role.PRIMARY),
             decide.Party("c", "c", decide.Role.REPLICA)]
    core = {e.provider for e in decide.on_audit(ctx, a, stood, match=False, evidence={})
            if isinstance(e, E.Slash)}
    assert core == {"s", "c"} and slashed == {rules.SUBJECT, rules.CHECKER}
    assert rules.forced(False).slashed and not rules.forced(True).slashed
    assert rules.forced(False).check_again and rules.forced(True).paid


def test_changing_cores_forced_error_decision_changes_the_simulator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rubber-stampers on a re-scoring kind are slashed by forced errors because core's
    ``on_forced`` says so: make it forgive them and the simulator forgives them too."""
    w = World(rescore_share=1.0, params=VerifyParams(forced_share=0.5))
    mix = [(agents.HONEST, 60), (agents.RUBBER_STAMPER, 20)]
    net, slots = net_of(mix, w)
    assert causes(run(net, 100), slots, 1).get("forced error", 0) > 0

    real = decide.on_forced
    monkeypatch.setattr(decide, "on_forced", lambda ctx, check, *, noticed, evidence:
                        real(ctx, check, noticed=True, evidence=evidence))
    rules.forced.cache_clear()
    try:
        net, slots = net_of(mix, w)
        assert causes(run(net, 100), slots, 1).get("forced error", 0) == 0
    finally:
        monkeypatch.undo()
        rules.forced.cache_clear()


def test_vectorised_score_equals_core() -> None:
    rng = np.random.default_rng(3)
    reps = [Reputation(cv=int(rng.integers(0, 50)), passes=float(rng.uniform(0, 100)),
                       fails=float(rng.uniform(0, 5)), probation=int(rng.integers(0, 2) * 9))
            for _ in range(500)]
    r = vec.Reputations.new(len(reps))
    for i, x in enumerate(reps):
        r.passes[i], r.fails[i], r.probation[i] = x.passes, x.fails, x.probation
    got = checkers.score(r, np.arange(len(reps)))
    assert got.tolist() == pytest.approx([x.score() for x in reps], rel=1e-12)


# --- checker choice ------------------------------------------------------------------------

def test_checkers_are_weighted_by_stake_and_never_share_the_operator() -> None:
    rng = np.random.default_rng(4)
    pool = np.arange(40)
    operator = pool // 4  # ten operators of four keys
    w = np.ones(40)
    w[[8, 9, 10, 11]] = 4.0  # one operator with four times the stake × reputation
    subjects = rng.integers(0, 40, 20_000)
    pick, got = checkers.draw(subjects, pool, w, operator, rng)
    assert got.all()
    assert not (operator[pick] == operator[subjects]).any()
    heavy = np.isin(pick, [8, 9, 10, 11]) & (operator[subjects] != 2)
    light = np.isin(pick, [12, 13, 14, 15]) & (operator[subjects] != 2) & (
        operator[subjects] != 3)
    assert heavy.sum() > 3 * light.sum()  # ~4x (the light one is excluded more often)
    pick, _ = checkers.draw(subjects, pool, w, operator, rng, diversity=False)
    assert (operator[pick] == operator[subjects]).any() and not (pick == subjects).any()


def test_sybils_never_check_each_other_so_they_cheat_only_where_no_check_lands() -> None:
    mix = [(agents.HONEST, 100), (agents.sybil(keys=20), 40)]
    net, slots = net_of(mix, World())
    run(net, 200)
    assert net.partner_checks == 0
    assert len(set(net.operator[slots == 1])) == 2
    assert causes(net, slots, 1) and net.honest_slashed == set()
    # Without diversity, one operator's keys check (and echo) each other.
    blind, slots = net_of(mix, World(diversity=False))
    run(blind, 200)
    assert blind.partner_checks > 0


# --- colluders, role readers, approximators, patient and rare cheaters, stampers ----------

def test_colluders_agreeing_on_wrong_answers_are_caught_by_audits_which_slash_both() -> None:
    # Only colluders: every check is a partner's echo, so only the verifier's audits catch.
    w = World(params=VerifyParams(canary_share=0.0, audit_share=0.2))
    net, slots = net_of([(agents.HONEST, 0), (agents.colluder(f=1.0), 60)], w)
    run(net, 50)
    by = causes(net, slots, 1)
    assert set(by) == {"audit"} and by["audit"] > 0
    stood = [s for s, _, c in net.catches if CAUSES[c] == "audit"]
    assert len(stood) > by["audit"] / 2  # subjects and the replicas that agreed
    assert net.corrected.sum() > 0
    off, _ = net_of([(agents.HONEST, 0), (agents.colluder(f=1.0), 60)],
                    replace(w, params=replace(w.params, audit_share=0.0)))
    run(off, 50)
    assert off.catches == [] and off.bad_accepted.sum() > 0


def test_colluders_among_honest_are_caught_and_no_honest_provider_is_slashed() -> None:
    r = classes.one(agents.colluder(), 40, 400, 300, World(), seed=5)
    assert r["caught_within"] > 0.5 and r["honest_slashed"] == 0
    assert r["partner_checks"] > 0


def test_role_readers_are_caught_blind_and_escape_when_roles_leak() -> None:
    mix = [(agents.HONEST, 100), (agents.role_reader(f=0.2), 40)]
    blind, slots = net_of(mix, World(leak=0.0))
    run(blind, 200)
    assert len(causes(blind, slots, 1)) >= 2  # canaries and replicas alike
    seen, slots = net_of(mix, World(leak=1.0))
    run(seen, 200)
    assert seen.catches == [] and seen.bad_accepted[slots == 1].sum() > 0


def test_cheap_approximators_are_caught_by_any_check() -> None:
    w = World(params=VerifyParams(rho_min=1.0, canary_share=0.0))
    net, slots = net_of([(agents.HONEST, 50), (agents.APPROXIMATOR, 20)], w)
    run(net, 5)
    caught = {s: t for s, t, _ in net.catches}
    assert set(caught) == set(np.flatnonzero(slots == 1)) and set(caught.values()) == {1}
    assert net.bad_accepted.sum() == 0


def test_patient_cheaters_turn_after_trust_and_look_back_corrects_their_window() -> None:
    w = World(window_tasks=500)
    net, slots = net_of([(agents.HONEST, 100), (agents.turncoat(30), 40)], w, start=None)
    mine = slots == 1
    run(net, 30)  # honest while it earns trust: nothing wrong, nobody caught
    assert net.bad_accepted.sum() == 0 and net.catches == []
    assert (net.id_cheat_start[mine] == -1).all()
    run(net, 370)
    assert net.bad_accepted[mine].sum() > 0
    caught = [s for s, _, _ in net.catches if mine[s]]
    assert len(caught) == mine.sum()
    # every wrong result was corrected inside the (long) window: none stood
    assert net.standing.sum() == 0
    assert net.corrected[mine].sum() == net.bad_accepted[mine].sum()


def test_rare_cheaters_leave_results_standing_when_look_back_reaches_only_the_window() -> None:
    mix = [(agents.HONEST, 100), (agents.RARE, 100)]
    net, slots = net_of(mix, World(window_tasks=10, look_back=Reach.WINDOW))
    run(net, 300)
    assert net.standing[slots == 1].sum() > 0 and net.standing[slots == 0].sum() == 0
    # reaching back to the provider's last look-back: nothing stands, the same draws
    rec, _ = net_of(mix, World(window_tasks=10))
    run(rec, 300)
    assert rec.bad_accepted.sum() == net.bad_accepted.sum() and rec.standing.sum() == 0
    assert rec.corrected.sum() > net.corrected.sum()


def test_rubber_stampers_are_caught_by_forced_errors_only_on_rescoring_kinds() -> None:
    mix = [(agents.HONEST, 60), (agents.RUBBER_STAMPER, 20)]
    rescoring, slots = net_of(mix, World(rescore_share=1.0, params=VerifyParams(
        forced_share=0.2)))
    run(rescoring, 150)
    assert set(causes(rescoring, slots, 1)) == {"forced error"}
    none, slots = net_of(mix, World(rescore_share=1.0, params=VerifyParams(forced_share=0.0)))
    run(none, 150)
    assert none.catches == []  # an agreement without work is invisible without them
    reexec, slots = net_of(mix, World(rescore_share=0.0))
    run(reexec, 150)
    assert set(causes(reexec, slots, 1)) == {"as checker"}  # a made-up output mismatches
    assert reexec.honest_slashed == set() and rescoring.honest_slashed == set()
