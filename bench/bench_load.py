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

It prints what the coordinator accepted per second (a refused request or beat is
counted apart, never in the rate), p50/p99 latency, the heartbeat/health ratio,
any refusals, and how many nonce rows the heartbeats wrote (none: they
are replay-protected by a timestamp floor).

4. Public reads (``--reads N``): the routes anyone may call whose work grows with the
   network (providers, explorer overview, quote, hardware claims, metrics), N times each
   one at a time, p50/p99 and answer size against ``GET /health`` timed the same way.

5. Leases (``--leases N``, after the rest): ``--pollers`` of the providers are
   funded and bonded (the others stay unstaked, so nobody else can take the
   work) and long-poll with acknowledged delivery, one connection each; a
   client submits one job of N one-line shards, and the run times submission,
   the first lease delivered and the last (every shard leased to a poller and
   acknowledged). Leases delivered per second are printed against the same
   ``GET /health`` baseline.

    .venv/bin/python bench/bench_load.py --providers 2000            # SQLite
    .venv/bin/python bench/bench_load.py --providers 10000 --leases 2000 --pollers 500
    .venv/bin/python bench/bench_load.py --database postgres --workers 3
    .venv/bin/python bench/bench_load.py --providers 10000 --seconds 2 --reads 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from tests.helpers import MODEL  # noqa: E402
from tests.netutil import Proc, free_port  # noqa: E402
from tests.pg import PgServer  # noqa: E402

from deai.client.keys import Identity  # noqa: E402
from deai.client.sdk import Client, signed_beat  # noqa: E402
from deai.coordinator.liveness import FLOOR_NONCE  # noqa: E402
from deai.core import auth, wire  # noqa: E402
from deai.store.db import Database  # noqa: E402
from deai.store.models import Nonce  # noqa: E402

OUT = ROOT / "bench" / "results" / "load.json"
HB = "/api/providers/heartbeat"
POLL = "/api/providers/poll"
NETWORK = [""]  # the coordinator's network id, which every signed request signs (set in main)
STAKE = 20_000_000


class Conn:
    """One keep-alive HTTP/1.1 connection, written by hand for the load. httpx's
    AsyncClient spent more CPU per request than the coordinator did (the client's process
    at ~95 % of a core, the coordinator's at ~45 %), so the runs measured the client."""

    def __init__(self, url: str) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = body or b""
        head = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}",
                f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        try:
            self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = dict(ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            if "content-length" not in fields:
                raise ConnectionError(f"no content-length in the answer to {path}")
            data = await self.reader.readexactly(int(fields["content-length"]))
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def register_body(i: int) -> bytes:
    reg = wire.RegisterIn(
        name=f"sim-{i}", hardware=wire.Hardware(cpu_model="sim", cores=4, memory_mb=8192),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=4,
        offers=[wire.OfferIn(workload="embeddings", model="all-MiniLM-L6-v2", price=1000)])
    return reg.model_dump_json().encode()


async def drive(url: str, seconds: float, concurrency: int, make: Any,
                per_request: int = 1, count: int | None = None) -> dict[str, Any]:
    """``concurrency`` loops sending ``make(k)`` requests for ``seconds`` (or, with
    ``count``, exactly that many requests); ``per_request`` heartbeats in each (relayed
    batches), whose refusals (``"error":"..."``) are counted. ``per_s`` counts what the
    coordinator accepted (a refused request or beat is in ``non_200``, not in the rate);
    ``sent_per_s`` counts every answer."""
    lat: list[float] = []
    bad: dict[int | str, int] = {}
    accepted = [0]
    stop = time.perf_counter() + (seconds if count is None else 1e9)
    counter = iter(range(10**12 if count is None else count))

    async def loop() -> None:
        conn = Conn(url)
        try:
            for k in counter:
                if time.perf_counter() >= stop:
                    break
                method, path, body, headers = make(k)
                t0 = time.perf_counter()
                status, data = await conn.request(method, path, body, headers)
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    bad[status] = bad.get(status, 0) + 1
                elif per_request > 1 and data.count(b'"error":null') != per_request:
                    ok = data.count(b'"error":null')
                    bad["beats refused"] = bad.get("beats refused", 0) + per_request - ok
                    accepted[0] += ok
                else:
                    accepted[0] += per_request
        finally:
            conn.close()
    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"requests": len(lat), "per_s": round(accepted[0] / elapsed, 1),
            "sent_per_s": round(len(lat) * per_request / elapsed, 1),
            "p50_ms": round(pct(lat, 0.5) * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2),
            "non_200": bad}


