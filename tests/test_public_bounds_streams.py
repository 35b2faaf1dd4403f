"""Connections a stranger can hold open cost a bounded share of the coordinator.

The coordinator's ASGI app runs under uvicorn on a loopback port, in a thread of the
test process (``explorer_world.serve``), so a test can count what the server does
(database reads, matcher kicks) and lower its caps:

- event streams: one reader per coordinator reads each new event once, whatever the
  number of streams; streams are capped per address (429) and overall (503); a stream
  ends after its lifetime and its client resumes with ``Last-Event-ID``;
- long-polls: one live poll per provider key; a newer poll ends the older with an
  empty answer, and only the first asks the matcher to run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import api_explorer, explorer_views, public_reads
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import wire
from tests.explorer_world import serve


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[tuple[Coordinator, str]]:
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    with serve(c) as url:
        yield c, url


def events_of(lines: Iterator[str], want: int,
              until: float) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``want`` events, and whether the stream ended (rather than ``want`` came)."""
    got: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif not line and current:
            got.append(current)
            current = {}
            if len(got) >= want:
                return got, False
        if time.time() > until:
            return got, False
    return got, True


class Streams:
    """``n`` streams held open in threads; each collects ``want`` events."""

    def __init__(self, url: str, n: int, want: int, params: dict[str, Any],
                 seconds: float = 30.0) -> None:
        self.seconds = seconds
        self.got: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.ready = threading.Barrier(n + 1, timeout=60)
        self.threads = [threading.Thread(target=self._run, args=(url, i, want, params))
                        for i in range(n)]
        for t in self.threads:
            t.start()
        self.ready.wait()

    def _run(self, url: str, i: int, want: int, params: dict[str, Any]) -> None:
        with httpx.stream("GET", f"{url}/api/events/stream", params=params,
                          timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("retry:")  # the stream is open
            self.ready.wait()
            self.got[i], _ = events_of(lines, want, time.time() + self.seconds)

    def join(self) -> None:
        for t in self.threads:
            t.join(60)


def test_one_read_of_new_events_serves_every_stream(coord: tuple[Coordinator, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    c, url = coord
    reads = [0]
    real = explorer_views.events_after

    def counted(*args: Any, **kwargs: Any) -> explorer_views.EventsPage:
        reads[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(explorer_views, "events_after", counted)
    n, k = 12, 5
    streams = Streams(url, n, k, {"heartbeat": 30})
    filtered = Streams(url, 3, 1, {"kind": "no_such_kind", "heartbeat": 0.5}, seconds=4)
    time.sleep(0.5)
    reads[0] = 0
    accounts = [Identity.generate().id for _ in range(k)]
    for a in accounts:
        c.faucet(a, 1000)
        time.sleep(0.2)
    streams.join()
    for got in streams.got:
        assert [e["data"]["subject"] for e in got] == accounts
        assert [e["id"] for e in got] == sorted(e["id"] for e in got)
    assert reads[0] < n, f"{reads[0]} reads of the events for {n} streams"
    assert all(got == [] for got in filtered.got)  # a stream's kinds, filtered in memory
    filtered.join()


def test_streams_are_capped_per_address_and_overall(coord: tuple[Coordinator, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = coord
    monkeypatch.setattr(api_explorer, "MAX_STREAMS_PER_ADDRESS", 3)
    monkeypatch.setattr(api_explorer, "MAX_STREAMS", 5)
    stream = f"{url}/api/events/stream"
    with httpx.Client(timeout=30) as h:
        opened = [h.send(h.build_request("GET", stream), stream=True) for _ in range(3)]
        assert [r.status_code for r in opened] == [200] * 3
        more = h.get(stream)
        assert more.status_code == 429 and more.json()["error"]["code"] == "rate_limited"
        # Another address (a trusted proxy's X-Forwarded-For is not trusted here, so
        # the cap is on the socket's address): over the overall cap, 503.
        monkeypatch.setattr(api_explorer, "MAX_STREAMS_PER_ADDRESS", 10)
        opened += [h.send(h.build_request("GET", stream), stream=True) for _ in range(2)]
        assert [r.status_code for r in opened] == [200] * 5
        assert h.get(stream).status_code == 503
        opened.pop().close()
        end = time.time() + 10
        while True:  # a closed stream gives its place back
            r = h.send(h.build_request("GET", stream), stream=True)
            if r.status_code == 200 or time.time() > end:
                break
            time.sleep(0.2)
        assert r.status_code == 200
        for x in (*opened, r):
            x.close()


def test_a_stream_ends_after_its_lifetime_and_resumes(coord: tuple[Coordinator, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    c, url = coord
    monkeypatch.setattr(api_explorer, "STREAM_LIFETIME_S", 2.0)
    first = Identity.generate().id
    c.faucet(first, 1000)
    with httpx.stream("GET", f"{url}/api/events/stream", params={"after": 0, "heartbeat": 0.5},
                      timeout=30) as r:
        got, ended = events_of(r.iter_lines(), 1000, time.time() + 20)
    assert ended, "the stream outlived its lifetime"
    assert got and got[-1]["data"]["subject"] == first
    second = Identity.generate().id
    c.faucet(second, 1000)
    with httpx.stream("GET", f"{url}/api/events/stream",
                      headers={"Last-Event-ID": str(got[-1]["id"])}, timeout=30) as r:
        again, _ = events_of(r.iter_lines(), 1, time.time() + 20)
    assert [e["data"]["subject"] for e in again] == [second]


def registered(url: str) -> Identity:
    me = Identity.generate()
    Client(url, me).register(wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="x", cores=2, memory_mb=1024),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model="all-MiniLM-L6-v2", price=1)]))
    return me


def test_a_newer_poll_ends_the_older(coord: tuple[Coordinator, str]) -> None:
    _, url = coord
    me = registered(url)
    done: list[str] = []

    def poll(name: str, wait: float) -> None:
        out = Client(url, me).poll(wait=wait)
        assert out.assignments == []
        done.append(name)

    older = threading.Thread(target=poll, args=("older", 30.0))
    older.start()
    time.sleep(1.0)
    newer = threading.Thread(target=poll, args=("newer", 4.0))
    newer.start()
    older.join(40)
    newer.join(40)
    assert done == ["older", "newer"]


def test_only_the_first_of_concurrent_polls_kicks_the_matcher(
        coord: tuple[Coordinator, str], monkeypatch: pytest.MonkeyPatch) -> None:
    c, url = coord
    me = registered(url)
    kicks = [0]
    real = c.notifier.kick

    def counted() -> None:
        kicks[0] += 1
        real()

    monkeypatch.setattr(c.notifier, "kick", counted)
    n = 10
    answers: list[int] = []
    first = threading.Thread(target=lambda: answers.append(
        len(Client(url, me).poll(wait=8.0).assignments)))
    first.start()
    time.sleep(1.0)
    rest = [threading.Thread(target=lambda: answers.append(
        len(Client(url, me).poll(wait=4.0).assignments))) for _ in range(n - 1)]
    for t in rest:
        t.start()
    for t in (first, *rest):
        t.join(30)
    assert answers == [0] * n
    assert kicks[0] == 1, f"{kicks[0]} kicks for {n} concurrent polls of one key"


def test_heavy_public_reads_beyond_their_slots_are_429_not_500(
        coord: tuple[Coordinator, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A read over its slots is refused at once; it neither queues for a thread nor
    holds a database connection while it waits."""
    _, url = coord
    monkeypatch.setattr(public_reads, "SLOTS", 2)
    entered, release = threading.Semaphore(0), threading.Event()
    real = explorer_views.overview

    def held(*args: Any) -> Any:
        entered.release()
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(explorer_views, "overview", held)
    codes: list[int] = []

    def get(window: int) -> None:
        codes.append(httpx.get(f"{url}/api/explorer/overview", params={"window": window},
                               timeout=60).status_code)

    first = [threading.Thread(target=get, args=(60 + i,)) for i in range(2)]
    for t in first:
        t.start()
    for _ in first:
        assert entered.acquire(timeout=30)
    more = [threading.Thread(target=get, args=(70 + i,)) for i in range(4)]
    for t in more:
        t.start()
    for t in more:
        t.join(30)
    refused = list(codes)
    release.set()
    for t in first:
        t.join(30)
    assert refused == [429] * 4
    assert sorted(codes) == [200, 200] + [429] * 4
