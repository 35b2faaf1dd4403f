"""Connections a stranger can hold open cost a bounded share of the coordinator.

The coordinator's ASGI app runs under uvicorn on a loopback port, in a thread of the
test process (``explorer_world.serve``), so a test can count what the server does
(database reads, matcher kicks) and lower its caps:

- event streams: one reader per coordinator reads each new event once, whatever the
  number of streams, retries its start, and ends the streams it fed when it stops;
  streams are capped per address (an IPv6 one by its /64) and overall, and one over a
  cap is told to come back (``retry:``) as a browser's EventSource obeys; a stream
  ends after its lifetime and its client resumes with ``Last-Event-ID``;
- heavy public reads: over their slots (in all, per address) a read waits a moment
  before a 429 its clients retry; a kept overview needs no slot; windows are widened
  to a few, so varying them does not make every request a computation;
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

from deai.client import sdk
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


REFUSED = "retry: 10000"


def first_line(h: httpx.Client, url: str, **headers: str
               ) -> tuple[httpx.Response, str, Iterator[str]]:
    """A stream's answer, held open, and its first line: ``retry: 2000`` for a stream,
    ``REFUSED`` for one over a cap (still 200 text/event-stream, since a browser's
    EventSource never retries a 429 or 503; it ends right after)."""
    r = h.send(h.build_request("GET", f"{url}/api/events/stream", headers=headers),
               stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = r.iter_lines()
    return r, next(lines), lines


def test_streams_are_capped_per_address_and_overall(coord: tuple[Coordinator, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = coord
    monkeypatch.setattr(api_explorer, "MAX_STREAMS_PER_ADDRESS", 3)
    monkeypatch.setattr(api_explorer, "MAX_STREAMS", 5)
    with httpx.Client(timeout=30) as h:
        held = [first_line(h, url) for _ in range(3)]
        assert [line for _, line, _ in held] == ["retry: 2000"] * 3
        r, line, rest = first_line(h, url)  # over this address's cap
        assert line == REFUSED and len(list(rest)) < 5  # and it ends
        # Another address (a trusted proxy's X-Forwarded-For is not trusted here, so
        # the cap is on the socket's address): over the overall cap.
        monkeypatch.setattr(api_explorer, "MAX_STREAMS_PER_ADDRESS", 10)
        held += [first_line(h, url) for _ in range(2)]
        assert [line for _, line, _ in held] == ["retry: 2000"] * 5
        assert first_line(h, url)[1] == REFUSED
        held.pop()[0].close()
        end = time.time() + 10
        while True:  # a closed stream gives its place back
            r, line, _ = first_line(h, url)
            if line != REFUSED or time.time() > end:
                break
            r.close()
            time.sleep(0.2)
        assert line == "retry: 2000"
        for x in (*(x for x, _, _ in held), r):
            x.close()


def test_ipv6_addresses_are_counted_by_their_64(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One host usually holds a whole /64: its addresses share one cap."""
    monkeypatch.setattr(api_explorer, "MAX_STREAMS_PER_ADDRESS", 1)
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True, trust_forwarded_for=True))
    with serve(c) as url, httpx.Client(timeout=30) as h:
        a = first_line(h, url, **{"X-Forwarded-For": "2001:db8::1"})
        b = first_line(h, url, **{"X-Forwarded-For": "2001:db8::2"})
        other = first_line(h, url, **{"X-Forwarded-For": "2001:db8:0:1::1"})
        assert [a[1], b[1], other[1]] == ["retry: 2000", REFUSED, "retry: 2000"]
        for r, _, _ in (a, b, other):
            r.close()


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




