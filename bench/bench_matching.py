"""Placement throughput of ``core.market.place`` against a naive per-task scan.

Builds a seeded, realistic market (several models and prices, reputations, 1-4
slots, some providers offline, unstaked or already busy, replica tasks that
exclude a provider) at 1,000 and 10,000 providers, places 2,000 tasks with
``place`` and with the reference algorithm (for each task, scan every provider
and take the best eligible), checks both give the same placements, and prints
tasks/s for each and their ratio. The naive scan runs on a prefix of the tasks
when it would take too long; placement is sequential, so the prefix's result
must equal ``place`` on the same prefix.

    .venv/bin/python bench/bench_matching.py          # writes bench/results/matching.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deai.core.market import (
    DEFAULT_STRATEGY,
    Offer,
    Placement,
    ProviderState,
    Strategy,
    TaskDemand,
    place,
)

MIN_STAKE = 10_000_000
# model -> (workload, memory MB needed, typical price per 1,000 units, share of tasks)
MODELS = {
    "all-MiniLM-L6-v2": ("embeddings", 512, 1_000, 0.55),
    "bge-small-en-v1.5": ("embeddings", 768, 1_200, 0.15),
    "e5-base-v2": ("embeddings", 1_536, 2_500, 0.15),
    "SmolLM2-135M-Instruct": ("chat", 1_024, 8_000, 0.10),
    "Qwen2.5-1.5B-Instruct": ("chat", 6_144, 30_000, 0.05),
}
OUT = Path(__file__).resolve().parent / "results" / "matching.json"


def make_providers(n: int, rng: random.Random) -> list[ProviderState]:
    names = list(MODELS)
    out = []
    for _ in range(n):
        memory = rng.choice([2_048, 4_096, 8_192, 16_384, 24_576])
        served = rng.sample(names, rng.choice([1, 1, 2, 2, 3]))
        offers = tuple(
            Offer(MODELS[m][0], m, max(1, round(MODELS[m][2] * rng.uniform(0.6, 1.6))))
            for m in served if MODELS[m][1] <= memory
        ) or (Offer("embeddings", names[0], MODELS[names[0]][2]),)
        slots = rng.randint(1, 4)
        out.append(ProviderState(
            id=f"{rng.getrandbits(256):064x}",
            online=rng.random() > 0.10,
            stake=MIN_STAKE if rng.random() > 0.05 else 0,
            memory_mb=memory,
            slots=slots,
            load=rng.randint(0, slots) if rng.random() < 0.3 else 0,
            reputation=round(rng.betavariate(5, 2), 2),
            compute_units=round(rng.uniform(0.5, 40.0), 3),
            offers=offers,
        ))
    return out


def make_tasks(m: int, providers: Sequence[ProviderState], rng: random.Random) -> list[TaskDemand]:
    names = list(MODELS)
    weights = [MODELS[n][3] for n in names]
    out = []
    for i in range(m):
        model = rng.choices(names, weights)[0]
        workload, memory, price, _ = MODELS[model]
        # Replicas and retries exclude the providers that already ran the task.
        exclude = frozenset(p.id for p in rng.sample(list(providers), rng.choice([1, 2])))\
            if rng.random() < 0.25 else frozenset()
        out.append(TaskDemand(
            id=f"task-{i}", workload=workload, model=model,
            max_price=round(price * rng.uniform(0.9, 1.8)), memory_mb=memory,
            units=rng.randint(1, 64), exclude=exclude,
        ))
    return out


def naive_place(tasks: Sequence[TaskDemand], providers: Sequence[ProviderState],
                min_stake: int, strategy: Strategy = DEFAULT_STRATEGY) -> list[Placement]:
    """The reference: for each task, scan all providers; best by (score, load, id)."""
    load = {p.id: p.load for p in providers}
    out = []
    for t in tasks:
        best: tuple[float, int, str] | None = None
        best_price = 0
        for p in providers:
            if not p.online or p.stake < min_stake or load[p.id] >= p.slots:
                continue
            price = p.price_for(t.workload, t.model)
            if (price is None or price > t.max_price or p.memory_mb < t.memory_mb
                    or p.id in t.exclude):
                continue
            key = (strategy.score(price, p), load[p.id], p.id)
            if best is None or key < best:
                best, best_price = key, price
        if best is not None:
            out.append(Placement(t.id, best[2], best_price))
            load[best[2]] += 1
    return out


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def run_case(n: int, n_tasks: int, naive_budget_s: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed + n)
    providers = make_providers(n, rng)
    tasks = make_tasks(n_tasks, providers, rng)

    runs = [timed(place, tasks, providers, MIN_STAKE) for _ in range(3)]
    placed, fast_s = runs[0][0], min(s for _, s in runs)

    # Size the naive run to the budget from a short probe.
    probe = min(20, n_tasks)
    _, probe_s = timed(naive_place, tasks[:probe], providers, MIN_STAKE)
    k = max(probe, min(n_tasks, int(naive_budget_s / max(probe_s / probe, 1e-9))))
    naive, naive_s = timed(naive_place, tasks[:k], providers, MIN_STAKE)
    same = naive == (placed if k == n_tasks else place(tasks[:k], providers, MIN_STAKE))

    fast_rate, naive_rate = n_tasks / fast_s, k / naive_s
    return {
        "providers": n,
        "eligible_online_staked": sum(p.online and p.stake >= MIN_STAKE for p in providers),
        "free_slots": sum(max(0, p.slots - p.load) for p in providers
                          if p.online and p.stake >= MIN_STAKE),
        "tasks": n_tasks,
        "placed": len(placed),
        "place_seconds": round(fast_s, 4),
        "place_tasks_per_s": round(fast_rate),
        "naive_tasks": k,
        "naive_seconds": round(naive_s, 4),
        "naive_tasks_per_s": round(naive_rate, 1),
        "speedup": round(fast_rate / naive_rate, 1),
        "identical_placements": same,
    }


def run_unplaceable(n: int, n_tasks: int, seed: int) -> dict[str, object]:
    """The worst case for place(): tasks no provider can take (the maximum price is
    below every offer) pop and push back the model's whole heap, O(n log n) a task."""
    providers = make_providers(n, random.Random(seed + n))
    model = "all-MiniLM-L6-v2"
    tasks = [TaskDemand(f"task-{i}", MODELS[model][0], model, 0, 512) for i in range(n_tasks)]
    placed, fast_s = timed(place, tasks, providers, MIN_STAKE)
    naive, naive_s = timed(naive_place, tasks, providers, MIN_STAKE)
    return {
        "providers": n, "tasks": n_tasks, "placed": len(placed),
        "place_tasks_per_s": round(n_tasks / fast_s, 1),
        "naive_tasks_per_s": round(n_tasks / naive_s, 1),
        "speedup": round(naive_s / fast_s, 2),
        "identical_placements": placed == naive,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--tasks", type=int, default=2_000)
    ap.add_argument("--naive-budget", type=float, default=8.0,
                    help="seconds the naive scan may take per case")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    cases = []
    print(f"{'providers':>9} {'placed':>11} {'place tasks/s':>14} {'naive tasks/s':>14} "
          f"{'ratio':>7}  same")
    for n in args.providers:
        r = run_case(n, args.tasks, args.naive_budget, args.seed)
        cases.append(r)
        print(f"{n:>9,} {r['placed']:>5}/{r['tasks']:<5} {r['place_tasks_per_s']:>14,} "
              f"{r['naive_tasks_per_s']:>14,} {r['speedup']:>6}×  {r['identical_placements']}")
    worst = run_unplaceable(max(args.providers), 200, args.seed)
    print(f"worst case, {worst['tasks']} unplaceable tasks at {worst['providers']:,} providers: "
          f"place {worst['place_tasks_per_s']:,} tasks/s, naive {worst['naive_tasks_per_s']:,} "
          f"tasks/s ({worst['speedup']}×)")
    result = {
        "benchmark": "core.market.place placement throughput",
        "command": ".venv/bin/python bench/bench_matching.py",
        "python": sys.version.split()[0],
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
        "seed": args.seed,
        "cases": cases,
        "worst_case_unplaceable": worst,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(c["identical_placements"] for c in [*cases, worst]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
