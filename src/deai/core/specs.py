"""Job specs and input lines: parsing and validation with errors that name the field.

A job spec (YAML or JSON) says what to run and the most the client will pay:

    kind: embeddings
    model: all-MiniLM-L6-v2
    max_price: 2000        # micro-units per 1,000 inputs
    deadline: 600          # seconds from submission
    shard_size: 50         # inputs per task

Input is an OpenAI Batch file: one JSON object a line,
``{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {"model", "input"}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deai.core import catalog
from deai.core.errors import InvalidInput

WORKLOAD_URLS = {"embeddings": "/v1/embeddings"}
MAX_INPUTS_PER_LINE = 2048
MAX_INPUT_CHARS = 32_768


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["embeddings"]
    model: str = Field(min_length=1, max_length=200)
    max_price: int = Field(ge=0, le=10**12, strict=True,
                           description="micro-units per 1,000 units")
    deadline: int = Field(default=3600, ge=10, le=7 * 24 * 3600, strict=True,
                          description="seconds")
    shard_size: int = Field(default=64, ge=1, le=10_000, strict=True)

    def canonical_model(self) -> str:
        return catalog.lookup(self.model, field="spec.model", workload=self.kind).name


def first_error(exc: ValidationError, prefix: str) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}.{loc}" if loc else prefix
    return InvalidInput(f"{field}: {err['msg']}", field=field)


def parse_spec(data: Any) -> JobSpec:
    """Validate a decoded spec; raises InvalidInput naming ``spec.<field>``."""
    if not isinstance(data, dict):
        raise InvalidInput("spec must be a mapping", field="spec")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise first_error(exc, "spec") from None
    spec.canonical_model()
    return spec


@dataclass(frozen=True)
class Item:
    """One line of input: its id, its position and the texts it carries."""

    index: int
    custom_id: str
    inputs: tuple[str, ...]

    @property
    def units(self) -> int:
        return len(self.inputs)


def parse_input(data: bytes, spec: JobSpec) -> list[Item]:
    """Parse and check every input line; the first bad line is reported by number."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input is not UTF-8 (byte {exc.start})", field="input") from None
    model = spec.canonical_model()
    url = WORKLOAD_URLS[spec.kind]
    items: list[Item] = []
    seen: set[str] = set()
    # Only "\n" ends a JSONL line; str.splitlines would also split on U+2028 inside strings.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        where = f"input[line {lineno}]"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: not JSON ({exc.msg})", field=where) from None
        items.append(_parse_line(obj, where, url, model, spec.kind, len(items), seen))
    if not items:
        raise InvalidInput("input has no lines", field="input")
    return items


def _parse_line(
    obj: Any, where: str, url: str, model: str, kind: str, index: int, seen: set[str]
) -> Item:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}: must be a JSON object", field=where)
    extra = set(obj) - {"custom_id", "method", "url", "body"}
    if extra:
        raise InvalidInput(f"{where}: unknown field {sorted(extra)[0]!r}", field=where)
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > 512:
        raise InvalidInput(f"{where}.custom_id: must be a non-empty string",
                           field=f"{where}.custom_id")
    if cid in seen:
        raise InvalidInput(f"{where}.custom_id: duplicate {cid!r}", field=f"{where}.custom_id")
    seen.add(cid)
    if obj.get("method", "POST") != "POST":
        raise InvalidInput(f"{where}.method: must be POST", field=f"{where}.method")
    if obj.get("url", url) != url:
        raise InvalidInput(f"{where}.url: must be {url} for a {kind} job", field=f"{where}.url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise InvalidInput(f"{where}.body: must be an object", field=f"{where}.body")
    line_model = body.get("model", model)
    if not isinstance(line_model, str) or catalog.lookup(
        line_model, field=f"{where}.body.model"
    ).name != model:
        raise InvalidInput(f"{where}.body.model: {line_model!r} differs from the job's {model!r}",
                           field=f"{where}.body.model")
    return Item(index=index, custom_id=cid, inputs=_texts(body.get("input"), where))


def _texts(value: Any, where: str) -> tuple[str, ...]:
    field = f"{where}.body.input"
    texts = [value] if isinstance(value, str) else value
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
    return b"".join(
        json.dumps({"custom_id": it.custom_id, "input": list(it.inputs)},
                   separators=(",", ":")).encode() + b"\n"
        for it in items
    )
