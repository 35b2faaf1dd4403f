"""Training jobs: a small network trained deterministically, with a checkpoint hash chain.

Spec::

    kind: train
    model: mlp-digits          # or cnn-digits (needs 64 = 8×8 features)
    max_price: 1000            # micro-units per 1,000 step-units
    dataset: digits            # digits | iris | wine | breast_cancer | file
    optimizer: {name: adam, lr: 0.001, weight_decay: 0.0}   # or sgd with momentum
    epochs: 5
    batch_size: 32
    seed: 0
    checkpoint_every: 50       # steps
    test_fraction: 0.2

Input: for a bundled data set, the JSON ``{"dataset": "digits"}`` (``{}`` also
works); for ``dataset: file``, a CSV or NPZ file (``train_data``).

One job is one shard (training is sequential). Its payload is self-contained
JSON (``Payload``): the spec's training parameters, the data set's summary
(and, for a user file, the data itself), the total steps and the units one
step bills.

Units: a *step-unit* is one million floating-point operations of training,
counted from the network's shape, not measured: a step bills
``ceil(3 × forward FLOPs per sample × batch_size / 10^6)`` (backward ≈ 2 ×
forward), and a job bills ``steps × that``. The count does not depend on the
hardware; the market compares prices per compute unit, so a faster provider
is worth its price by finishing sooner. ``max_units`` is known at split time.

Output (one JSON object)::

    {"format": "deai.train.v1", "model", "steps", "units", "model_digest",
     "chain": [{"start", "end", "digest", "seed", "hash"}, ...],
     "metrics": {"loss": [[step, mean loss], ...], "test_accuracy": [[step, acc], ...],
                 "final_test_accuracy", "final_test_loss"}}

``meter`` checks that the chain is well formed from the payload's genesis,
has a link at each multiple of ``checkpoint_every`` and ends at the last step
with the final model's digest, and that the metrics are finite and in range.
Whether the checkpoints are *right* is for the verifier, which replays a
segment (``deai.workloads.train.replay``) and compares digests.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deai.core import batch, checkpoints
from deai.core.errors import InvalidInput
from deai.core.kinds import train_data
from deai.core.kinds.base import Comparison, Kind, Shard, SpecBase, first_error
from deai.core.money import ceil_div

FORMAT: Final = "deai.train.v1"
MAX_STEPS = 1_000_000
MAX_CHECKPOINTS = 10_000
MAX_UNITS = 2**31 - 1  # tasks.units is a 32-bit column
LOSS_POINTS = 500  # the loss curve is averaged down to at most this many points

# Network shapes; deai.workloads.nets builds exactly these.
MLP_HIDDEN = (128, 64)
CNN_CHANNELS = (16, 32)
CNN_HIDDEN = 64
CNN_SIDE = 8
Arch = Literal["mlp", "cnn"]
NETS: dict[str, Arch] = {"mlp-digits": "mlp", "cnn-digits": "cnn"}


class OptimizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["sgd", "adam"] = "adam"
    lr: float = Field(default=0.001, gt=0, le=10)
    momentum: float = Field(default=0.0, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _momentum_is_sgd(self) -> OptimizerSpec:
        if self.name != "sgd" and self.momentum:
            raise ValueError("momentum applies to sgd only")
        return self


class TrainSpec(SpecBase):
    kind: Literal["train"]
    dataset: Literal["digits", "iris", "wine", "breast_cancer", "file"] = "digits"
    optimizer: OptimizerSpec = OptimizerSpec()
    epochs: int = Field(default=5, ge=1, le=10_000, strict=True)
    batch_size: int = Field(default=32, ge=1, le=4096, strict=True)
    seed: int = Field(default=0, ge=0, le=2**63 - 1, strict=True)
    checkpoint_every: int = Field(default=50, ge=1, le=MAX_STEPS, strict=True)
    test_fraction: float = Field(default=0.2, ge=0.05, le=0.5)


class Payload(BaseModel):
    """What a provider receives: everything needed to train, replay and check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["deai.train.v1"]
    model: str
    arch: Arch
    dataset: str
    n: int = Field(ge=train_data.MIN_ROWS)
    features: int = Field(ge=1)
    classes: int = Field(ge=2)
    data_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    x: str | None = None
    y: str | None = None
    optimizer: OptimizerSpec
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int = Field(ge=0, le=2**63 - 1)
    checkpoint_every: int = Field(ge=1)
    test_fraction: float
    steps: int = Field(ge=1, le=MAX_STEPS)
    step_units: int = Field(ge=1)

    @property
    def data_info(self) -> train_data.DataInfo:
        return train_data.DataInfo(self.n, self.features, self.classes, self.data_sha256)

    @property
    def n_train(self) -> int:
        return split_sizes(self.n, self.test_fraction)[0]

    @property
    def steps_per_epoch(self) -> int:
        return ceil_div(self.n_train, self.batch_size)

    def checkpoint_steps(self) -> list[int]:
        """The steps a checkpoint is written at: each multiple of k, and the last step."""
        k = self.checkpoint_every
        return [*range(k, self.steps, k), self.steps]


