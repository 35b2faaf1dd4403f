"""core.verify's per-provider decisions over numpy arrays, one element per provider.

The simulator cannot afford a ``Reputation`` object and a Python call per task at
10^6 tasks, so this module restates three core functions over arrays:

    rho        core.verify.policy.replication_probability
    passed     core.verify.reputation.Reputation.passed   (``count`` times at one instant)
    failed     core.verify.reputation.Reputation.failed   (``count`` times at one instant)
    look_back_since  core.verify.lookback.since (marks as arrays, NaN for None)

tests/test_sim.py draws thousands of random states and proves each equal to
core's function, so a change in core that is not mirrored here fails a test.
Everything else the simulator decides (canary odds, verdicts, slash amounts,
stake per task) it asks core for directly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from deai.core.verify import lookback
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation


@dataclass
class Reputations:
    """``Reputation``'s fields as parallel arrays."""

    cv: np.ndarray          # int64
    passes: np.ndarray      # float64
    fails: np.ndarray       # float64
    probation: np.ndarray   # int64
    updated_at: np.ndarray  # float64

    @classmethod
    def new(cls, n: int, start: Reputation | None = None) -> Reputations:
        r = start or Reputation()
        return cls(np.full(n, r.cv, np.int64), np.full(n, r.passes), np.full(n, r.fails),
                   np.full(n, r.probation, np.int64), np.full(n, r.updated_at))

    def reset(self, i: np.ndarray | int, start: Reputation | None = None) -> None:
        r = start or Reputation()
        for f in fields(Reputation):
            getattr(self, f.name)[i] = getattr(r, f.name)

    def get(self, i: int) -> Reputation:
        return Reputation(int(self.cv[i]), float(self.passes[i]), float(self.fails[i]),
                          int(self.probation[i]), float(self.updated_at[i]))


def rho(cv: np.ndarray, probation: np.ndarray, p: VerifyParams,
        always: np.ndarray | None = None) -> np.ndarray:
    """``replication_probability`` for every provider at once."""
    if not p.replicate:
        out = np.zeros(cv.shape)
    else:
        full = (probation > 0) | (cv < p.cv_bootstrap)
        out = np.where(full, 1.0, np.maximum(p.rho_min, 1.0 / np.maximum(cv, 1)))
    if always is not None:
        out = np.where(always, 1.0, out)
    return out


def _decay(r: Reputations, i: np.ndarray, now: float, p: VerifyParams) -> None:
    """``Reputation.decayed`` at time ``now`` for the providers ``i`` (distinct)."""
    upd = r.updated_at[i]
    fade = (now > upd) & (upd != 0.0)
    k = np.power(0.5, np.where(fade, (now - upd) / p.decay_half_life, 0.0))
    r.passes[i] *= k
    r.fails[i] *= k
    r.updated_at[i] = np.maximum(upd, now)


def passed(r: Reputations, who: np.ndarray, now: float, p: VerifyParams) -> None:
    """Every provider in ``who`` passes a check, once per appearance, at ``now``."""
    if who.size == 0:
        return
    i, count = np.unique(who, return_counts=True)
    _decay(r, i, now, p)  # decaying again at the same instant changes nothing
    r.cv[i] += count
    r.passes[i] += count
    r.probation[i] = np.maximum(0, r.probation[i] - count)


def failed(r: Reputations, who: np.ndarray, now: float, p: VerifyParams) -> None:
    """Every provider in ``who`` fails a check, once per appearance, at ``now``."""
    if who.size == 0:
        return
    i, count = np.unique(who, return_counts=True)
    _decay(r, i, now, p)
    r.cv[i] = 0
    r.fails[i] += count
    r.probation[i] = p.probation_tasks


def look_back_since(reach: lookback.Reach, last_pass: np.ndarray, last_review: np.ndarray,
                    now: float, window: float) -> np.ndarray:
    """``lookback.since`` per provider; a mark is NaN where core's is None."""
    start = now - window
    if reach == lookback.Reach.WINDOW:
        return np.full(last_pass.shape, start)
    a = last_pass if reach == lookback.Reach.LAST_PASS else last_review
    out: np.ndarray = np.where(np.isnan(a), -np.inf, np.minimum(a, start))
    return out
