"""The verification simulator as a benchmark: ``deai sim verify`` at full size.

Runs every experiment of ``deai.sim.run`` (10,000 providers and 10^6 tasks, 10^6
honest tasks, 20,000 established f = 0.1 cheaters, the q × ρ_min sweep), prints
the tables and the four targets with PASS/FAIL, and writes report.json and
detection_vs_overhead.png under bench/results/verify/.

    .venv/bin/python bench/bench_verify.py [--fast] [--seed N]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from rich.console import Console

from deai.sim import report, run

OUT = Path(__file__).resolve().parent / "results" / "verify"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    console = Console(highlight=False, width=160)
    console.print(f"CPython {platform.python_version()} on {platform.machine()}, "
                  f"{platform.system()} {platform.release()}")
    r = run.verify(run.Plan.fast() if args.fast else run.Plan(), args.seed)
    report.show(r, console)
    for path in report.write(r, OUT):
        console.print(f"wrote {path}")
    return 0 if all(t["pass"] for t in r["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
