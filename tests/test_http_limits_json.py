"""``json_scan.json_problem`` scans the bytes; it never parses the body it judges.

Before, a body with more than 64 brackets was parsed with ``json.loads`` and walked:
60 MiB of ``[[],[],...]`` to a path no route had took 4.8 GB and 74 s holding the
GIL. The scan must give the answers the parse gave: a property test holds it to a
reference that parses (fine for the small documents it draws), field name included.
And ``BodyLimit`` reads a body only when a route asks for it, with the JSON limit
everywhere but the upload routes.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Match

from deai.coordinator import json_scan, limits
from deai.coordinator.json_scan import Problem, json_problem
from deai.coordinator.limits import BodyLimit

# --- the reference: parse, then walk in document order -------------------------------------

_LONE = re.compile("[\ud800-\udfff]")


class _NonFinite(ValueError):
    pass


def _raise(name: str) -> Any:
    raise _NonFinite(name)


def reference(data: bytes, limit: int = 64) -> Problem | None:
    """Depth first, then a non-finite number, then a lone surrogate: the order of old."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    if deepest > limit:
        return Problem("body", f"body: JSON nested more than {limit} levels")
    try:
        json.loads(data, parse_constant=_raise)
    except _NonFinite as exc:
        return Problem("body", f"body: {exc} is not a number JSON allows")
    return _walk(value, "")


def _walk(v: Any, at: str) -> Problem | None:
    where = at or "body"
    if isinstance(v, str):
        why = json_scan.text_problem(v)
        return Problem(where, f"{where}: {why}") if why and _LONE.search(v) else None
    if isinstance(v, dict):
        for k, x in v.items():
            if _LONE.search(k):
                return Problem(where, f"{where}: the key {json_scan.shown(k)!r} "
                                      f"{json_scan.text_problem(k)}")
            found = _walk(x, f"{at}.{k}" if at else k)
            if found:
                return found
    if isinstance(v, list):
        for i, x in enumerate(v):
            found = _walk(x, f"{at}[{i}]")
            if found:
                return found
    return None


# Text with the characters that matter to a scanner: quotes, backslashes, brackets,
# commas, colons, surrogates (lone and paired), NUL.
_CHARS = st.sampled_from(['"', "\\", "[", "]", "{", "}", ",", ":", "a", "N", "I", "\x00",
                          "\ud800", "\udc00", "\ud83d", "\ude00", "\U0001f600", "é", " "])
_TEXT = st.lists(_CHARS, max_size=8).map("".join)
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _TEXT)
_VALUES = st.recursive(_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=30)


def _encode(value: Any, ascii_only: bool, indent: int | None) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(_VALUES, st.booleans(), st.sampled_from([None, 0, 2]), st.integers(1, 6))
def test_the_scan_agrees_with_a_parse(value: Any, ascii_only: bool, indent: int | None,
                                      limit: int) -> None:
    data = _encode(value, ascii_only, indent)
    assert json_problem(data, limit) == reference(data, limit), data


@pytest.mark.parametrize(("body", "field"), [
    (b'{"a\\"]": ["\\\\", {"b,": [1, "\\\\\\ud800"]}]}', "a\"][1].b,[1]"),
    (b'[{"x": [[], {}, "a"]}, "\\ud83d\\ud83d\\ude00"]', "[1]"),
    (b'{"k": 1, "m": {"n": [0, 0, {"\\udfff": 2}]}}', "m.n[2]"),
    (b'{"a": "\\ud83d\\ude00\\ude00"}', "a"),
    (b'{"a": "\\ud83d\xed\xb8\x80"}', "a"),  # an escaped half and a raw half never pair
])
def test_strings_and_escapes_are_skipped_and_the_field_named(body: bytes, field: str) -> None:
    assert json_problem(body) == reference(body)
    problem = json_problem(body)
    assert problem is not None and problem.field == field


