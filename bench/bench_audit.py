"""`deai ledger audit` at scale: wall time and peak memory of the client audit of a
journal of N entries held by a real coordinator process, against a bare sequential
read of the same rows in the same run.

1. A coordinator process starts on a fresh data directory (SQLite, the default), so
   its migrations make the schema, and is stopped.
2. N entries are appended to its database through ``store.journal.append_many``
   (real hash chain, real balances), in transactions of ``--batch`` entries: the
   mix of ``bench_journal`` (fund, escrow, pay, release, refund), one escrow
   account per job, so accounts grow with the journal (about N/4 of them).
3. The coordinator starts again on that database and the audit runs as its own
   process, exactly the command a user types (``deai ledger audit --last 5``); its
   wall time and peak RSS (``wait4``'s ``ru_maxrss``) are measured.
4. Baseline: ``sqlite3`` reading every journal row in sequence order (``SELECT``
   of all columns, fetched in pages), the floor for reading the same rows at all.

    .venv/bin/python bench/bench_audit.py --entries 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the process harness lives with the tests

from tests.netutil import Network  # noqa: E402

from deai.core import ledger  # noqa: E402
from deai.core.clock import ManualClock  # noqa: E402
from deai.store import journal  # noqa: E402
from deai.store.db import Database  # noqa: E402

OUT = ROOT / "bench" / "results" / "audit.json"


def drafts(n: int, accounts: int) -> Iterator[ledger.Draft]:
    """``bench_journal``'s mix, generated lazily: each job its own escrow account."""
    who = [f"{i:064x}" for i in range(accounts)]
    made = 0
    for w in who[:n]:
        yield ledger.faucet(w, 10**12)
        made += 1
    i = 0
    while made < n:
        owner, prov, job = who[i % accounts], who[(i + 7) % accounts], f"job-{i}"
        for d in (ledger.escrow_job(owner, job, 1000),
                  ledger.payout(job, f"t{i}", f"a{i}", prov, 800, 40),
                  ledger.release(prov, 760, [i]), ledger.refund(owner, job, 200, "done")):
            if made < n:
                yield d
                made += 1
        i += 1


def build(url: str, n: int, accounts: int, batch: int) -> float:
    db = Database(url)
    clock = ManualClock(1_700_000_000.0)
    t0 = time.perf_counter()
    buf: list[ledger.Draft] = []
    for d in drafts(n, accounts):
        buf.append(d)
        if len(buf) == batch:
            db.run(lambda s, b=buf: journal.append_many(s, b, clock))
            buf = []
            clock.advance(1.0)
    if buf:
        db.run(lambda s, b=buf: journal.append_many(s, b, clock))
    db.dispose()
    return time.perf_counter() - t0


def bare_read(path: Path) -> tuple[float, int]:
    con = sqlite3.connect(path)
    t0 = time.perf_counter()
    cur = con.execute("SELECT seq, prev_hash, hash, ts_ms, kind, body, postings FROM journal "
                      "ORDER BY seq")
    n = 0
    while rows := cur.fetchmany(5000):
        n += len(rows)
    secs = time.perf_counter() - t0
    con.close()
    return secs, n


def audit_child(url: str, env: dict[str, str]) -> dict[str, Any]:
    """``deai ledger audit`` as its own process: wall time, peak RSS, its verdict."""
    deai = Path(sys.executable).with_name("deai")
    args = [str(deai), "ledger", "audit", "--coordinator", url, "--last", "5"]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert p.stdout is not None
    out = p.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(secs, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "rc": p.returncode,
            "ok": "audit OK" in out, "tail": out.strip().splitlines()[-4:]}


def start(net: Network) -> None:
    try:
        net.start_coordinator()
    except TimeoutError:  # a loaded machine: give it longer than the tests' minute
        net.wait_ready(600)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(n: int, accounts: int, batch: int, root: Path) -> dict[str, Any]:
    net = Network(root, "", verify=False)
    start(net)  # the coordinator's own migrations make the schema
    assert net.coordinator is not None
    net.coordinator.stop(30)
    path = root / "coordinator" / "deai.sqlite3"
    assert path.exists(), path
    build_s = build(f"sqlite:///{path}", n, accounts, batch)
    print(f"  built {n:,} entries in {build_s:.1f} s ({n / build_s:,.0f} entries/s)",
          flush=True)
    try:
        start(net)
        assert net.coordinator is not None
        pid = net.coordinator.p.pid
        before = cpu_seconds(pid)
        with tempfile.TemporaryDirectory() as home:  # the audit needs no key
            env = {**os.environ, "DEAI_HOME": home}
            audit = audit_child(net.url, env)
        audit["coordinator_cpu_s"] = round(cpu_seconds(pid) - before, 2)
    finally:
        net.close()
    bare_s, rows = bare_read(path)
    assert rows >= n, (rows, n)  # plus what the coordinator wrote itself (a devnet grant)
    with sqlite3.connect(path) as con:
        accts = con.execute("SELECT count(*) FROM balances").fetchone()[0]
    res = {"entries": rows, "accounts": accts, "build_seconds": round(build_s, 1),
           "audit": audit, "bare_read_seconds": round(bare_s, 2),
           "audit_vs_bare_read": round(audit["seconds"] / bare_s, 1),
           "load_average": [round(x, 1) for x in os.getloadavg()]}
    print(f"  deai ledger audit: {audit['seconds']:.1f} s, peak RSS {audit['peak_rss_mb']} MB, "
          f"cpu {audit['cpu_s']} s (coordinator {audit['coordinator_cpu_s']} s), "
          f"ok={audit['ok']} (rc {audit['rc']}); {accts:,} accounts")
    print(f"  bare sqlite3 read of the same rows: {bare_s:.2f} s; audit / bare = "
          f"{res['audit_vs_bare_read']}x; load average {res['load_average']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--accounts", type=int, default=10_000, help="funded owners")
    ap.add_argument("--batch", type=int, default=5000, help="entries per transaction")
    a = ap.parse_args()
    results = []
    for n in a.entries:
        print(f"{n:,} entries")
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(n, a.accounts, a.batch, Path(tmp)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")
    if not all(r["audit"]["ok"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
