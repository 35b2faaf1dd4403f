"""Workload throughput through a one-provider local network against the same model in-process.

Starts a real coordinator (devnet, verification off: this measures the
network's plumbing, not its checks) and one provider agent offering
all-MiniLM-L6-v2 and SmolLM2-135M-Instruct, both on one torch thread, as
subprocesses on loopback. Then, alternating rounds in one run:

- embeddings: 600 texts (the 300 example sentences twice) as a job with
  shards of 300, against ``SentenceTransformer.encode`` on the same texts
  (batch 64, one thread) in this process;
- chat: 4 greedy prompts of up to 16 new tokens as a job with shards of 2, against
  the workload's own decode (``workloads.chat.complete``) on the same shards in
  this process; Hugging Face ``generate`` on the same prompts is timed too, to
  show the decode loop itself is not the slow part.

The network is timed two ways: from submitting the job until it is completed
("job"), and from uploading the input until the results file is downloaded
("end to end"); its status is not polled during the first 80% of the direct
run's time, so polling does not take CPU from the provider (it can only make
the network look slower). Direct runs are timed around the model call alone, and their
CPU time is recorded too: CPU/wall well under 1 means other work on the
machine took the core, which hits both sides alike only on average. Rounds
alternate direct and network runs; the best of ``--rounds`` counts for each.

    .venv/bin/python bench/bench_workloads.py        # writes bench/results/workloads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

from tests.netutil import Network  # noqa: E402

from deai.client.sdk import Client  # noqa: E402
from deai.core.kinds.chat import ChatKind  # noqa: E402

OUT = ROOT / "bench" / "results" / "workloads.json"
EMB, CHAT = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"
EMB_SHARD, CHAT_SHARD, CHAT_TOKENS = 300, 2, 16
PROMPTS = ["What is the capital of France?", "Why is the sky blue?",
           "Describe rain in one sentence.", "Suggest a name for a dog."]


def emb_input() -> tuple[bytes, list[str]]:
    rows = [json.loads(x) for x in (ROOT / "examples" / "sentences.jsonl").read_bytes()
            .splitlines() if x.strip()]
    lines, texts = [], []
    for rep in ("a", "b"):
        for r in rows:
            lines.append({**r, "custom_id": f"{r['custom_id']}-{rep}"})
            texts.append(r["body"]["input"])
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines), texts


def chat_input() -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": p}], "max_tokens": CHAT_TOKENS,
                 "temperature": 0}}).encode() + b"\n" for i, p in enumerate(PROMPTS))


def through_network(c: Client, spec: dict[str, Any], data: bytes, quiet: float = 0.0
                    ) -> tuple[float, float, bytes]:
    """(job seconds, end-to-end seconds, results) for one job.

    Status polls cost the coordinator CPU that the provider would otherwise
    have on a small machine, so none are made for the first ``quiet`` seconds
    (less than the job can take): waiting can only make the job look slower.
    """
    t0 = time.perf_counter()
    digest = c.upload(data).digest
    t1 = time.perf_counter()
    job = c.submit_job(spec, digest)
    time.sleep(quiet)
    while (st := c.job(job.id).status) not in ("completed", "failed", "cancelled"):
        time.sleep(0.02)
    t2 = time.perf_counter()
    if st != "completed":
        raise RuntimeError(f"job {job.id} {st}: {c.job(job.id).error}")
    results = c.results(job.id)
    return t2 - t1, time.perf_counter() - t0, results


CPU_SHARE: list[float] = []


TASK_LINE = re.compile(rb"task \S+: \d+ units in ([0-9.]+) s")


def task_seconds(log: Path, start: int) -> tuple[float, int]:
    """Seconds the provider spent in its workload for the tasks logged after byte ``start``."""
    data = log.read_bytes()
    return sum(float(m) for m in TASK_LINE.findall(data[start:])), len(data)


def timed(fn: Any) -> tuple[float, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall = time.perf_counter() - t0
    CPU_SHARE.append((time.process_time() - c0) / wall)
    return wall, out


def bench(rounds: int) -> dict[str, Any]:
    import torch

    from deai.workloads import chat, embeddings

    torch.set_num_threads(1)  # as the provider runs (--threads 1)
    emb_data, texts = emb_input()
    cdata = chat_input()
    cspec_d = {"kind": "chat", "model": CHAT, "max_price": 1000, "shard_size": CHAT_SHARD}
    cshards = ChatKind().split(ChatKind().parse_spec(cspec_d), cdata)
    espec = {"kind": "embeddings", "model": EMB, "max_price": 2000, "shard_size": EMB_SHARD}
    st = embeddings.load_model(EMB)
    entry = chat._loaded(CHAT)

    with tempfile.TemporaryDirectory(prefix="deai-bench-") as tmp:
        net = Network(Path(tmp), verify=False)
        try:
            net.start_coordinator()
            net.start_provider("bench", 1000, "--models", f"{EMB},{CHAT}")
            net.wait_providers(1)
            c = net.client("bench-client")
            c.faucet(10**12)
            warm = b"\n".join(emb_data.splitlines()[:20]) + b"\n"
            through_network(c, {**espec, "shard_size": 10}, warm)  # warm the path
            rows: dict[str, list[float]] = {k: [] for k in (
                "emb_direct", "emb_job", "emb_e2e", "emb_provider", "chat_direct", "chat_job",
                "chat_e2e", "chat_provider", "chat_generate")}
            log = net.providers["bench"].log_path
            mark = log.stat().st_size
            chat_tokens = 0
            for _ in range(rounds):
                dt, _ = timed(lambda: st.encode(texts, batch_size=embeddings.BATCH_SIZE,
                                                normalize_embeddings=False,
                                                show_progress_bar=False))
                rows["emb_direct"].append(dt)
                job_s, e2e_s, _ = through_network(c, espec, emb_data, quiet=0.8 * dt)
                rows["emb_job"].append(job_s)
                rows["emb_e2e"].append(e2e_s)
                time.sleep(0.5)  # the provider logs a task after submitting it
                spent, mark = task_seconds(log, mark)
                rows["emb_provider"].append(spent)

                dt, outs = timed(lambda: [chat.complete(CHAT, sh.payload)[0] for sh in cshards])
                rows["chat_direct"].append(dt)
                direct = [json.loads(x) for o in outs for x in o.splitlines()]
                job_s, e2e_s, res = through_network(c, cspec_d, cdata, quiet=0.8 * dt)
                rows["chat_job"].append(job_s)
                rows["chat_e2e"].append(e2e_s)
                time.sleep(0.5)
                spent, mark = task_seconds(log, mark)
                rows["chat_provider"].append(spent)
                got = [json.loads(x)["response"]["body"] for x in res.splitlines()]
                chat_tokens = sum(b["usage"]["completion_tokens"] for b in got)
                assert chat_tokens == sum(d["completion_tokens"] for d in direct)
                assert [b["choices"][0]["message"]["content"] for b in got] == [
                    d["text"] for d in direct], "network and direct greedy outputs differ"
                rows["chat_generate"].append(hf_generate(entry))
        finally:
            net.close()

    best = {k: min(v) for k, v in rows.items()}
    for kind in ("emb", "chat"):  # the provider's own time in the fastest network round
        jobs = rows[f"{kind}_job"]
        best[f"{kind}_provider"] = rows[f"{kind}_provider"][jobs.index(min(jobs))]
    n = len(texts)
    emb = {"items": n, "shard_size": EMB_SHARD,
           "direct_items_per_s": n / best["emb_direct"],
           "job_items_per_s": n / best["emb_job"], "e2e_items_per_s": n / best["emb_e2e"]}
    emb["ratio_job"] = emb["job_items_per_s"] / emb["direct_items_per_s"]
    emb["ratio_e2e"] = emb["e2e_items_per_s"] / emb["direct_items_per_s"]
    emb["provider_workload_share_of_job"] = best["emb_provider"] / best["emb_job"]
    ch = {"prompts": len(PROMPTS), "shard_size": CHAT_SHARD, "max_tokens": CHAT_TOKENS,
          "completion_tokens": chat_tokens,
          "direct_tokens_per_s": chat_tokens / best["chat_direct"],
          "job_tokens_per_s": chat_tokens / best["chat_job"],
          "e2e_tokens_per_s": chat_tokens / best["chat_e2e"],
          "hf_generate_tokens_per_s": chat_tokens / best["chat_generate"]}
    ch["ratio_job"] = ch["job_tokens_per_s"] / ch["direct_tokens_per_s"]
    ch["ratio_e2e"] = ch["e2e_tokens_per_s"] / ch["direct_tokens_per_s"]
    ch["provider_workload_share_of_job"] = best["chat_provider"] / best["chat_job"]
    return {"embeddings": emb, "chat": ch, "rounds": rounds,
            "direct_cpu_per_wall": [round(x, 2) for x in CPU_SHARE],
            "seconds": {k: [round(x, 3) for x in v] for k, v in rows.items()}}


def hf_generate(entry: Any) -> float:
    """Seconds for Hugging Face ``generate`` (greedy) on the bench prompts, one at a time."""
    import torch

    from deai.workloads import chat

    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([chat.prompt_ids(entry, [{"role": "user", "content": p}])])
            entry.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=CHAT_TOKENS,
                                 eos_token_id=sorted(entry.stop_ids),
                                 pad_token_id=entry.tokenizer.pad_token_id)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = bench(args.rounds)
    e, ch = res["embeddings"], res["chat"]
    print(f"embeddings  {e['items']} texts, shards of {e['shard_size']}")
    print(f"  direct      {e['direct_items_per_s']:8.1f} items/s")
    print(f"  network job {e['job_items_per_s']:8.1f} items/s   ratio {e['ratio_job']:.2f}")
    print(f"  end to end  {e['e2e_items_per_s']:8.1f} items/s   ratio {e['ratio_e2e']:.2f}")
    print(f"  the provider's workload took {e['provider_workload_share_of_job']:.0%} of the job")
    print(f"chat        {ch['prompts']} prompts x {ch['max_tokens']} tokens, shards of "
          f"{ch['shard_size']} ({ch['completion_tokens']} tokens)")
    print(f"  direct      {ch['direct_tokens_per_s']:8.1f} tokens/s "
          f"(HF generate {ch['hf_generate_tokens_per_s']:.1f})")
    print(f"  network job {ch['job_tokens_per_s']:8.1f} tokens/s  ratio {ch['ratio_job']:.2f}")
    print(f"  end to end  {ch['e2e_tokens_per_s']:8.1f} tokens/s  ratio {ch['ratio_e2e']:.2f}")
    print(f"  the provider's workload took {ch['provider_workload_share_of_job']:.0%} of the job")
    res["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                      "python": platform.python_version(),
                      "load_avg": [round(x, 2) for x in os.getloadavg()]}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"direct runs' CPU/wall: {min(CPU_SHARE):.2f}-{max(CPU_SHARE):.2f}; "
          f"load average {res['machine']['load_avg'][0]}")
    print(f"wrote {OUT.relative_to(ROOT)} in {res['wall_s']} s")


if __name__ == "__main__":
    main()