def _peak(body: bytes) -> tuple[Problem | None, int]:
    tracemalloc.start()
    try:
        problem = json_problem(body)
        return problem, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_body_of_a_million_empty_lists_costs_a_few_bytes_a_byte() -> None:
    """Bytes and booleans as long as the body, positions as long as its quotes: the peak
    is a small multiple of the body (a parse took 85 times a 6 MiB body: 514 MiB)."""
    lists = b"[" + b"[]," * (2 << 20) + b"[]]"  # 6 MiB
    cases = [(lists, None), (b"[" * 100 + lists + b"]" * 100, "body"),
             (b"[" + b'"[{\\"",' * (1 << 20) + b'"\\ud800"]', f"[{1 << 20}]"),
             (b'["' + b'\\\\\\"' * (1 << 20) + b'", {"k": "\\ud800"}]', "[1].k")]
    for body, field in cases:
        problem, peak = _peak(body)
        assert (problem and problem.field) == field, problem
        assert peak < 16 * len(body), f"{peak >> 20} MiB for a {len(body) >> 20} MiB body"


# --- which bodies are read, and how far ---------------------------------------------------

def _app(seen: list[int], **kw: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimit, limit=1000, json_limit=200, **kw)

    @app.post("/json")
    async def take(request: Request) -> dict[str, int]:
        seen.append(len(await request.body()))
        return {"n": seen[-1]}

    @app.put("/api/blobs")
    async def blob(request: Request) -> dict[str, int]:
        seen.append(len(await request.body()))
        return {"n": seen[-1]}

    return app


def test_json_bodies_have_their_own_limit_uploads_the_large_one() -> None:
    seen: list[int] = []
    with TestClient(_app(seen)) as client:
        r = client.post("/json", content=b"[" + b"0," * 120 + b"0]")
        assert r.status_code == 413 and r.json()["error"]["details"]["limit"] == 200
        assert client.put("/api/blobs", content=b"x" * 900).json() == {"n": 900}
        assert client.put("/api/blobs", content=b"x" * 1001).status_code == 413
        deep = b"[" * 70 + b"]" * 70
        r = client.post("/json", content=deep)
        assert r.status_code == 422 and "nested" in r.json()["error"]["message"]
        assert seen == [900]


