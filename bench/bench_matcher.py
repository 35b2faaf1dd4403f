"""Placements through the coordinator: ``matching.match_once`` on a real database.

In process, on a real SQLite file (or ``--database postgres``: a throwaway
PostgreSQL from ``tests/pg.py``; or ``--database-url URL``), per provider count:

- N providers written in the shape ``Coordinator.register`` gives them (provider
  row, offers, operator, origin, fingerprint), funded and bonded through the
  journal, all online;
- /v1 decisions: ``openai.gateway.start`` (validate, escrow, place at once),
  p50/p99 over ``--decisions`` requests;
- ``--history H`` settled leases of the past (a network that has run a while);
- M queued shards in jobs of 1,000, then ``match_once`` rounds until a round
  places nothing: placements/s through the coordinator; the baseline in the same
  run is the pure ``core.market.place`` on the same inputs (the states and
  demands of the first round), and the ratio is printed;
- heartbeats (``Coordinator.heartbeat``) from a thread while the rounds run: the
  latency of those that overlap a round.

    .venv/bin/python bench/bench_matcher.py                 # writes bench/results/matcher.json
    .venv/bin/python bench/bench_matcher.py --providers 1000 --tasks 2000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402
from tests.helpers import MODEL  # noqa: E402

from deai.coordinator import admission, liveness, matching  # noqa: E402

try:  # the providers' index (absent before issue 12's item 3; ``--rev`` runs older code)
    from deai.coordinator import provider_index
except ImportError:  # pragma: no cover
    provider_index = None  # type: ignore[assignment]
from deai.coordinator import server  # noqa: E402
from deai.coordinator.openai import gateway, keys  # noqa: E402
from deai.coordinator.service import Coordinator  # noqa: E402
from deai.coordinator.settings import Settings  # noqa: E402
from deai.core import catalog, diversity, ledger, market, wire  # noqa: E402
from deai.core.lifecycle import AssignmentStatus, ProviderStatus, TaskStatus  # noqa: E402
from deai.store import journal, migrate  # noqa: E402
from deai.store.models import Assignment, Offer, Provider, Task  # noqa: E402

OUT = ROOT / "bench" / "results" / "matcher.json"
STAKE = 20_000_000
CLIENT = "c" * 64


def add_providers(c: Coordinator, n: int, rng: random.Random) -> list[str]:
    """``n`` providers as ``Coordinator.register`` writes them, funded and bonded."""
    now = c.now()
    ids = [f"{rng.getrandbits(256):064x}" for _ in range(n)]
    prov, offers = [], []
    for k, pid in enumerate(ids):
        hw = {"cpu_model": "cpu", "cores": 4, "memory_mb": rng.choice([4096, 8192, 16384]),
              "gpus": [], "machine_id": pid[:16]}
        fp = diversity.fingerprint(hw)
        hw.pop("machine_id")
        prov.append({
            "id": pid, "name": pid[:12], "hardware": hw,
            "benchmark": {"gflops": 50.0, "mem_gbps": 10.0}, "compute_units": 1.0,
            "threads": 1, "slots": rng.randint(2, 4), "status": ProviderStatus.ACTIVE,
            "registered_at": now, "last_seen": now, "reputation": round(rng.uniform(0.3, 0.9), 2),
            "tasks_done": 0, "capabilities": {}, "operator": pid,
            "origin": diversity.origin(f"10.{k // 250 % 250}.{k % 250}.1") or None,
            "fingerprint": fp})
        offers.append({"provider_id": pid, "workload": "embeddings", "model": MODEL,
                       "price": rng.randint(500, 1500)})

    def body(s: Any) -> None:
        s.execute(insert(Provider), prov)
        s.execute(insert(Offer), offers)
        drafts = [ledger.faucet(CLIENT, 10**15)]
        for pid in ids:
            drafts += [ledger.faucet(pid, STAKE), ledger.bond(pid, STAKE)]
        journal.append_many(s, drafts, c.clock)

    c.db.run(body)
    return ids


def queue(c: Coordinator, n: int) -> None:
    digest = c.blobs.put(b"shard", sync=False)
    spec = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 3600,
            "shard_size": 1}
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        c.db.run(lambda s, k=k: admission.create(
            c, s, owner=CLIENT, kind="embeddings", model=MODEL, spec=spec,
            input_digest=digest, max_price=2000,
            shards=[admission.ShardIn(digest, 1, 1) for _ in range(k)], escrow=2000 * k,
            deadline=3600, want_tasks=False))


def history(c: Coordinator, pids: list[str], n: int, rng: random.Random) -> None:
    """``n`` settled leases of the past (a completed job's done shards, each accepted
    from a provider drawn at random, with their ``task_assigned`` events), written as the
    matcher writes them: a network that has run a while. The tables' indexes are that
    large when the rounds add to them (each lease lands in ``assignments``' indexes by its
    id and by its provider, at a random place in each unless the ids are ordered)."""
    if n <= 0:
        return
    from deai.coordinator import service
    from deai.store import db
    from deai.store.models import Job

    lease_ids = getattr(matching, "lease_ids", None) or (lambda k: service.new_ids("asg", k))
    now = c.now() - 86_400.0
    digest = "0" * 64
    for start in range(0, n, 50_000):
        k = min(50_000, n - start)
        jid = service.new_id("job")
        ids = lease_ids(k)

        def body(s: Any, k: int = k, jid: str = jid, ids: list[str] = ids) -> None:
            s.execute(insert(Job), [{
                "id": jid, "owner": CLIENT, "status": "completed", "kind": "embeddings",
                "model": MODEL, "spec": {}, "input_digest": digest, "items": k, "units": k,
                "max_price": 2000, "escrow": 0, "cost": 0, "refunded": 0, "created_at": now,
                "deadline_at": now + 3600, "finished_at": now + 60}])
            tids = [f"{jid}.t{i:05d}" for i in range(k)]
            db.insert_many(s, Task.__table__, [{  # type: ignore[arg-type]
                "id": t, "job_id": jid, "idx": i, "status": "done", "input_digest": digest,
                "items": 1, "units": 1, "attempts": 1, "output_digest": digest,
                "updated_at": now + 60} for i, t in enumerate(tids)])
            matching._insert_leases(s, [{
                "id": a, "task_id": t, "job_id": jid, "provider_id": rng.choice(pids),
                "role": "primary", "status": "accepted", "price": 1000, "leased_at": now,
                "lease_deadline": now + 60, "delivered": True, "input_digest": None,
                "check_of": None, "forced": None, "hold_until": None}
                for a, t in zip(ids, tids, strict=True)])

        c.db.run(body)


def pure_baseline(c: Coordinator) -> dict[str, Any]:
    """``core.market.place`` alone on the first round's inputs."""
    with c.db.read() as s:
        rows = s.execute(select(Task, matching.Job).join(matching.Job)
                         .where(Task.status == TaskStatus.QUEUED)
                         .order_by(matching.Job.created_at, Task.idx)
                         .limit(matching.BATCH)).all()
        states = [p for p in matching.provider_states(c, s) if not p.verifier]
        demands = [matching.demand(c, j, t) for t, j in rows]
    best = float("inf")
    placed: list[market.Placement] = []
    for _ in range(5):
        t0 = time.perf_counter()
        placed = market.place(demands, states, c.settings.min_stake, c.settings.strategy)
        best = min(best, time.perf_counter() - t0)
    return {"tasks": len(demands), "placed": len(placed),
            "placements_per_s": round(len(placed) / best) if placed else 0}


