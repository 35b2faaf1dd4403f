"""OpenAI Batch files: reading input lines and writing output lines.

Input: one JSON object a line, ``{"custom_id", "method": "POST", "url", "body"}``.
Only "\\n" ends a line: ``str.splitlines`` would also split on U+2028 and
friends, which JSON writers leave raw inside strings. A line nested more than
``MAX_DEPTH`` levels, or holding a non-finite number (``NaN``, ``Infinity``), is
refused with the line's number, before anything recurses into it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from deai.core.errors import InvalidInput

T = TypeVar("T")

MAX_DEPTH = 64


def finite(x: Any) -> bool:
    """A JSON number (not a bool) with a finite float value. An integer past float's
    range is not one: ``math.isfinite`` and ``float`` raise ``OverflowError`` on it, which
    from a provider's output or a client's body would be a 500, not a refusal."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (iteratively)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v if isinstance(x, dict | list))
    return deepest


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")


def too_deep(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects more than ``limit`` deep, read without
    parsing it. Never rely on the parser's RecursionError: a library that raises the
    interpreter's recursion limit (web3 sets 100,000) turns deep input into a crash of
    the C stack instead."""
    raw = text.encode() if isinstance(text, str) else text
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return bool(steps.size) and int(steps.cumsum().max()) > limit


def safe_loads(text: str | bytes) -> Any:
    """``json.loads`` for untrusted text (a provider's output): refuses nesting deeper than
    ``MAX_DEPTH`` with the parser's own ``JSONDecodeError`` before recursing into it."""
    if too_deep(text):
        doc = text if isinstance(text, str) else text.decode("utf-8", "replace")
        raise json.JSONDecodeError(f"nested more than {MAX_DEPTH} levels", doc[:100], 0)
    return json.loads(text)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(raw: str, where: str) -> Any:
    """One JSON document, finite and at most ``MAX_DEPTH`` deep, or ``InvalidInput(where)``."""
    deep = InvalidInput(f"{where}: nested more than {MAX_DEPTH} levels", field=where)
    if too_deep(raw):
        raise deep
    try:
        obj = json.loads(raw, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not JSON ({exc.msg})", field=where) from None
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}", field=where) from None
    except RecursionError:
        raise deep from None
    if raw.count("[") + raw.count("{") > MAX_DEPTH and depth(obj) > MAX_DEPTH:
        raise deep
    return obj


def jsonl(data: bytes, what: str = "input") -> Iterator[tuple[int, Any]]:
    """Decode JSONL, yielding (line number, object); blank lines are skipped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 (byte {exc.start})", field=what) from None
    for lineno, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        yield lineno, loads(raw, f"{what}[line {lineno}]")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def parse_lines(data: bytes, url: str, kind: str,
                body: Callable[[str, dict[str, Any], str, int], T]) -> list[T]:
    """Check every line's envelope; ``body(custom_id, body, where, index)`` checks the rest."""
    out: list[T] = []
    seen: set[str] = set()
    for lineno, obj in jsonl(data):
        where = f"input[line {lineno}]"
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
            raise InvalidInput(f"{where}.custom_id: duplicate {cid!r}",
                               field=f"{where}.custom_id")
        seen.add(cid)
        if obj.get("method", "POST") != "POST":
            raise InvalidInput(f"{where}.method: must be POST", field=f"{where}.method")
        if obj.get("url", url) != url:
            raise InvalidInput(f"{where}.url: must be {url} for a {kind} job",
                               field=f"{where}.url")
        b = obj.get("body")
        if not isinstance(b, dict):
            raise InvalidInput(f"{where}.body: must be an object", field=f"{where}.body")
        out.append(body(cid, b, where, len(out)))
    if not out:
        raise InvalidInput("input has no lines", field="input")
    return out


def output_line(job_id: str, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """One successful line of an OpenAI Batch output file."""
    rid = f"{job_id}-{custom_id}"
    return {"id": rid, "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": rid, "body": body}, "error": None}
