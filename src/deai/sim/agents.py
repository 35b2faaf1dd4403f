"""Provider behaviours: who cheats, on which tasks, how, and what it saves.

A behaviour is a plain record; the engine keeps one behaviour index per
provider slot and evaluates the rules below over arrays. Cheaters cheat on
every task they are given, replicas of other providers' work included, since a
replica looks like any other task.

    honest            never cheats; hardware class noise only
    always-wrong      random vectors on every task
    fraction f        random vectors on a share f of tasks
    lazy              a cheaper model on every task (distance 0.01-0.2)
    lower precision   a quantised model on every task (over τ ~30% of the time)
    truncating        truncated output on every task (the comparator sees it)
    skips steps       training jobs: fakes ``skip`` of the N_seg segments
    turncoat          honest for ``turn_after`` tasks, then random vectors at rate f

``saving`` is the share of the honest compute cost a cheated task does not spend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deai.sim import noise

Draw = Callable[[int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Behaviour:
    name: str
    cheat_rate: float = 0.0       # share of tasks cheated once cheating
    turn_after: int = 0           # honest tasks before cheating starts
    saving: float = 0.0           # share of compute cost saved on a cheated task
    distance: Draw = noise.gross  # e of a cheated output
    detectable: float = 1.0       # share of checked cheats whose e exceeds τ
    training: bool = False        # runs training jobs (checked by segment audits too)
    on_replicas: bool = True      # also cheats on replicas it runs (it cannot tell them apart)

    @property
    def honest(self) -> bool:
        return self.cheat_rate == 0.0


SKIP_SHARE = 0.1  # a step-skipper fakes 10% of each job's segments

HONEST = Behaviour("honest")


def fraction(f: float, *, on_replicas: bool = True) -> Behaviour:
    return Behaviour(f"fraction f={f:g}", f, saving=1.0, distance=noise.random_output,
                     on_replicas=on_replicas)


def turncoat(after: int, f: float = 1.0) -> Behaviour:
    return Behaviour(f"turncoat M={after}" + (f" f={f:g}" if f < 1 else ""), f,
                     turn_after=after, saving=1.0, distance=noise.random_output)


ALWAYS_WRONG = Behaviour("always-wrong", 1.0, saving=1.0, distance=noise.random_output)
LAZY = Behaviour("lazy (cheaper model)", 1.0, saving=0.8, distance=noise.lazy)
LOWER_PRECISION = Behaviour("lower precision", 1.0, saving=0.5,
                            distance=noise.lower_precision,
                            detectable=noise.lower_precision_over_tau())
TRUNCATING = Behaviour("truncating", 1.0, saving=0.5)
SKIPS_STEPS = Behaviour("skips training steps", 1.0, saving=SKIP_SHARE, training=True)


def default_mix(turn_after: int) -> list[tuple[Behaviour, float]]:
    """Shares of provider slots: 90% honest, 10% cheaters across every type."""
    cheaters = [ALWAYS_WRONG, fraction(0.01), fraction(0.1), fraction(0.5), LAZY,
                LOWER_PRECISION, TRUNCATING, SKIPS_STEPS, turncoat(turn_after)]
    share = 0.10 / len(cheaters)
    return [(HONEST, 0.90)] + [(b, share) for b in cheaters]
