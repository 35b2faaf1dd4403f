"""Provider behaviours: the adversary classes of research/threat-model.md, as data.

A behaviour is a plain record; the engine keeps one behaviour index per
provider slot and evaluates it over arrays. A provider cannot tell a primary
from a replica or a canary (blind work), so a cheater cheats on both, unless it
is a role reader that sees through the blinding (``leak``).

    honest            never cheats; hardware class noise only
    sybil             one operator, ``keys`` slots; cheats at f = 0.1 and echoes its
                      own keys' answers when checking them (diversity never lets it)
    colluder          distinct operators (up to 10% of providers) who echo each
                      other's wrong answers when one checks the other; cheat at f
    role reader       cheats at f where it expects no check; sees a check (canary,
                      replica, audit) with probability ``World.leak`` (default 0)
    approximator      cheaper computation just above τ (τ·U(1.2, 3)) on every task
    patient           honest until trusted (``turn_after`` tasks), then always wrong
    rare              wrong on 1% of tasks, forever
    rubber-stamper    honest as a primary; as a checker agrees without working: on a
                      re-scoring kind it says "agrees", on a re-execution kind it must
                      return an output and returns a made-up one
    always-wrong, fraction f, lazy, lower precision, truncating, skips steps
                      the simple cheats (kept for the sweep and the profit table)

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
    keys: int = 1                 # slots per operator (sybils: many keys, one operator)
    echo: bool = False            # as a checker, agrees with a partner's answer, right or wrong
    ring: bool = False            # partners are every slot of this behaviour (colluders),
    #                               not only the same operator's keys (sybils)
    reads_roles: bool = False     # honest wherever it sees a check (World.leak of the time)
    stamps: bool = False          # as a checker, agrees without working (rubber-stamper)

    @property
    def honest(self) -> bool:
        return self.cheat_rate == 0.0 and not self.stamps


SKIP_SHARE = 0.1  # a step-skipper fakes 10% of each job's segments

HONEST = Behaviour("honest")


def approx_distance(n: int, rng: np.random.Generator) -> np.ndarray:
    """A cheaper computation that lands just outside the calibrated tolerance."""
    return noise.TAU * rng.uniform(1.2, 3.0, n)


def fraction(f: float, *, on_replicas: bool = True) -> Behaviour:
    return Behaviour(f"fraction f={f:g}", f, saving=1.0, distance=noise.random_output,
                     on_replicas=on_replicas)


def turncoat(after: int, f: float = 1.0) -> Behaviour:
    return Behaviour(f"patient M={after}" + (f" f={f:g}" if f < 1 else ""), f,
                     turn_after=after, saving=1.0, distance=noise.random_output)


def sybil(keys: int = 20, f: float = 0.1) -> Behaviour:
    return Behaviour(f"sybil ({keys} keys/operator) f={f:g}", f, saving=1.0,
                     distance=noise.random_output, keys=keys, echo=True)


def colluder(f: float = 0.1) -> Behaviour:
    return Behaviour(f"colluder f={f:g}", f, saving=1.0, distance=noise.random_output,
                     echo=True, ring=True)


def role_reader(f: float = 0.1) -> Behaviour:
    return Behaviour(f"role reader f={f:g}", f, saving=1.0, distance=noise.random_output,
                     reads_roles=True)


APPROXIMATOR = Behaviour("cheap approximator", 1.0, saving=0.25, distance=approx_distance)
RARE = fraction(0.01)
RUBBER_STAMPER = Behaviour("rubber-stamper", stamps=True)
ALWAYS_WRONG = Behaviour("always-wrong", 1.0, saving=1.0, distance=noise.random_output)
LAZY = Behaviour("lazy (cheaper model)", 1.0, saving=0.8, distance=noise.lazy)
LOWER_PRECISION = Behaviour("lower precision", 1.0, saving=0.5,
                            distance=noise.lower_precision,
                            detectable=noise.lower_precision_over_tau())
TRUNCATING = Behaviour("truncating", 1.0, saving=0.5)
SKIPS_STEPS = Behaviour("skips training steps", 1.0, saving=SKIP_SHARE, training=True)


def threat_classes(turn_after: int) -> list[Behaviour]:
    """One behaviour per adversary class of the threat model (verification classes)."""
    return [sybil(), colluder(), role_reader(), APPROXIMATOR, turncoat(turn_after), RARE,
            RUBBER_STAMPER]


def default_mix(turn_after: int) -> list[tuple[Behaviour, float]]:
    """Shares of provider slots: 90% honest, 10% cheaters across every class and cheat."""
    cheaters = [*threat_classes(turn_after), ALWAYS_WRONG, fraction(0.1), LAZY,
                LOWER_PRECISION, TRUNCATING, SKIPS_STEPS]
    share = 0.10 / len(cheaters)
    return [(HONEST, 0.90)] + [(b, share) for b in cheaters]
