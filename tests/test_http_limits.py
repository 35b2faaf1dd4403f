"""The HTTP front bounds what an anonymous client can hold: heads, bodies, sockets, rates.

Against real coordinator processes on loopback, started with tight bounds
(``DEAI_HEAD_TIMEOUT``, ``DEAI_BODY_TIMEOUT``, ...; ``Settings``). Before,
a 1 MiB header was read whole and answered; half a request line, or half a
body, held its socket (and the body read so far) forever; at the process's
file limit nobody else was served; and behind a trusted proxy every client
shared the proxy's rate bucket. Timeouts here are behaviour (the server
answers 408 or hangs up), never speed thresholds.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deai.client.keys import Identity
from deai.coordinator import http_protocol
from tests.netutil import Network

TIGHT = {"DEAI_HEAD_TIMEOUT": "1", "DEAI_BODY_TIMEOUT": "1", "DEAI_MAX_HEAD_BYTES": "16384",
         "DEAI_MAX_JSON_BYTES": "100000", "DEAI_MAX_LARGE_BODIES": "2"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("http-limits"), verify=False)
    n.env.update(TIGHT)
    n.start_coordinator()
    yield n
    n.close()


def _connect(net: Network) -> socket.socket:
    return socket.create_connection(("127.0.0.1", net.port), timeout=30)


def _answer(s: socket.socket, wait: float = 20.0) -> bytes:
    """What the server sends before it hangs up (b"" if it closed without a word), or
    raises TimeoutError if it keeps the socket open past ``wait`` seconds."""
    s.settimeout(wait)
    got = b""
    try:
        while True:
            part = s.recv(65536)
            if not part:
                return got
            got += part
            if b"\r\n\r\n" in got and b"connection: close" not in got.lower():
                return got
    except ConnectionResetError:
        return got
    except TimeoutError:
        if got:
            return got
        raise


def test_a_huge_header_is_refused_431_not_read_whole(net: Network) -> None:
    with _connect(net) as s:
        s.sendall(b"GET /api/network HTTP/1.1\r\nHost: x\r\nX-A: ")
        with contextlib.suppress(OSError):  # the server hangs up before it is all sent
            for _ in range(64):
                s.sendall(b"A" * 16384)
        got = _answer(s)
    assert got.startswith(b"HTTP/1.1 431") or got == b"", got[:80]
    assert httpx.get(f"{net.url}/api/network").status_code == 200


def test_a_huge_url_is_refused_431(net: Network) -> None:
    with _connect(net) as s:
        with contextlib.suppress(OSError):
            s.sendall(b"GET /api/events?kind=" + b"A" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        got = _answer(s)
    assert got.startswith(b"HTTP/1.1 431") or got == b"", got[:80]


def test_a_head_sent_too_slowly_is_cut_off(net: Network) -> None:
    with _connect(net) as s:
        s.sendall(b"GET /api/network HTTP/1.1\r\n")  # and never the rest
        got = _answer(s)
    assert got.startswith(b"HTTP/1.1 408") or got == b"", got[:80]
    with _connect(net) as s:  # a connection that never says a word
        assert _answer(s) == b""


def test_a_body_sent_too_slowly_is_answered_408(net: Network) -> None:
    me = Identity.generate()
    blob = b"x" * 1000  # signed whole, sent in part: the signature needs the body read
    signed = me.headers("PUT", "/api/blobs", blob, network=net.network_id)
    heads = [b"POST /api/faucet HTTP/1.1\r\nContent-Type: application/json\r\n",
             b"PUT /api/blobs HTTP/1.1\r\nContent-Type: application/octet-stream\r\n"
             + b"".join(f"{k}: {v}\r\n".encode() for k, v in signed.items())]
    for head in heads:
        with _connect(net) as s:
            s.sendall(head + b"Host: x\r\nContent-Length: 1000\r\n\r\n{")
            got = _answer(s)
        assert got.startswith(b"HTTP/1.1 408"), (head[:20], got[:200])
        assert b"request_timeout" in got


def test_others_are_served_while_slow_clients_hold_sockets(net: Network) -> None:
    slow = []
    try:
        for i in range(40):
            s = _connect(net)
            if i % 2:
                s.sendall(b"POST /api/faucet HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 90000\r\n\r\n" + b" " * 60000)
            else:
                s.sendall(b"GET /api/network HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        r = httpx.get(f"{net.url}/api/network", timeout=10)
        assert r.status_code == 200
        for s in slow:  # every one of them let go, none holds a socket open
            assert _answer(s).startswith((b"HTTP/1.1 408", b"")), "a slow client kept its socket"
    finally:
        for s in slow:
            s.close()


def test_a_json_body_past_its_own_limit_is_413_an_upload_is_not(net: Network) -> None:
    body = b"[" + b"[]," * 40_000 + b"[]]"  # 120 KB: over DEAI_MAX_JSON_BYTES
    r = httpx.post(f"{net.url}/api/jobs", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["details"]["limit"] == 100_000, r.text
    r = httpx.put(f"{net.url}/api/blobs", content=body,
                  headers={"content-type": "application/json"})
    assert r.status_code == 401, r.text  # unsigned, but not too large for an upload


def test_a_body_to_no_route_is_not_read(net: Network) -> None:
    # 404 at once, though the declared body never comes (before, the server waited for it).
    with _connect(net) as s:
        s.sendall(b"POST /no/such/path HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 90000\r\n\r\n[")
        got = _answer(s)
    assert got.startswith(b"HTTP/1.1 404"), got[:80]  # not 408: it never waited for it


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no file limit")


def test_the_file_limit_is_raised_and_idle_sockets_do_not_starve_others(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 2000:
        pytest.skip("needs a hard file limit of 2000")
    n = Network(tmp_path_factory.mktemp("nofile"), verify=False)
    n.env.update({"DEAI_HEAD_TIMEOUT": "30"})
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the coordinator inherits it
    try:
        n.start_coordinator()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle = []
    try:
        assert n.coordinator is not None
        assert _nofile(n.coordinator.p.pid)[0] == _nofile(n.coordinator.p.pid)[1]
        for i in range(300):  # more than the soft limit it was started with, from two
            s = socket.create_connection(("127.0.0.1", n.port), timeout=30,  # peers (each
                                         source_address=(f"127.0.0.{2 + i % 2}", 0))  # capped)
            s.sendall(b"GET /api/network HTTP/1.1\r\n")
            idle.append(s)
        time.sleep(1)
        assert httpx.get(f"{n.url}/api/network", timeout=20).status_code == 200
    finally:
        for s in idle:
            s.close()
        n.close()


def test_behind_a_trusted_proxy_each_client_has_its_own_rate_bucket(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    n = Network(tmp_path_factory.mktemp("xff"), verify=False, extra=("--trust-forwarded-for",))
    n.env.update({"DEAI_RATE_PER_IP": "0.01/5"})
    n.start_coordinator()
    try:
        url = f"{n.url}/api/network"
        flood = [httpx.get(url, headers={"x-forwarded-for": "203.0.113.7"}).status_code
                 for _ in range(10)]
        assert 429 in flood
        victim = httpx.get(url, headers={"x-forwarded-for": "198.51.100.9"})
        assert victim.status_code == 200, victim.text
        # the last hop is the proxy's word; what the client wrote before it is not
        spoof = httpx.get(url, headers={"x-forwarded-for": "198.51.100.10, 203.0.113.7"})
        assert spoof.status_code == 429
    finally:
        n.close()


def _signed_head(net: Network, me: Identity, blob: bytes) -> bytes:
    signed = me.headers("PUT", "/api/blobs", blob, network=net.network_id)
    return (b"PUT /api/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in signed.items()))


def test_a_content_length_of_5000_digits_is_no_server_error(net: Network) -> None:
    # Before: it passed isdigit(), then int() refused over 4,300 digits: 500 (both in
    # limits.BodyLimit and in auth.read_body, behind it on a signed route).
    me = Identity.generate()
    blob = b'{"x":[]}'
    heads = [b"POST /api/faucet HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
             _signed_head(net, me, blob)]
    for head in heads:
        for length, body, ok in [(b"0" * 5000 + b"8", blob, (b"2", b"4")),
                                 (b"1" * 5000, blob, (b"400", b"413")),
                                 (b"9" * 25, blob, (b"400", b"413"))]:
            with _connect(net) as s:
                s.sendall(head + b"Content-Length: " + length + b"\r\n\r\n" + body)
                got = _answer(s)
            assert got.startswith(b"HTTP/1.1 ") and got[9:].startswith(ok), (head[:20], got)


def test_small_chunked_bodies_do_not_keep_large_uploads_out(net: Network) -> None:
    # Before: every chunked body held a large-body slot (2 here) until answered, so two
    # dripping ones got an honest provider's 2 MiB upload a 503.
    stop = threading.Event()

    def drip() -> None:
        with _connect(net) as s:
            s.sendall(b"POST /api/faucet HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n[\r\n")
            with contextlib.suppress(OSError):
                while not stop.wait(0.2):
                    s.sendall(b"1000\r\n" + b" " * 4096 + b"\r\n")
    drippers = [threading.Thread(target=drip) for _ in range(2)]
    for t in drippers:
        t.start()
    try:
        time.sleep(0.3)
        me = Identity.generate()
        blob = b"x" * (2 << 20)
        r = httpx.put(f"{net.url}/api/blobs", content=blob, timeout=30,
                      headers=me.headers("PUT", "/api/blobs", blob, network=net.network_id))
        assert r.status_code != 503, r.text
    finally:
        stop.set()
        for t in drippers:
            t.join()


def test_one_peer_cannot_hold_every_connection(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # Before: 300 idle sockets from one peer filled limit_concurrency (300 here) and
    # everyone else got 503 for as long as it kept them (each up to the head timeout).
    n = Network(tmp_path_factory.mktemp("peers"), verify=False)
    n.env.update({"DEAI_HEAD_TIMEOUT": "30", "DEAI_MAX_CONNECTIONS": "300"})
    n.start_coordinator()
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", n.port), timeout=30,
                                                 source_address=("127.0.0.2", 0)))
        time.sleep(1)  # those over the cap are closed at once, the others kept open
        closed = 0
        for s in idle:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                closed += s.recv(1) == b""
        assert closed == 300 - http_protocol.MAX_CONNECTIONS_PER_PEER, closed
        r = httpx.get(f"{n.url}/api/network", timeout=20)  # from 127.0.0.1
        assert r.status_code == 200, r.text
    finally:
        for s in idle:
            s.close()
        n.close()


def test_a_peers_websockets_do_not_use_up_its_connections(net: Network) -> None:
    """An upgraded connection is the WebSocket protocol's from then on, and its end never
    reached the HTTP protocol's count: every WebSocket a peer ever opened kept a place,
    and after ``MAX_CONNECTIONS_PER_PEER`` of them (a cluster's forwarded requests, lease
    shells) the peer was refused for good."""
    req = (b"GET /api/leases/lease_x/attach HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    for _ in range(http_protocol.MAX_CONNECTIONS_PER_PEER + 20):
        with _connect(net) as s:
            s.sendall(req)
            assert _answer(s).startswith(b"HTTP/1.1 "), "refused before its answer"
    assert httpx.get(f"{net.url}/api/network", timeout=20).status_code == 200
