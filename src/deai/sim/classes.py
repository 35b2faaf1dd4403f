"""One run per adversary class of research/threat-model.md (the verification classes).

Each run is a network of ``Plan.class_providers`` established providers (CV far
past the floor: ρ = ρ_min, the cheapest state to cheat in), of which
``Plan.class_cheaters`` are of the class (colluders: 10% of the network, by count
and by stake), followed for ``Plan.class_horizon`` tasks with no churn. Reported
per class: the share caught within the horizon and by what (canary, replica,
caught as a checker, forced error, audit), tasks to detection, wrong results
accepted provisionally per cheater, how many of them audits and look-back
corrected, how many stood after the window, and honest providers slashed.
Role readers run at the world's ``leak`` (default 0: blind work) and at each
``Plan.leaks``, to show what the blinding is worth; rare and f = 0.1 cheaters
also at each ``Plan.windows`` (challenge window, in tasks), to show which window
leaves no wrong result standing; and both at the narrower look-back reaches of
``core.verify.lookback`` (the window only, since the last passed check), to
show what reaching back to the provider's last look-back is worth.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from deai.core.verify.lookback import Reach
from deai.core.verify.reputation import Reputation
from deai.sim import agents
from deai.sim.agents import Behaviour
from deai.sim.engine import CAUSES, Network, World

ESTABLISHED = Reputation(cv=10**6)


def one(b: Behaviour, cheaters: int, providers: int, horizon: int, w: World,
        seed: int) -> dict[str, Any]:
    """``cheaters`` of behaviour ``b`` among ``providers``, followed for ``horizon`` tasks."""
    w = replace(w, churn=False)
    honest = providers - cheaters
    slots = np.concatenate([np.ones(cheaters, np.int64), np.zeros(honest, np.int64)])
    net = Network(w, [agents.HONEST, b], slots, np.random.default_rng(seed), start=ESTABLISHED)
    for _ in range(horizon):
        net.step()
    mine = slots == 1
    caught = [(t, c) for s, t, c in net.catches if mine[s] and t <= horizon]
    cheated = int((net.id_cheat_start[mine] != -1).sum())
    by = np.bincount([c for _, c in caught], minlength=len(CAUSES))
    tt = np.asarray([t for t, _ in caught], float)
    hon = ~mine
    return {
        "class": b.name, "cheaters": cheaters, "providers": providers, "horizon": horizon,
        "leak": w.leak, "window": w.window_tasks, "look_back": str(w.look_back),
        "cheated": cheated,
        "caught_within": len(caught) / cheaters,
        "caught_of_cheated": len(caught) / cheated if cheated else None,
        "caught_by": {CAUSES[i]: int(by[i]) for i in range(len(CAUSES)) if by[i]},
        "tasks_to_detection": {"mean": float(tt.mean()) if tt.size else None,
                               "p99": float(np.percentile(tt, 99)) if tt.size else None},
        "bad_accepted_per_cheater": float(net.bad_accepted[mine].sum() / cheaters),
        "bad_accepted": int(net.bad_accepted.sum()),
        "corrected": int(net.corrected.sum()), "standing": int(net.standing.sum()),
        "provisional_at_end": int(net.provisional().sum()),
        "reachable_at_end": int(net.reachable().sum()),
        "look_back_overhead": float(net.looked_back.sum() / net.useful.sum()),
        "partner_checks": net.partner_checks,
        "honest_slashed": len(net.honest_slashed),
        "honest_tasks": int(net.tasks[hon].sum()),
    }


def classes(plan: Any, w: World, seed: int) -> list[dict[str, Any]]:
    """Every verification class of the threat model, each in its own network."""
    n, c, h = plan.class_providers, plan.class_cheaters, plan.class_horizon
    runs: list[tuple[Behaviour, int, int, World]] = [
        (agents.sybil(), c, h, w),
        (agents.colluder(), max(1, round(COLLUDERS * n)), h, w),
        (agents.role_reader(), c, h, w),
        (agents.APPROXIMATOR, c, min(h, APPROX_HORIZON), w),
        (replace(agents.turncoat(0), name="patient (trusted, then always wrong)"), c, h, w),
        (replace(agents.RARE, name="rare (f=0.01 forever)"), c, h, w),
        (agents.RUBBER_STAMPER, c, h, w),
    ]
    runs += [(agents.role_reader(), c, h, replace(w, leak=x)) for x in plan.leaks]
    # what a longer challenge window (look-back reach) does to results left standing
    runs += [(replace(agents.RARE, name="rare (f=0.01 forever)"), c, h,
              replace(w, window_tasks=x)) for x in plan.windows]
    runs += [(agents.fraction(0.1), c, h, replace(w, window_tasks=x))
             for x in (w.window_tasks, *plan.windows)]
    out = [one(b, k, n, hz, wx, seed + i) for i, (b, k, hz, wx) in enumerate(runs)]
    # what the look-back's reach is worth: the window only, since the last passed check;
    # each with the seed of the same class's run at the default reach, for a paired view
    rare, frac = replace(agents.RARE, name="rare (f=0.01 forever)"), agents.fraction(0.1)
    paired = {rare.name: 5, frac.name: len(runs) - 1 - len(plan.windows)}
    for r in Reach:
        if r != w.look_back:
            out += [one(b, c, n, h, replace(w, look_back=r), seed + paired[b.name])
                    for b in (rare, frac)]
    return out


COLLUDERS = 0.10        # colluding operators: up to 10% of providers
APPROX_HORIZON = 100    # cheap approximators: caught within 100 tasks
