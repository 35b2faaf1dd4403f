"""Journal postings per second: ``journal.append_many`` against a bare executemany of
the same rows, on SQLite and PostgreSQL, measured side by side in one run.

For each engine, on a fresh database with the coordinator's schema:

- bare: the entries' rows (already chained, hashes computed outside the clock)
  inserted with the driver's own ``executemany`` and the balances moved with an
  executemany upsert, one transaction per batch: the floor for these rows;
- batched: ``journal.append_many`` through a SQLAlchemy session, one
  transaction per batch, including everything it does (head lock, balance
  reads for the funds check, hashing, JSON, upserts);
- one by one: ``journal.append`` per entry inside the same transactions (what a
  caller that appends inside a loop gets);
- per transaction: one entry per ``Database.run`` transaction, the shape of
  most coordinator writes.

SQLite runs as the coordinator runs it (WAL, synchronous=NORMAL). PostgreSQL is
the tests' throwaway server restarted with its defaults (fsync,
full_page_writes and synchronous_commit on) so commits really reach the disk.

    .venv/bin/python bench/bench_journal.py   # writes bench/results/journal.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the PostgreSQL harness lives with the tests

from tests.pg import PgServer  # noqa: E402

from deai.core import ledger  # noqa: E402
from deai.core.clock import ManualClock  # noqa: E402
from deai.store import journal  # noqa: E402
from deai.store.db import Database  # noqa: E402
from deai.store.models import Base  # noqa: E402

OUT = ROOT / "bench" / "results" / "journal.json"


def drafts(n: int, accounts: int = 2000) -> list[ledger.Draft]:
    """A realistic mix: fund, escrow, pay (3 postings), release, refund."""
    out: list[ledger.Draft] = []
    who = [f"{i:064x}" for i in range(accounts)]
    for w in who:
        out.append(ledger.faucet(w, 10**12))
    i = 0
    while len(out) < n:
        owner, prov, job = who[i % accounts], who[(i + 7) % accounts], f"job-{i}"
        out += [ledger.escrow_job(owner, job, 1000), ledger.payout(job, f"t{i}", f"a{i}", prov,
                                                                    800, 40),
                ledger.release(prov, 760, [i]), ledger.refund(owner, job, 200, "done")]
        i += 1
    return out[:n]


def postings(ds: list[ledger.Draft]) -> int:
    return sum(len(d.postings) for d in ds)


def fresh(url: str) -> Database:
    db = Database(url)
    Base.metadata.drop_all(db.engine)
    Base.metadata.create_all(db.engine)
    return db


def bare(db: Database, batches: list[list[ledger.Draft]]) -> float:
    """Rows chained beforehand; the clock covers only the driver's executemany."""
    clock = ManualClock()
    seq, prev = 0, ledger.GENESIS
    prepared = []
    for b in batches:
        rows, net = [], {}
        for d in b:
            seq += 1
            e = ledger.chain(d, seq, prev, int(clock.now() * 1000))
            prev = e.hash
            rows.append((e.seq, e.prev_hash, e.hash, e.ts_ms, e.kind, json.dumps(e.body),
                         json.dumps([[a, v] for a, v in e.postings])))
            for a, v in e.postings:
                net[a] = net.get(a, 0) + v
        prepared.append((rows, sorted(net.items())))
    ph = "?" if db.is_sqlite else "%s"
    ins = (f"INSERT INTO journal (seq, prev_hash, hash, ts_ms, kind, body, postings) "
           f"VALUES ({', '.join([ph] * 7)})")
    ups = (f"INSERT INTO balances (account, amount) VALUES ({ph}, {ph}) ON CONFLICT (account) "
           f"DO UPDATE SET amount = balances.amount + excluded.amount")
    raw = db.engine.raw_connection()
    try:
        t0 = time.perf_counter()
        for rows, net in prepared:
            cur = raw.cursor()
            if db.is_sqlite:
                cur.execute("BEGIN IMMEDIATE")
            cur.executemany(ins, rows)
            cur.executemany(ups, net)
            raw.commit()
            cur.close()
        return time.perf_counter() - t0
    finally:
        raw.close()