def health(_: int) -> tuple[str, str, bytes | None, dict[str, str]]:
    return "GET", "/health", None, {}


def heartbeats(people: list[Identity]) -> Any:
    body = json.dumps({"running": []}).encode()

    def make(k: int) -> tuple[str, str, bytes, dict[str, str]]:
        me = people[k % len(people)]
        return "POST", HB, body, {**me.headers("POST", HB, body, network=NETWORK[0]),
                                  "content-type": "application/json"}
    return make


RELAY_RATE = 20_000  # relayed beats/s the pre-signed pool is sized for (above it: signed inline)


class Relayed:
    """Batches of ``k`` heartbeats, each signed by its own provider, in one request (what
    a farm's gateway sends for the machines behind it), round-robin over the providers.

    The beats are signed before the timed phase (``prepare``): on a real network each
    provider signs its own beat on its own machine, and a relay only forwards them;
    signing 5,000 beats/s here took a share of the same 2 cores the coordinator is
    measured on. Requests beyond the pool are signed as they are sent (``inline``)."""

    def __init__(self, people: list[Identity], k: int) -> None:
        self.people, self.k = people, k
        self.turn = iter(range(10**12))
        self.body = signed_beat(people[0], network=NETWORK[0]).body  # what sdk.signed_beat signs
        self.pool: list[bytes] = []
        self.inline = 0

    def _beat(self, me: Identity) -> dict[str, str]:
        h = me.headers("POST", HB, self.body.encode(), network=NETWORK[0])
        return {"key": h[auth.HEADER_KEY], "timestamp": h[auth.HEADER_TS],
                "nonce": h[auth.HEADER_NONCE], "signature": h[auth.HEADER_SIG],
                "body": self.body}

    def _request(self) -> bytes:
        beats = [self._beat(self.people[next(self.turn) % len(self.people)])
                 for _ in range(self.k)]
        return json.dumps({"beats": beats}).encode()

    def prepare(self, seconds: float) -> None:
        self.pool = [self._request() for _ in range(math.ceil(seconds * RELAY_RATE / self.k))]
        self.pool.reverse()  # popped from the end, oldest signatures first

    def __call__(self, _: int) -> tuple[str, str, bytes, dict[str, str]]:
        if self.pool:
            body = self.pool.pop()
        else:
            self.inline += 1
            body = self._request()
        return "POST", HB + "s", body, {"content-type": "application/json"}


async def register_all(url: str, people: list[Identity], concurrency: int) -> None:
    it = iter(enumerate(people))

    async def loop() -> None:
        conn = Conn(url)
        try:
            for i, me in it:
                body = register_body(i)
                hdr = {**me.headers("POST", "/api/providers/register", body, network=NETWORK[0]),
                       "content-type": "application/json"}
                status, data = await conn.request("POST", "/api/providers/register", body, hdr)
                if status != 200:
                    raise SystemExit(f"registration answered {status}: {data[:300]!r}")
        finally:
            conn.close()
    await asyncio.gather(*(loop() for _ in range(concurrency)))


def bond_all(url: str, people: list[Identity]) -> None:
    """Fund and bond these providers (signed requests, 16 at a time)."""
    def one(me: Identity) -> None:
        with Client(url, me) as c:
            c.faucet(STAKE)
            c.bond(STAKE)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, people))


