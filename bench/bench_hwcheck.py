"""Hardware challenges: what they cost a provider, and how often they catch an overclaim.

    .venv/bin/python bench/bench_hwcheck.py [--rounds 8] [--target 1.0] [--threads 1]

1. Cost: one challenge at the default parameters (``core.hwcheck.Params``: 3 s of
   products at the claimed rate, mean period 3,600 s) is run for real on this
   machine's sustained claim; its wall time (commit + opening) over the mean period
   is the share of the provider's time it takes. The coordinator's check is timed too.
2. Detection: for claim factors 1.0 (honest), 1.2, 1.5 and 2.0 the challenge sized to
   ``factor × sustained rate`` is run ``--rounds`` times; each is judged by
   ``core.hwcheck.check`` with the measured time plus a loopback latency, and the
   verdicts go through ``next_state`` in sequences of three challenges. Printed: the
   share of challenges that miss the deadline, the share of three-challenge windows
   that flag the claim, and the rate credited (claim × proven share, mean over rounds)
   relative to the real one.

Everything runs in this process on the CPU with torch; the figures depend on this
machine's load, which is printed alongside.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import time

import numpy as np

from deai.core import hwcheck as hc
from deai.provider import challenge


def one(spec: hc.Spec, prm: hc.Params, threads: int, latency: float) -> tuple[hc.Verdict,
                                                                                 float, float]:
    runner = challenge.Runner(threads, challenge.Cheat())
    t0 = time.perf_counter()
    root = bytes.fromhex(runner.commit(spec))
    elapsed = time.perf_counter() - t0
    op = hc.openings(spec, secrets.randbits(63), prm)
    body = runner.answer([list(r) for r in op.rows], [list(p) for p in op.positions])
    wall = time.perf_counter() - t0
    ans = hc.Answer([np.frombuffer(base64.b64decode(r), dtype="<f4")
                     for r in body.rows], [[bytes.fromhex(h) for h in p] for p in body.proofs],
                    body.values)
    t1 = time.perf_counter()
    v = hc.check(spec, op, root, ans, elapsed + latency, prm)
    check_s = time.perf_counter() - t1
    runner.release()
    return v, wall, check_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--target", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-mb", type=int, default=512)
    ap.add_argument("--latency", type=float, default=0.02, help="loopback, one way + back")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"threads {a.threads}")
    real = challenge.sustained_gflops(a.threads, "cpu", 2.0)
    hw = {"cpu_model": "bench", "cores": a.threads, "memory_mb": a.memory_mb, "gpus": []}
    mem_gbps = 8.0
    print(f"sustained fp32 rate {real:.1f} GFLOP/s")

    prm = hc.Params()
    spec = hc.make_spec(secrets.randbits(63), hc.devices(hw, {"gflops": real,
                                                              "mem_gbps": mem_gbps}), prm)
    v, wall, check_s = one(spec, prm, a.threads, a.latency)
    share = wall / prm.period_s
    print(f"\ncost at the defaults (target {prm.target_s} s, mean period {prm.period_s:.0f} s):")
    print(f"  challenge wall {wall:.2f} s ({v.outcome}), coordinator check {check_s*1e3:.0f} ms")
    print(f"  share of the provider's time {share*100:.3f} % (goal <= 1 %)")

    fast = hc.Params(target_s=a.target, latency_s=0.25)
    factors = (1.0, 1.2, 1.5, 2.0)
    print(f"\ndetection (target {a.target} s, margin {fast.margin}, latency allowance "
          f"{fast.latency_s} s, flag after {fast.flag_after} consecutive misses, "
          f"{a.rounds} rounds; each round re-measures the sustained rate, then runs every "
          f"factor back to back so all see the same load):")
    outcomes: dict[float, list[hc.Verdict]] = {f: [] for f in factors}
    for _ in range(a.rounds):
        rate = challenge.sustained_gflops(a.threads, "cpu", 0.5)
        for factor in factors:
            sp = hc.make_spec(secrets.randbits(63), hc.devices(
                hw, {"gflops": rate * factor, "mem_gbps": mem_gbps}), fast)
            outcomes[factor].append(one(sp, fast, a.threads, a.latency)[0])
    print(f"  {'claim':>6} {'missed':>8} {'flagged in 3':>13} {'credited/real':>14} "
          f"{'mean ratio':>11}")
    for factor, vs in outcomes.items():
        missed = sum(v.outcome != "passed" for v in vs) / len(vs)
        windows = flagged = 0
        for i in range(len(vs) - 2):
            st, hit = hc.ClaimState(), False
            for v in vs[i:i + 3]:
                st = hc.next_state(st, v, fast, 0.5).state
                hit = hit or st.status == "flagged"
            windows, flagged = windows + 1, flagged + hit
        credited = np.mean([min(1.0, v.ratio) for v in vs]) * factor
        print(f"  {factor:>5.1f}x {missed*100:>7.0f}% {flagged/max(1, windows)*100:>12.0f}% "
              f"{credited:>14.2f} {np.mean([v.ratio for v in vs]):>11.2f}")


if __name__ == "__main__":
    main()