def batched(db: Database, batches: list[list[ledger.Draft]]) -> float:
    clock = ManualClock()
    t0 = time.perf_counter()
    for b in batches:
        db.run(lambda s, b=b: journal.append_many(s, b, clock))
    return time.perf_counter() - t0


def one_by_one(db: Database, batches: list[list[ledger.Draft]]) -> float:
    clock = ManualClock()
    t0 = time.perf_counter()
    for b in batches:
        db.run(lambda s, b=b: [journal.append(s, d, clock) for d in b])
    return time.perf_counter() - t0


def per_transaction(db: Database, batches: list[list[ledger.Draft]]) -> float:
    clock = ManualClock()
    t0 = time.perf_counter()
    for b in batches:
        for d in b:
            db.run(lambda s, d=d: journal.append(s, d, clock))
    return time.perf_counter() - t0


def check(db: Database) -> None:
    from sqlalchemy import select

    from deai.store.models import JournalEntry
    with db.read() as s:
        entries = [journal.to_entry(r) for r in
                   s.scalars(select(JournalEntry).order_by(JournalEntry.seq))]
        claimed = journal.balances(s, {a for e in entries for a, _ in e.postings})
    rep = ledger.audit(entries, claimed)
    assert rep.ok, rep.problems[:3]


def measure(url: str, entries: int, batch: int, slow: int, repeat: int) -> dict[str, Any]:
    ds = drafts(entries)
    batches = [ds[i:i + batch] for i in range(0, len(ds), batch)]
    few = ds[:slow]
    few_batches = [few[i:i + batch] for i in range(0, len(few), batch)]
    out: dict[str, Any] = {"entries": len(ds), "postings": postings(ds), "batch": batch}
    runs: list[tuple[str, Callable[[Database, list[list[ledger.Draft]]], float], list[Any]]] = [
        ("bare_executemany", bare, batches), ("append_many", batched, batches),
        ("append_one_by_one", one_by_one, few_batches),
        ("one_entry_per_transaction", per_transaction, few_batches)]
    # The two fast paths alternate `repeat` times (the machine is shared: its load moves);
    # each figure is the median of its runs.
    order = [r for _ in range(repeat) for r in runs[:2]] + runs[2:]
    rates: dict[str, list[tuple[float, int, float]]] = {}
    for name, fn, bs in order:
        db = fresh(url)
        secs = fn(db, bs)
        n = sum(postings(b) for b in bs)
        if name != "bare_executemany":
            check(db)
        db.dispose()
        rates.setdefault(name, []).append((n / secs, n, secs))
    for name, _, _ in runs:
        rate, n, secs = sorted(rates[name])[len(rates[name]) // 2]
        out[name] = {"postings": n, "seconds": round(secs, 3), "postings_per_s": round(rate),
                     "runs": [round(r) for r, _, _ in rates[name]]}
        print(f"  {name:28s} {rate:>10,.0f} postings/s  ({n} in {secs:.2f} s; runs "
              f"{', '.join(f'{r:,.0f}' for r, _, _ in rates[name])})", flush=True)
    out["append_many_vs_bare"] = round(out["append_many"]["postings_per_s"]
                                       / out["bare_executemany"]["postings_per_s"], 3)
    print(f"  append_many / bare executemany = {out['append_many_vs_bare']:.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=2000, help="entries for the slow paths")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of the fast two")
    a = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite (WAL, synchronous=NORMAL)")
        results["sqlite"] = measure(f"sqlite:///{tmp}/bench.sqlite3", a.entries, a.batch,
                                    a.slow, a.repeat)
    pg = PgServer.start()
    try:
        import psycopg
        # The test server starts with fsync off on its command line; restart it without.
        pg._cmd("pg_ctl", "-D", str(pg.data), "-l", str(pg.log), "-w", "-t", "60", "-o",
                f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {pg.root}", "restart")
        url = pg.url(pg.create_database())
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            fs = conn.execute("SHOW fsync").fetchone()
        print(f"PostgreSQL (fsync={fs[0] if fs else '?'})")
        results["postgres"] = measure(url, a.entries, a.batch, a.slow, a.repeat)
    finally:
        pg.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
