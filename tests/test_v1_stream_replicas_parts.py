"""The parts that carry a stream's progress across replicas, one at a time.

* the relay puts events back in the provider's order (``n``), drops repeats and pieces
  of choices it cannot read, relays events without ``n`` as they come, and gives up on
  a gap that holds too much; it forwards a task's progress within a rate, refusing
  (``listening: false``) past it;
* two notifiers on one PostgreSQL: a stream claimed by one is seen claimed from any
  session until released (or its replica's connection ends); progress forwarded by the
  other arrives whole and in order, in notifications under the payload limit;
* the agent's sender numbers what it posts, keeps what was delivered nowhere and posts
  it (merged) once asked again with an empty post, and stops for good on a failed post.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from deai.coordinator import notifier as nt
from deai.coordinator.openai.relay import (
    AHEAD_MAX,
    EVENT_COST,
    FORWARD_BURST,
    HOLD_MAX,
    PIECE_CHARS,
    PROVIDER_BURST,
    STREAM_MAX,
    STREAM_MIN,
    Relay,
    budget,
    pieces,
)
from deai.provider.agent import ProgressSender, merge_events


def _drain(q: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_relay_puts_events_back_in_order() -> None:
    async def scenario() -> None:
        relay = Relay()
        q = relay.open("t")
        assert relay.push("t", [{"n": 2, "text": "c"}, {"n": 1, "text": "b"},
                                {"n": 2, "text": "c"}])
        assert _drain(q) == []  # waiting for 0
        relay.take_remote("t", pieces([{"n": 0, "index": 0, "text": "a" * (PIECE_CHARS + 3)}]))
        got = _drain(q)
        assert "".join(e["text"] for e in got) == "a" * (PIECE_CHARS + 3) + "bc"
        assert relay.push("t", [{"n": 1, "text": "again"}, {"text": "no n"}])  # a repeat
        assert [e["text"] for e in _drain(q)] == ["no n"]
        relay.take_remote("t", [[3, True, "x", 0], "junk", [3, 0, 5, 0], [3, 0, "d", 2]])
        assert _drain(q) == []  # none of those is a piece
        relay.take_remote("other", pieces([{"n": 3, "text": "d"}]))  # not streamed here
        assert _drain(q) == []
        relay.push("t", [{"n": 10**30, "text": "z" * HOLD_MAX}])  # a gap that never fills
        assert not relay.push("t", [{"n": 3, "text": "d"}])  # gave up: relays no more
        assert _drain(q) == []
        relay.close("t")
        assert not relay.push("t", [{"n": 0, "text": "a"}])

    asyncio.run(scenario())


def test_held_events_keep_only_what_a_stream_reads_and_count_each_event() -> None:
    """Events held for a gap kept whole dicts, extra fields and all, and counted only their
    text: posts of empty texts with junk beside them held tens of MiB under HOLD_MAX."""
    async def scenario() -> None:
        relay = Relay()
        q = relay.open("t")
        assert relay.push("t", [{"n": 1, "text": "b", "junk": "x" * 512}])
        s = relay._streams["t"]
        assert s.held == {1: [{"index": 0, "text": "b"}]}  # the junk is not kept
        assert s.held_chars == EVENT_COST + 1
        assert relay.push("t", [{"n": 0, "index": 0, "text": "a", "junk": "y"}])
        assert _drain(q) == [{"index": 0, "text": "a"}, {"index": 0, "text": "b"}]
        assert s.held_chars == 0
        # Empty pieces of one event, forwarded past a gap: the pieces alone fill the bound.
        relay.take_remote("t", [[3, 0, "", 1]] * (HOLD_MAX // EVENT_COST + 1))
        assert s.broken and s.held == {}
        assert not relay.push("t", [{"n": 2, "text": "c"}])

    asyncio.run(scenario())


def test_a_stream_relays_no_more_than_its_request_asked_for() -> None:
    """What a stream relays is bounded by its request (``budget``: characters per token
    asked for): a provider posting megabytes to a ``max_tokens=1`` stream whose caller
    stopped reading grew the queue without end (80 posts of 3 MB: 152 -> 401 MB)."""
    async def scenario() -> None:
        assert budget(1, 1) == STREAM_MIN and budget(2048, 16) == STREAM_MAX
        assert budget(1000, 2) == 256_000
        honest = Relay()  # a full answer, an event per token: within its budget
        hq = honest.open("h", budget(2048, 1))
        assert honest.push("h", [{"n": k, "text": "abcd"} for k in range(2048)])
        assert len(_drain(hq)) == 2048
        relay = Relay()
        q = relay.open("t", budget(1, 1))
        assert relay.push("t", [{"n": 0, "text": "a" * 1000}])  # an honest start
        big = "z" * (1 << 20)
        assert not relay.push("t", [{"n": k, "text": big} for k in range(1, 4)])
        assert not relay.push("t", [{"text": big}])  # without n: the same bound
        got = _drain(q)
        assert sum(len(e["text"]) + EVENT_COST for e in got) <= STREAM_MIN
        assert [e["text"] for e in got] == ["a" * 1000]
        unbounded = relay.open("u")  # a stream opened without one: STREAM_MAX
        assert relay.push("u", [{"n": 0, "text": big}])
        assert not relay.push("u", [{"n": 1, "text": big * 4}])
        junk = relay.open("j", budget(1, 1))  # text that is not text is held as none
        assert relay.push("j", [{"n": 0, "text": [0] * 100_000, "index": "x" * 10_000}])
        assert _drain(junk) == [{"index": -1, "text": ""}]
        assert [len(e["text"]) for e in _drain(unbounded)] == [len(big)]

    asyncio.run(scenario())


def test_an_event_far_past_the_gap_breaks_the_stream() -> None:
    async def scenario() -> None:
        relay = Relay()
        q = relay.open("t")
        assert relay.push("t", [{"n": AHEAD_MAX, "text": "near"}])
        assert not relay.push("t", [{"n": AHEAD_MAX + 2, "text": "far"}])
        assert relay._streams["t"].held == {}
        assert not relay.push("t", [{"n": 0, "text": "a"}])  # relays no more
        assert _drain(q) == []

    asyncio.run(scenario())


def test_pieces_keep_only_what_a_stream_reads() -> None:
    got = pieces([{"n": 4, "index": 1, "text": "hi", "custom_id": "x" * 10_000},
                  {"n": "4", "index": True, "text": 7}, {"text": ""}])
    assert got == [[4, 1, "hi", 0], [None, -1, "", 0], [None, 0, "", 0]]


class _Bus:
    """A notifier's forwarding side, recorded."""

    def __init__(self) -> None:
        self.on_remote_progress: list[Any] = []
        self.sent: list[tuple[str, list[list[Any]]]] = []

    def forward_progress(self, task_id: str, got: list[list[Any]]) -> bool:
        self.sent.append((task_id, got))
        return True


