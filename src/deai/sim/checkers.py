"""Who checks whom: the coordinator's checker draw over arrays.

``coordinator.matching`` places a replica with ``core.market.pick``: drawn at
random among eligible providers, weighted by ``max(stake, 1) × max(score, 0.05)``
(``Reputation.score``), and never on a provider that shares an operator (or an
origin, or a fingerprint: in the simulator one operator is one origin and one
box) with anyone already on the task. ``draw`` does the same for a whole step:
one candidate per subject by inverse CDF, then redraws for the candidates that
share the subject's operator until none do (or ``tries`` run out: the check
waits, as ``decide.on_check_abandoned`` keeps it waiting).

``score`` restates ``Reputation.score`` over arrays; tests/test_sim_classes.py
proves it equal to core's.
"""

from __future__ import annotations

import numpy as np

from deai.sim.vec import Reputations

MIN_SCORE = 0.05  # core.market.pick: max(p.reputation, 0.05)


def score(r: Reputations, i: np.ndarray) -> np.ndarray:
    """``Reputation.score`` for the providers ``i``."""
    s = (r.passes[i] + 1.0) / (r.passes[i] + r.fails[i] + 2.0)
    out: np.ndarray = np.where(r.probation[i] > 0, s * 0.5, s)
    return out


def weights(stake: np.ndarray, r: Reputations, i: np.ndarray) -> np.ndarray:
    """``market.pick``'s weight of each provider ``i``: stake × reputation."""
    out: np.ndarray = np.maximum(stake[i], 1).astype(float) * np.maximum(score(r, i), MIN_SCORE)
    return out


def draw(subjects: np.ndarray, pool: np.ndarray, w: np.ndarray, operator: np.ndarray,
         rng: np.random.Generator, *, diversity: bool = True,
         tries: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A checker (a slot of ``pool``) for every slot in ``subjects``.

    Returns the checkers and a mask of the subjects that got one. With
    ``diversity`` a checker never shares the subject's operator; without it, only
    never the subject itself.
    """
    cum = np.cumsum(w)
    total = cum[-1]
    out = np.full(subjects.size, -1, np.int64)
    todo = np.arange(subjects.size)
    for _ in range(tries):
        if todo.size == 0:
            break
        pick = pool[np.minimum(np.searchsorted(cum, rng.random(todo.size) * total, "right"),
                               pool.size - 1)]
        s = subjects[todo]
        bad = pick == s
        if diversity:
            bad |= operator[pick] == operator[s]
        out[todo[~bad]] = pick[~bad]
        todo = todo[bad]
    return out, out >= 0
