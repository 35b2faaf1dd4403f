"""Hardware challenges on a real GPU: the checks that cannot run on the CPU-only CI.

    .venv/bin/python scripts/gpu_check.py [--target 1.0] [--mem-fraction 0.1] [--out FILE]

On every visible CUDA device, with torch:
1. the on-device generator and ``lanehash`` agree bit for bit with ``core.hwcheck``'s
   numpy versions (what the coordinator recomputes);
2. an honest challenge sized to the device's sustained fp32 rate and a share of its
   memory passes, with its time, expected time and deadline;
3. a claim of twice that rate misses the deadline (``slow``);
4. a bfloat16 product (``Cheat(wrong=True)``) is ``wrong``;
5. a claim of one GPU more than the machine has is an ``error`` (no such device).

Prints one JSON report; exits 1 if any outcome differs from the expected one, 2 when
there is no GPU. Needs nothing but this repository and torch with CUDA.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from typing import Any

import numpy as np


def run(spec: Any, prm: Any, cheat: Any = None) -> dict[str, Any]:
    from deai.core import hwcheck as hc
    from deai.provider import challenge

    runner = challenge.Runner(1, cheat or challenge.Cheat())
    t0 = time.perf_counter()
    try:
        root = bytes.fromhex(runner.commit(spec))
    except (MemoryError, RuntimeError) as exc:
        return {"outcome": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    elapsed = time.perf_counter() - t0
    op = hc.openings(spec, secrets.randbits(63), prm)
    body = runner.answer([list(r) for r in op.rows], [list(p) for p in op.positions])
    ans = hc.Answer([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in body.rows],
                    [[bytes.fromhex(h) for h in p] for p in body.proofs], body.values)
    t1 = time.perf_counter()
    v = hc.check(spec, op, root, ans, elapsed + 0.02, prm)
    runner.release()
    return {"outcome": v.outcome, "reason": v.reason, "ratio": v.ratio,
            "elapsed_s": round(elapsed, 3), "expected_s": spec.expected_s,
            "deadline_s": spec.deadline_s, "check_ms": round((time.perf_counter() - t1) * 1e3),
            "parts": [p.__dict__ for p in spec.parts]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=1.0)
    ap.add_argument("--mem-fraction", type=float, default=0.1)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    import torch

    from deai.core import hwcheck as hc
    from deai.provider import challenge, hardware

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    gpus = hardware.gpus()
    rep: dict[str, Any] = {"torch": torch.__version__, "gpus": gpus, "checks": {}}
    ok = True

    # 1. bit-exact generation and digests on the device
    idx = np.arange(1 << 20, dtype=np.int64) * 7919
    k = hc.key(1, 0, 0)
    same_entries = np.array_equal(hc.entries(k, idx), challenge._torch_entries(
        torch, k, torch.from_numpy(idx).cuda()).cpu().numpy())
    rows = hc.entries(k, np.arange(64 * 8192)).reshape(64, 8192)
    same_hash = np.array_equal(hc.lanehash(rows), challenge.torch_lanehash(
        torch, torch.from_numpy(rows).cuda()).cpu().numpy())
    rep["checks"]["bit_exact"] = {"entries": same_entries, "lanehash": same_hash}
    ok &= same_entries and same_hash

    # 2-5. challenges sized to the sustained rate
    rate = challenge.sustained_gflops(1, "cuda", 2.0)
    rep["sustained_gflops"] = round(rate, 1)
    prm = hc.Params(target_s=a.target, mem_fraction=a.mem_fraction, latency_s=0.05)
    hw = {"cpu_model": hardware.cpu_model(), "cores": 1, "memory_mb": hardware.memory_mb(),
          "gpus": gpus}
    bench = {"gflops": rate, "mem_gbps": 0.0}
    cases = {
        "honest": (hw, bench, None, "passed"),
        "overclaim_2x": (hw, {**bench, "gflops": 2 * rate}, None, "slow"),
        "bfloat16": (hw, bench, challenge.Cheat(wrong=True), "wrong"),
        "one_gpu_more": ({**hw, "gpus": [*gpus, {**gpus[-1], "index": len(gpus)}]}, bench,
                         None, "error"),
    }
    for name, (h, b, cheat, want) in cases.items():
        spec = hc.make_spec(secrets.randbits(63), hc.devices(h, b), prm)
        got = run(spec, prm, cheat)
        got["expected_outcome"] = want
        rep["checks"][name] = got
        ok &= got["outcome"] == want
        torch.cuda.empty_cache()
    rep["ok"] = bool(ok)
    text = json.dumps(rep, indent=2, default=str)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
