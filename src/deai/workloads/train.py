"""The training workload: deterministic training with checkpoints, resume and replay.

A shard is a ``core.kinds.train.Payload``. Training runs on the CPU (these
networks are tiny, and a CPU run is bitwise reproducible on another machine
of the same kind) in deterministic mode: one thread, ``torch.use_deterministic_
algorithms(True)``, initial weights from a derived seed, and a data order
drawn per epoch from ``torch.Generator`` seeded with ``derive_seed(seed,
"order", epoch)``. A step therefore depends only on the weights, the
optimizer state and its step number, and a run resumed from any checkpoint
ends with the same bytes as one that never stopped.

Checkpoint file (the final one is also the job's model file): safetensors
with the network's tensors as ``model.<name>``, the optimizer state as
``optim.<param index>.<key>``, and under the ``deai`` metadata key a JSON
history: the step, the chain links before this checkpoint, the loss curve so
far (means over windows of ``ceil(steps / 500)`` steps, plus the open
window's sum and count) and the test accuracy at each checkpoint. Being
inside the file, the history is committed to by the chain like the weights.

At each checkpoint step the workload calls ``ctx.checkpoint(step, bytes,
chain_hash, meta)``; with ``ctx.resume`` it fetches that checkpoint, checks
its chain hash and goes on from there. ``replay`` recomputes one segment for a
verifier.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from deai.core import catalog, checkpoints
from deai.core.errors import DeAIError, InvalidInput, NotFound, UnknownModel
from deai.core.kinds import train_data
from deai.core.kinds.train import LOSS_POINTS, NETS, Payload, derive_seed, parse_payload
from deai.core.money import ceil_div
from deai.workloads import nets
from deai.workloads.base import TaskContext

CKPT_FORMAT = "deai.train.ckpt.v1"
log = logging.getLogger("deai.workloads.train")


class Cancelled(DeAIError):
    """The task was cancelled (job cancelled, lease dropped, provider stopping)."""


@dataclass
class History:
    step: int = 0
    chain: list[checkpoints.Link] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)
    pending: list[float] = field(default_factory=lambda: [0.0, 0])
    acc: list[list[float]] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps({"format": CKPT_FORMAT, "step": self.step,
                           "chain": [ln.to_dict() for ln in self.chain], "loss": self.loss,
                           "pending": self.pending, "acc": self.acc},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> History:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("format") != CKPT_FORMAT:
            raise InvalidInput("checkpoint: not a deai training checkpoint", field="checkpoint")
        try:
            return cls(step=int(d["step"]),
                       chain=[checkpoints.Link.from_dict(x) for x in d["chain"]],
                       loss=[[int(s), float(v)] for s, v in d["loss"]],
                       pending=[float(d["pending"][0]), int(d["pending"][1])],
                       acc=[[int(s), float(v)] for s, v in d["acc"]])
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            raise InvalidInput("checkpoint: malformed history", field="checkpoint") from None


# --- deterministic mode ---------------------------------------------------------------------

_MODE_LOCK = threading.Lock()
_MODE_USERS = 0
_MODE_SAVED: tuple[int, bool] = (1, False)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """One thread and deterministic kernels while any training runs; restored after.

    Both settings are process-wide: a CUDA task running meanwhile in another slot
    of the same process sees them too (cuBLAS then refuses matmuls unless
    ``CUBLAS_WORKSPACE_CONFIG`` is set). Run training in its own worker process
    on a GPU provider with several slots.
    """
    global _MODE_USERS, _MODE_SAVED
    with _MODE_LOCK:
        if _MODE_USERS == 0:
            _MODE_SAVED = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        _MODE_USERS += 1
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        with _MODE_LOCK:
            _MODE_USERS -= 1
            if _MODE_USERS == 0:
                torch.set_num_threads(_MODE_SAVED[0])
                torch.use_deterministic_algorithms(_MODE_SAVED[1])


# --- data -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn data set as float32 x and int64 y, checked against its pinned digest."""
    from sklearn import datasets  # type: ignore[import-untyped]

    b = getattr(datasets, f"load_{name}")()
    x, y = np.asarray(b.data, dtype=np.float32), np.asarray(b.target, dtype=np.int64)
    if train_data.digest(x, y) != train_data.BUNDLED[name].sha256:
        raise DeAIError(f"this provider's copy of {name!r} differs from the network's")
    return x, y


