"""The byte-level checks of a JSON body and of request text, found without parsing.

A JSON body nested deeper than ``MAX_JSON_DEPTH``, or holding ``NaN`` or ``Infinity``
(numbers JSON does not have, though Python's parser takes them), or holding a string or
key with a lone UTF-16 surrogate (``"\\ud800"``: valid JSON, yet no text UTF-8, PostgreSQL
or a response can carry) is a ``Problem``, naming the field (``body``, or the path of the
string: ``messages[0].content``), which ``limits.BodyLimit`` answers 422 (400 on ``/v1``)
before any parser sees the body. ``json_problem`` finds all three in one scan of the bytes
with numpy (no Python object per token: a body of a million empty lists costs a few bytes
a byte, not the 50 a parse would); only the path of the offending string is decoded.
``text_problem`` says the same of one decoded text (a NUL, a lone surrogate), for
``limits.plain_url``'s URL parameters.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass

import numpy as np

MAX_JSON_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one: a pair decodes to one character
# Where a decoded body may hold one: a \uD800-\uDFFF escape, or raw surrogate bytes (Python's
# parser decodes bytes with "surrogatepass"); other bodies are not scanned for it.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_UTF8 = ("utf-8", "utf-8-sig")
_COLON = re.compile(rb"[ \t\r\n]*:")


@dataclass(frozen=True)
class Problem:
    """What is wrong with a request's text, and where (a field, a parameter)."""

    field: str
    message: str


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or answered as text, or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    if _SURROGATE.search(value):
        return "must not hold a lone UTF-16 surrogate (one half of a pair, not a character)"
    return None


def shown(key: str) -> str:
    """``key`` as text that can be printed and stored: a lone surrogate as its escape."""
    return key.encode("utf-8", "backslashreplace").decode()


def json_problem(data: bytes, limit: int = MAX_JSON_DEPTH) -> Problem | None:
    """What is wrong with a JSON body, found without parsing it: nesting deeper than
    ``limit`` levels, a non-finite number (``NaN``, ``Infinity``, which Python's parser
    accepts and JSON does not), or a lone surrogate in a string or key (the first in the
    document, named by its path). Text that is not JSON is left to the parser's own 422."""
    enc = json.detect_encoding(data)
    if enc not in _UTF8:  # UTF-16 or -32, as Python's parser reads it: scanned as UTF-8
        try:
            data = data.decode(enc, "surrogatepass").encode("utf-8", "surrogatepass")
        except (UnicodeError, LookupError):
            return None
    elif data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    deep = data.count(b"[") + data.count(b"{") > limit
    odd = _SURROGATE_HINT.search(data) is not None
    if not deep and not odd and b"NaN" not in data and b"Infinity" not in data:
        return None
    scan = _Scan(data)
    if deep and scan.deepest() > limit:
        return Problem("body", f"body: JSON nested more than {limit} levels")
    constant = scan.constant()
    if constant is not None:
        return Problem("body", f"body: {constant} is not a number JSON allows")
    return scan.lone_surrogate() if odd else None


