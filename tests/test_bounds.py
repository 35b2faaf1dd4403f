"""Every input bounded: each bad input gets a 4xx naming the field and moves no money.

Against a real coordinator process on loopback (SQLite; the integer-range case
also on PostgreSQL, where an out-of-range cursor used to be a 500), with raw
HTTP where the SDK would refuse to send the bad input itself. The rate limits
run on coordinators of their own, started with tiny buckets.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import auth, batch, market, wire
from deai.core.errors import InvalidInput
from tests.netutil import Network

MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600,
        "shard_size": 10}
LIMIT = 200_000
BIG = 2**63


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("bounds"), max_upload_bytes=LIMIT, verify=False)
    n.start_coordinator()
    yield n
    n.close()


def account(net: Network) -> Client:
    c = Client(net.url, Identity.generate())
    c.faucet(100_000_000)
    return c


def post(net: Network, who: Identity, path: str, body: bytes | Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{net.url}{path}", content=raw,
                      headers={**who.headers("POST", path, raw, network=net.network_id),
                               "content-type": "application/json"})


def refused(r: httpx.Response, field: str, status: int = 422) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field, r.text


def head(net: Network) -> int:
    return int(httpx.get(f"{net.url}/api/ledger/journal", params={"limit": 1}).json()["head_seq"])


REGISTRATION: dict[str, Any] = {
    "hardware": {"cpu_model": "cpu", "cores": 2, "memory_mb": 4096},
    "benchmark": {"gflops": 50.0, "mem_gbps": 10.0}, "threads": 1,
    "offers": [{"workload": "embeddings", "model": MODEL, "price": 1000}]}


# --- integers within the database's range ------------------------------------------------

# (path, parameter, the largest value its column holds): journal seq is a BIGINT,
# event ids an INTEGER.
CURSORS = [("/api/ledger/journal", "after", BIG - 1), ("/api/events", "after", 2**31 - 1),
           ("/api/explorer/ledger", "before", BIG - 1),
           ("/api/explorer/verification", "before", 2**31 - 1),
           ("/api/events/stream", "after", 2**31 - 1)]


def _cursors(net: Network) -> None:
    for path, param, top in CURSORS:
        for bad in (top + 1, BIG, 2**70, -1, "1e3", "nan"):
            r = httpx.get(f"{net.url}{path}", params={param: bad}, timeout=10)
            refused(r, f"query.{param}")
        if not path.endswith("stream"):
            assert httpx.get(f"{net.url}{path}", params={param: top}).status_code == 200
    r = httpx.get(f"{net.url}/api/events/stream", headers={"last-event-id": str(2**40)})
    refused(r, "Last-Event-ID")


def test_cursors_beyond_bigint_are_422(net: Network) -> None:
    _cursors(net)


def test_cursors_beyond_bigint_are_422_on_postgres(tmp_path_factory: pytest.TempPathFactory,
                                                   module_pg_url: str) -> None:
    n = Network(tmp_path_factory.mktemp("bounds-pg"), module_pg_url, verify=False)
    n.start_coordinator()
    try:
        _cursors(n)
    finally:
        n.close()


# --- JSON depth, non-finite numbers, body size ---------------------------------------------

def test_a_jsonl_line_nested_1000_levels_is_a_422_naming_the_line(net: Network) -> None:
    c = account(net)
    assert c.identity is not None
    before, seq = c.balance(), head(net)
    good = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": MODEL, "input": "x"}}).encode()
    deep = good + b"\n" + b"[" * 1000 + b"]" * 1000 + b"\n"
    r = post(net, c.identity, "/api/jobs", {"spec": SPEC,
                                             "input_digest": c.upload(deep).digest})
    refused(r, "input[line 2]")
    assert "nested" in r.json()["error"]["message"]
    assert c.balance() == before and head(net) == seq
    with pytest.raises(InvalidInput) as info:
        list(batch.jsonl(b"{}\n" + b"{\"a\":" * 100_000 + b"1" + b"}" * 100_000))
    assert info.value.field == "input[line 2]"


def test_deep_or_non_finite_json_bodies_are_refused_before_parsing(net: Network) -> None:
    me = Identity.generate()
    deep = b'{"spec": ' + b"[" * 5000 + b"]" * 5000 + b', "input_digest": "' + b"0" * 64 + b'"}'
    refused(post(net, me, "/api/jobs", deep), "body")
    for literal in (b"Infinity", b"-Infinity", b"NaN"):
        body = json.dumps(REGISTRATION).encode().replace(b"50.0", literal, 1)
        r = post(net, me, "/api/providers/register", body)
        refused(r, "body")
        assert "not a number JSON allows" in r.json()["error"]["message"]
    r = httpx.post(f"{net.url}/v1/chat/completions", content=b"[" * 3000 + b"]" * 3000,
                   headers={"authorization": "Bearer sk-deai-x",
                            "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def _raw(net: Network, request: bytes, chunks: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", net.port), timeout=30) as s:
        s.sendall(request)
        try:
            for ch in chunks:
                s.sendall(ch)
        except OSError:
            pass  # the server answered and closed before the body was all sent
        got = b""
        while b"\r\n\r\n" not in got:
            part = s.recv(65536)
            if not part:
                break
            got += part
        return got


def test_a_large_body_is_refused_before_it_is_read(net: Network) -> None:
    # Declared over the limit: answered at once, though not one byte of body was sent
    # (the old code would wait for 1 GB to arrive).
    req = (b"POST /api/faucet HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000000000\r\n\r\n")
    assert _raw(net, req, []).startswith(b"HTTP/1.1 413")
    # No length declared (chunked): counted as it streams, refused once past the limit
    # (a route that reads its body: an unsigned upload is refused before it is read).
    req = (b"POST /api/faucet HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 50_000
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    assert _raw(net, req, [chunk] * 8 + [b"0\r\n\r\n"]).startswith(b"HTTP/1.1 413")


# --- numbers: finite, in range, strict money -----------------------------------------------

def test_non_finite_timestamps_are_refused(net: Network) -> None:
    c = account(net)
    assert c.identity is not None
    before = c.balance()
    body = json.dumps({"amount": 5}).encode()
    for ts in ("nan", "NaN", "inf", "-inf", "1e400", "1" * 40):
        nonce = secrets.token_hex(8)
        sig = c.identity.sign(auth.message("POST", "/api/faucet", body, ts, nonce,
                                           network=c.network_id))
        r = httpx.post(f"{net.url}/api/faucet", content=body, headers={
            auth.HEADER_KEY: c.identity.id, auth.HEADER_TS: ts, auth.HEADER_NONCE: nonce,
            auth.HEADER_SIG: sig, "content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", ts
    assert c.balance() == before


def test_money_fields_are_strict_integers(net: Network) -> None:
    c = account(net)
    assert c.identity is not None
    before, seq = c.balance(), head(net)
    for bad in ("10", True, 1e3, 10.0, 10**16, -5):
        refused(post(net, c.identity, "/api/faucet", {"amount": bad}), "amount")
        refused(post(net, c.identity, "/api/api-keys", {"spend_cap": bad}), "spend_cap")
        offer = {**REGISTRATION["offers"][0], "price": bad}
        refused(post(net, c.identity, "/api/providers/register",
                     {**REGISTRATION, "offers": [offer]}), "offers.0.price")
    assert c.identity is not None
    assert post(net, c.identity, "/api/providers/register", REGISTRATION).status_code == 200
    for bad in ("10", True, 1e3):
        refused(post(net, c.identity, "/api/providers/bond", {"amount": bad}), "amount")
    assert c.balance() == before and head(net) == seq


def test_provider_registration_is_bounded(net: Network) -> None:
    me = Identity.generate()
    hw, bench = REGISTRATION["hardware"], REGISTRATION["benchmark"]
    cases = [
        ({"benchmark": {**bench, "gflops": 1e300}}, "benchmark.gflops"),
        ({"benchmark": {**bench, "mem_gbps": -1}}, "benchmark.mem_gbps"),
        ({"hardware": {**hw, "memory_mb": 10**13}}, "hardware.memory_mb"),
        ({"hardware": {**hw, "gpus": [{"name": "g" * 20_000}]}}, "hardware.gpus"),
        ({"hardware": {**hw, "gpus": [{}] * 65}}, "hardware.gpus"),
        ({"capabilities": {"x": "y" * 10_000}}, "capabilities"),
        ({"capabilities": {f"k{i}": 1 for i in range(40)}}, "capabilities"),
        ({"capabilities": {"a": {"b": {"c": {"d": 1}}}}}, "capabilities"),
        ({"name": "n" * 101}, "name"),
        ({"threads": 10**6}, "threads"),
    ]
    for change, field in cases:
        refused(post(net, me, "/api/providers/register", {**REGISTRATION, **change}), field)
    with Client(net.url) as anyone:  # the list everyone reads still parses
        assert all(math.isfinite(p.compute_units) for p in anyone.providers())


def test_a_result_with_units_beyond_the_column_is_a_422(net: Network) -> None:
    time.sleep(0.2)
    p, c = account(net), account(net)
    assert p.identity is not None and c.identity is not None
    p.register(wire.RegisterIn.model_validate({**REGISTRATION, "offers": [
        {**REGISTRATION["offers"][0], "price": 10}]}))
    p.bond(10_000_000)
    row = {"custom_id": "u0", "method": "POST", "url": "/v1/embeddings",
           "body": {"model": MODEL, "input": "units"}}
    c.submit_job(SPEC, c.upload(json.dumps(row).encode() + b"\n").digest)
    leases: list[wire.AssignmentOut] = []
    for _ in range(20):
        p.heartbeat([])  # a poll is no sign of life: beat as an agent does
        leases += p.poll(wait=2).assignments
        if leases:
            break
    assert leases
    a, seq = leases[0], head(net)
    digest = "ab" * 32
    for units in (2**70, 2**31, -1, "3", 1.5):
        sig = p.identity.sign(auth.result_message(a.id, digest, 1))
        r = post(net, p.identity, f"/api/assignments/{a.id}/result",
                 {"output_digest": digest, "units": units, "signature": sig})
        refused(r, "units")
    r = post(net, p.identity, f"/api/assignments/{a.id}/result",
             {"output_digest": digest, "units": 1, "seconds": 1e300,
              "signature": p.identity.sign(b"x")})
    refused(r, "seconds")
    assert head(net) == seq


def test_quote_shard_units_are_bounded_and_answer_at_once(net: Network) -> None:
    for units, field in (([10**22], "shard_units.0"), ([10**25], "shard_units.0"),
                         ([2**31], "shard_units.0"), (["5"], "shard_units.0")):
        r = httpx.post(f"{net.url}/api/market/quote",
                       json={"spec": SPEC, "shard_units": units}, timeout=30)
        refused(r, field)
    r = httpx.post(f"{net.url}/api/market/quote",
                   json={"spec": SPEC, "shard_units": [2**31 - 1] * 3}, timeout=30)
    assert r.status_code == 200, r.text
    with pytest.raises(ValueError, match="shard_units"):
        wire.QuoteIn(spec=SPEC, shard_units=[1] * 100_001)


def _stake_by_steps(value: int, slash_fraction: float, p: float) -> int:
    """The definition ``stake_for`` had before it was closed-form (a reference)."""
    if value <= 0:
        return 0
    if slash_fraction <= 0 or p <= 0:
        return 2**62
    loss = int(value * (1 - p) / p) + 1
    stake = math.ceil(loss / slash_fraction)
    while int(stake * slash_fraction) < loss:
        stake += 1
    return stake


@given(st.integers(0, 10**15), st.floats(1e-4, 1.0), st.floats(1e-3, 1.0))
def test_stake_for_is_the_stepwise_definition(value: int, slash: float, p: float) -> None:
    assert market.stake_for(value, slash, p) == _stake_by_steps(value, slash, p)


def test_stake_for_huge_values_returns() -> None:
    for value in (10**22, 10**25, 10**30):
        stake = market.stake_for(value, 0.5, 0.1)
        assert int(stake * 0.5) >= int(value * 0.9 / 0.1) + 1
        assert int((stake - 1) * 0.5) < int(value * 0.9 / 0.1) + 1 or stake * 0.5 == (
            (stake - 1) * 0.5)


def test_wire_inputs_refuse_non_finite_floats() -> None:
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            wire.Benchmark(gflops=bad, mem_gbps=1.0)
        with pytest.raises(ValueError):
            wire.PollIn(wait=bad)


# --- request rates -----------------------------------------------------------------------

def _limited(tmp: pytest.TempPathFactory, name: str, **env: str) -> Network:
    n = Network(tmp.mktemp(name), verify=False)
    n.env.update(env)
    n.start_coordinator()
    return n


def test_rate_limit_per_address_answers_429_with_retry_after(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    n = _limited(tmp_path_factory, "rate-ip", DEAI_RATE_PER_IP="0.01/5")
    try:
        codes = [httpx.get(f"{n.url}/api/network") for _ in range(8)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited, [r.status_code for r in codes]
        r = limited[0]
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert httpx.get(f"{n.url}/health").status_code == 200  # health is never limited
    finally:
        n.close()


def test_rate_limit_per_api_key_answers_429_with_openai_headers(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    n = _limited(tmp_path_factory, "rate-key", DEAI_RATE_PER_IP="0", DEAI_RATE_PER_KEY="0.01/3")
    try:
        c = Client(n.url, Identity.generate())
        c.faucet(1_000_000)
        ka, kb = c.create_api_key("a").key, c.create_api_key("b").key
        seen = []
        for _ in range(3):
            r = httpx.get(f"{n.url}/v1/models", headers={"authorization": f"Bearer {ka}"})
            assert r.status_code == 200, r.text
            seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
            assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert seen == [2, 1, 0]
        r = httpx.get(f"{n.url}/v1/models", headers={"authorization": f"Bearer {ka}"})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1 and "x-ratelimit-reset-requests" in r.headers
        r = httpx.get(f"{n.url}/v1/models", headers={"authorization": f"Bearer {kb}"})
        assert r.status_code == 200  # another key has its own bucket
    finally:
        n.close()
