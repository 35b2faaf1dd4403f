"""The experiments behind ``deai sim verify`` and the targets they are checked against.

    network     the headline run: N providers (90% honest, 10% cheaters of every
                type, Sybil churn on), until T real tasks are done
    honest      honest providers only, fresh identities, until 10^6 honest tasks:
                false slashes and the steady-state overhead (last 30% of steps)
    detection   established providers (CV past the floor) turning to cheat on a
                share f = 0.1 of tasks, no churn, each followed for 1,000 tasks;
                and the same for fresh identities
    classes     one run per adversary class of the threat model (established
                identities, no churn, colluders 10% of their network): caught within
                the horizon, by what, wrong results accepted provisionally, corrected
                by audits and look-back, and left standing after the window
    sweep       detection within 1,000 tasks against overhead, over q and ρ_min

Every figure comes with core.verify.economics' closed form beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from deai.core.verify import economics, policy
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.sim import agents, classes, noise
from deai.sim.agents import Behaviour
from deai.sim.engine import Network, World

ESTABLISHED = Reputation(cv=10**6)  # far past the floor: ρ = ρ_min
TARGET_OVERHEAD = 0.05
TARGET_CATCH, TARGET_WITHIN, TARGET_F = 0.99, 1_000, 0.1
TARGET_APPROX_WITHIN, TARGET_PROVISIONAL = 100, 20.0
COLLUDER_SHARE = 0.10


@dataclass(frozen=True)
class Plan:
    providers: int = 10_000
    tasks: int = 1_000_000
    turn_after: int = 50             # turncoats in the network run
    honest_providers: int = 1_000
    honest_tasks: int = 1_000_000
    detect_cheaters: int = 20_000
    detect_honest: int = 5_000
    fresh_cheaters: int = 5_000
    sweep_q: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)
    sweep_rho: tuple[float, ...] = (0.01, 0.029, 0.05, 0.1)
    sweep_cheaters: int = 1_000
    sweep_honest: int = 500
    class_cheaters: int = 500        # per adversary class run
    class_providers: int = 2_000     # every class run's network (colluders: 10% of it)
    class_horizon: int = TARGET_WITHIN
    leaks: tuple[float, ...] = (0.5,)  # role readers that see through the blinding
    windows: tuple[int, ...] = (1_000,)  # longer challenge windows, in tasks

    @classmethod
    def fast(cls) -> Plan:
        return cls(providers=500, tasks=20_000, turn_after=20, honest_providers=200,
                   honest_tasks=100_000, detect_cheaters=1_000, detect_honest=300,
                   fresh_cheaters=300, sweep_q=(0.01, 0.05), sweep_rho=(0.01, 0.05),
                   sweep_cheaters=200, sweep_honest=100, class_cheaters=60,
                   class_providers=400, class_horizon=200)


def _slots(mix: list[tuple[Behaviour, float]], n: int) -> tuple[list[Behaviour], np.ndarray]:
    counts = [max(1, round(share * n)) for _, share in mix[1:]]
    counts.insert(0, n - sum(counts))
    return [b for b, _ in mix], np.repeat(np.arange(len(mix)), counts)


def _quantiles(x: list[int]) -> dict[str, float | None]:
    if not x:
        return {"mean": None, "p50": None, "p99": None}
    a = np.asarray(x, float)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99))}


def _overhead(net: Network, last: float = 1.0, *, expected: bool = False) -> float:
    """Extra over useful compute for honest subjects over the last share of steps.

    ``expected`` replaces the canary and replica draws by their probabilities
    given each provider's state (q, and ρ from its reputation), which removes
    the sampling noise but not the states' own evolution.
    """
    w = np.asarray(net.window[int(len(net.window) * (1 - last)):]).reshape(-1, 4)
    u, x = (w[:, 2], w[:, 3]) if expected else (w[:, 0], w[:, 1])
    return float(x.sum() / u.sum()) if u.sum() else 0.0


def floor_check_probability(p: VerifyParams) -> float:
    return policy.check_probability(Reputation(cv=2**31), p)


def formula_overhead(p: VerifyParams, rescore_share: float = 0.0) -> float:
    """Steady state for established honest providers: canaries, replicas at ρ_min (a
    forced error on ``forced_share`` of the re-scoring ones adds a check each), and an
    audit of ``audit_share`` of the accepted results."""
    rho = p.rho_min if p.replicate else 0.0
    return (policy.canary_odds(p) + rho * (1 + p.forced_share * rescore_share)
            + p.audit_share)


# --- the experiments -----------------------------------------------------------------------------

def network(plan: Plan, w: World, seed: int) -> dict[str, Any]:
    behaviours, slots = _slots(agents.default_mix(plan.turn_after), plan.providers)
    net = Network(w, behaviours, slots, np.random.default_rng(seed))
    while net.real_tasks.sum() < plan.tasks and net.active.sum() >= 2:
        net.step()
    return {"steps": net.steps, "real_tasks": int(net.real_tasks.sum()),
            "dispatched_tasks": int(net.tasks.sum()),
            "overhead": float(net.extra.sum() / net.useful.sum()),
            "honest_overhead": _overhead(net, expected=True), "escalations": net.escalations,
            "faults": dict(zip(["none", "subject", "checker", "both"],
                               net.faults.tolist(), strict=True)),
            "honest_slashed": len(net.honest_slashed),
            "honest_tasks": int(net.tasks[net.b_honest[net.sb]].sum()),
            "max_task_value": net.v_max, "audits": net.audits,
            "forced_errors": net.forced_errors, "no_checker": net.no_checker,
            "bad_accepted": int(net.bad_accepted.sum()),
            "corrected": int(net.corrected.sum()), "standing": int(net.standing.sum()),
            "provisional_at_end": int(net.provisional().sum()),
            "reachable_at_end": int(net.reachable().sum()),
            "look_back_overhead": float(net.looked_back.sum() / net.useful.sum()),
            "types": _per_type(net, w)}


def _per_type(net: Network, w: World) -> list[dict[str, Any]]:
    p = w.params
    pf = floor_check_probability(p)
    honest = net.b_honest[net.sb]
    base = _profit(net, honest)
    catches = np.array(net.catches, np.int64).reshape(-1, 3)
    censored = net.cheated_uncaught()
    mean_value = float(net.useful.sum() / max(1.0, net.real_tasks.sum()))
    mean_pay = mean_value * (1 - w.fee_bps / 10_000)
    loss = policy.slash_amounts(w.stake, p, reporter=True).amount + (w.job_tasks - 1) / 2 * mean_pay
    out = []
    for b, beh in enumerate(net.behaviours):
        mine = net.sb == b
        row: dict[str, Any] = {"type": beh.name, "slots": int(mine.sum()),
                               "tasks": int(net.tasks[mine].sum()),
                               "profit_per_task": _profit(net, mine)}
        if beh.honest:
            row["slashed"] = len(net.honest_slashed)
            out.append(row)
            continue
        caught = [int(t) for s, t, _ in catches if net.sb[s] == b]
        cheated = len(caught) + int((censored & mine).sum())
        detectable = beh.detectable
        if beh.training:
            miss_audit = (1 - w.audit_share) ** round(agents.SKIP_SHARE * w.segments)
            pe = 1 - (1 - pf) * miss_audit
        else:
            pe = pf * detectable
        gain = beh.saving * w.cost_share * mean_value
        row.update({
            "identities": int(net.identities[mine].sum()), "cheated": cheated,
            "caught": len(caught), "detection_rate": len(caught) / cheated if cheated else None,
            "tasks_to_detection": _quantiles(caught),
            "floor_mean_tasks_to_detection": (1 / (beh.cheat_rate * pe) if beh.cheat_rate
                                              else None),
            "bad_accepted": int(net.bad_accepted[mine].sum()),
            "bad_accepted_per_identity": float(net.bad_accepted[mine].sum() / max(1, cheated)),
            "corrected": int(net.corrected[mine].sum()),
            "standing": int(net.standing[mine].sum()),
            "excess_profit_per_task": row["profit_per_task"] - base,
            "floor_expected_profit_per_cheat": economics.expected_profit_per_cheat(gain, loss, pe),
        })
        out.append(row)
    return out


def _profit(net: Network, mask: np.ndarray) -> float:
    money = (net.earned + net.bounty - net.forfeited - net.compute - net.slashed)[mask].sum()
    return float(money / max(1.0, net.tasks[mask].sum()))


def honest_run(plan: Plan, w: World, seed: int) -> dict[str, Any]:
    net = Network(w, [agents.HONEST], np.zeros(plan.honest_providers, np.int64),
                  np.random.default_rng(seed))
    while net.real_tasks.sum() < plan.honest_tasks:
        net.step()
    return {"providers": plan.honest_providers, "steps": net.steps,
            "honest_tasks": int(net.tasks.sum()), "real_tasks": int(net.real_tasks.sum()),
            "honest_slashed": len(net.honest_slashed), "escalations": net.escalations,
            "escalations_cleared": int(net.faults[0]),
            "overhead_total": float(net.extra.sum() / net.useful.sum()),
            "overhead_steady": _overhead(net, 0.3, expected=True),
            "overhead_steady_drawn": _overhead(net, 0.3),
            "formula": formula_overhead(w.params, w.rescore_share)}


def detection(cheaters: int, honest: int, w: World, seed: int, *, established: bool,
              on_replicas: bool = True, f: float = TARGET_F,
              horizon: int = TARGET_WITHIN) -> dict[str, Any]:
    """Cheaters at rate ``f`` from their first task, each followed for ``horizon`` tasks.

    ``on_replicas=False`` is the worst case for detection: a cheater that somehow
    runs other providers' replicas honestly is only ever checked on its own tasks.
    """
    w = replace(w, churn=False)
    slots = np.concatenate([np.ones(cheaters, np.int64), np.zeros(honest, np.int64)])
    cheat = agents.fraction(f, on_replicas=on_replicas)
    net = Network(w, [agents.HONEST, cheat], slots, np.random.default_rng(seed),
                  start=ESTABLISHED if established else None)
    for _ in range(horizon):
        net.step()
    caught = [t for s, t, _ in net.catches if slots[s] == 1 and t <= horizon]
    pf = floor_check_probability(w.params)
    rate = len(caught) / cheaters
    return {"cheaters": cheaters, "f": f, "horizon": horizon, "established": established,
            "cheats_on_replicas": on_replicas, "caught_within": rate,
            "stderr": float(np.sqrt(rate * (1 - rate) / cheaters)),
            "tasks_to_detection": _quantiles(caught),
            "bad_accepted_per_cheater": float(net.bad_accepted[slots == 1].mean()),
            "standing": int(net.standing.sum()),
            "honest_overhead": _overhead(net, expected=True),
            "floor_p_caught_within": economics.p_caught_within(horizon, f, pf),
            "floor_tasks_to_99": economics.tasks_to_catch(f, pf),
            "floor_check_probability": pf}


def sweep(plan: Plan, w: World, seed: int) -> list[dict[str, Any]]:
    out = []
    for i, q in enumerate(plan.sweep_q):
        for k, r in enumerate(plan.sweep_rho):
            wp = replace(w, params=replace(w.params, canary_share=q, rho_min=r))
            d = detection(plan.sweep_cheaters, plan.sweep_honest, wp, seed + 100 * i + k,
                          established=True, on_replicas=False)
            out.append({"q": q, "rho_min": r, "overhead": d["honest_overhead"],
                        "formula_overhead": formula_overhead(wp.params, w.rescore_share),
                        "detection": d["caught_within"],
                        "floor_detection": d["floor_p_caught_within"]})
    return out


# --- targets ---------------------------------------------------------------------------------

def _class(r: dict[str, Any], prefix: str, leak: float = 0.0) -> dict[str, Any]:
    c: dict[str, Any] = next(x for x in _default(r) if x["class"].startswith(prefix)
                             and x["leak"] == leak)
    return c


def _default(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The class runs at the world's own window and look-back reach (not the what-ifs)."""
    w, reach = r["world"]["window_tasks"], r["world"]["look_back"]
    return [x for x in r["classes"] if x["window"] == w and x["look_back"] == reach]


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    h, d, net = r["honest"], r["detection_established"], r["network"]
    col, apx = _class(r, "colluder"), _class(r, "cheap approximator")
    blind = [x for x in _default(r) if x["leak"] == 0.0]
    standing = net["standing"] + sum(x["standing"] for x in blind)
    reachable = net["reachable_at_end"] + sum(x["reachable_at_end"] for x in blind)
    worst_prov = max(blind, key=lambda x: x["bad_accepted_per_cheater"])
    col_honest = col["honest_slashed"]
    cheats = [t for t in net["types"] if "excess_profit_per_task" in t]
    worst = max(cheats, key=lambda t: t["excess_profit_per_task"])
    worst_floor = max(cheats, key=lambda t: t["floor_expected_profit_per_cheat"])
    slashed = h["honest_slashed"] + net["honest_slashed"]
    honest_tasks = h["honest_tasks"] + net["honest_tasks"]
    return [
        {"target": "steady-state overhead ≤ 5% of useful compute",
         "value": f"{h['overhead_steady']:.3%} (drawn {h['overhead_steady_drawn']:.2%}; "
                  f"q/(1−q) + ρ_min·(1 + forced·rescore) + audit = {h['formula']:.3%})",
         "pass": h["overhead_steady"] <= TARGET_OVERHEAD},
        {"target": "f ≥ 10% caught within 1,000 tasks with p ≥ 99%",
         "value": f"{d['caught_within']:.2%} ± {d['stderr']:.2%} of {d['cheaters']:,} "
                  f"established cheaters, own tasks only "
                  f"(economics: {d['floor_p_caught_within']:.2%})",
         "pass": d["caught_within"] >= TARGET_CATCH},
        {"target": "zero honest providers slashed over 10^6 honest tasks",
         "value": f"{slashed} slashed over {honest_tasks:,} honest tasks",
         "pass": slashed == 0 and h["honest_tasks"] >= 1_000_000},
        {"target": "colluding operators (10% of providers) caught ≥ 99%, 0 honest slashed "
                   "over ≥ 10^6 honest tasks",
         "value": f"{col['caught_within']:.2%} of {col['cheaters']:,} colluders (f = 0.1) "
                  f"caught within {col['horizon']:,} tasks (by {col['caught_by']}); "
                  f"{col_honest} honest slashed over {col['honest_tasks']:,} honest tasks",
         "pass": col["caught_within"] >= TARGET_CATCH and col_honest == 0
         and col["honest_tasks"] >= 1_000_000},
        {"target": "cheap approximators caught ≥ 99% within 100 tasks",
         "value": f"{apx['caught_within']:.2%} of {apx['cheaters']:,} established "
                  f"approximators within {apx['horizon']} tasks",
         "pass": apx["caught_within"] >= TARGET_CATCH and apx["horizon"] <= TARGET_APPROX_WITHIN},
        {"target": "bad results standing after the challenge window: 0",
         "value": f"{standing:,} stood beyond any look-back's reach (network run "
                  f"{net['standing']:,} of {net['bad_accepted']:,} accepted wrong, "
                  f"{net['corrected']:,} corrected; class runs "
                  + (", ".join(f"{x['class']} {x['standing']:,}" for x in blind
                               if x["standing"]) or "0") + "); "
                  f"{reachable:,} past the window of cheaters not caught by the end, "
                  "corrected when they are",
         "pass": standing == 0},
        {"target": "mean wrong results accepted provisionally per cheater ≤ 20",
         "value": f"worst class {worst_prov['bad_accepted_per_cheater']:.1f} "
                  f"({worst_prov['class']}); f = 0.1: {d['bad_accepted_per_cheater']:.1f}",
         "pass": worst_prov["bad_accepted_per_cheater"] <= TARGET_PROVISIONAL},
        {"target": "cheating has negative expected profit at the default stake",
         "value": f"worst excess {worst['excess_profit_per_task']:+,.0f} µ/task "
                  f"({worst['type']}); worst closed form "
                  f"{worst_floor['floor_expected_profit_per_cheat']:+,.0f} µ/cheat "
                  f"({worst_floor['type']})",
         "pass": worst["excess_profit_per_task"] < 0
         and worst_floor["floor_expected_profit_per_cheat"] < 0},
    ]