class _Scan:
    """One JSON text as bytes in numpy: which bytes lie outside strings, and what they say.

    A quote opens or closes a string unless an odd run of backslashes comes before it;
    in JSON that parses, every other quote is such a one. Arrays here are as long as the
    body (bytes and booleans; one of 32-bit depths) or as long as its quotes and
    backslashes: never an object per token."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.a = a = np.frombuffer(data, np.uint8)
        self.bs = _where(a, ord("\\"))
        if self.bs.size:  # where each run of backslashes starts, for each backslash
            new = np.ones(self.bs.size, bool)
            new[1:] = np.diff(self.bs) != 1
            self.run_start = self.bs[new][np.cumsum(new, dtype=np.int32) - 1]
        quotes = _where(a, ord('"'))
        quotes = quotes[~self._escaped(quotes)]
        self.opens, self.closes = quotes[0::2], quotes[1::2]
        edge = np.zeros(a.size + 1, np.int8)
        edge[self.opens] = 1
        edge[self.closes] = -1
        self.outside = np.cumsum(edge[:-1], dtype=np.int8) == 0

    def _escaped(self, at: np.ndarray) -> np.ndarray:
        """Whether the byte at each position follows an odd run of backslashes."""
        escaped = np.zeros(at.size, bool)
        if not self.bs.size or not at.size:
            return escaped
        after = np.flatnonzero((at > 0) & (self.a[np.maximum(at, 1) - 1] == ord("\\")))
        prev = at[after] - 1  # only those right after a backslash need their run's length
        i = np.searchsorted(self.bs, prev)
        escaped[after] = (prev - self.run_start[i]) % 2 == 0
        return escaped

    def _brackets(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        a, out = self.a[start:end], self.outside[start:end]
        opens = out & ((a == ord("[")) | (a == ord("{")))
        closes = out & ((a == ord("]")) | (a == ord("}")))
        return opens, closes

    def deepest(self) -> int:
        deepest = depth = 0
        for start in range(0, self.a.size, _BLOCK):  # a block at a time: 32-bit sums
            opens, closes = self._brackets(start, start + _BLOCK)
            sums = np.cumsum(opens.astype(np.int8) - closes.astype(np.int8), dtype=np.int32)
            if sums.size:
                deepest = max(deepest, depth + int(sums.max()))
                depth += int(sums[-1])
        return deepest

    def constant(self) -> str | None:
        """``NaN``, ``Infinity`` or ``-Infinity`` outside strings: the only tokens there
        that start with N or I in text Python's parser takes."""
        a = self.a
        hits = np.flatnonzero(((a == ord("N")) | (a == ord("I"))) & self.outside)
        if not hits.size:
            return None
        at = int(hits[0])
        if self.data.startswith(b"NaN", at):
            return "NaN"
        if self.data.startswith(b"Infinity", at):
            return "-Infinity" if at and self.data[at - 1] == ord("-") else "Infinity"
        return None  # not JSON: the parser says so

    def lone_surrogate(self) -> Problem | None:
        a = self.a
        raw = np.flatnonzero((a[:-1] == 0xED) & (a[1:] >= 0xA0) & (a[1:] <= 0xBF))
        found = [raw]  # raw surrogate bytes never pair: Python decodes each alone
        if a.size >= 6:  # \uD800-\uDBFF then \uDC00-\uDFFF is a pair; any other is lone
            esc = np.flatnonzero((a[:-5] == ord("\\")) & (a[1:-4] == ord("u"))
                                 & ((a[2:-3] | 0x20) == ord("d")))
            esc = esc[~self._escaped(esc)]
            x = a[esc + 3] | 0x20
            high = esc[(x == ord("8")) | (x == ord("9")) | (x == ord("a")) | (x == ord("b"))]
            low = esc[(x >= ord("c")) & (x <= ord("f"))]
            found += [high[~np.isin(high + 6, low)], low[~np.isin(low - 6, high)]]
        at = np.concatenate(found)
        at = at[~self.outside[at]]
        if not at.size:
            return None
        k = int(np.searchsorted(self.opens, at.min(), "right")) - 1
        if k < 0 or k >= self.closes.size:
            return None  # not JSON
        start, end = int(self.opens[k]), int(self.closes[k]) + 1
        try:
            text = json.loads(self.data[start:end])
        except ValueError:
            return None
        why = text_problem(text)
        if why is None:
            return None
        if _COLON.match(self.data, end):  # a key: its object is named
            where = self._path(start, key=True) or "body"
            return Problem(where, f"{where}: the key {shown(text)!r} {why}")
        where = self._path(start, key=False) or "body"
        return Problem(where, f"{where}: {why}")

    def _path(self, at: int, key: bool) -> str:
        """The path (``a[1].b``) to the value that starts at ``at`` (to its object, when
        it is a key): at each enclosing level, the array's index or the object's key."""
        opens, closes = self._brackets(0, at)
        br = np.flatnonzero(opens | closes)
        if not br.size:
            return ""
        step = np.where(opens[br], 1, -1)
        depth = np.cumsum(step)
        levels = int(depth[-1]) - (1 if key else 0)
        if levels <= 0:
            return ""
        # The container open at each level: the last opener that reached that level.
        opener = np.full(int(depth.max()) + 1, -1)
        np.maximum.at(opener, depth[step == 1], br[step == 1])
        a = self.a
        commas = np.flatnonzero(self.outside[:at] & (a[:at] == ord(",")))
        i = np.searchsorted(br, commas)
        level = np.where(i > 0, depth[np.maximum(i - 1, 0)], 0)
        mine = (level >= 1) & (level <= levels)
        commas, level = commas[mine], level[mine]
        mine = commas > opener[level]  # a comma of the container still open there
        commas, level = commas[mine], level[mine]
        count = np.bincount(level, minlength=levels + 1)
        last = np.full(levels + 1, -1)
        np.maximum.at(last, level, commas)
        path = ""
        for lv in range(1, levels + 1):
            o = int(opener[lv])
            if a[o] == ord("["):
                path += f"[{int(count[lv])}]"
                continue
            k = int(np.searchsorted(self.opens, max(o, int(last[lv]))))
            name = json.loads(self.data[int(self.opens[k]):int(self.closes[k]) + 1])
            path = f"{path}.{name}" if path else str(name)
        return path


_BLOCK = 1 << 20


def _where(a: np.ndarray, byte: int) -> np.ndarray:
    """Positions of ``byte`` in ``a`` (32-bit while they fit), found a block at a time."""
    kind = np.int32 if a.size < 2**31 else np.int64
    parts = [np.flatnonzero(a[i:i + _BLOCK] == byte).astype(kind) + i
             for i in range(0, a.size, _BLOCK)]
    return np.concatenate(parts) if parts else np.zeros(0, kind)
