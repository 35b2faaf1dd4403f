"""The /v1 gateway's added latency: OpenAI requests through a one-provider local network
against the same model called in-process, measured side by side in one run.

Starts a real coordinator (devnet, verification off: the caller never waits for
checks anyway) and one provider agent offering all-MiniLM-L6-v2 and
SmolLM2-135M-Instruct on one torch thread, as subprocesses on loopback. Then,
alternating, for each workload:

- direct: the workload's own call (``workloads.embeddings.embed``,
  ``workloads.chat.complete``) on the very shard the gateway builds for the
  request, in this process, on one torch thread;
- gateway: ``POST /v1/embeddings`` (one short text) or ``/v1/chat/completions``
  (one short prompt, 8 greedy tokens) over a keep-alive httpx client.

Added latency is the gateway's p50 (p99) minus the direct p50 (p99). Time to
first token: a streamed chat completion, from sending the request to the first
content delta, against a direct decode of one token. Each gateway request's
time is split using the job's records: before the job exists (auth, checks,
blobs), submit + placement, provider overhead (wake-up, delivery, download,
upload, submit; the assignment's lease to its result minus its compute time),
compute, and result to response.

    .venv/bin/python bench/bench_gateway.py     # writes bench/results/gateway.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

import httpx  # noqa: E402
from tests.netutil import Network  # noqa: E402

from deai.core import batch, kinds  # noqa: E402

OUT = ROOT / "bench" / "results" / "gateway.json"
EMB, CHAT = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"
TEXT = "The quick brown fox jumps over the lazy dog."
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def shard_of(kind: str, body: dict[str, Any]) -> bytes:
    k = kinds.get(kind)
    spec = k.parse_spec({"kind": kind, "model": body["model"], "max_price": 0})
    url = "/v1/embeddings" if kind == "embeddings" else "/v1/chat/completions"
    line = batch.dumps({"custom_id": "bench", "url": url, "body": body})
    return k.split(spec, line)[0].payload


def breakdown(db: Path, samples: list[tuple[str, float, float]]) -> dict[str, float]:
    """Median of each phase, in ms, from the jobs' own records."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    phases: dict[str, list[float]] = {"before_job": [], "submit_and_place": [],
                                      "provider_overhead": [], "compute": [],
                                      "result_to_response": []}
    for job_id, t0, t1 in samples:
        row = con.execute("select j.created_at, a.leased_at, a.submitted_at, a.seconds from jobs"
                          " j join assignments a on a.job_id = j.id where j.id = ? and "
                          "a.role = 'primary'", (job_id,)).fetchone()
        if row is None:
            continue
        created, leased, submitted, seconds = row
        phases["before_job"].append(created - t0)
        phases["submit_and_place"].append(leased - created)
        phases["provider_overhead"].append(submitted - leased - seconds)
        phases["compute"].append(seconds)
        phases["result_to_response"].append(t1 - submitted)
    con.close()
    return {k: round(statistics.median(v) * 1000, 2) for k, v in phases.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60, help="requests per workload and side")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from deai.workloads import chat, embeddings

    root = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    net = Network(root, verify=False)
    net.start_coordinator()
    try:
        net.start_provider("bench", 1000, "--models", f"{EMB},{CHAT}")
        client = net.client("bench-client")
        client.faucet(10**12)
        key = client.request("POST", "/api/api-keys", json_body={"name": "bench"}).json()["key"]
        net.wait_providers(1)
        http = httpx.Client(base_url=f"{net.url}/v1", timeout=120,
                            headers={"Authorization": f"Bearer {key}"})
        emb_body = {"model": EMB, "input": TEXT}
        chat_body = {"model": CHAT, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
        cases = {
            "embeddings": ("/embeddings", emb_body,
                           lambda sh: embeddings.embed(EMB, sh), shard_of("embeddings",
                                                                          emb_body)),
            "chat": ("/chat/completions", chat_body, lambda sh: chat.complete(CHAT, sh),
                     shard_of("chat", chat_body)),
        }
        results: dict[str, Any] = {}
        for name, (path, body, direct, shard) in cases.items():
            for _ in range(3):  # warm both sides
                direct(shard)
                http.post(path, json=body).raise_for_status()
            d, g, samples = [], [], []
            for _ in range(a.n):
                t = time.perf_counter()
                direct(shard)
                d.append(time.perf_counter() - t)
                t0, t = time.time(), time.perf_counter()
                r = http.post(path, json=body)
                g.append(time.perf_counter() - t)
                r.raise_for_status()
                samples.append((r.headers["x-deai-job"], t0, time.time()))
            results[name] = {
                "direct_p50_ms": round(pct(d, 0.5) * 1000, 2),
                "direct_p99_ms": round(pct(d, 0.99) * 1000, 2),
                "gateway_p50_ms": round(pct(g, 0.5) * 1000, 2),
                "gateway_p99_ms": round(pct(g, 0.99) * 1000, 2),
                "added_p50_ms": round((pct(g, 0.5) - pct(d, 0.5)) * 1000, 2),
                "added_p99_ms": round((pct(g, 0.99) - pct(d, 0.99)) * 1000, 2),
                "breakdown_p50_ms": breakdown(root / "coordinator" / "deai.sqlite3", samples),
            }
            print(name, json.dumps(results[name]), flush=True)

        one = shard_of("chat", {**chat_body, "max_tokens": 1})
        ttft, direct1 = [], []
        for _ in range(max(10, a.n // 3)):
            t = time.perf_counter()
            chat.complete(CHAT, one)
            direct1.append(time.perf_counter() - t)
            t = time.perf_counter()
            first = None
            with http.stream("POST", "/chat/completions", json={**chat_body,
                                                                "stream": True}) as r:
                for raw in r.iter_lines():
                    if raw.startswith("data: {") and first is None:
                        delta = json.loads(raw[6:])["choices"]
                        if delta and delta[0]["delta"].get("content"):
                            first = time.perf_counter() - t
            ttft.append(first if first is not None else float("nan"))
        results["stream"] = {
            "ttft_p50_ms": round(pct(ttft, 0.5) * 1000, 2),
            "ttft_p99_ms": round(pct(ttft, 0.99) * 1000, 2),
            "direct_one_token_p50_ms": round(pct(direct1, 0.5) * 1000, 2),
        }
        print("stream", json.dumps(results["stream"]), flush=True)
        results["machine"] = {"python": platform.python_version(), "cpus": _cpus(),
                              "n": a.n}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        net.close()
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