def test_forwarding_is_bounded_per_task() -> None:
    bus = _Bus()
    relay = Relay(bus)  # type: ignore[arg-type]
    big = [{"n": i, "text": "x" * 4000} for i in range(100)]  # ~400 kB, over the burst
    assert relay.forward("t1", big, now=0.0)  # a burst goes through once
    assert not relay.forward("t1", [{"n": 100, "text": "y"}], now=0.0)  # then it waits
    assert relay.forward("t2", [{"n": 0, "text": "y"}], now=0.0)  # other tasks do not
    assert relay.forward("t1", [{"n": 100, "text": "y"}], now=60.0)  # time refills it
    assert sum(len(json.dumps(p)) for _, got in bus.sent[:1] for p in got) > FORWARD_BURST


def test_forwarding_is_bounded_per_provider() -> None:
    """One provider's many streamed tasks, each within its own rate, share one bound."""
    bus = _Bus()
    relay = Relay(bus)  # type: ignore[arg-type]
    event = [{"n": 0, "text": "x" * 100_000}]
    tasks = PROVIDER_BURST // 100_000 + 2
    sent = [relay.forward(f"t{i}", event, now=0.0, provider="p1") for i in range(tasks)]
    assert sent[0] and not sent[-1]  # the provider's burst spent
    assert relay.forward("other", event, now=0.0, provider="p2")  # another provider's not
    assert relay.forward(f"t{tasks}", event, now=60.0, provider="p1")  # time refills it


