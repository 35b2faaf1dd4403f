"""How far an output lies from the referee's deterministic answer, per task.

Outputs are embeddings compared by cosine distance against
``core.kinds.embeddings.COSINE_TOLERANCE`` (τ, the calibrated cross-class
tolerance; 1e-7 today, same-class outputs are bitwise equal). Each output is summarised
by ``e``, its cosine distance from the referee's deterministic re-execution. Two
outputs perturbed in independent directions of a high-dimensional space lie at

    d(u, v) ≈ e_u + e_v        (1 − cos θ ≈ θ²/2 and θ_uv² ≈ θ_u² + θ_v²)

from each other; two honest outputs from one hardware class are bitwise equal
(d = 0). The comparator flags d > τ; the referee sides with a party when its
e ≤ τ.

Honest model (assumptions, to be replaced by the GPU calibration of research
§11.2): hardware class k deviates by ``e = s_k · LogNormal(0, 0.5)`` with
s_k log-spaced over 5e-5·τ..5e-3·τ (relative to τ, so the model follows the
calibration), so cross-class distances span ~1e-4·τ..1e-2·τ.
With probability ``tail`` a task is ill-conditioned and every class deviates
by U(0.55, 0.95)·τ: two classes then disagree (d > 1.1τ) while each stays
within τ of the referee, so the referee clears both. The model's one load-
bearing assumption is that an honest output is never more than 0.95τ from the
deterministic referee; calibrating τ must make that true.

Cheat models (e for a cheated output):

    random / always-wrong   U(0.7, 1.3)            a random vector
    lazy (cheaper model)    LogUniform(0.01, 0.2)
    cheap approximator      τ·U(1.2, 3)            just outside the tolerance (agents.py)
    lower precision         τ·0.7·10^N(0, 0.3)     above τ on ~30% of tasks
    truncating              1.0                    token counts differ: statistic 1.0
    skipped training steps  1.0                    the hash chain parts bitwise
"""

from __future__ import annotations

import numpy as np

from deai.core.kinds.embeddings import COSINE_TOLERANCE

TAU = COSINE_TOLERANCE
CLASS_SCALES = TAU * np.array([5e-5, 2.5e-4, 1.2e-3, 5e-3])
TAIL_LOW, TAIL_HIGH = 0.55, 0.95
LOWPREC_MEDIAN, LOWPREC_SIGMA = 0.7, 0.3


def honest(n: int, rng: np.random.Generator, tail: float) -> np.ndarray:
    """Each hardware class's deviation on each of ``n`` tasks: shape (n, classes)."""
    k = CLASS_SCALES.size
    e = CLASS_SCALES * rng.lognormal(0.0, 0.5, size=(n, k))
    e = np.minimum(e, TAIL_LOW * TAU)  # the body of the distribution stays well inside τ
    bad = rng.random(n) < tail
    if bad.any():
        e[bad] = rng.uniform(TAIL_LOW, TAIL_HIGH, size=(int(bad.sum()), k)) * TAU
    return e


def random_output(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.7, 1.3, n)


def lazy(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(np.log(0.01), np.log(0.2), n))


def lower_precision(n: int, rng: np.random.Generator) -> np.ndarray:
    return TAU * LOWPREC_MEDIAN * np.power(10.0, rng.normal(0.0, LOWPREC_SIGMA, n))


def lower_precision_over_tau() -> float:
    """P(e > τ) for a lower-precision output, the share of its cheats a check can see."""
    from math import erf, log10, sqrt

    z = log10(1.0 / LOWPREC_MEDIAN) / LOWPREC_SIGMA
    return 0.5 * (1.0 - erf(z / sqrt(2.0)))


def gross(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.ones(n)
