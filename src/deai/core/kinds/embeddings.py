"""Embeddings jobs: texts in, one vector per text out, priced per 1,000 texts.

Spec::

    kind: embeddings
    model: all-MiniLM-L6-v2
    max_price: 2000        # micro-units per 1,000 inputs
    deadline: 600          # seconds from submission
    shard_size: 50         # input lines per task

Input lines: ``{"custom_id", "method": "POST", "url": "/v1/embeddings",
"body": {"model", "input": str | [str, ...]}}`` (token ids are refused here,
naming the field: /v1/embeddings decodes them to text before a job is made). A shard travels to the
provider as ``{"custom_id", "input": [str, ...]}`` lines; its output is one line
per input line, in order::

    {"custom_id": "...", "embeddings": [[f32, ...], ...], "prompt_tokens": 12}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from deai.core import batch, catalog
from deai.core.errors import InvalidInput
from deai.core.kinds.base import Comparison, Kind, Shard, SpecBase

URL = "/v1/embeddings"
MAX_INPUTS_PER_LINE = 2048
MAX_INPUT_CHARS = 32_768
MAX_COMPONENT = 1e6  # a vector's components, at most: real models' lie within ±1 (normalised)
# to a few hundred; junk of 1e200 is refused as malformed, not compared
# Tolerances on ``distance`` (below), set from calibration: bench/calibrate_tolerances.py
# measures honest variation (repeats, threads 1 vs 2, other processes, another CPU
# instruction set) and cheap approximations with the real model; figures and the
# command in docs/verification.md ("Calibration") and bench/results/calibration.json.
# Measured on one AVX2 CPU (48 texts): repeats, threads 1 vs 2 and a second process
# agree bitwise (0); a process on another instruction set (SSE, emulating another CPU
# family of the "cpu" class) 2.0e-13 at worst. Cheats: fp16 >= 5.5e-7 (max 1.3e-6),
# bf16 >= 3.3e-5, int8 dynamic >= 2.6e-2, one layer dropped >= 0.39. SAME_CLASS is
# 500x the worst honest pair and 5,500x below fp16's smallest. CROSS_CLASS allows for
# larger float32 differences between a CPU and a GPU (other kernels and reduction
# orders, no TF32; not measured: no GPU here), 5x below fp16's smallest. Unknown
# classes get CROSS_CLASS, so fp16 and bf16 are caught whatever the classes.
COSINE_TOLERANCE_SAME_CLASS = 1e-10
COSINE_TOLERANCE_CROSS_CLASS = 1e-7
COSINE_TOLERANCE = COSINE_TOLERANCE_CROSS_CLASS


def cosine_tolerance(classes: tuple[str, str] | None = None) -> float:
    """The tolerance for two parties of these hardware classes (``coordinator.hardware.
    hardware_class``: "cpu", "gpu:H100", ...); unknown or empty classes count as
    different."""
    if classes is not None and classes[0] and classes[0] == classes[1]:
        return COSINE_TOLERANCE_SAME_CLASS
    return COSINE_TOLERANCE_CROSS_CLASS


class EmbeddingsSpec(SpecBase):
    kind: Literal["embeddings"]
    shard_size: int = Field(default=64, ge=1, le=10_000, strict=True)


@dataclass(frozen=True)
class Item:
    """One line of input: its id, its position and the texts it carries."""

    index: int
    custom_id: str
    inputs: tuple[str, ...]

    @property
    def units(self) -> int:
        return len(self.inputs)


def parse_input(data: bytes, spec: SpecBase) -> list[Item]:
    """Parse and check every input line; the first bad line is reported by number."""
    model = catalog.lookup(spec.model, field="spec.model").name

    def body(cid: str, b: dict[str, Any], where: str, index: int) -> Item:
        line_model = b.get("model", model)
        if not isinstance(line_model, str) or catalog.lookup(
                line_model, field=f"{where}.body.model").name != model:
            raise InvalidInput(f"{where}.body.model: {line_model!r} differs from the job's "
                               f"{model!r}", field=f"{where}.body.model")
        return Item(index=index, custom_id=cid, inputs=_texts(b, where))

    return batch.parse_lines(data, URL, "embeddings", body)


def _texts(b: dict[str, Any], where: str) -> tuple[str, ...]:
    field = f"{where}.body.input"
    value = b.get("input")
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and texts and all(
            isinstance(t, int) or (isinstance(t, list) and all(isinstance(x, int) for x in t))
            for t in texts):
        raise InvalidInput(f"{field}: token ids are read only by POST /v1/embeddings, which "
                           "decodes them with the model's tokenizer; a job's input lines "
                           "carry text", field=field)
    if not isinstance(texts, list) or not texts:
        raise InvalidInput(f"{field}: must be a string or a non-empty list of strings",
                           field=field)
    if len(texts) > MAX_INPUTS_PER_LINE:
        raise InvalidInput(f"{field}: at most {MAX_INPUTS_PER_LINE} inputs a line", field=field)
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise InvalidInput(f"{field}: every input must be a non-empty string", field=field)
        if len(t) > MAX_INPUT_CHARS:
            raise InvalidInput(f"{field}: an input is over {MAX_INPUT_CHARS} characters",
                               field=field)
    return tuple(texts)


def shard(items: list[Item], shard_size: int) -> list[list[Item]]:
    return [items[i : i + shard_size] for i in range(0, len(items), shard_size)]


def encode_items(items: list[Item]) -> bytes:
    """The shard blob a provider receives: one ``{"custom_id", "input"}`` a line."""
    return b"".join(batch.dumps({"custom_id": it.custom_id, "input": list(it.inputs)})
                    for it in items)


def check_output(shard_input: bytes, output: bytes, dims: int) -> list[dict[str, Any]]:
    """Check a shard's output against its input; returns the parsed lines.

    One line per input line with the same custom_id in the same order, one
    vector of ``dims`` finite numbers per input text, and a token count. This
    catches truncated, reordered or malformed work; whether the numbers are
    *right* is the verifier's job.
    """
    inputs = [obj for _, obj in batch.jsonl(shard_input, "input")]
    lines = [obj for _, obj in batch.jsonl(output, "output")]
    if len(lines) != len(inputs):
        raise InvalidInput(f"output has {len(lines)} lines for {len(inputs)} inputs",
                           field="output")
    for n, (inp, line) in enumerate(zip(inputs, lines, strict=True), start=1):
        where = f"output line {n}"
        if not isinstance(line, dict) or line.get("custom_id") != inp["custom_id"]:
            raise InvalidInput(f"{where}: custom_id does not match the input", field="output")
        vecs = line.get("embeddings")
        if not isinstance(vecs, list) or len(vecs) != len(inp["input"]):
            raise InvalidInput(f"{where}: needs {len(inp['input'])} vectors", field="output")
        for v in vecs:
            if (not isinstance(v, list) or len(v) != dims
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               and -MAX_COMPONENT <= x <= MAX_COMPONENT for x in v)):
                raise InvalidInput(f"{where}: each vector needs {dims} finite numbers within "
                                   f"±{MAX_COMPONENT:g}", field="output")
        tokens, most = line.get("prompt_tokens"), usage_bound(inp["input"])
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 <= tokens <= most:
            raise InvalidInput(f"{where}: prompt_tokens must be an integer from 0 to {most} "
                               "(a token is at least one byte of the input)", field="output")
    return lines


TOKENS_AROUND = 8  # tokens a model may add around each input (``[CLS]``, ``[SEP]``, ...)


def usage_bound(inputs: list[str]) -> int:
    """The most ``prompt_tokens`` a line of ``inputs`` may report: the caller's ``usage``
    is the provider's word (not billed: a line is billed by its input), and a provider
    wrote 10¹⁸ there, or a number of 4,000 digits."""
    return sum(len(str(x).encode("utf-8")) + TOKENS_AROUND for x in inputs)


def distance(u: list[float], v: list[float]) -> float:
    """``|u - v|^2 / (2 |u| |v|)``: the cosine distance ``1 - cos`` plus
    ``(|u| - |v|)^2 / (2 |u| |v|)``, so a rescaled vector counts too; computed from the
    difference, it is exactly 0 for equal vectors and exact down to 1e-30, where
    ``1 - cos`` bottoms out at 1e-16 of rounding. The norms are ``math.hypot``'s, which
    scales: squares summed as they are overflowed to ``inf`` for components near 1e200
    (and ``inf / inf`` is NaN, which every comparison with a tolerance let through) and
    underflowed to 0 near 1e-160. A distance past float's range is ``inf``, never NaN."""
    nu, nv = math.hypot(*u), math.hypot(*v)
    if nu == 0.0 or nv == 0.0:
        return 0.0 if u == v else 1.0
    d = math.hypot(*(a - b for a, b in zip(u, v, strict=True)))
    out = (d / nu) * (d / nv) / 2.0
    return out if math.isfinite(out) else math.inf


