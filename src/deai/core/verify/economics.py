"""Why cheating does not pay: detection odds and expected profit per cheated task.

With check probability p per task and a cheat rate f, a cheater expects
1/(f·p) tasks before a catch; each catch costs it the slashed stake plus
its unreleased earnings. Cheating has negative expected profit when

    p·L > (1 − p)·G        i.e.  L > G·(1 − p)/p

where G is the gain per cheated task (its price, for fully faked work) and L
the loss when caught (research/verification.md §10.5).
"""

from __future__ import annotations

import math


def p_caught_within(n: int, f: float, p: float, miss: float = 0.0) -> float:
    """Probability a provider cheating on share ``f`` of tasks is caught within ``n`` tasks."""
    per_task = f * p * (1.0 - miss)
    if per_task <= 0:
        return 0.0
    return 1.0 - math.pow(1.0 - per_task, n)


def tasks_to_catch(f: float, p: float, confidence: float = 0.99, miss: float = 0.0) -> float:
    per_task = f * p * (1.0 - miss)
    if per_task <= 0:
        return math.inf
    if per_task >= 1:
        return 1.0
    return math.log(1.0 - confidence) / math.log(1.0 - per_task)


def expected_profit_per_cheat(gain: float, loss: float, p: float) -> float:
    """Expected profit of one cheated task: keep ``gain`` if unchecked, lose ``loss`` if caught."""
    return (1.0 - p) * gain - p * loss


def minimum_stake(gain: float, p: float, escrowed: float = 0.0) -> float:
    """The smallest stake that makes a cheated task unprofitable in expectation."""
    if p <= 0:
        return math.inf
    return max(0.0, gain * (1.0 - p) / p - escrowed)