def test_heavy_public_reads_wait_for_a_slot_then_are_429_not_500(
        coord: tuple[Coordinator, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A read over its slots waits on the event loop (neither a thread nor a database
    connection) up to ``WAIT_S``, then is refused with the wait it should retry after."""
    _, url = coord
    monkeypatch.setattr(public_reads, "SLOTS", 2)
    monkeypatch.setattr(public_reads, "PER_ADDRESS", 10)
    monkeypatch.setattr(public_reads, "WAIT_S", 1.0)
    held = Held(monkeypatch)
    codes: list[int] = []
    first = [held.overview_in_thread(url, codes, w) for w in (60, 600)]
    held.entered_at_least(2)
    started = time.time()
    more = [held.overview_in_thread(url, codes, w) for w in (3600, 21600)]
    for t in more:
        t.join(30)
    waited = time.time() - started
    refusals = held.refusals
    held.release.set()
    for t in first:
        t.join(30)
    assert sorted(codes) == [200, 200] and waited >= 0.9
    assert [b["error"]["code"] for b in refusals] == ["rate_limited"] * 2
    assert all(b["error"]["details"]["retry_after"] >= 1 for b in refusals)
    assert held.entered == 2


def test_a_read_waits_for_a_slot_rather_than_429(coord: tuple[Coordinator, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Viewers refreshing together queue for a moment; none is answered 429."""
    _, url = coord
    monkeypatch.setattr(public_reads, "SLOTS", 1)
    held = Held(monkeypatch)
    codes: list[int] = []
    first = held.overview_in_thread(url, codes, 60)
    held.entered_at_least(1)
    second = held.overview_in_thread(url, codes, 600)
    time.sleep(0.5)
    held.release.set()
    for t in (first, second):
        t.join(30)
    assert codes == [200, 200] and held.entered == 2


def test_one_address_holds_at_most_two_slots(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True, trust_forwarded_for=True))
    with serve(c) as url:
        held = Held(monkeypatch)
        codes: list[int] = []
        mine = [held.overview_in_thread(url, codes, w, address="192.0.2.1")
                for w in (60, 600, 3600)]
        held.entered_at_least(2)
        time.sleep(0.5)
        assert held.entered == 2  # the third waits for one of this address's slots
        other = httpx.get(f"{url}/api/providers", timeout=10,
                          headers={"X-Forwarded-For": "198.51.100.7"})
        assert other.status_code == 200  # another address is not kept waiting
        held.release.set()
        for t in mine:
            t.join(30)
        assert codes == [200] * 3 and held.entered == 3


def test_a_kept_overview_is_answered_without_a_slot(coord: tuple[Coordinator, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    c, url = coord
    monkeypatch.setattr(public_reads, "SLOTS", 1)
    monkeypatch.setattr(public_reads, "WAIT_S", 0.5)
    assert httpx.get(f"{url}/api/explorer/overview", timeout=30).status_code == 200
    entered, release = threading.Event(), threading.Event()
    real = c.providers_page

    def slow(*args: Any) -> Any:
        entered.set()
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(c, "providers_page", slow)
    busy = threading.Thread(target=lambda: httpx.get(f"{url}/api/providers", timeout=60))
    busy.start()
    try:
        assert entered.wait(30)  # the only slot is taken
        r = httpx.get(f"{url}/api/explorer/overview", timeout=30)
        assert r.status_code == 200, r.text
    finally:
        release.set()
        busy.join(30)


def test_windows_are_widened_to_a_few_so_random_ones_share(
        coord: tuple[Coordinator, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = coord
    calls = [0]
    real = explorer_views.overview

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(explorer_views, "overview", counted)
    asked = [(61, 700), (99.5, 1000), (300, 3000), (417.25, 2000), (599, 3599), (600, 3600)]
    got = [httpx.get(f"{url}/api/explorer/overview", params={"window": w, "price_window": p},
                     timeout=30).status_code for w, p in asked]
    assert got == [200] * len(asked)
    assert calls[0] <= 2, f"{calls[0]} computations of windows widened to one pair"


def test_the_sdk_rides_out_a_429(monkeypatch: pytest.MonkeyPatch) -> None:
    from deai.client import sdk
    from deai.core.errors import RateLimited

    waits: list[float] = []
    monkeypatch.setattr(sdk.time, "sleep", waits.append)
    tries = [0]

    def busy() -> str:
        tries[0] += 1
        if tries[0] < 3:
            raise RateLimited("too many public reads at once; retry in 2 s", retry_after=3)
        return "ok"

    assert sdk.retrying(busy, base=0.01) == "ok" and tries[0] == 3
    assert len(waits) == 2 and all(3 <= w < 3.1 for w in waits)  # as the server asked

    def always() -> str:
        raise RateLimited("too many requests from this address; retry in 40 s")

    waits.clear()
    with pytest.raises(RateLimited):
        sdk.retrying(always, base=0.01, cap=15.0)
    assert len(waits) == sdk.RATE_LIMITED_ATTEMPTS - 1 and max(waits) < 15.1  # bounded


def test_the_event_reader_retries_its_start(coord: tuple[Coordinator, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A database hiccup as the reader starts does not end it for good."""
    c, url = coord
    real, failed = explorer_views.latest_event_id, [0]

    def hiccup(*args: Any) -> int:
        if not failed[0]:
            failed[0] += 1
            raise RuntimeError("the database hiccupped")
        return real(*args)

    monkeypatch.setattr(explorer_views, "latest_event_id", hiccup)
    account = Identity.generate().id
    with httpx.stream("GET", f"{url}/api/events/stream", params={"after": 0, "heartbeat": 0.5},
                      timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        time.sleep(1.0)
        c.faucet(account, 1000)
        got, _ = events_of(lines, 1000, time.time() + 6)
    assert failed[0] == 1 and account in [e["data"]["subject"] for e in got]


def test_streams_end_when_their_reader_stops(coord: tuple[Coordinator, str]) -> None:
    """A later reader starts from the newest event: the streams the old one served end,
    and their clients resume with Last-Event-ID rather than miss what came between."""
    c, url = coord
    with httpx.stream("GET", f"{url}/api/events/stream", params={"after": 0, "heartbeat": 0.5},
                      timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        hub = api_explorer._hub(c)
        end = time.time() + 10
        while hub.cursor is None and time.time() < end:
            time.sleep(0.05)
        task = hub._task
        assert task is not None and hub.cursor is not None
        task.get_loop().call_soon_threadsafe(task.cancel)
        _, ended = events_of(lines, 1000, time.time() + 5)
    assert ended, "a stream outlived the reader that fed it"


class Held:
    """``explorer_views.overview`` held until ``release``; counts the computations that
    began, and collects the bodies of refusals."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = 0
        self.refusals: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._lock = threading.Condition()
        real = explorer_views.overview

        def held(*args: Any) -> Any:
            with self._lock:
                self.entered += 1
                self._lock.notify_all()
            self.release.wait(30)
            return real(*args)

        monkeypatch.setattr(explorer_views, "overview", held)

    def entered_at_least(self, n: int) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.entered >= n, 30)

    def overview_in_thread(self, url: str, codes: list[int], window: int, *,
                           address: str | None = None,
                           into: list[int] | None = None) -> threading.Thread:
        """GET the overview for ``window`` in a thread; a 200's status goes to ``codes``
        (``into``, if given), a refusal's body to the held overview's ``refusals``."""
        def get() -> None:
            headers = {"X-Forwarded-For": address} if address else {}
            r = httpx.get(f"{url}/api/explorer/overview", params={"window": window},
                          headers=headers, timeout=60)
            if r.status_code == 429:
                self.refusals.append(r.json())
            else:
                codes.append(r.status_code)

        t = threading.Thread(target=get)
        t.start()
        return t


def test_the_sdks_provider_list_rides_out_a_busy_moment(
        coord: tuple[Coordinator, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``Client.providers`` asks a page again after a 429 instead of failing the whole
    list: the slot is held by another reader past the wait, then freed."""
    c, url = coord
    monkeypatch.setattr(public_reads, "SLOTS", 1)
    monkeypatch.setattr(public_reads, "WAIT_S", 0.2)
    entered, release = threading.Event(), threading.Event()
    real, refused = c.providers_page, [0]

    def slow(*args: Any) -> Any:
        if not release.is_set():
            entered.set()
            release.wait(30)
        return real(*args)

    monkeypatch.setattr(c, "providers_page", slow)
    busy = threading.Thread(target=lambda: httpx.get(f"{url}/api/providers", timeout=60))
    busy.start()
    assert entered.wait(30)  # the only slot is taken
    got: list[Any] = []
    real_sleep = sdk.time.sleep

    def waited(s: float) -> None:  # the SDK backs off: the holder lets go meanwhile
        refused[0] += 1
        release.set()
        real_sleep(min(s, 0.5))

    monkeypatch.setattr(sdk.time, "sleep", waited)
    reader = threading.Thread(target=lambda: got.append(Client(url).providers()))
    reader.start()
    reader.join(60)
    release.set()
    busy.join(30)
    assert refused[0] >= 1 and got == [[]]