async def leases(url: str, pollers: list[Identity], n: int, timeout: float) -> dict[str, Any]:
    """One job of ``n`` shards against ``pollers`` long-polling with acknowledgements:
    seconds from the submission to the first and to the last lease delivered."""
    got: dict[str, float] = {}  # assignment -> when its poll answer arrived
    errors: dict[str, int] = {}
    job: dict[str, str] = {}
    done = asyncio.Event()

    async def poll_loop(me: Identity) -> None:
        ack: list[str] = []
        conn = Conn(url)
        while not done.is_set():
            body = json.dumps({"wait": 5.0, "ack": ack}).encode()
            hdr = {**me.headers("POST", POLL, body, network=NETWORK[0]),
                   "content-type": "application/json"}
            try:
                status, data = await asyncio.wait_for(conn.request("POST", POLL, body, hdr),
                                                      60)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                conn.close()  # counted, and the poll goes on (un-acked leases come again)
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            now, ack = time.perf_counter(), []
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                continue
            for a in json.loads(data)["assignments"]:
                ack.append(a["id"])
                if a["job_id"] == job.get("id"):
                    got.setdefault(a["id"], now)
            if len(got) >= n:
                done.set()
        conn.close()
    async def beat_loop() -> None:  # agents heartbeat while they poll: keep them online
        conn, make, k = Conn(url), heartbeats(pollers), 0
        while not done.is_set():
            t0 = time.perf_counter()
            for _ in pollers:
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    await conn.request(*make(k))
                k += 1
            await asyncio.sleep(max(0.0, 5.0 - (time.perf_counter() - t0)))
        conn.close()

    tasks = [asyncio.create_task(poll_loop(me)) for me in pollers]
    tasks.append(asyncio.create_task(beat_loop()))
    await asyncio.sleep(2.0)  # every poll waiting
    lines = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                 "url": "/v1/embeddings",
                                 "body": {"model": MODEL, "input": f"row {i}"}}
                                ).encode() + b"\n" for i in range(n))

    def submit() -> tuple[float, float]:
        with Client(url, Identity.generate()) as c:
            c.faucet(10**9)
            digest = c.upload(lines).digest
            t0 = time.perf_counter()
            out = c.submit_job({"kind": "embeddings", "model": MODEL, "max_price": 2000,
                                "shard_size": 1, "deadline": 3600}, digest)
            job["id"] = out.id
            return t0, time.perf_counter()
    t0, t1 = await asyncio.to_thread(submit)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    done.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    times = sorted(got.values())
    last = (times[-1] - t0) if times else None
    return {"shards": n, "pollers": len(pollers), "delivered": len(got),
            "submit_s": round(t1 - t0, 3),
            "first_lease_s": round(times[0] - t0, 3) if times else None,
            "last_lease_s": round(last, 3) if last else None,
            "per_s": round(len(got) / last, 1) if last else 0.0, "poll_errors": errors}


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


READS = (("GET /api/providers", "GET", "/api/providers", None),
         ("GET /api/explorer/overview", "GET", "/api/explorer/overview", None),
         ("POST /api/market/quote", "POST", "/api/market/quote",
          {"spec": {"kind": "embeddings", "model": MODEL, "max_price": 2000},
           "shard_units": [100, 100]}),
         ("GET /api/hardware/claims", "GET", "/api/hardware/claims", None),
         ("GET /metrics", "GET", "/metrics", None))