def decisions(c: Coordinator, n: int) -> dict[str, Any]:
    """``gateway.start`` whole (validate, escrow, decide, lease, commit), and within it
    the decision: the index's price ceiling and its placement, checked against the
    chosen provider's rows (``ProviderIndex.max_price`` + ``ProviderIndex.place``)."""
    out = keys.create(c, CLIENT, wire.ApiKeyIn(name="bench"))
    key = keys.KeyInfo(id=out.id, account=CLIENT, spend_cap=None)
    xs, ds = [], []
    placed = 0
    idx = provider_index.of(c) if provider_index is not None else None
    spent = [0.0]

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper

    if idx is not None:
        idx.place, idx.max_price = timed(idx.place), timed(idx.max_price)  # type: ignore[method-assign]
    for i in range(n):
        spent[0] = 0.0
        t0 = time.perf_counter()
        st = gateway.start(c, key, "embeddings", {"model": MODEL, "input": f"hello {i}"})
        xs.append((time.perf_counter() - t0) * 1000)
        ds.append(spent[0] * 1000)
        placed += st.provider is not None
    if idx is not None:
        del idx.place, idx.max_price
    xs.sort()
    ds.sort()
    return {"n": n, "placed": placed, "p50_ms": round(xs[len(xs) // 2], 2),
            "p99_ms": round(_p99(xs), 2), "max_ms": round(xs[-1], 2),
            "decision_p50_ms": round(ds[len(ds) // 2], 3) if idx else None,
            "decision_p99_ms": round(_p99(ds), 3) if idx else None}


class Heartbeats(threading.Thread):
    """Heartbeats as the endpoint answers them (``liveness.heartbeat``: the timestamp
    floor, the index's last beat, queued for the batched write), one after another,
    with the app's flush every 0.5 s in a second thread; latencies kept with their
    times (the flush's own time is not a heartbeat's: nobody waits on it)."""

    def __init__(self, c: Coordinator, pids: list[str]) -> None:
        super().__init__(daemon=True)
        self.c, self.pids, self.stop = c, pids, threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.flusher = threading.Thread(target=self._flush, daemon=True)

    def _flush(self) -> None:
        beats = liveness.of(self.c)
        while not self.stop.wait(0.5):
            beats.flush()

    def warm(self) -> list[float]:
        """One beat from each provider before the rounds, timed apart: a provider's first
        beat after a start reads its row and its stored floor (a live network's providers
        have all beaten before; counting 200 first beats among ~1,000 would measure
        start-up, not a round)."""
        beats = liveness.of(self.c)
        out = []
        for pid in self.pids:
            t0 = time.perf_counter()
            beats.heartbeat(pid, time.time(), [])
            out.append((time.perf_counter() - t0) * 1000)
        return sorted(out)

    def run(self) -> None:
        self.flusher.start()
        beats = liveness.of(self.c)
        i = 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            beats.heartbeat(self.pids[i % len(self.pids)], time.time() + i * 1e-6, [])
            self.samples.append((t0, time.perf_counter() - t0))
            i += 1
            time.sleep(0.002)
        self.flusher.join()


def rounds(c: Coordinator, pids: list[str], profile: bool) -> dict[str, Any]:
    hb = Heartbeats(c, pids)
    first = hb.warm()
    hb.start()
    spans: list[tuple[float, float]] = []
    prof = cProfile.Profile() if profile else None
    placed = 0
    t_all = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        matching.match_once(c)
        if prof:
            prof.disable()
        t1 = time.perf_counter()
        with c.db.read() as s:
            n = s.scalar(select(func.count()).select_from(Assignment)
                         .where(Assignment.status == AssignmentStatus.LEASED)) or 0
        spans.append((t0, t1))
        if n == placed:
            spans.pop()  # the empty round that ends the run
            break
        placed = n
    elapsed = sum(b - a for a, b in spans)
    wall = time.perf_counter() - t_all
    hb.stop.set()
    hb.join()
    during = sorted(d * 1000 for t, d in hb.samples
                    if any(a <= t <= b for a, b in spans))
    idle = sorted(d * 1000 for t, d in hb.samples if not any(a <= t <= b for a, b in spans))
    if prof:
        prof.dump_stats(str(Path(tempfile.gettempdir()) / "matcher.prof"))
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
    return {"rounds": len(spans), "round_seconds": [round(b - a, 3) for a, b in spans],
            "wall_seconds": round(wall, 2), "match_seconds": round(elapsed, 3),
            "placements_per_s": round(placed / elapsed) if elapsed else 0,
            "heartbeat_during_round": _lat(during), "heartbeat_idle": _lat(idle),
            "heartbeat_first": _lat(first)}


def _lat(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50_ms": round(statistics.median(xs), 2),
            "p99_ms": round(_p99(xs), 2), "max_ms": round(xs[-1], 2)}


def _p99(xs: list[float]) -> float:
    """The 99th percentile of sorted ``xs`` (nearest rank; the maximum below 100)."""
    return xs[min(len(xs), math.ceil(len(xs) * 0.99)) - 1]


def run_case(n: int, tasks: int, n_decisions: int, url: str, profile: bool,
             past: int = 0) -> dict[str, Any]:
    rng = random.Random(7 + n)
    c = Coordinator(Settings(data_dir=Path(tempfile.mkdtemp(prefix="deai-matcher-")),
                             database_url=url, devnet=True, heartbeat_timeout=3600.0,
                             verify_seed=7))
    migrate.upgrade(c.db.engine)
    t0 = time.perf_counter()
    pids = add_providers(c, n, rng)
    history(c, pids, past, rng)
    setup = time.perf_counter() - t0
    build = None
    if provider_index is not None:  # built once per process (at start), not per request
        t0 = time.perf_counter()
        with c.db.read() as s:
            provider_index.of(c).refresh(s)
        build = round(time.perf_counter() - t0, 3)
    dec = decisions(c, n_decisions)
    with c.db.read() as s:
        free = sum(max(0, p.slots - p.load) for p in matching.provider_states(c, s))
    tasks = min(tasks, free)
    queue(c, tasks)
    base = pure_baseline(c)
    r = rounds(c, pids[: min(len(pids), 200)], profile)
    ratio = base["placements_per_s"] / r["placements_per_s"] if r["placements_per_s"] else None
    c.db.dispose()
    return {"providers": n, "setup_seconds": round(setup, 1), "index_build_seconds": build,
            "tasks": tasks, "history": past,
            "v1_decision": dec, "match": r, "pure_place": base,
            "pure_over_coordinator": round(ratio, 1) if ratio else None}


STEPS = ("_plan", "_place_round", "_commit", "_claim", "_insert_leases", "_lease")


def time_steps() -> dict[str, float]:
    """``--breakdown``: the seconds ``match_once`` spends in each of its steps (the
    matcher's functions above, the lifecycle's batch moves, the providers' re-read, the
    bulk inserts, ``market.place``), accumulated into the returned dict while the run
    goes on. Only time inside ``match_once`` counts (the pure baseline calls ``place``
    too). Each wrapper costs ~0.3 µs a call: ``_lease`` runs once a placement."""
    from deai.coordinator import effects
    from deai.store import db

    spent: dict[str, float] = {}
    inside = [0]
    targets: list[tuple[Any, str]] = [(matching, "match_once"), *((matching, n) for n in STEPS),
                                      (effects, "placed_many"), (db, "insert_many"),
                                      (market, "place")]
    if provider_index is not None:
        targets.append((provider_index.ProviderIndex, "reread"))
    for owner, name in targets:
        f = getattr(owner, name, None)
        if f is None:  # a revision without that step (``--rev``)
            continue
        top = name == "match_once"

        def timed(*args: Any, _f: Any = f, _name: str = name, _top: bool = top,
                  **kw: Any) -> Any:
            if not (inside[0] or _top):
                return _f(*args, **kw)
            inside[0] += _top
            t0 = time.perf_counter()
            try:
                return _f(*args, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0
                inside[0] -= _top

        setattr(owner, name, timed)
    return spent


def use_revision(rev: str) -> None:
    """Run the matcher (and the /v1 path's use of it) as it was at ``rev``: the A/B
    baseline under the same machine load."""
    import importlib.util
    import subprocess

    def load(name: str) -> Any:
        src = subprocess.run(["git", "show", f"{rev}:src/deai/coordinator/{name}.py"],
                             check=True, capture_output=True, text=True, cwd=ROOT).stdout
        path = Path(tempfile.mkdtemp()) / f"{name}_old.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"{name}_old", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod

    old = load("matching")
    old.effects = load("effects")  # its batch writes took (Job, Task) pairs before 1e2d33e
    first = old.place_now  # it read the providers itself: the states passed are dropped
    old.place_now = lambda c, s, task, job, states=None: first(c, s, task, job)
    global matching
    matching = old  # type: ignore[assignment]
    gateway.matching = old  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--decisions", type=int, default=1_000)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--database-url", default="")
    ap.add_argument("--history", type=int, default=0,
                    help="settled leases written before the rounds (a network that has run a "
                         "while: the tables' indexes as large)")
    ap.add_argument("--profile", action="store_true", help="cProfile the matching rounds")
    ap.add_argument("--breakdown", action="store_true",
                    help="time each step of match_once, in µs a placement (steps nest: "
                         "_commit holds _claim, reread, _lease, placed_many and "
                         "_insert_leases, which holds insert_many; _plan holds "
                         "_place_round, which holds place)")
    ap.add_argument("--rev", default="", help="run the matcher of this git revision instead")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--gc", choices=["server", "default"], default="server",
                    help="the cycle collector as the coordinator's process sets it "
                         "(server.tune_gc), or Python's defaults")
    a = ap.parse_args(argv)
    if a.rev:
        use_revision(a.rev)
    catalog.lookup(MODEL)
    if a.gc == "server":  # as ``deai coordinator`` does once it has started
        server.tune_gc()
    spent = time_steps() if a.breakdown else None
    pg = None
    if a.database == "postgres" and not a.database_url:
        from tests.pg import PgServer
        pg = PgServer.start()
    cases = []
    try:
        for n in a.providers:
            url = a.database_url or (pg.url(pg.create_database()) if pg else "")
            r = run_case(n, a.tasks, a.decisions, url, a.profile, a.history)
            cases.append(r)
            m, d = r["match"], r["v1_decision"]
            print(f"{n:>6,} providers, {a.history:,} past leases: {r['tasks']:,} tasks in "
                  f"{m['rounds']} rounds, "
                  f"{m['placements_per_s']:,}/s through match_once against "
                  f"{r['pure_place']['placements_per_s']:,}/s pure place "
                  f"({r['pure_over_coordinator']}× slower); /v1 request (gateway.start) "
                  f"p50 {d['p50_ms']} ms p99 {d['p99_ms']} ms, of which the decision p50 "
                  f"{d.get('decision_p50_ms')} ms p99 {d.get('decision_p99_ms')} ms "
                  f"(index built once in {r.get('index_build_seconds')} s); heartbeat "
                  f"during a round p50 "
                  f"{m['heartbeat_during_round'].get('p50_ms')} ms p99 "
                  f"{m['heartbeat_during_round'].get('p99_ms')} ms (idle p50 "
                  f"{m['heartbeat_idle'].get('p50_ms')} ms)", flush=True)
            if spent is not None:
                per = {k: round(v / max(1, r["tasks"]) * 1e6, 1)
                       for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
                r["breakdown_us_per_placement"] = per
                print("        µs a placement: " + ", ".join(f"{k} {v}" for k, v in per.items()),
                      flush=True)
                spent.clear()
    finally:
        if pg is not None:
            pg.stop()
    result = {
        "benchmark": "placements through the coordinator (match_once), /v1 decision, "
                     "heartbeat during a round",
        "command": "python " + " ".join(["bench/bench_matcher.py", *(argv or sys.argv[1:])]),
        "database": a.database if not a.database_url else "url",
        "matcher_revision": a.rev or "working tree",
        "gc": a.gc,
        "python": sys.version.split()[0],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "cases": cases,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
