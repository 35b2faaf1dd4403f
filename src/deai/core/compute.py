"""Compute units: one number that lets offers on different hardware be compared.

One compute unit (CU) is 50 GFLOP/s of sustained fp32 matrix multiply, with a
memory-bandwidth factor so that a fast core starved of memory is not overrated.
"""

from __future__ import annotations

REFERENCE_GFLOPS = 50.0
REFERENCE_GBPS = 10.0


def compute_units(gflops: float, mem_gbps: float) -> float:
    if gflops <= 0 or mem_gbps <= 0:
        return 0.0
    bandwidth_factor = min(1.0, float((mem_gbps / REFERENCE_GBPS) ** 0.5))
    return float(round(gflops / REFERENCE_GFLOPS * (0.5 + 0.5 * bandwidth_factor), 3))


def price_per_cu(price_per_1000: int, cu: float) -> float:
    """Price normalised by hardware: what each compute unit of this offer costs."""
    return price_per_1000 / cu if cu > 0 else float("inf")
