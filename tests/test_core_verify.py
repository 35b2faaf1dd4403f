"""Verification policy as properties: replication, verdicts, slashing, reputation, economics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.core import market
from deai.core.verify import economics, policy
from deai.core.verify.params import DEFAULT, OFF, VerifyParams
from deai.core.verify.reputation import Reputation

reps = st.builds(Reputation, cv=st.integers(0, 10_000), passes=st.floats(0, 1e6),
                 fails=st.floats(0, 1e6), probation=st.integers(0, 100),
                 updated_at=st.floats(0, 1e9))


@given(reps)
def test_replication_is_full_while_new_or_on_probation_then_floored(rep: Reputation) -> None:
    rho = policy.replication_probability(rep, DEFAULT)
    if rep.cv < DEFAULT.cv_bootstrap or rep.probation > 0:
        assert rho == 1.0
    else:
        assert rho == max(DEFAULT.rho_min, 1.0 / rep.cv)
    assert DEFAULT.rho_min <= rho <= 1.0
    assert policy.replication_probability(rep, DEFAULT, always=True) == 1.0
    assert policy.replication_probability(rep, OFF) == 0.0


@given(st.integers(10, 5000))
def test_replication_never_rises_as_a_clean_record_grows(cv: int) -> None:
    a = policy.replication_probability(Reputation(cv=cv), DEFAULT)
    b = policy.replication_probability(Reputation(cv=cv + 1), DEFAULT)
    assert b <= a


@given(st.lists(st.booleans(), min_size=1, max_size=7), st.data())
def test_the_party_that_contradicts_the_referee_majority_is_at_fault(
        subject: list[bool], data: st.DataObject) -> None:
    checker = data.draw(st.lists(st.booleans(), min_size=len(subject), max_size=len(subject)))
    v = policy.verdict(subject, checker)
    n = len(subject)
    s_bad, c_bad = 2 * sum(subject) < n, 2 * sum(checker) < n
    s_ok = 2 * sum(subject) > n
    if v.fault in (policy.Fault.SUBJECT, policy.Fault.BOTH):
        assert s_bad
    if v.fault in (policy.Fault.CHECKER, policy.Fault.BOTH):
        assert c_bad
    if s_ok:
        assert v.fault in (policy.Fault.NONE, policy.Fault.CHECKER)
    # swapping the parties swaps the blame
    w = policy.verdict(checker, subject)
    swap = {policy.Fault.SUBJECT: policy.Fault.CHECKER, policy.Fault.CHECKER: policy.Fault.SUBJECT}
    assert w.fault == swap.get(v.fault, v.fault)


def test_a_referee_that_agrees_with_both_convicts_nobody() -> None:
    assert policy.verdict([True], [True]).fault == policy.Fault.NONE
    assert policy.verdict([False], [True]).accepted == "checker"
    assert policy.verdict([True], [False]).accepted == "subject"
    assert policy.verdict([False], [False]).accepted == "referee"
    with pytest.raises(ValueError):
        policy.verdict([], [])


@given(st.integers(0, 10**15), st.booleans())
def test_a_slash_is_split_exactly(stake: int, reporter: bool) -> None:
    cut = policy.slash_amounts(stake, DEFAULT, reporter=reporter)
    assert 0 <= cut.amount <= stake
    assert cut.bounty + cut.treasury == cut.amount
    assert reporter or cut.bounty == 0


@given(reps, st.floats(0, 1e8))
def test_reputation_moves_as_checks_say(rep: Reputation, dt: float) -> None:
    now = rep.updated_at + dt
    up = rep.passed(now, DEFAULT)
    assert up.cv == rep.cv + 1 and up.probation == max(0, rep.probation - 1)
    down = rep.failed(now, DEFAULT)
    assert down.cv == 0 and down.probation == DEFAULT.probation_tasks
    assert 0.0 <= up.score() <= 1.0 and 0.0 <= down.score() <= 1.0
    assert down.score() <= up.score()


def test_old_records_fade_with_the_half_life() -> None:
    rep = Reputation(cv=5, passes=8.0, fails=4.0, updated_at=1000.0)
    later = rep.decayed(1000.0 + DEFAULT.decay_half_life, DEFAULT)
    assert later.passes == pytest.approx(4.0) and later.fails == pytest.approx(2.0)
    assert later.cv == 5


def test_default_parameters_meet_the_targets() -> None:
    """Research §10.7: ≤ 5 % overhead (canaries, replicas and audits); f ≥ 10 % caught
    within 1,000 tasks with ≥ 99 %."""
    established = Reputation(cv=10_000)
    p = policy.check_probability(established, DEFAULT)
    q, rho, a = DEFAULT.canary_share, DEFAULT.rho_min, DEFAULT.audit_share
    assert p == pytest.approx(q + (1 - q) * (1 - (1 - rho) * (1 - a)))
    overhead = (policy.canary_odds(DEFAULT) + policy.replication_probability(established, DEFAULT)
                + DEFAULT.audit_share)
    assert overhead <= 0.05
    assert economics.p_caught_within(1000, 0.1, p) >= 0.99
    assert economics.tasks_to_catch(0.1, p) <= 1000


@given(st.floats(1e-6, 1.0), st.floats(1e-3, 1.0), st.integers(1, 5000))
def test_detection_formula(f: float, p: float, n: int) -> None:
    got = economics.p_caught_within(n, f, p)
    assert got == pytest.approx(1 - (1 - f * p) ** n)
    assert 0.0 <= got <= 1.0


@given(st.floats(1.0, 1e9), st.floats(0.01, 1.0))
def test_cheating_loses_money_at_or_above_the_minimum_stake(gain: float, p: float) -> None:
    stake = economics.minimum_stake(gain, p)
    assert economics.expected_profit_per_cheat(gain, stake * 1.01 + 1e-9, p) <= 1e-6 * gain
    if stake > 1:
        assert economics.expected_profit_per_cheat(gain, stake * 0.5, p) > 0


@given(st.integers(1, 10**12))
def test_the_stake_matching_demands_makes_every_cheat_a_losing_bet(value: int) -> None:
    p = policy.check_probability(Reputation(cv=10_000), DEFAULT)
    stake = market.stake_for(value, DEFAULT.slash_fraction, p)
    loss = policy.slash_amounts(stake, DEFAULT, reporter=True).amount
    assert economics.expected_profit_per_cheat(value, loss, p) < 0


def test_default_stake_covers_default_sized_tasks() -> None:
    """At the default 10 DEAI bond a provider may take tasks worth up to ~0.25 DEAI,
    e.g. 64 inputs at 3.5 DEAI per 1,000, and cheating on any of them loses money."""
    from deai.coordinator.settings import Settings

    p = policy.check_probability(Reputation(cv=10_000), DEFAULT)
    value = 64 * 3_500_000 // 1000
    assert market.stake_for(value, DEFAULT.slash_fraction, p) <= Settings().min_stake
    assert math.isinf(economics.minimum_stake(value, 0.0))


def test_params_are_checked() -> None:
    with pytest.raises(ValueError):
        VerifyParams(canary_share=1.5)
    with pytest.raises(ValueError):
        VerifyParams(cv_bootstrap=0)
