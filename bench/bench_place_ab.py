"""core.market.place now against core.market.place at an earlier revision, same inputs.

The lifecycle change (issue 9) made eligibility one predicate shared by ``why_not``
and ``place``; this measures that ``place`` did not get slower for it. Both versions
run interleaved in one process on the seeded markets of ``bench_matching.py``; the
figure is the ratio of best-of-N times (new / old speed).

    .venv/bin/python bench/bench_place_ab.py --rev 750ce6c --rounds 15
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_matching as bm  # noqa: E402

from deai.core import market as new  # noqa: E402


def load_old(rev: str):  # type: ignore[no-untyped-def]
    src = subprocess.run(["git", "show", f"{rev}:src/deai/core/market.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "market_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("market_old", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["market_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="750ce6c")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    old = load_old(a.rev)
    for n in (1_000, 10_000):
        rng = random.Random(7)
        providers = bm.make_providers(n, rng)
        tasks = bm.make_tasks(2_000, providers, rng)
        best = {"old": float("inf"), "new": float("inf")}
        same = True
        for _ in range(a.rounds):
            for name, mod in (("old", old), ("new", new)):
                t0 = time.perf_counter()
                got = mod.place(tasks, providers, 10_000_000)
                best[name] = min(best[name], time.perf_counter() - t0)
                same &= [(p.task_id, p.provider_id, p.price) for p in got] == [
                    (p.task_id, p.provider_id, p.price) for p in new.place(tasks, providers,
                                                                            10_000_000)]
        print(f"{n:>7,} providers: old {len(tasks) / best['old']:>9,.0f} tasks/s, "
              f"new {len(tasks) / best['new']:>9,.0f} tasks/s, new/old "
              f"{best['old'] / best['new']:.3f}, same placements {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