def reads(url: str, n: int) -> dict[str, Any]:
    """The public reads that grow with the network, ``n`` times each, one at a time,
    with ``GET /health`` between them for the baseline: p50/p99 ms and answer size."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as h:
        for name, method, path, body in (("GET /health", "GET", "/health", None), *READS):
            lat, size = [], 0
            for _ in range(n):
                t0 = time.perf_counter()
                r = h.request(method, path, json=body)
                lat.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{name} answered {r.status_code}: {r.text[:300]}")
                size = len(r.content)
            lat.sort()
            out[name] = {"p50_ms": round(lat[len(lat) // 2], 2),
                         "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
                         "bytes": size}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=0,
                    help="also relay heartbeats in batches of this many (0: not)")
    ap.add_argument("--leases", type=int, default=0, help="shards of the lease phase (0: none)")
    ap.add_argument("--pollers", type=int, default=500, help="providers long-polling for them")
    ap.add_argument("--reads", type=int, default=0,
                    help="time the public reads that grow with the network, this many each")
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
    # Every simulated provider sends from 127.0.0.1: the per-address flood limit
    # (2,000 requests/s by default, ``coordinator.limits``) would measure itself, not the
    # coordinator. A real provider beats once every few seconds from its own address.
    env = {**os.environ, "DEAI_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1",
           "DEAI_RATE_PER_IP": "0"}
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
        NETWORK[0] = httpx.get(f"{url}/api/network", timeout=10).json()["network_id"]
        people = [Identity.generate() for _ in range(a.providers)]
        t0 = time.perf_counter()
        asyncio.run(register_all(url, people, a.concurrency))
        reg_s = time.perf_counter() - t0
        print(f"registered {a.providers} providers in {reg_s:.1f} s "
              f"({a.providers / reg_s:.0f}/s); engine {a.database}, {a.workers} worker(s)")
        before = nonces(db_url)
        h1 = asyncio.run(drive(url, a.seconds, a.concurrency, health))
        # One heartbeat from every provider first, timed apart: a replica reads a provider
        # and its timestamp floor on the first beat it hears from it (the cold path), and
        # answers in memory after that. The timed phases measure the steady state.
        t0 = time.perf_counter()
        asyncio.run(drive(url, 0.0, a.concurrency, heartbeats(people), count=len(people)))
        first = len(people) / (time.perf_counter() - t0)
        print(f"  first beats    {first:8,.0f}/s  (one per provider; reads it and its floor)")
        hb = asyncio.run(drive(url, a.seconds, a.concurrency, heartbeats(people)))
        rb = None
        if a.batch:
            relay = Relayed(people, a.batch)
            relay.prepare(a.seconds)
            rb = asyncio.run(drive(url, a.seconds, max(1, a.concurrency // 8), relay, a.batch))
            rb["signed_inline"] = relay.inline
        time.sleep(1.5)  # let the last liveness flush land before counting rows
        after = nonces(db_url)
        h2 = asyncio.run(drive(url, a.seconds, a.concurrency, health))
        base = (h1["per_s"] + h2["per_s"]) / 2
        res = {"engine": a.database, "workers": a.workers, "providers": a.providers,
               "first_beats_per_s": round(first, 1),
               "concurrency": a.concurrency, "health_before": h1, "heartbeats": hb,
               "health_after": h2, "ratio_heartbeat_to_health": round(hb["per_s"] / base, 3),
               "nonce_rows_added": after[0] - before[0], "floor_rows": after[1],
               "load_average": os.getloadavg()}
        if a.reads:
            res["reads"] = rd = reads(url, a.reads)
            base_ms = rd["GET /health"]["p50_ms"]
            for name, r in rd.items():
                print(f"  {name:28s} p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                      f"{r['bytes']:>10,} bytes  (p50 {r['p50_ms'] / base_ms:,.0f}x GET /health)")
        if a.leases:
            pollers = people[: min(a.pollers, len(people))]
            bond_all(url, pollers)
            lz = asyncio.run(leases(url, pollers, a.leases, timeout=300.0))
            res["leases"] = lz
            res["ratio_leases_to_health"] = round(lz["per_s"] / base, 3)
        if rb:
            res["relayed"] = {**rb, "batch": a.batch}
            res["ratio_relayed_to_health"] = round(rb["per_s"] / base, 3)
        rows = [("GET /health", h1), ("heartbeat", hb)]
        rows += [(f"relayed x{a.batch}", rb)] if rb else []
        for name, r in [*rows, ("GET /health", h2)]:
            sent = (f" (of {r['sent_per_s']:,.0f}/s answered)"
                    if r["sent_per_s"] != r["per_s"] else "")
            print(f"  {name:12s} {r['per_s']:>8,.0f}/s accepted{sent}  p50 {r['p50_ms']:.1f} ms  "
                  f"p99 {r['p99_ms']:.1f} ms  refused {r['non_200'] or 0}")
        print(f"  heartbeats / health = {res['ratio_heartbeat_to_health']:.2f}; "
              f"{hb['requests']} heartbeats added {after[0] - before[0]} nonce rows and "
              f"{after[1]} floor rows (one per provider heard)")
        if rb:
            print(f"  relayed heartbeats / health = {res['ratio_relayed_to_health']:.2f} "
                  f"({a.batch} signed beats a request, {max(1, a.concurrency // 8)} in flight; "
                  f"signed before the phase, {rb['signed_inline']} requests signed inline)")
        if a.leases:
            lz = res["leases"]
            print(f"  leases: one job of {lz['shards']:,} shards to {lz['pollers']} polling "
                  f"providers (of {a.providers:,} online): submitted in {lz['submit_s']} s, "
                  f"first lease delivered at {lz['first_lease_s']} s, {lz['delivered']:,} "
                  f"delivered by {lz['last_lease_s']} s = {lz['per_s']:,}/s "
                  f"({res['ratio_leases_to_health']:.2f} of GET /health); poll errors "
                  f"{lz['poll_errors'] or 0}")
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
