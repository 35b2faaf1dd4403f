"""The cost of sealing a job against the unsealed job of the same size, in one run.

For one embeddings job of ``--inputs`` texts (examples/sentences.jsonl, cycled),
``--shard-size`` a shard, sealed to ``--parties`` parties plus the owner, it times
each step sealing adds, and the work an unsealed job does anyway:

- unsealed: the split the coordinator makes, plus the model run of every shard
  (``workloads.embeddings``, the real all-MiniLM-L6-v2 on this machine's CPU);
- sealing: the client's split, key wrapping (one SealedBox per party) and shard
  encryption; each provider's unwrap and decryption of its shard; the output's
  encryption; the owner's unwrap, decryption and assembly of the results.

It prints each figure, the ratio sealing / unsealed job, and the size of what is
stored (ciphertext envelopes against plaintext). Best of ``--repeat`` runs for
each crypto step; the model run is timed once per shard after a warm-up.

    .venv/bin/python bench/bench_sealed.py --inputs 256 --shard-size 64 --parties 4

``--train``: a training job instead (the digits set, mlp-digits, ``--epochs``,
a checkpoint every ``--checkpoint-every`` steps). Unsealed: the training run
with its checkpoints; sealing: the client's seal, the provider's unwrap and
decryption of the payload, encryption of every checkpoint and of the output,
and the owner's decryption of the output and of the final model.

    .venv/bin/python bench/bench_sealed.py --train --epochs 4 --checkpoint-every 25
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deai.client import sealed as crypto
from deai.client.keys import Identity
from deai.core import kinds, sealed, specs

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"


def data_of(n: int) -> bytes:
    src = (ROOT / "examples" / "sentences.jsonl").read_bytes().splitlines()
    out = []
    for i in range(n):
        obj = json.loads(src[i % len(src)])
        obj["custom_id"] = f"x-{i:06d}"
        out.append(json.dumps(obj).encode())
    return b"\n".join(out) + b"\n"


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def train(a: argparse.Namespace) -> None:
    from deai.workloads import train as wl  # loads torch

    owner = Identity.generate("owner")
    who = [Identity.generate(f"p{i}") for i in range(a.parties)]
    base = {"kind": "train", "model": "mlp-digits", "max_price": 1000, "dataset": "digits",
            "epochs": a.epochs, "batch_size": 32, "checkpoint_every": a.checkpoint_every}
    data = b'{"dataset": "digits"}'
    spec = specs.parse_spec({**base, "sealed": True, "sealed_for": [p.id for p in who]})
    t0 = time.perf_counter()
    (payload,) = [sh.payload for sh in kinds.get("train").split(specs.parse_spec(base), data)]
    ckpts: list[tuple[int, bytes]] = []
    output, units = wl.train(payload, wl.TaskContext(
        checkpoint=lambda step, blob, h, meta: ckpts.append((step, blob))))
    t_unsealed = time.perf_counter() - t0

    def sealing() -> bytes:
        si = crypto.seal_input(spec, data, owner.id)
        env = sealed.parse_envelope(si.shards[0][0], "input")
        key = crypto.open_key(env.keys, who[0])
        crypto.open_shard(key, env, 0)
        blobs = [crypto.seal_checkpoint(key, env.seal, 0, step, b) for step, b in ckpts]
        out = crypto.seal_output(key, env.seal, 0, output, units)
        mine = crypto.open_key(si.keys, owner)
        crypto.open_output(mine, sealed.parse_envelope(out), env.seal, 0)
        return crypto.open_checkpoint(mine, sealed.parse_envelope(blobs[-1]), env.seal, 0)

    t_sealing, model = best(sealing, a.repeat)
    assert model == ckpts[-1][1]
    plain = sum(len(b) for _, b in ckpts)
    print(f"training job: mlp-digits on digits, {a.epochs} epochs, {len(ckpts)} checkpoints "
          f"of {len(ckpts[-1][1])} bytes, {a.parties} parties + owner")
    print(f"unsealed job: {t_unsealed * 1e3:9.1f} ms; sealing: {t_sealing * 1e3:8.2f} ms")
    print(f"ratio sealing / unsealed job: {t_sealing / t_unsealed:.4f} "
          f"({100 * t_sealing / t_unsealed:.2f} %); checkpoint bytes {plain}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--parties", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--checkpoint-every", type=int, default=25)
    a = ap.parse_args()
    if a.train:
        train(a)
        return

    owner = Identity.generate("owner")
    who = [Identity.generate(f"p{i}") for i in range(a.parties)]
    base = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "shard_size": a.shard_size}
    plain_spec = specs.parse_spec(base)
    spec = specs.parse_spec({**base, "sealed": True, "sealed_for": [p.id for p in who]})
    data = data_of(a.inputs)
    kind = kinds.get("embeddings")

    from deai.workloads import embeddings  # loads torch

    t_split, shards = best(lambda: kind.split(plain_spec, data), a.repeat)
    embeddings.WORKLOAD.run(MODEL, shards[0].payload)  # warm-up: model load, first pass
    t0 = time.perf_counter()
    outputs = [embeddings.WORKLOAD.run(MODEL, sh.payload)[0] for sh in shards]
    t_run = time.perf_counter() - t0
    t_unsealed = t_split + t_run

    t_seal, si = best(lambda: crypto.seal_input(spec, data, owner.id), a.repeat)
    envs = [sealed.parse_envelope(blob, "input") for blob, _, _ in si.shards]

    def provider_side() -> list[bytes]:
        out = []
        for i, env in enumerate(envs):  # each shard's provider unwraps and decrypts
            key = crypto.open_key(env.keys, who[i % len(who)])
            crypto.open_shard(key, env, i)
            out.append(crypto.seal_output(key, env.seal, i, outputs[i], shards[i].max_units))
        return out

    t_provider, sealed_outputs = best(provider_side, a.repeat)
    head = sealed.dumps({"deai_sealed": sealed.MAGIC, "part": "results", "seal": si.seal,
                         "keys": si.keys})
    results = b"".join(x + b"\n" for x in (head, *sealed_outputs))

    def owner_side() -> list[bytes]:  # what open_results adds to the unsealed assembly
        key = crypto.open_key(si.keys, owner)
        return [crypto.open_output(key, sealed.parse_envelope(line), si.seal, i)
                for i, line in enumerate(results.splitlines()[1:])]

    t_open, opened = best(owner_side, a.repeat)
    assert opened == outputs
    t_sealing = t_seal + t_provider + t_open

    plain_bytes = sum(len(sh.payload) for sh in shards) + sum(len(o) for o in outputs)
    sealed_bytes = (sum(len(b) for b, _, _ in si.shards) + len(si.manifest().to_bytes())
                    + len(results))
    print(f"job: {a.inputs} inputs, {len(shards)} shards of {a.shard_size}, "
          f"{a.parties} parties + owner")
    print(f"unsealed job:  split {t_split * 1e3:8.2f} ms + model {t_run * 1e3:9.1f} ms "
          f"= {t_unsealed * 1e3:9.1f} ms")
    print(f"sealing:       client seal {t_seal * 1e3:7.2f} ms, providers unwrap+decrypt+"
          f"encrypt {t_provider * 1e3:7.2f} ms, owner open {t_open * 1e3:7.2f} ms "
          f"= {t_sealing * 1e3:8.2f} ms")
    print(f"ratio sealing / unsealed job: {t_sealing / t_unsealed:.4f} "
          f"({100 * t_sealing / t_unsealed:.2f} %)")
    print(f"stored bytes sealed / plaintext: {sealed_bytes / plain_bytes:.3f} "
          f"({sealed_bytes} / {plain_bytes})")


if __name__ == "__main__":
    main()
