"""A short standard benchmark (well under 2 s) that rates a provider in compute units.

``run(threads)`` measures sustained fp32 matrix-multiply GFLOP/s with torch on
the given number of CPU threads (or on a CUDA device when asked), and memory
bandwidth in GB/s as bytes read plus bytes written by a numpy copy of an array
far larger than the caches. Each figure is the best of a few timed repeats, so
a noisy neighbour lowers it less. ``compute_units(b)`` turns the result into
the network's single number (``core.compute``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from deai.core import compute
from deai.core.wire import Benchmark

MATMUL_N = 512
GPU_MATMUL_N = 4096
COPY_BYTES = 64 * 1024 * 1024
BUDGET_S = 0.5  # per measurement


def _best(fn: Callable[[], None], budget: float, max_reps: int = 50) -> float:
    """The fastest of repeated calls within ``budget`` seconds (at least two calls)."""
    fn()  # warm-up: first-touch pages, thread pools, kernels
    best = float("inf")
    deadline = time.perf_counter() + budget
    for i in range(max_reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() > deadline:
            break
    return max(best, 1e-9)


def matmul_gflops(threads: int, device: str = "cpu") -> float:
    import torch

    n = GPU_MATMUL_N if device.startswith("cuda") else MATMUL_N
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.rand(n, n, generator=gen, dtype=torch.float32).to(device)
        b = torch.rand(n, n, generator=gen, dtype=torch.float32).to(device)
        on_gpu = device.startswith("cuda")

        def step() -> None:
            torch.mm(a, b)
            if on_gpu:  # kernels are asynchronous: time their completion, not their launch
                torch.cuda.synchronize()

        with torch.inference_mode():
            seconds = _best(step, BUDGET_S)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n**3 / seconds / 1e9


def memory_gbps() -> float:
    src = np.ones(COPY_BYTES // 8, dtype=np.float64)
    dst = np.empty_like(src)
    seconds = _best(lambda: np.copyto(dst, src), BUDGET_S, max_reps=10)
    return 2.0 * COPY_BYTES / seconds / 1e9


def run(threads: int, device: str = "cpu") -> Benchmark:
    t0 = time.perf_counter()
    gflops = matmul_gflops(threads, device)
    gbps = memory_gbps()
    return Benchmark(gflops=round(gflops, 2), mem_gbps=round(gbps, 2),
                     seconds=round(time.perf_counter() - t0, 3))


def compute_units(bench: Benchmark) -> float:
    return compute.compute_units(bench.gflops, bench.mem_gbps)