def test_a_refusal_found_while_the_route_reads_replaces_its_answer() -> None:
    seen: list[int] = []

    def chunks() -> Any:
        yield b"[" * 40
        yield b"]" * 40
    with TestClient(_app(seen)) as client:  # chunked: read as it comes, checked whole
        r = client.post("/json", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 200 and seen == [80]

        def big() -> Any:
            for _ in range(20):
                yield b"x" * 100
        r = client.put("/api/blobs", content=big())
        assert r.status_code == 413, r.text


def test_the_upload_routes_are_the_coordinators(tmp_path: Path) -> None:
    """``limits.UPLOADS`` names routes the coordinator has: renaming one must fail here."""
    from deai.coordinator.app import create_app
    from deai.coordinator.settings import Settings

    app = create_app(Settings(data_dir=tmp_path).for_devnet())
    for method, path in (("PUT", "/api/blobs"), ("PUT", "/api/provider/leases/L1/snapshot"),
                         ("POST", "/v1/files")):
        assert limits.is_upload(method, path)
        scope = {"type": "http", "method": method, "path": path, "root_path": "",
                 "headers": []}
        assert any(r.matches(scope)[0] == Match.FULL for r in app.router.routes), path
    assert not limits.is_upload("POST", "/api/blobs")
    assert not limits.is_upload("PUT", "/api/blobs/x")


# --- the large-body slots: who holds one, and for how long ----------------------------------

_BIG = [(b"content-length", str(2 << 20).encode())]  # over limits.LARGE_BODY
_CHUNKED = [(b"transfer-encoding", b"chunked")]


def _reader(hold: anyio.Event) -> Any:
    """An ASGI app that reads the whole body, starts its answer, and ends it on ``hold``
    (a streamed answer)."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await hold.wait()
        await send({"type": "http.response.body", "body": str(size).encode()})
    return app


def _whole(size: int) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await anyio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": b"x" * size, "more_body": False}
    return receive


def _drip(every: float, chunk: bytes = b"x" * 10) -> Any:
    """A body that never ends: ``chunk`` every ``every`` seconds."""
    async def receive() -> dict[str, Any]:
        await anyio.sleep(every)
        return {"type": "http.request", "body": chunk, "more_body": True}
    return receive


def _slots(large_bodies: int = 1) -> tuple[anyio.Event, BodyLimit]:
    """Bodies up to 8 MiB to a ``_reader`` that ends its answers on the event, with
    ``large_bodies`` slots that are waited for half a second."""
    hold = anyio.Event()
    return hold, BodyLimit(_reader(hold), limit=8 << 20, timeout=0.5,
                           large_bodies=large_bodies)


async def _request(mw: BodyLimit, receive: Any, headers: list[tuple[bytes, bytes]],
                   sent: list[dict[str, Any]], client: str = "10.0.0.1") -> None:
    scope = {"type": "http", "method": "PUT", "path": "/api/blobs", "headers": headers,
             "client": (client, 40000), "query_string": b"", "root_path": ""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
    await mw(scope, receive, send)


async def _status(sent: list[dict[str, Any]], within: float = 10.0) -> int:
    with anyio.fail_after(within):
        while not sent:
            await anyio.sleep(0.01)
    status: int = sent[0]["status"]
    return status


def test_a_slot_is_held_while_the_body_arrives_not_while_the_answer_streams() -> None:
    # Before: held until the answer ended, so a second large body waited, then 503.
    async def main() -> None:
        hold, mw = _slots()
        a: list[dict[str, Any]] = []
        b: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_request, mw, _whole(2 << 20), _BIG, a)
            assert await _status(a) == 200  # its body read, its answer streaming
            tg.start_soon(_request, mw, _whole(2 << 20), _BIG, b)
            assert await _status(b) == 200
            hold.set()
        assert a[-1]["body"] == b[-1]["body"] == str(2 << 20).encode()
    anyio.run(main)


def test_a_chunked_body_takes_a_slot_only_past_a_large_body() -> None:
    # Before: any chunked body, however small, held a slot: a few drips took them all.
    async def main() -> None:
        hold, mw = _slots()
        drips: list[dict[str, Any]] = []
        big: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_request, mw, _drip(0.05), _CHUNKED, drips)
            await anyio.sleep(0.2)
            tg.start_soon(_request, mw, _whole(2 << 20), _BIG, big)
            assert await _status(big) == 200
            hold.set()
            tg.cancel_scope.cancel()
        # past LARGE_BODY a chunked body does wait for one: none is free while one is held
        hold2, mw = _slots()
        first: list[dict[str, Any]] = []
        late: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_request, mw, _drip(0.05), _BIG, first)
            await anyio.sleep(0.1)
            tg.start_soon(_request, mw, _drip(0.01, b"x" * (256 << 10)), _CHUNKED, late)
            assert await _status(late) == 503
            tg.cancel_scope.cancel()
        assert mw._mine == {}
    anyio.run(main)


def test_one_client_address_holds_at_most_two_slots() -> None:
    async def main() -> None:
        hold, mw = _slots(large_bodies=3)
        mine: list[list[dict[str, Any]]] = [[], [], []]
        other: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            for sent in mine:  # three dripping uploads from one address
                tg.start_soon(_request, mw, _drip(0.05), _BIG, sent, "10.0.0.1")
            await anyio.sleep(0.1)
            tg.start_soon(_request, mw, _whole(2 << 20), _BIG, other, "10.0.0.2")
            assert await _status(other) == 200  # before: 503, the first address had all 3
            assert await _status(mine[2]) == 503  # the third waited for its own address
            assert not mine[0] and not mine[1]  # still arriving, in their slots
            hold.set()
            tg.cancel_scope.cancel()
        assert mw._mine == {}  # every slot given back, every address forgotten
    anyio.run(main)


def test_a_body_in_a_slot_gets_no_long_grace_before_the_rate_counts() -> None:
    # Before: a whole body_timeout (30 s here) of grace, then min_rate, in a slot.
    async def main() -> None:
        hold = anyio.Event()
        mw = BodyLimit(_reader(hold), limit=8 << 20, timeout=30, min_rate=1000,
                       large_bodies=1)
        sent: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_request, mw, _drip(0.05), _BIG, sent)  # 200 bytes a second
            assert await _status(sent, within=10) == 408
        assert mw._mine == {}
    anyio.run(main)


@pytest.mark.parametrize(("value", "size"), [
    (b"0" * 5000 + b"8", 8), (b"0", 0), (b"0000", 0), (b"9" * 19, 10**19 - 1),
    (b"1" * 20, 10**19), (b"1" * 5000, 10**19), (b"", None), (b"-1", None), (b"1e3", None),
    (b" 8", None), ("²".encode("latin-1"), None), ("8\u00b2", None)])
def test_a_content_length_is_ascii_digits_and_never_parsed_long(value: bytes | str,
                                                                size: int | None) -> None:
    assert limits.declared_length(value) == size