def response_body(model: str, line: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings response for one input line."""
    tokens = int(line["prompt_tokens"])
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vec}
                     for i, vec in enumerate(line["embeddings"])],
            "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class EmbeddingsKind(Kind):
    name: ClassVar[str] = "embeddings"
    unit: ClassVar[str] = "input"
    spec_type: ClassVar[type[SpecBase]] = EmbeddingsSpec

    def quote_shards(self, spec: SpecBase, inputs: int) -> list[int]:
        """``shard_size`` inputs a shard, one unit each."""
        assert isinstance(spec, EmbeddingsSpec)
        n = spec.shard_size
        return [min(n, inputs - i) for i in range(0, inputs, n)]

    def split(self, spec: SpecBase, data: bytes) -> list[Shard]:
        assert isinstance(spec, EmbeddingsSpec)
        items = parse_input(data, spec)
        return [Shard(encode_items(sh), len(sh), sum(it.units for it in sh))
                for sh in shard(items, spec.shard_size)]

    def payload_units(self, shard: bytes) -> int | None:
        """One unit an input text (``Item.units``)."""
        total = 0
        for _, line in batch.jsonl(shard, "shard"):
            texts = line.get("input") if isinstance(line, dict) else None
            if not isinstance(texts, list):
                raise InvalidInput("shard: a line without its input texts", field="shard")
            total += len(texts)
        return total

    def meter(self, spec: SpecBase, shard_input: bytes, output: bytes) -> int:
        lines = check_output(shard_input, output, self.model(spec).dims)
        return sum(len(line["embeddings"]) for line in lines)

    def compare(self, spec: SpecBase, shard: bytes, a: bytes, b: bytes,
                classes: tuple[str, str] | None = None) -> Comparison:
        """Every pair of vectors within ``cosine_tolerance(classes)`` (``distance``) and
        the same token counts. ``classes``: the two parties' hardware classes, if known."""
        dims = self.model(spec).dims
        try:
            la, lb = check_output(shard, a, dims), check_output(shard, b, dims)
        except InvalidInput as exc:
            return Comparison(False, 1.0, f"malformed output: {exc.message}")
        tol = cosine_tolerance(classes)
        worst = 0.0
        for n, (x, y) in enumerate(zip(la, lb, strict=True), start=1):
            if x["prompt_tokens"] != y["prompt_tokens"]:
                return Comparison(False, 1.0, f"line {n}: token counts differ")
            for u, v in zip(x["embeddings"], y["embeddings"], strict=True):
                d = distance(u, v)
                if not d <= tol:  # NaN included: a distance that is not a number is no match
                    return Comparison(False, d if math.isfinite(d) else 1.0,
                                      f"line {n}: cosine distance {d:.3g} over the tolerance "
                                      f"{tol:g}")
                worst = max(worst, d)
        ok = worst <= tol
        return Comparison(ok, worst, f"max cosine distance {worst:.3g} (tolerance {tol:g})")

    def check(self, spec: SpecBase, shard: bytes, claimed: bytes, check_output: bytes,
              classes: tuple[str, str] | None = None) -> Comparison:
        """A replica re-executes the shard: ``compare`` with the two parties' classes."""
        return self.compare(spec, shard, claimed, check_output, classes=classes)

    def compare_checks(self, spec: SpecBase, payload: bytes, a: bytes, b: bytes,
                       classes: tuple[str, str] | None = None) -> Comparison:
        return self.compare(spec, payload, a, b, classes=classes)

    def assemble(self, job_id: str, spec: SpecBase, outputs: list[bytes]) -> bytes:
        model = self.model(spec).name
        return b"".join(
            batch.dumps(batch.output_line(job_id, line["custom_id"], response_body(model, line)))
            for out in outputs for _, line in batch.jsonl(out, "output"))
