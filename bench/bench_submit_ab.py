"""Submissions in process, this tree against an older commit, side by side in one run.

Exports ``--ref`` (default 1780fc0, before shard packs and the capacity check)
with ``git archive`` and runs the same script under each tree in turn (a fresh
process, SQLite, ``--providers`` registered and online): the median of
``--jobs`` one-shard submissions and one submission of ``--big`` shards,
through ``jobs.submit`` (no HTTP: ``bench_submit`` measures that path).

    .venv/bin/python bench/bench_submit_ab.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIDE = r'''
import json, statistics, sys, tempfile, time
from pathlib import Path
from deai.client.keys import Identity
from deai.coordinator import jobs
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import wire
from deai.store import migrate
from tests.helpers import SPEC, lines
providers, n, big = (int(x) for x in sys.argv[1:4])
c = Coordinator(Settings(data_dir=Path(tempfile.mkdtemp(prefix="deai-ab-")), devnet=True,
                         heartbeat_timeout=3600.0))
migrate.upgrade(c.db.engine)
for k in range(providers):
    p = Identity.generate()
    c.faucet(p.id, 50_000_000)
    c.register(p.id, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=4,
        offers=[wire.OfferIn(workload="embeddings", model=SPEC["model"], price=100 + k)]),
        address=f"10.{k // 250}.{k % 250}.1")
    c.bond(p.id, 10_000_000)
me = Identity.generate().id
c.faucet(me, 1_000_000_000)
one = []
for d in [c.put_blob(lines(1, i)).digest for i in range(n)]:
    t = time.perf_counter()
    jobs.submit(c, me, wire.JobIn(spec={**SPEC, "shard_size": 1}, input_digest=d))
    one.append(time.perf_counter() - t)
d = c.put_blob(lines(big)).digest
t = time.perf_counter()
jobs.submit(c, me, wire.JobIn(spec={**SPEC, "shard_size": 1, "deadline": 3600}, input_digest=d))
print(json.dumps({"one_ms": statistics.median(one) * 1000, "big_s": time.perf_counter() - t}))
'''


def side(tree: Path, a: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{tree}"}
    out = subprocess.run([sys.executable, "-c", SIDE, str(a.providers), str(a.jobs),
                          str(a.big)], cwd=tree, env=env, capture_output=True, text=True,
                         check=True, timeout=1800)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="1780fc0")
    ap.add_argument("--providers", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    old = Path(tempfile.mkdtemp(prefix="deai-ab-old-"))
    archive = subprocess.run(["git", "archive", a.ref], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    for r in range(a.rounds):
        before, after = side(old, a), side(ROOT, a)
        print(f"round {r + 1}, {a.providers} providers, load {os.getloadavg()[0]:.1f}:")
        print(f"  one-shard submit p50  {a.ref}: {before['one_ms']:7.1f} ms   this tree: "
              f"{after['one_ms']:7.1f} ms   {before['one_ms'] / after['one_ms']:5.1f}x")
        print(f"  {a.big}-shard submit    {a.ref}: {before['big_s']:7.2f} s    this tree: "
              f"{after['big_s']:7.2f} s    {before['big_s'] / after['big_s']:5.1f}x")


if __name__ == "__main__":
    main()
