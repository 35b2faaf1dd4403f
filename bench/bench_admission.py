"""A submission's capacity check at N providers: the full quote against ``capacity``.

In process, on a real database (SQLite, or ``--database postgres``): N
registered, bonded, online providers serving the model, then per submission

- full quote: ``jobs._quote_out`` over ``matching.provider_states`` (what a
  submission did before: every online provider read, its offers, load, stake
  and verified hardware);
- capacity, cold: ``capacity.any_eligible`` with nothing remembered (reads a
  few candidates from the offers);
- capacity, warm: the same within ``FRESH_S`` of an admission (reads nothing);

and, as the baseline, one ``SELECT 1`` round trip through the same session.

    .venv/bin/python bench/bench_admission.py --providers 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from tests.helpers import MODEL, SPEC  # noqa: E402
from tests.pg import PgServer  # noqa: E402

from deai.client.keys import Identity  # noqa: E402
from deai.coordinator import capacity, jobs  # noqa: E402
from deai.coordinator.matching import provider_states  # noqa: E402
from deai.coordinator.service import Coordinator  # noqa: E402
from deai.coordinator.settings import Settings  # noqa: E402
from deai.core import specs, wire  # noqa: E402
from deai.store import migrate  # noqa: E402


def timed(fn: Callable[[], object], n: int) -> float:
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    a = ap.parse_args()
    pg = PgServer.start() if a.database == "postgres" else None
    try:
        url = pg.url(pg.create_database()) if pg else ""
        c = Coordinator(Settings(data_dir=Path(tempfile.mkdtemp(prefix="deai-adm-")),
                                 database_url=url, devnet=True, heartbeat_timeout=3600.0))
        migrate.upgrade(c.db.engine)
        t0 = time.perf_counter()
        for k in range(a.providers):
            p = Identity.generate()
            c.faucet(p.id, 50_000_000)
            c.register(p.id, wire.RegisterIn(
                hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096),
                benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=1,
                offers=[wire.OfferIn(workload="embeddings", model=MODEL,
                                     price=100 + k % 900)]),
                address=f"10.{k // 250 % 250}.{k % 250}.1")
            c.bond(p.id, 10_000_000)
        print(f"{a.providers} providers registered in {time.perf_counter() - t0:.0f} s")
        spec = specs.parse_spec({**SPEC, "shard_size": 1})
        demand = jobs._demand(c, spec, [1])

        def full() -> None:
            with c.db.read() as s:
                assert jobs._quote_out(c, spec, [1], provider_states(c, s)).eligible

        def cold() -> None:
            capacity._seen.pop(c, None)
            with c.db.read() as s:
                assert capacity.any_eligible(c, s, demand)

        def warm() -> None:
            with c.db.read() as s:
                assert capacity.any_eligible(c, s, demand)

        def base() -> None:
            with c.db.read() as s:
                s.execute(text("SELECT 1"))

        rows = [(name, timed(fn, a.repeat)) for name, fn in
                (("SELECT 1 (baseline)", base), ("full quote (before)", full),
                 ("capacity, cold", cold), ("capacity, warm", warm))]
        b = rows[0][1]
        print(f"engine {a.database}, {a.providers} online providers, median of {a.repeat}:")
        for name, ms in rows:
            print(f"  {name:22s} {ms:8.2f} ms  {ms / b:7.1f}x baseline")
        print(f"  full quote / capacity cold = {rows[1][1] / rows[2][1]:.0f}x")
    finally:
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
