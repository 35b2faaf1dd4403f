"""Submit → lease delivered, through a real coordinator, against a baseline in the same run.

Starts a coordinator process (SQLite, or ``--database postgres`` on a throwaway
server), one provider (signed requests from a thread: heartbeats, a long-poll
with acknowledgements, an answer to each lease) and one client. For each of
``--jobs`` one-shard jobs, each submitted once the provider has answered the
previous one and is long-polling again (``Provider.wait_idle``), it times:

- submit: the ``POST /api/jobs`` call alone;
- submit → lease: from the start of that call to the provider's long-poll
  returning the lease (what a provider waits for new work);

and, as the baseline, ``GET /api/network`` from the same client in the same
run. ``--big N`` also times the submission of one job of N shards.

    .venv/bin/python bench/bench_submit.py --jobs 100
    .venv/bin/python bench/bench_submit.py --database postgres --jobs 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

from tests.netutil import Network  # noqa: E402
from tests.pg import PgServer  # noqa: E402
from tests.test_api import SPEC, lines  # noqa: E402

from deai.client.keys import Identity  # noqa: E402
from deai.client.sdk import Client  # noqa: E402
from deai.core import auth, wire  # noqa: E402

OUT = ROOT / "bench" / "results" / "submit.json"
SETTLE_S = 0.05  # a poll sent this long ago is waiting at the coordinator


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


class Provider:
    """Heartbeats, long-polls with acks and answers, recording when each job's lease came."""

    def __init__(self, url: str) -> None:
        self.ident = Identity.generate()
        self.c = Client(url, self.ident)
        self.c.faucet(50_000_000)
        self.c.register(wire.RegisterIn(
            hardware=wire.Hardware(cpu_model="bench cpu", cores=2, memory_mb=4096),
            benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=4,
            offers=[wire.OfferIn(workload="embeddings", model=SPEC["model"], price=100)]))
        self.c.bond(10_000_000)
        self.leased: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.idle = threading.Event()  # its previous lease answered, a poll under way
        for fn in (self._poll, self._beat):
            threading.Thread(target=fn, daemon=True).start()

    def _beat(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.c.heartbeat([])
            except Exception:  # noqa: BLE001 - the next beat tries again
                continue

    def _poll(self) -> None:
        ack: list[str] = []
        while not self.stop.is_set():
            self.idle.set()
            try:
                got = self.c.poll(wait=5, ack=ack).assignments
            except Exception:  # noqa: BLE001 - the coordinator is gone at the end of a run
                if self.stop.wait(0.2):
                    return
                continue
            now = time.perf_counter()
            if got:
                self.idle.clear()
            ack = [a.id for a in got]
            with self.cond:
                for a in got:
                    self.leased.setdefault(a.job_id, now)
                self.cond.notify_all()
            for a in got:
                try:
                    self._answer(a)
                except Exception:  # noqa: BLE001 - as above
                    if self.stop.is_set():
                        return
                    raise

    def _answer(self, a: wire.AssignmentOut) -> None:
        import base64

        rows = [json.loads(x) for x in base64.b64decode(a.input_b64 or "").splitlines()]
        out = b"".join(json.dumps({"custom_id": r["custom_id"],
                                   "embeddings": [[0.25] * 384 for _ in r["input"]],
                                   "prompt_tokens": 4}).encode() + b"\n" for r in rows)
        digest = self.c.upload(out).digest
        self.c.submit_result(a.id, wire.ResultIn(
            output_digest=digest, units=a.units,
            signature=self.ident.sign(auth.result_message(a.id, digest, a.units))))

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the provider has answered its lease and is long-polling again (and its
        poll has had time to reach the coordinator): the case measured is a provider
        waiting for work, not one still busy with the previous job."""
        if not self.idle.wait(timeout):
            raise TimeoutError("the provider did not come back to poll")
        time.sleep(SETTLE_S)

    def wait_for(self, job_id: str, timeout: float = 30.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: job_id in self.leased, timeout):
                raise TimeoutError(f"job {job_id} was not leased in {timeout} s")
            return self.leased[job_id]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--big", type=int, default=0, help="also submit one job of N shards")
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    a = ap.parse_args()
    pg = PgServer.start() if a.database == "postgres" else None
    tmp = Path(tempfile.mkdtemp(prefix="deai-submit-"))
    net = Network(tmp, pg.url(pg.create_database()) if pg else "", heartbeat_timeout=30.0,
                  verify=False)
    net.start_coordinator()
    try:
        prov = Provider(net.url)
        client = Client(net.url, Identity.generate())
        client.faucet(100_000_000)
        digests = [client.upload(lines(1, i)).digest for i in range(a.jobs)]
        base, submit, to_lease = [], [], []
        for d in digests:
            prov.wait_idle()
            t0 = time.perf_counter()
            client.network()
            base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            job = client.submit_job({**SPEC, "shard_size": 1}, d)
            submit.append(time.perf_counter() - t0)
            to_lease.append(prov.wait_for(job.id) - t0)
        res = {"engine": a.database, "jobs": a.jobs, "load_average": os.getloadavg()}
        for name, xs in (("GET /api/network", base), ("submit", submit),
                         ("submit -> lease", to_lease)):
            res[name] = {"p50_ms": round(pct(xs, 0.5), 2), "p99_ms": round(pct(xs, 0.99), 2),
                         "mean_ms": round(statistics.mean(xs) * 1000, 2)}
            print(f"  {name:18s} p50 {pct(xs, 0.5):7.1f} ms  p99 {pct(xs, 0.99):7.1f} ms")
        ratio = pct(to_lease, 0.5) / max(pct(base, 0.5), 1e-6)
        res["ratio_submit_to_lease_vs_baseline_p50"] = round(ratio, 2)
        print(f"  submit -> lease p50 / baseline p50 = {ratio:.1f}")
        if a.big:
            data = lines(a.big)
            t0 = time.perf_counter()
            d = client.upload(data).digest
            res["big_upload_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            client.submit_job({**SPEC, "shard_size": 1, "deadline": 3600}, d)
            res["big_submit_s"] = round(time.perf_counter() - t0, 2)
            res["ratio_big_submit_vs_upload"] = round(res["big_submit_s"]
                                                      / max(res["big_upload_s"], 1e-3), 1)
            print(f"  one job of {a.big} shards submitted in {res['big_submit_s']} s "
                  f"(its {len(data):,}-byte input uploaded in {res['big_upload_s']} s: "
                  f"{res['ratio_big_submit_vs_upload']}x)")
        print(f"  load average {os.getloadavg()[0]:.1f} (2 cores, shared)")
        prov.stop.set()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        out = OUT.with_name(f"submit-{a.database}.json")
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    finally:
        net.close()
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