# --- sizes, seeds and units -----------------------------------------------------------------

def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) sample counts: the test set is ``floor(n × fraction)``, at least 1."""
    n_test = max(1, int(n * test_fraction))
    return n - n_test, n_test


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed for one use (``"split"``, ``"init"``, ``"order"`` of epoch ``index``)."""
    h = hashlib.sha256(f"deai.train.seed|{seed}|{purpose}|{index}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def forward_flops(arch: str, features: int, classes: int) -> int:
    """Multiply-adds × 2 of one sample's forward pass through the network."""
    if arch == "mlp":
        h1, h2 = MLP_HIDDEN
        return 2 * (features * h1 + h1 * h2 + h2 * classes)
    c1, c2 = CNN_CHANNELS
    pixels = CNN_SIDE * CNN_SIDE
    conv = 2 * 9 * (1 * c1 + c1 * c2) * pixels
    flat = c2 * (CNN_SIDE // 2) ** 2
    return conv + 2 * (flat * CNN_HIDDEN + CNN_HIDDEN * classes)


def step_units(arch: str, features: int, classes: int, batch_size: int) -> int:
    return max(1, ceil_div(3 * forward_flops(arch, features, classes) * batch_size, 10**6))


# --- audits ---------------------------------------------------------------------------------

AUDIT_FORMAT = "deai.train.audit.v1"
AUDIT_SHARE = 0.05  # research §10.3: p_a = max(1/N_seg, 2–5 %)
AUDIT_MIN = 3  # segments an audit replays at least (all of a chain this short)


def audit_segments(chain: list[checkpoints.Link], seed: bytes) -> list[int]:
    """Which segments a checker replays: ⌈5 % of them⌉, at least ``AUDIT_MIN`` (all of a
    shorter chain), drawn from ``seed``; the last segment (the final model) always.

    The seed is the claimed output's hash with the coordinator's draw when it placed
    the check (``check_payload``'s nonce), so the claimant, which commits to every
    checkpoint first, can neither know nor steer the draw: from the claim's hash alone,
    re-serialising the claim (its metrics, its whitespace) ground picks for free, and a
    chain of 20 segments or fewer had only its last one replayed, so untrained weights
    labelled as the earlier checkpoints passed.
    """
    n = len(chain)
    if n == 0:
        return []
    m = min(n, max(AUDIT_MIN, math.ceil(AUDIT_SHARE * n)))
    picks = {n - 1}
    counter = 0
    while len(picks) < m:
        draw = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        picks.add(int.from_bytes(draw[:8], "big") % n)
        counter += 1
    return sorted(picks)


def _audit_output(data: bytes) -> list[dict[str, Any]]:
    out = batch.safe_loads(data)
    if not isinstance(out, dict) or out.get("audit") != AUDIT_FORMAT:
        raise InvalidInput("not an audit result", field="output")
    segs = out["segments"]
    if not isinstance(segs, list) or not all(
            isinstance(x, dict) and _int(x.get("start")) and _int(x.get("end"))
            and isinstance(x.get("digest"), str) for x in segs):
        raise InvalidInput("audit segments must be {start, end, digest}", field="output")
    return [{"start": x["start"], "end": x["end"], "digest": x["digest"]} for x in segs]


# --- the kind -------------------------------------------------------------------------------

def parse_payload(shard: bytes) -> Payload:
    try:
        return Payload.model_validate_json(shard)
    except ValidationError as exc:
        raise first_error(exc, "shard") from None


def build_payload(spec: TrainSpec, data: bytes) -> Payload:
    """Check the input against the spec and build the shard payload; InvalidInput names
    the field."""
    x = y = None
    if spec.dataset == "file":
        xa, ya, info = train_data.parse_file(data)
        x, y = train_data.pack(xa, ya)
    else:
        _check_placeholder(data, spec.dataset)
        info = train_data.BUNDLED[spec.dataset]
    return payload_for(spec, info, spec.dataset, x, y)


def payload_for(spec: TrainSpec, info: train_data.DataInfo, dataset: str,
                x: str | None = None, y: str | None = None) -> Payload:
    """The payload training ``spec`` on data summarised by ``info``; ``x``/``y``: the rows
    packed, or None where the provider finds them by ``dataset`` (bundled, or a
    ``core.datasets`` dataset whose owner releases the key)."""
    arch = NETS.get(spec.model)
    if arch is None:
        raise InvalidInput(f"spec.model: {spec.model!r} is not a training network; known: "
                           f"{', '.join(NETS)}", field="spec.model")
    if arch == "cnn" and info.features != CNN_SIDE * CNN_SIDE:
        raise InvalidInput(f"spec.model: {spec.model} takes 8×8 images (64 features); the "
                           f"data has {info.features}", field="spec.model")
    n_train, _ = split_sizes(info.n, spec.test_fraction)
    steps = spec.epochs * ceil_div(n_train, spec.batch_size)
    if steps > MAX_STEPS:
        raise InvalidInput(f"spec.epochs: {steps} steps; at most {MAX_STEPS}",
                           field="spec.epochs")
    if ceil_div(steps, spec.checkpoint_every) > MAX_CHECKPOINTS:
        raise InvalidInput(f"spec.checkpoint_every: over {MAX_CHECKPOINTS} checkpoints",
                           field="spec.checkpoint_every")
    units = step_units(arch, info.features, info.classes, spec.batch_size)
    if steps * units > MAX_UNITS:
        raise InvalidInput(f"spec.epochs: {steps * units} step-units; at most {MAX_UNITS}",
                           field="spec.epochs")
    return Payload(format=FORMAT, model=spec.model, arch=arch,
                   dataset=dataset, n=info.n, features=info.features,
                   classes=info.classes, data_sha256=info.sha256, x=x, y=y,
                   optimizer=spec.optimizer, epochs=spec.epochs, batch_size=spec.batch_size,
                   seed=spec.seed, checkpoint_every=spec.checkpoint_every,
                   test_fraction=spec.test_fraction, steps=steps, step_units=units)


def _check_placeholder(data: bytes, dataset: str) -> None:
    hint = (f'the input for spec.dataset {dataset!r} is the JSON {{"dataset": "{dataset}"}} '
            f"(set spec.dataset: file to train on an uploaded CSV or NPZ)")
    try:
        obj = batch.safe_loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput(f"input: {hint}", field="input") from None
    if not isinstance(obj, dict) or set(obj) - {"dataset"}:
        raise InvalidInput(f"input: {hint}", field="input")
    if obj.get("dataset", dataset) != dataset:
        raise InvalidInput(f"input.dataset: {obj['dataset']!r} differs from spec.dataset "
                           f"{dataset!r}", field="input.dataset")


def check_output(payload: Payload, shard: bytes, output: bytes) -> dict[str, Any]:
    """Check an output's structure against its payload; returns it parsed."""
    try:
        out = batch.safe_loads(output)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("output: not JSON", field="output") from None
    keys = {"format", "model", "steps", "units", "model_digest", "chain", "metrics"}
    if not isinstance(out, dict) or set(out) != keys:
        raise InvalidInput(f"output: want the keys {sorted(keys)}", field="output")
    if out["format"] != FORMAT or out["model"] != payload.model:
        raise InvalidInput("output: format or model does not match the task", field="output")
    if out["steps"] != payload.steps:
        raise InvalidInput(f"output.steps: ran {out['steps']} of {payload.steps} steps",
                           field="output.steps")
    raw = out["chain"]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("output.chain: must be a non-empty list", field="output.chain")
    chain = [checkpoints.Link.from_dict(d, f"output.chain[{i}]") for i, d in enumerate(raw)]
    checkpoints.verify(chain, checkpoints.genesis(hashlib.sha256(shard).hexdigest()),
                       "output.chain")
    if [ln.end for ln in chain] != payload.checkpoint_steps():
        raise InvalidInput("output.chain: checkpoints must fall on each multiple of "
                           "checkpoint_every and the last step", field="output.chain")
    if any(ln.seed != payload.seed for ln in chain):
        raise InvalidInput("output.chain: a segment names another data order seed",
                           field="output.chain")
    if out["model_digest"] != chain[-1].digest:
        raise InvalidInput("output.model_digest: must be the last checkpoint's digest",
                           field="output.model_digest")
    _check_metrics(out["metrics"], payload.steps)
    return dict(out)


def _chain(out: Any) -> list[checkpoints.Link]:
    return [checkpoints.Link.from_dict(d) for d in out["chain"]]


def _check_metrics(m: Any, steps: int) -> None:
    keys = {"loss", "test_accuracy", "final_test_accuracy", "final_test_loss"}
    if not isinstance(m, dict) or set(m) != keys:
        raise InvalidInput(f"output.metrics: want the keys {sorted(keys)}",
                           field="output.metrics")
    for name, lo, hi in (("loss", 0.0, math.inf), ("test_accuracy", 0.0, 1.0)):
        series, last = m[name], 0
        if not isinstance(series, list) or not series or len(series) > MAX_CHECKPOINTS + 1:
            raise InvalidInput(f"output.metrics.{name}: must be a non-empty list",
                               field=f"output.metrics.{name}")
        for point in series:
            if (not isinstance(point, list) or len(point) != 2 or not _int(point[0])
                    or not last < point[0] <= steps or not _num(point[1], lo, hi)):
                raise InvalidInput(f"output.metrics.{name}: want [step, value] points with "
                                   f"rising steps and values in [{lo}, {hi}]",
                                   field=f"output.metrics.{name}")
            last = point[0]
    if not _num(m["final_test_accuracy"], 0.0, 1.0) or not _num(m["final_test_loss"], 0.0,
                                                                 math.inf):
        raise InvalidInput("output.metrics: final test accuracy and loss must be in range",
                           field="output.metrics")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any, lo: float, hi: float) -> bool:
    return batch.finite(v) and lo <= v <= hi


class TrainKind(Kind):
    name: ClassVar[str] = "train"
    unit: ClassVar[str] = "step-unit"
    spec_type: ClassVar[type[SpecBase]] = TrainSpec

    def split(self, spec: SpecBase, data: bytes) -> list[Shard]:
        assert isinstance(spec, TrainSpec)
        p = build_payload(spec, data)
        return [Shard(p.model_dump_json().encode(), p.steps, p.steps * p.step_units)]

    def payload_units(self, shard: bytes) -> int | None:
        p = parse_payload(shard)
        return p.steps * p.step_units

    def meter(self, spec: SpecBase, shard: bytes, output: bytes) -> int:
        p = parse_payload(shard)
        out = check_output(p, shard, output)
        units = p.steps * p.step_units
        if out["units"] != units:
            raise InvalidInput(f"output.units: {out['units']}, the steps make {units}",
                               field="output.units")
        return units

    def compare(self, spec: SpecBase, shard: bytes, a: bytes, b: bytes) -> Comparison:
        """Deterministic training agrees bytewise; on a mismatch the detail names the first
        checkpoint segment where the chains part, where bisection (``replay``) starts."""
        if a == b:
            return Comparison(True, 0.0, "identical")
        try:
            ca, cb = (_chain(batch.safe_loads(x)) for x in (a, b))
        except (InvalidInput, ValueError, TypeError, KeyError):
            return Comparison(False, 1.0, "outputs differ")
        i = checkpoints.first_mismatch(ca, cb)
        if i is None:
            return Comparison(False, 1.0, "same checkpoints, other metrics or length")
        return Comparison(False, 1.0, f"chains part at chain[{i}]: steps ({ca[i].start}, "
                                      f"{ca[i].end}]")

    # --- verification: audit a few segments instead of re-running the whole job ----------

    def check_payload(self, spec: SpecBase, shard: bytes, claimed: bytes,
                      nonce: bytes = b"") -> bytes | None:
        """Segments of the claimed chain for a checker to replay from their starting
        checkpoint (``audit_segments``, drawn with the coordinator's ``nonce``); the
        checker is not told the claimed digests."""
        try:
            chain = _chain(batch.safe_loads(claimed))
        except (InvalidInput, ValueError, TypeError, KeyError):
            return None
        picks = audit_segments(chain, hashlib.sha256(claimed + nonce).digest())
        segments = [{"start": chain[i].start, "end": chain[i].end,
                     "from": chain[i - 1].digest if i > 0 else ""} for i in picks]
        return json.dumps({"audit": AUDIT_FORMAT, "shard": hashlib.sha256(shard).hexdigest(),
                           "step_units": parse_payload(shard).step_units,
                           "segments": segments}, separators=(",", ":")).encode()

    def check(self, spec: SpecBase, shard: bytes, claimed: bytes,
              check_output: bytes) -> Comparison:
        """Every audited segment, replayed from its starting checkpoint, ends in the very
        checkpoint the claim names (deterministic training agrees bitwise)."""
        try:
            chain = {link.end: link for link in _chain(batch.safe_loads(claimed))}
            replayed = _audit_output(check_output)
        except (InvalidInput, ValueError, TypeError, KeyError):
            return Comparison(False, 1.0, "malformed claim or audit")
        if not replayed:
            return Comparison(False, 1.0, "the audit replayed nothing")
        for seg in replayed:
            link = chain.get(seg["end"])
            if link is None or link.start != seg["start"]:
                return Comparison(False, 1.0, f"no claimed segment ({seg['start']}, "
                                              f"{seg['end']}]")
            if link.digest != seg["digest"]:
                return Comparison(False, 1.0, f"steps ({seg['start']}, {seg['end']}] replay "
                                              "to another checkpoint")
        return Comparison(True, 0.0, f"{len(replayed)} audited segment(s) replay bitwise")

    def compare_checks(self, spec: SpecBase, payload: bytes, a: bytes, b: bytes
                       ) -> Comparison:
        """Two audits agree on every segment both replayed (each draws its own: the last,
        the final model, is in every draw)."""
        try:
            sa = {(x["start"], x["end"]): x["digest"] for x in _audit_output(a)}
            sb = {(x["start"], x["end"]): x["digest"] for x in _audit_output(b)}
        except (InvalidInput, ValueError, TypeError, KeyError):
            sa, sb = {}, {}
        common = sa.keys() & sb.keys()
        same = bool(common) and all(sa[k] == sb[k] for k in common)
        return Comparison(same, 0.0 if same else 1.0,
                          f"audits agree on {len(common)} segment(s)" if same
                          else "audits replay differently")

    def wrong_checkpoints(self, claimed: bytes, other: bytes) -> list[tuple[int, str]]:
        """The claimed checkpoints an audit replayed to another digest, or the first where a
        re-run's chain parts from the claim's (each later one grew from it), by step and
        the claim's chain hash there (which commits to every checkpoint before it)."""
        try:
            chain = _chain(batch.safe_loads(claimed))
            out = batch.safe_loads(other)
            if isinstance(out, dict) and out.get("audit") == AUDIT_FORMAT:
                by_end = {link.end: link for link in chain}
                return [(x["end"], by_end[x["end"]].hash) for x in _audit_output(other)
                        if x["end"] in by_end and by_end[x["end"]].digest != x["digest"]]
            i = checkpoints.first_mismatch(chain, _chain(out))
        except (InvalidInput, ValueError, TypeError, KeyError):
            return []
        return [] if i is None else [(chain[i].end, chain[i].hash)]

    def vouched(self, check_output: bytes) -> set[int]:
        """The ends of the segments an audit replayed."""
        try:
            return {x["end"] for x in _audit_output(check_output)}
        except (InvalidInput, ValueError, TypeError, KeyError):
            return set()

    def meter_check(self, spec: SpecBase, payload: bytes, output: bytes) -> int:
        """An audit bills the steps it replayed, at the job's units per step."""
        request = batch.safe_loads(payload)
        done = _audit_output(output)
        if [(x["start"], x["end"]) for x in done] != [(x["start"], x["end"])
                                                      for x in request["segments"]]:
            raise InvalidInput("the audit must replay exactly the segments asked for",
                               field="output")
        per_step = int(request["step_units"])  # from the shard, not from the checker
        return sum(int(x["end"]) - int(x["start"]) for x in done) * per_step

    def assemble(self, job_id: str, spec: SpecBase, outputs: list[bytes]) -> bytes:
        assert isinstance(spec, TrainSpec)
        if len(outputs) != 1:
            raise InvalidInput(f"a training job has one task, got {len(outputs)} outputs",
                               field="output")
        out = batch.safe_loads(outputs[0])
        result = {"job": job_id, "kind": "train", "format": FORMAT, "model": out["model"],
                  "dataset": spec.dataset, "steps": out["steps"], "units": out["units"],
                  "model_digest": out["model_digest"], "chain": out["chain"],
                  "metrics": out["metrics"]}
        return json.dumps(result, separators=(",", ":")).encode() + b"\n"