@pytest.mark.postgres
def test_claims_and_progress_cross_notifiers(fresh_pg_url: str) -> None:
    engine = create_engine(fresh_pg_url)

    def claimed(task: str) -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(text(nt.STREAM_CLAIMED_SQL), {
                "ns": nt.STREAM_LOCK_NS, "key": nt.stream_key(task)}).scalar())

    async def until(cond: Any) -> None:
        end = time.monotonic() + 30
        while not await asyncio.to_thread(cond):
            assert time.monotonic() < end
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        a, b = nt.Notifier(), nt.Notifier()
        loop = asyncio.get_running_loop()
        for x in (a, b):
            x.bind(loop)
            await x.connect(fresh_pg_url)
        relay_a = Relay(a)
        try:
            await asyncio.wait_for(asyncio.gather(a.listening.wait(), b.listening.wait()), 30)
            q = relay_a.open("task-1")
            await until(lambda: claimed("task-1"))
            assert not await asyncio.to_thread(claimed, "task-2")
            text_ = "".join(chr(0x1F600 + i % 50) + "\u00e9\n" for i in range(3000))
            events = [{"n": i, "index": 0, "text": text_[i * 1000:(i + 1) * 1000]}
                      for i in range(9)]
            sent_before = b.sent
            assert b.forward_progress("task-1", pieces(events))
            got = ""
            while got != text_:
                e = await asyncio.wait_for(q.get(), 30)
                got += e["text"]
                assert text_.startswith(got)
            assert b.sent - sent_before > 2  # several notifications, each under the limit
            for msg in b._drain():
                assert len(msg.encode()) <= nt.PAYLOAD_MAX
            relay_a.close("task-1")
            await until(lambda: not claimed("task-1"))
            relay_a.open("task-3")
            await until(lambda: claimed("task-3"))
            await a.disconnect()  # a replica gone: its claims with it
            await until(lambda: not claimed("task-3"))
        finally:
            await a.disconnect()
            await b.disconnect()
            engine.dispose()

    asyncio.run(scenario())


def test_forwarded_messages_stay_under_the_payload_limit() -> None:
    async def scenario() -> None:
        n = nt.Notifier()
        n.bind(asyncio.get_running_loop())
        assert not n.forward_progress("t", [[0, 0, "x", 0]])  # not bridged: nowhere to send
        n._dirty = asyncio.Event()  # bridged, without a server: read what would be sent
        worst = "\U0001f600" * PIECE_CHARS  # 12 bytes of JSON a character
        assert n.forward_progress("t", pieces([{"n": i, "text": worst * 3} for i in range(5)]))
        msgs = n._drain()
        assert all(len(m.encode()) <= nt.PAYLOAD_MAX for m in msgs)
        got = [p for m in msgs for p in json.loads(m)["ev"]]
        assert [p[0] for p in got] == [i for i in range(5) for _ in range(3)]
        assert "".join(p[2] for p in got) == worst * 15
        other = nt.Notifier()
        heard: list[tuple[str, list[Any]]] = []
        other.on_remote_progress.append(lambda t, ps: heard.append((t, ps)))
        for m in msgs:
            other._apply(m)
        assert [p for _, ps in heard for p in ps] == got

    asyncio.run(scenario())


class _Client:
    """``sdk.Client.progress`` with scripted answers, recording each post."""

    def __init__(self, answers: list[bool | Exception]) -> None:
        self.answers = answers
        self.posts: list[list[dict[str, Any]]] = []
        self.event = threading.Event()

    def progress(self, assignment_id: str, events: list[dict[str, Any]]) -> bool:
        self.posts.append(events)
        self.event.set()
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer


def _sender(client: _Client) -> ProgressSender:
    s = ProgressSender(client, "a1")  # type: ignore[arg-type]
    s.PROBE_FIRST, s.IDLE = 0.05, 2.0
    return s


def _wait_posts(client: _Client, n: int) -> None:
    end = time.time() + 10
    while len(client.posts) < n:
        assert time.time() < end, client.posts
        time.sleep(0.01)


def test_sender_keeps_what_nobody_heard_and_asks_again() -> None:
    client = _Client([False, False, True, True])  # nobody listens yet; then someone does
    s = _sender(client)
    s.send({"index": 0, "text": "Hel"})
    _wait_posts(client, 1)
    s.send({"index": 0, "text": "lo"})
    s.send({"index": 1, "text": "Hi"})
    _wait_posts(client, 4)  # a refused post, a refused probe, a probe heard, the backlog
    assert client.posts[0] == [{"index": 0, "text": "Hel", "n": 0}]
    assert client.posts[1] == client.posts[2] == []
    assert client.posts[3] == [{"index": 0, "text": "Hello", "n": 0},
                               {"index": 1, "text": "Hi", "n": 1}]
    s.send({"index": 1, "text": "!"})
    _wait_posts(client, 5)
    assert client.posts[4] == [{"index": 1, "text": "!", "n": 2}]


def test_sender_stops_for_good_when_a_post_fails() -> None:
    client = _Client([httpx.ConnectError("down")])
    s = _sender(client)
    s.send({"text": "a"})
    _wait_posts(client, 1)
    time.sleep(0.2)
    s.send({"text": "b"})
    time.sleep(0.2)
    assert len(client.posts) == 1


def test_merge_events_keeps_choices_apart() -> None:
    assert merge_events([{"index": 0, "text": "a"}, {"index": 0, "text": "b"},
                         {"index": 1, "text": "c"}, {"index": 0, "text": "d"}]) == [
        {"index": 0, "text": "ab"}, {"index": 1, "text": "c"}, {"index": 0, "text": "d"}]
