"""Clusters: ``cluster up`` → first Ray task, and the scaling of the embeddings example.

Starts a real coordinator and three provider agents whose lease sandboxes each live in
a network namespace made here (as ``tests/test_cluster_e2e.py`` does; needs root, ``ip``
and bubblewrap); agent i is pinned to core i mod the cores this process may use, so its
lease runs there. With the SDK in this process:

- up → first task: ``Clusters.up(nodes=3)`` (gang lease, every sandbox started, Ray
  head and workers, all nodes alive), then a one-task Ray job submitted through the
  relay until its output is back; ``--runs`` times, p50 (and the split), each cluster
  torn down after;
- scaling: one cluster of three nodes runs ``examples/ray_embeddings.py`` on
  ``examples/sentences.jsonl`` (× ``--repeat``) with ``--shards 1`` and with ``--shards 3``;
  the ratio of the driver's wall times.

    .venv/bin/python bench/bench_clusters.py     # writes bench/results/clusters.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

from tests.netutil import Network  # noqa: E402
from tests.test_cluster_e2e import PRICES, make_namespaces  # noqa: E402

from deai.client.clusters import Clusters  # noqa: E402

OUT = ROOT / "bench" / "results" / "clusters.json"
FIRST = "import ray\nray.init()\nprint('FIRST', ray.get(ray.remote(lambda: 42).remote()))\n"
ENV = {"DEAI_LEASE_GRACE": "20", "DEAI_LEASE_SETTLE": "5", "DEAI_LEASE_TICK": "0.5",
       "DEAI_CLUSTER_TICK": "0.5", "DEAI_LEASE_START_TIMEOUT": "240"}


def submit(api: Clusters, cid: str, folder: Path, argv: list[str]) -> tuple[float, str]:
    out = io.StringIO()
    t0 = time.perf_counter()
    code = api.submit(cid, argv, working_dir=str(folder), out=out.write)
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"job {argv} exited {code}:\n{out.getvalue()[-2000:]}")
    return elapsed, out.getvalue()


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    with make_namespaces(3) as names:
        net = Network(root, heartbeat_timeout=8.0, verify=False)
        net.env.update(ENV)
        net.start_coordinator()
        cores = sorted(os.sched_getaffinity(0))
        try:
            for i, ns in enumerate(names):
                p = net.start_provider(
                    f"node-{i}", 1000, "--models", "bwrap-sandbox", "--lease-prices", PRICES,
                    "--lease-cpus", "1", "--lease-memory-mb", "4096", "--lease-network",
                    "--lease-netns", ns, "--stake", "50000000")
                os.sched_setaffinity(p.p.pid, {cores[i % len(cores)]})
            net.wait_providers(3)
            alice = net.client("alice")
            alice.faucet(10**9)
            api = Clusters(alice)
            job = root / "first"
            job.mkdir()
            (job / "first.py").write_text(FIRST)
            ups, firsts, totals = [], [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                cl = api.up(nodes=3, cpus=1, memory_mb=4096, hours=1, max_price_hour=10**6,
                            timeout=300)
                t_up = time.perf_counter() - t0
                t_first, out = submit(api, cl.id, job, ["python", "first.py"])
                assert "FIRST 42" in out, out
                ups.append(t_up)
                firsts.append(t_first)
                totals.append(t_up + t_first)
                api.down(cl.id)
            cl = api.up(nodes=3, cpus=1, memory_mb=4096, hours=1, max_price_hour=10**6,
                        timeout=300)
            scaling: dict[str, Any] = {}
            for shards in (1, 3):
                secs, out = submit(api, cl.id, ROOT / "examples",
                                   ["python", "ray_embeddings.py", "sentences.jsonl",
                                    "--shards", str(shards), "--repeat", str(args.repeat)])
                report = json.loads(out[out.index("{"):out.rindex("}") + 1])
                scaling[str(shards)] = {"submit_seconds": round(secs, 2), **report}
            api.down(cl.id)
        finally:
            net.close()
    one, three = scaling["1"]["seconds"], scaling["3"]["seconds"]
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
        "cores": len(cores), "runs": args.runs,
        "up_to_first_task_p50_s": round(statistics.median(totals), 2),
        "up_p50_s": round(statistics.median(ups), 2),
        "first_job_p50_s": round(statistics.median(firsts), 2),
        "up_to_first_task_s": [round(x, 2) for x in totals],
        "scaling": scaling, "speedup_1_to_3": round(one / three, 2) if three else None,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=4, help="copies of sentences.jsonl")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        result = run(args, Path(tmp))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