def verify(plan: Plan, seed: int = 0, world: World | None = None,
           progress: Any = None) -> dict[str, Any]:
    """Run every experiment; returns the JSON-ready report."""
    w = world or World()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    r: dict[str, Any] = {"seed": seed, "plan": plan.__dict__ | {}, "world": _world(w)}
    timings = {}
    for name, fn in (
        ("network", lambda: network(plan, w, seed)),
        ("honest", lambda: honest_run(plan, w, seed + 1)),
        ("detection_established", lambda: detection(plan.detect_cheaters, plan.detect_honest,
                                                    w, seed + 2, established=True,
                                                    on_replicas=False)),
        ("detection_replicas", lambda: detection(plan.detect_cheaters // 4, plan.detect_honest,
                                                 w, seed + 5, established=True)),
        ("detection_fresh", lambda: detection(plan.fresh_cheaters, plan.detect_honest, w,
                                              seed + 3, established=False)),
        ("classes", lambda: classes.classes(plan, w, seed + 10)),
        ("sweep", lambda: sweep(plan, w, seed + 4)),
    ):
        say(name)
        t = time.perf_counter()
        r[name] = fn()
        timings[name] = round(time.perf_counter() - t, 2)
    r["targets"] = targets(r)
    r["seconds"] = timings | {"total": round(time.perf_counter() - t0, 2)}
    return r


def _world(w: World) -> dict[str, Any]:
    d = dict(w.__dict__)
    d["params"] = dict(w.params.__dict__)
    d["tolerance"] = noise.TAU
    d["look_back"] = str(w.look_back)
    return d
