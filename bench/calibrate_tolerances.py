"""Calibrate the verification tolerances: honest variation against cheap approximations.

For each kind with a tolerance (embeddings: cosine distance of vectors; chat:
the greedy margin of a teacher-forced re-scoring pass), with the real models
(all-MiniLM-L6-v2, SmolLM2-135M-Instruct) and the workload code, measures the
comparator statistic for

- honest pairs: the same process repeated, torch threads 1 vs 2, a second
  process, and a second process whose kernels are restricted to an older
  instruction set (``ATEN_CPU_CAPABILITY=default``, ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``,
  ``ONEDNN_MAX_CPU_ISA=SSE41``: another CPU family of the same ``cpu`` class);
- cheap approximations: the model cast to bf16 or fp16, int8 dynamic
  quantisation, a model with one layer dropped, and (embeddings) honest vectors
  rotated or perturbed by a known amount,

and prints max and p99 of each, with the ratio of each cheat's smallest value to
the worst honest one, then writes ``bench/results/calibration.json``. A few
minutes on two cores::

    .venv/bin/python bench/calibrate_tolerances.py [--texts 48] [--prompts 6]

GPU classes are not measured here (no GPU on this machine); run the same script
on one to add them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "calibration.json"
EMB, CHAT = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"
OLD_ISA = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
           "ONEDNN_MAX_CPU_ISA": "SSE41"}
PROMPTS = ["Name three uses of copper.", "Explain what a hash function is in one sentence.",
           "Write a haiku about autumn rain.", "What is the capital of Australia, and why?",
           "Give two tips for learning a new language.", "Describe a cat to someone who has "
           "never seen one.", "List the planets of the solar system.",
           "Why is the sky blue?"]


def texts(n: int) -> list[str]:
    lines = (ROOT / "examples" / "sentences.jsonl").read_text().splitlines()
    out = [json.loads(x)["body"]["input"] for x in lines[:n]]
    # A few long inputs too: rounding accumulates with sequence length.
    out[: n // 8] = [" ".join(out[i:i + 8]) for i in range(0, n // 8 * 8, 8)][: n // 8]
    return out


def cos_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row ``core.kinds.embeddings.distance`` (cosine distance, norm-aware) in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return ((a - b) ** 2).sum(1) / (2 * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def honest_embed(tx: list[str]) -> np.ndarray:
    from deai.workloads import embeddings

    blob = b"".join(json.dumps({"custom_id": f"t{i}", "input": [t]}).encode() + b"\n"
                    for i, t in enumerate(tx))
    out, _ = embeddings.embed(EMB, blob)
    return np.array([json.loads(x)["embeddings"][0] for x in out.splitlines()], np.float32)


def chat_requests(n: int, max_tokens: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": p}],
             "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0}
            for i, p in enumerate(PROMPTS[:n])]


def generate(reqs: list[dict[str, Any]], entry: Any = None) -> list[list[int]]:
    from deai.workloads import chat

    e = entry or chat._loaded(CHAT)
    return [chat._decode(e, chat.Request(**r))["token_ids"] for r in reqs]


def rescore(reqs: list[dict[str, Any]], claims: list[list[int]], entry: Any = None
            ) -> list[list[float]]:
    """Margins of each claimed token below the top logit (the checker's pass)."""
    import torch

    from deai.workloads import chat

    if entry is None:
        return [chat.rescore(CHAT, r["messages"], c) for r, c in zip(reqs, claims, strict=True)]
    out = []
    for r, c in zip(reqs, claims, strict=True):
        ids = chat.prompt_ids(entry, r["messages"])
        with torch.inference_mode():
            lg = entry.model(input_ids=torch.tensor([ids + c]), use_cache=False).logits[0]
        steps = lg.float()[len(ids) - 1:len(ids) - 1 + len(c)]
        m = steps.max(-1).values - steps.gather(1, torch.tensor(c)[:, None])[:, 0]
        out.append([float(x) for x in m])
    return out


def variant(kind: str) -> Any:
    """A cheap copy of the chat model: bf16, fp16, int8 dynamic or one layer fewer."""
    import dataclasses
    import threading

    import torch

    from deai.workloads import chat

    base = chat._loaded(CHAT)
    m = copy.deepcopy(base.model)
    if kind in ("bf16", "fp16"):
        m = m.to(torch.bfloat16 if kind == "bf16" else torch.float16)
    elif kind == "int8":
        m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    elif kind == "drop-layer":
        m.model.layers = m.model.layers[:-1]
        m.config.num_hidden_layers -= 1
    return dataclasses.replace(base, model=m, lock=threading.Lock())


def worker(args: argparse.Namespace) -> None:
    """A second process: honest embeddings and honest re-scoring of the given claims."""
    import torch

    torch.set_num_threads(args.threads)
    job = json.loads(Path(args.worker).read_text())
    res = {"emb": honest_embed(job["texts"]).tolist(),
           "margins": rescore(job["reqs"], job["claims"]) if job["claims"] else []}
    Path(args.worker).write_text(json.dumps(res))


def stats(x: np.ndarray | list[float]) -> dict[str, float]:
    a = np.asarray(x, dtype=np.float64)
    return {"max": float(a.max()), "p99": float(np.percentile(a, 99)),
            "median": float(np.median(a)), "min": float(a.min()), "n": int(a.size)}


def spawn(path: Path, env: dict[str, str], threads: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--worker", str(path), "--threads",
                             str(threads)], env={**os.environ, **env})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--kinds", default="embeddings,chat", help="embeddings, chat or both")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch

    from deai.provider import cheats

    t0 = time.time()
    torch.set_num_threads(2)
    chat_on = "chat" in args.kinds.split(",")
    tx = texts(args.texts)
    reqs = chat_requests(args.prompts, args.max_tokens) if chat_on else []
    e2 = honest_embed(tx)
    claims = generate(reqs)  # the honest primary's greedy tokens (fp32, 2 threads)
    jobs = {}
    for name, env in (("process", {}), ("process-old-isa", OLD_ISA)):
        p = args.out.parent / f".calib-{name}-{args.kinds.replace(',', '-')}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"texts": tx, "reqs": reqs, "claims": claims}))
        jobs[name] = (p, spawn(p, env, 2))

    emb: dict[str, dict[str, Any]] = {"honest": {}, "cheat": {}}
    chat_h: dict[str, Any] = {}
    chat_c: dict[str, Any] = {}
    emb["honest"]["same process"] = stats(cos_dist(e2, honest_embed(tx)))
    m2 = rescore(reqs, claims) if chat_on else []
    torch.set_num_threads(1)
    e1 = honest_embed(tx)
    m1 = rescore(reqs, claims) if chat_on else []
    claims1 = generate(reqs) if chat_on else []
    torch.set_num_threads(2)
    emb["honest"]["threads 1 vs 2"] = stats(cos_dist(e2, e1))
    flat = lambda ms: [x for m in ms for x in m]  # noqa: E731
    dmargin = lambda a, b: [abs(p - q) for p, q in zip(flat(a), flat(b), strict=True)]  # noqa: E731
    if chat_on:
        chat_h["threads 1 vs 2"] = {"margin": stats(flat(m1)),
                                    "check_delta": stats(dmargin(m1, m2)),
                                    "same_tokens": claims1 == claims}
        chat_h["same process"] = {"margin": stats(flat(m2))}

    for dt in ("bf16", "fp16"):
        try:
            t = time.time()
            v = cheats.approx_embed(EMB, tx, dt)
            emb["cheat"][dt] = {**stats(cos_dist(e2, v)), "seconds": time.time() - t}
        except Exception as exc:  # fp16 kernels are missing on some CPUs
            emb["cheat"][dt] = {"error": f"{type(exc).__name__}: {exc}"}
    from deai.workloads import embeddings

    st = embeddings.load_model(EMB)
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(st), {torch.nn.Linear},
                                               dtype=torch.qint8)
    emb["cheat"]["int8 dynamic"] = stats(cos_dist(e2, q.encode(tx, convert_to_numpy=True)))
    short = copy.deepcopy(st)
    short[0].auto_model.encoder.layer = short[0].auto_model.encoder.layer[:5]
    emb["cheat"]["5 of 6 layers"] = stats(cos_dist(e2, short.encode(tx, convert_to_numpy=True)))
    rng = np.random.default_rng(0)
    for eps in (1e-2, 1e-3, 1e-4):
        noise = rng.standard_normal(e2.shape) * eps * np.abs(e2).mean()
        emb["cheat"][f"perturbed {eps:g} rel."] = stats(cos_dist(e2, e2 + noise))
    for theta in (0.042, 1e-2, 1e-3):  # rotation by theta radians in a random plane
        w = rng.standard_normal(e2.shape)
        w -= (w * e2).sum(1, keepdims=True) / (e2 * e2).sum(1, keepdims=True) * e2
        w *= np.linalg.norm(e2, axis=1, keepdims=True) / np.linalg.norm(w, axis=1, keepdims=True)
        emb["cheat"][f"rotated {theta:g} rad"] = stats(cos_dist(e2, np.cos(theta) * e2
                                                                + np.sin(theta) * w))

    for kind in ("bf16", "fp16", "int8", "drop-layer") if chat_on else ():
        try:
            t = time.time()
            cv = variant(kind)
            cc = generate(reqs, cv)  # the cheater's claims, re-scored by an honest checker
            mc = rescore(reqs, cc)
            diverged = [c != h for c, h in zip(cc, claims, strict=True)]
            # A cheating checker: re-scores the honest claims with the cheap model.
            dchk = dmargin(rescore(reqs, claims, cv), m2)
            chat_c[kind] = {"lines_diverged": sum(diverged), "lines": len(cc),
                            "line_max_margin": [max(m, default=0.0) for m in mc],
                            "margin": stats(flat(mc)), "checker_delta": stats(dchk),
                            "seconds": time.time() - t}
        except Exception as exc:
            chat_c[kind] = {"error": f"{type(exc).__name__}: {exc}"}

    for name, (p, proc) in jobs.items():
        if proc.wait() != 0:
            emb["honest"][name] = {"error": f"worker exited {proc.returncode}"}
            continue
        res = json.loads(p.read_text())
        p.unlink()
        emb["honest"][name] = stats(cos_dist(e2, np.array(res["emb"], np.float32)))
        if chat_on:
            chat_h[name] = {"margin": stats(flat(res["margins"])),
                            "check_delta": stats(dmargin(res["margins"], m2))}

    report = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "cpus": os.cpu_count(), "class": "cpu"},
              "command": "python bench/calibrate_tolerances.py " + " ".join(sys.argv[1:]),
              "embeddings": emb, "chat": {"honest": chat_h, "cheat": chat_c},
              "seconds": time.time() - t0}
    show(report)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def show(r: dict[str, Any]) -> None:
    emb = r["embeddings"]
    worst = max([v["max"] for v in emb["honest"].values() if "max" in v] + [1e-300])
    print(f"embeddings: cosine distance per vector ({EMB}); worst honest {worst:.3g}")
    for group in ("honest", "cheat"):
        for name, v in emb[group].items():
            if "max" not in v:
                print(f"  {group:6} {name:24} {v.get('error')}")
                continue
            print(f"  {group:6} {name:24} max {v['max']:.3g}  p99 {v['p99']:.3g}  "
                  f"min {v['min']:.3g}  min/worst-honest {v['min'] / worst:.3g}")
    ch = r["chat"]
    print(f"chat: greedy margins of a teacher-forced re-score ({CHAT})")
    for name, v in ch["honest"].items():
        d = v.get("check_delta")
        print(f"  honest {name:24} margin max {v['margin']['max']:.3g}"
              + (f"  |checker delta| max {d['max']:.3g}" if d else ""))
    for name, v in ch["cheat"].items():
        if "error" in v:
            print(f"  cheat  {name:24} {v['error']}")
            continue
        caught = [m for m in v["line_max_margin"] if m > 0]
        print(f"  cheat  {name:24} lines diverged {v['lines_diverged']}/{v['lines']}  "
              f"line max margins {[f'{m:.3g}' for m in v['line_max_margin']]}  "
              f"smallest nonzero {min(caught, default=0):.3g}  "
              f"cheating-checker |delta| max {v['checker_delta']['max']:.3g}")


if __name__ == "__main__":
    sys.exit(main())
