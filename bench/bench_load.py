"""Load on a real coordinator: thousands of simulated providers heartbeating, against
``GET /health`` from the same client in the same run.

Starts a coordinator process (SQLite by default; ``--database postgres`` uses a
throwaway PostgreSQL server, and ``--workers N`` runs N replica processes on
one port), registers ``--providers`` simulated providers (each its own Ed25519
key, signed requests over loopback), then measures, with ``--concurrency``
requests in flight from one asyncio client process:

1. ``GET /health`` for ``--seconds`` (the baseline: the same client, the same
   server, no work behind the route);
2. signed heartbeats, round-robin over all providers, for ``--seconds``;
3. ``GET /health`` again, so the baseline brackets the load.

It prints requests per second, p50/p99 latency, the heartbeat/health ratio,
any non-200 answers, and how many nonce rows the heartbeats wrote (none: they
are replay-protected by a timestamp floor). Providers taking leases are left
for when the incremental matcher lands.

    .venv/bin/python bench/bench_load.py --providers 2000            # SQLite
    .venv/bin/python bench/bench_load.py --database postgres --workers 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from tests.netutil import Proc, free_port  # noqa: E402
from tests.pg import PgServer  # noqa: E402

from deai.client.keys import Identity  # noqa: E402
from deai.coordinator.liveness import FLOOR_NONCE  # noqa: E402
from deai.core import wire  # noqa: E402
from deai.store.db import Database  # noqa: E402
from deai.store.models import Nonce  # noqa: E402

OUT = ROOT / "bench" / "results" / "load.json"
HB = "/api/providers/heartbeat"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def register_body(i: int) -> bytes:
    reg = wire.RegisterIn(
        name=f"sim-{i}", hardware=wire.Hardware(cpu_model="sim", cores=4, memory_mb=8192),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model="all-MiniLM-L6-v2", price=1000)])
    return reg.model_dump_json().encode()


async def drive(url: str, seconds: float, concurrency: int, make: Any) -> dict[str, Any]:
    """``concurrency`` loops sending ``make(k)`` requests for ``seconds``."""
    lat: list[float] = []
    bad: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    counter = iter(range(10**12))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def loop() -> None:
            while time.perf_counter() < stop:
                method, path, body, headers = make(next(counter))
                t0 = time.perf_counter()
                r = await client.request(method, path, content=body, headers=headers)
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    bad[r.status_code] = bad.get(r.status_code, 0) + 1
        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"requests": len(lat), "per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(pct(lat, 0.5) * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2),
            "non_200": bad}


def health(_: int) -> tuple[str, str, bytes | None, dict[str, str]]:
    return "GET", "/health", None, {}


def heartbeats(people: list[Identity]) -> Any:
    body = json.dumps({"running": []}).encode()

    def make(k: int) -> tuple[str, str, bytes, dict[str, str]]:
        me = people[k % len(people)]
        return "POST", HB, body, {**me.headers("POST", HB, body),
                                  "content-type": "application/json"}
    return make


async def register_all(url: str, people: list[Identity], concurrency: int) -> None:
    it = iter(enumerate(people))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def loop() -> None:
            for i, me in it:
                body = register_body(i)
                hdr = {**me.headers("POST", "/api/providers/register", body),
                       "content-type": "application/json"}
                r = await client.post("/api/providers/register", content=body, headers=hdr)
                r.raise_for_status()
        await asyncio.gather(*(loop() for _ in range(concurrency)))


def nonces(db_url: str) -> tuple[int, int]:
    """(per-request nonce rows, heartbeat floor rows)."""
    db = Database(db_url)
    try:
        with db.read() as s:
            floors = int(s.scalar(select(func.count()).select_from(Nonce)
                                  .where(Nonce.nonce == FLOOR_NONCE)) or 0)
            total = int(s.scalar(select(func.count()).select_from(Nonce)) or 0)
        return total - floors, floors
    finally:
        db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    pg = PgServer.start() if a.database == "postgres" else None
    tmp = Path(tempfile.mkdtemp(prefix="deai-load-"))
    db_url = (pg.url(pg.create_database()) if pg else
              f"sqlite:///{tmp / 'coordinator' / 'deai.sqlite3'}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "deai.coordinator", "--port", str(port), "--data-dir",
            str(tmp / "coordinator"), "--devnet", "--workers", str(a.workers),
            "--heartbeat-timeout", "60"]
    if pg:
        args += ["--database-url", db_url]
    env = {**os.environ, "DEAI_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1"}
    proc = Proc(args, tmp / "coordinator.log", env)
    try:
        end = time.time() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not proc.alive() or time.time() > end:
                raise SystemExit(f"coordinator did not start:\n{proc.tail()}")
            time.sleep(0.3)
        people = [Identity.generate() for _ in range(a.providers)]
        t0 = time.perf_counter()
        asyncio.run(register_all(url, people, a.concurrency))
        reg_s = time.perf_counter() - t0
        print(f"registered {a.providers} providers in {reg_s:.1f} s "
              f"({a.providers / reg_s:.0f}/s); engine {a.database}, {a.workers} worker(s)")
        before = nonces(db_url)
        h1 = asyncio.run(drive(url, a.seconds, a.concurrency, health))
        hb = asyncio.run(drive(url, a.seconds, a.concurrency, heartbeats(people)))
        time.sleep(1.5)  # let the last liveness flush land before counting rows
        after = nonces(db_url)
        h2 = asyncio.run(drive(url, a.seconds, a.concurrency, health))
        base = (h1["per_s"] + h2["per_s"]) / 2
        res = {"engine": a.database, "workers": a.workers, "providers": a.providers,
               "concurrency": a.concurrency, "health_before": h1, "heartbeats": hb,
               "health_after": h2, "ratio_heartbeat_to_health": round(hb["per_s"] / base, 3),
               "nonce_rows_added": after[0] - before[0], "floor_rows": after[1],
               "load_average": os.getloadavg()}
        for name, r in (("GET /health", h1), ("heartbeat", hb), ("GET /health", h2)):
            print(f"  {name:12s} {r['per_s']:>8,.0f}/s  p50 {r['p50_ms']:.1f} ms  "
                  f"p99 {r['p99_ms']:.1f} ms  non-200 {r['non_200'] or 0}")
        print(f"  heartbeats / health = {res['ratio_heartbeat_to_health']:.2f}; "
              f"{hb['requests']} heartbeats added {after[0] - before[0]} nonce rows and "
              f"{after[1]} floor rows (one per provider heard)")
        print(f"  load average {os.getloadavg()[0]:.1f} (2 cores, shared)")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        out = OUT.with_name(f"load-{a.database}-{a.workers}.json")
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    finally:
        proc.stop(20)
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
