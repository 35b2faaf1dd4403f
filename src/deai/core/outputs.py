"""Shard outputs: the format a provider returns, its structural check, and assembly.

A provider's output for an embeddings shard is JSONL, one line per input line,
in input order:

    {"custom_id": "...", "embeddings": [[f32, ...], ...], "prompt_tokens": 12}

with one vector per text of the input line. The coordinator assembles accepted
shards into an OpenAI Batch output file, one line per input line in input order.
"""

from __future__ import annotations

import json
import math
from typing import Any

from deai.core.errors import InvalidInput


def _lines(data: bytes, what: str) -> list[Any]:
    out = []
    for n, raw in enumerate(data.decode("utf-8", errors="strict").split("\n"), start=1):
        if raw.strip():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                raise InvalidInput(f"{what} line {n} is not JSON", field="output") from None
    return out


def check_embeddings(shard_input: bytes, output: bytes, dims: int) -> list[dict[str, Any]]:
    """Check a shard's output against its input; returns the parsed lines.

    One line per input line with the same custom_id in the same order, one
    vector of ``dims`` finite numbers per input text, and a token count. This
    catches truncated, reordered or malformed work; whether the numbers are
    *right* is the verifier's job (canaries, replication, referee).
    """
    inputs = _lines(shard_input, "input")
    try:
        lines = _lines(output, "output")
    except UnicodeDecodeError:
        raise InvalidInput("output is not UTF-8", field="output") from None
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
                    or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                raise InvalidInput(f"{where}: each vector needs {dims} finite numbers",
                                   field="output")
        tokens = line.get("prompt_tokens")
        if not isinstance(tokens, int) or tokens < 0:
            raise InvalidInput(f"{where}: prompt_tokens must be a non-negative integer",
                               field="output")
    return lines


def batch_output_line(job_id: str, model: str, line: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI Batch output line for one input line of an embeddings job."""
    cid = line["custom_id"]
    tokens = int(line["prompt_tokens"])
    return {
        "id": f"{job_id}-{cid}",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": f"{job_id}-{cid}",
            "body": {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": vec}
                         for i, vec in enumerate(line["embeddings"])],
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        },
        "error": None,
    }


def assemble(job_id: str, model: str, shard_outputs: list[bytes]) -> bytes:
    """Join accepted shard outputs, in task order, into the job's output file."""
    parts: list[bytes] = []
    for data in shard_outputs:
        for line in _lines(data, "output"):
            parts.append(json.dumps(batch_output_line(job_id, model, line),
                                    separators=(",", ":")).encode() + b"\n")
    return b"".join(parts)