# Rows of a ``core.datasets`` dataset (payload ``dataset: "dataset:<id>"``): packed x and y,
# from whoever runs this task and holds the released key (``provider.datasets``).
EXTERNAL: contextvars.ContextVar[Callable[[Payload], tuple[str, str]] | None] = \
    contextvars.ContextVar("deai_train_external_rows", default=None)


def dataset(p: Payload) -> tuple[np.ndarray, np.ndarray]:
    if p.dataset.startswith("dataset:"):
        rows = EXTERNAL.get()
        if rows is None:
            raise InvalidInput(f"shard: {p.dataset} needs its owner's key, which only a "
                               "leased provider receives", field="shard")
        return train_data.unpack(*rows(p), p.data_info)  # checked against the digest
    if p.dataset == "file":
        if p.x is None or p.y is None:
            raise InvalidInput("shard: a file data set needs x and y", field="shard")
        return train_data.unpack(p.x, p.y, p.data_info)
    if p.dataset not in train_data.BUNDLED or train_data.BUNDLED[p.dataset] != p.data_info:
        raise InvalidInput(f"shard: unknown data set {p.dataset!r}", field="shard")
    return bundled(p.dataset)


# --- one training run -----------------------------------------------------------------------

class Trainer:
    """The model, optimizer and data of one payload; steps are numbered from 1."""

    def __init__(self, p: Payload) -> None:
        self.p = p
        x, y = dataset(p)
        gen = torch.Generator().manual_seed(derive_seed(p.seed, "split"))
        perm = torch.randperm(p.n, generator=gen).numpy()
        n_test = p.n - p.n_train
        test, train = perm[:n_test], perm[n_test:]
        scale = np.abs(x[train]).max(axis=0)
        scale[scale == 0] = 1.0
        x = (x / scale).astype(np.float32)
        self.x_train, self.y_train = torch.from_numpy(x[train]), torch.from_numpy(y[train])
        self.x_test, self.y_test = torch.from_numpy(x[test]), torch.from_numpy(y[test])
        self.net = nets.build(p.arch, p.features, p.classes, derive_seed(p.seed, "init"))
        o = p.optimizer
        params = list(self.net.parameters())
        self.opt: torch.optim.Optimizer
        if o.name == "sgd":
            self.opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                       weight_decay=o.weight_decay, foreach=False)
        else:
            self.opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay,
                                        foreach=False)
        self.log_every = ceil_div(p.steps, LOSS_POINTS)
        self._order: tuple[int, torch.Tensor] | None = None

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step - 1, self.p.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.p.seed, "order", epoch))
            self._order = (epoch, torch.randperm(self.p.n_train, generator=gen))
        idx = self._order[1][i * self.p.batch_size:(i + 1) * self.p.batch_size]
        return self.x_train[idx], self.y_train[idx]

    def run(self, hist: History, end: int, cancelled: Callable[[], bool]) -> None:
        """Train from ``hist.step`` up to and including step ``end``."""
        self.net.train()
        for step in range(hist.step + 1, end + 1):
            if cancelled():
                raise Cancelled(f"cancelled at step {step}")
            xb, yb = self.batch(step)
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.net(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            self.opt.step()
            hist.pending = [hist.pending[0] + float(loss.item()), int(hist.pending[1]) + 1]
            if step % self.log_every == 0 or step == self.p.steps:
                hist.loss.append([step, hist.pending[0] / hist.pending[1]])
                hist.pending = [0.0, 0]
            hist.step = step

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on the held-out test set."""
        self.net.eval()
        with torch.no_grad():
            logits = self.net(self.x_test)
            loss = float(F.cross_entropy(logits, self.y_test).item())
            acc = float((logits.argmax(dim=1) == self.y_test).double().mean().item())
        return acc, loss

    def save(self, hist: History) -> bytes:
        tensors = {f"model.{k}": v.detach().clone().contiguous()
                   for k, v in self.net.state_dict().items()}
        for idx, state in self.opt.state_dict()["state"].items():
            for key, v in state.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = v.detach().clone().contiguous()
        return bytes(st_save(tensors, metadata={"deai": hist.dumps()}))

    def restore(self, data: bytes) -> History:
        hist = History.loads(metadata(data).get("deai", "{}"))
        try:
            tensors = st_load(data)
            self.net.load_state_dict({k[6:]: v for k, v in tensors.items()
                                      if k.startswith("model.")})
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, idx, key = k.split(".", 2)
                    state.setdefault(int(idx), {})[key] = v
            groups = self.opt.state_dict()["param_groups"]
            self.opt.load_state_dict({"state": state, "param_groups": groups})
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InvalidInput(f"checkpoint does not fit the network: {exc}",
                               field="checkpoint") from None
        return hist


def metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its header is JSON after a u64 size)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        meta = header.get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError):
        raise InvalidInput("checkpoint: not a safetensors file", field="checkpoint") from None
    if not isinstance(meta, dict):
        raise InvalidInput("checkpoint: bad metadata", field="checkpoint")
    return {str(k): str(v) for k, v in meta.items()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checkpoint(tr: Trainer, hist: History, genesis: str) -> tuple[bytes, checkpoints.Link]:
    acc, _ = tr.evaluate()
    hist.acc.append([hist.step, acc])
    blob = tr.save(hist)
    return blob, checkpoints.extend(hist.chain, genesis, sha256(blob), hist.step, tr.p.seed)


def train(shard: bytes, ctx: TaskContext | None = None) -> tuple[bytes, int]:
    """Run (or resume) a training shard to the end; return the output JSON and its units."""
    ctx = ctx or TaskContext()
    p = parse_payload(shard)
    genesis = checkpoints.genesis(sha256(shard))
    with deterministic():
        tr = Trainer(p)
        hist = History()
        if ctx.resume:
            hist = _resume(tr, ctx, genesis)
        for end in p.checkpoint_steps():
            if end <= hist.step:
                continue
            tr.run(hist, end, ctx.cancelled)
            blob, ln = _checkpoint(tr, hist, genesis)
            ctx.checkpoint(end, blob, ln.hash, {"start": ln.start, "seed": ln.seed,
                                                "test_accuracy": hist.acc[-1][1]})
            hist.chain.append(ln)
        acc, loss = tr.evaluate()
    units = p.steps * p.step_units
    out = {"format": "deai.train.v1", "model": p.model, "steps": p.steps, "units": units,
           "model_digest": hist.chain[-1].digest,
           "chain": [ln.to_dict() for ln in hist.chain],
           "metrics": {"loss": hist.loss, "test_accuracy": hist.acc,
                       "final_test_accuracy": acc, "final_test_loss": loss}}
    return json.dumps(out, separators=(",", ":")).encode(), units


def _resume(tr: Trainer, ctx: TaskContext, genesis: str) -> History:
    r = ctx.resume or {}
    step, digest, chain_hash = r.get("step"), r.get("digest"), r.get("chain_hash")
    if not isinstance(step, int) or not isinstance(digest, str):
        raise InvalidInput("resume: want {step, digest, chain_hash}", field="resume")
    blob = ctx.fetch(digest)
    if sha256(blob) != digest:
        raise InvalidInput("resume: checkpoint does not match its digest", field="resume")
    hist = tr.restore(blob)
    if hist.step != step:
        raise InvalidInput(f"resume: checkpoint is at step {hist.step}, not {step}",
                           field="resume")
    ln = checkpoints.extend(hist.chain, genesis, digest, step, tr.p.seed)
    if ln.hash != chain_hash:
        raise InvalidInput("resume: chain hash does not follow from the checkpoint",
                           field="resume")
    hist.chain.append(ln)
    log.info("resuming from the checkpoint at step %d of %d", step, tr.p.steps)
    return hist


def replay(payload: bytes, checkpoint: bytes, start_step: int, k: int) -> bytes:
    """Recompute ``k`` steps from the checkpoint at ``start_step`` (``b""`` at step 0) and
    return the checkpoint at ``start_step + k``; an honest claim matches it bitwise."""
    p = parse_payload(payload)
    if k < 1 or start_step + k > p.steps:
        raise InvalidInput(f"k: steps ({start_step}, {start_step + k}] are outside the run",
                           field="k")
    genesis = checkpoints.genesis(sha256(payload))
    with deterministic():
        tr = Trainer(p)
        hist = History()
        if checkpoint:
            hist = tr.restore(checkpoint)
            hist.chain.append(checkpoints.extend(hist.chain, genesis, sha256(checkpoint),
                                                 hist.step, p.seed))
        if hist.step != start_step:
            raise InvalidInput(f"checkpoint is at step {hist.step}, not {start_step}",
                               field="start_step")
        tr.run(hist, start_step + k, lambda: False)
        blob, _ = _checkpoint(tr, hist, genesis)
    return blob


def audit(request: bytes, ctx: TaskContext | None) -> tuple[bytes, int]:
    """Replay the segments an audit asks for, each from its starting checkpoint (fetched
    from the coordinator's blob store), and report the digest each one ends in."""
    if ctx is None:
        raise InvalidInput("an audit needs the blob store to fetch checkpoints", field="shard")
    try:
        req = json.loads(request)
        shard = ctx.fetch(req["shard"])
        segments = [(int(x["start"]), int(x["end"]), str(x["from"])) for x in req["segments"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InvalidInput("malformed audit request", field="shard") from None
    p = parse_payload(shard)
    out = []
    for start, end, origin in segments:
        # The claim names a start this checker may not read (never recorded for the task)
        # or that is no checkpoint of this run: the segment does not replay to what the
        # claim says. Raising made the check fail on every checker instead, with no
        # verdict, and the cheater was paid or waited out. Only the network's errors (a
        # fetch that did not answer) are failures, tried again.
        try:
            start_from = ctx.fetch(origin) if origin else b""
        except (NotFound, KeyError) as exc:
            out.append({"start": start, "end": end,
                        "digest": f"unreplayable: {type(exc).__name__}"})
            continue
        try:
            digest = sha256(replay(shard, start_from, start, end - start))
        except Exception as exc:  # noqa: BLE001 - whatever the bytes make the replay raise
            digest = f"unreplayable: {type(exc).__name__}"
        out.append({"start": start, "end": end, "digest": digest})
    units = sum(e - s for s, e, _ in segments) * p.step_units
    result = {"audit": "deai.train.audit.v1", "segments": out, "step_units": p.step_units}
    return json.dumps(result, separators=(",", ":")).encode(), units


def state_dict_digest(checkpoint: bytes) -> str:
    """sha256 over the model tensors of a checkpoint (names sorted, raw bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(st_load(checkpoint).items()):
        if name.startswith("model."):
            h.update(name.encode() + b"\0" + t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TrainWorkload:
    name = "train"

    def available(self, model: str) -> bool:
        """True for a catalog network when scikit-learn (the bundled data) imports."""
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return False
        return catalog.lookup(model).name in NETS

    def load(self, model: str) -> None:
        info = catalog.lookup(model, workload="train")
        if info.name not in NETS:
            raise UnknownModel(f"model {info.name!r} is not available on this provider",
                               field="model")
        bundled("digits")  # warm: the default data set

    def run(self, model: str, shard: bytes, ctx: TaskContext | None = None
            ) -> tuple[bytes, int]:
        if shard.startswith(b'{"audit"'):
            return audit(shard, ctx)
        if parse_payload(shard).model != catalog.lookup(model, workload="train").name:
            raise InvalidInput("shard: trains another model than the assignment's",
                               field="shard")
        return train(shard, ctx)


WORKLOAD = TrainWorkload()
