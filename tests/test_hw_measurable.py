"""A claim is verified at most at the rate its challenge can measure
(``hwcheck.measurable_gflops``).

A CPU challenge's work is capped (n ≤ 2048, k ≤ 64) while its allowances for
generation and hashing are fixed: past the cap, the time measured is mostly the
allowances, and a machine far slower than an exaflop claim used to pass with most of
it verified. The answers here are built honestly where the checker opens them (the
opening seed is the test's), and the elapsed time is what a machine of the stated
real rate would need: judged exactly as an honest run, without multiplying a TFLOP.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from deai.core import compute
from deai.core import hwcheck as hc

PRM = hc.Params()  # production defaults
EXAFLOP = 1e9  # GFLOP/s: the most wire.Benchmark takes


def honest_answer(spec: hc.Spec, op: hc.Opening) -> tuple[bytes, hc.Answer]:
    part = spec.parts[0]
    n = part.n
    b = hc.entries(hc.key(spec.seed, 0, 1), np.arange(n * n)).reshape(n, n)
    rows: dict[tuple[int, int], np.ndarray] = {}
    for _p, t, i in op.rows:
        perm, sign = hc.signed_perm(spec.seed, 0, t, n)
        a = hc.entries(hc.key(spec.seed, 0, 0), i * n + np.arange(n))
        rows[(t, i)] = ((a[perm] * sign) @ b).astype(np.float32)
    leaves = [hc.leaf(hc.row_digest("sha256", rows[(t, i)]) if (t, i) in rows
                      else hashlib.sha256(f"{t}:{i}".encode()).digest())
              for t in range(part.k) for i in range(n)]
    levels = hc.merkle_levels(leaves)
    return levels[-1][0], hc.Answer(
        [rows[(t, i)] for _p, t, i in op.rows],
        [hc.merkle_proof(levels, hc.leaf_index(spec, 0, t, i)) for _p, t, i in op.rows],
        [hc.buffer_value(spec.seed, p, pos) for p, pos in op.positions])


def judged(claim: float, real: float) -> tuple[hc.Verdict, hc.Verified, hc.Device]:
    """Two challenges of a ``claim`` answered by a machine of ``real`` GFLOP/s, whose
    generation and hashing run at twice the allowances' conservative rates."""
    dev = hc.Device("cpu", "some cpu", 64, claim, 1e7)
    spec = hc.make_spec(7, [dev], PRM)
    part = spec.parts[0]
    op = hc.openings(spec, 12345, PRM)
    root, ans = honest_answer(spec, op)
    elapsed = 2 * part.n**3 * part.k / (real * 1e9) + part.allow_s / 2 + PRM.latency_s
    v = hc.check(spec, op, root, ans, elapsed, PRM)
    st = hc.ClaimState()
    for _ in range(2):
        st = hc.next_state(st, v, PRM, 0.5).state
    return v, hc.verified([dev], 64, st, PRM), dev


@pytest.mark.parametrize("real", [400.0, 100.0])
def test_an_exaflop_claim_is_verified_at_most_near_the_real_rate(real: float) -> None:
    v, ver, _ = judged(EXAFLOP, real)
    assert v.outcome in ("passed", "slow")
    assert ver.units <= 2 * compute.compute_units(real, 1e7), (v, ver.units)


def test_a_claim_the_challenge_can_measure_is_verified_in_full() -> None:
    v, ver, dev = judged(100.0, 100.0)
    assert v.outcome == "passed" and hc.measurable_gflops(dev, PRM) == float("inf")
    assert ver.units == compute.compute_units(100.0, 1e7)


def test_the_bound_is_where_products_take_as_long_as_the_allowances() -> None:
    cpu = hc.Device("cpu", "big cpu", 16_000, EXAFLOP, 20.0)
    part = hc.size_part(cpu, PRM)
    assert (part.n, part.k) == (PRM.cpu_n[1], PRM.max_k)
    assert hc.measurable_gflops(cpu, PRM) == pytest.approx(
        2 * part.n**3 * part.k / (part.allow_s * 1e9))
    assert 300 < hc.measurable_gflops(cpu, PRM) < 500  # as docs/security.md states
    gpu = hc.Device("cuda:0", "NVIDIA H100", 81_559, 60_000.0, 3350.0)
    assert hc.measurable_gflops(gpu, PRM) > 1e6  # a GPU's allowances are small
