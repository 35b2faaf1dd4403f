"""Fair billing when a /v1 caller hangs up, streaming or not.

A hand-driven provider takes the request's task; the caller closes its
connection mid-way (a raw socket for a plain request, an HTTP client leaving a
server-sent event stream). Before any text reached the caller, the request's
job is cancelled, the provider is told to drop the task at its next heartbeat,
a result it sends afterwards is refused and paid nothing, and the caller's
escrow comes back whole. Once a delta was relayed the caller holds part of the
answer: the job runs on, its owner cannot cancel it, and the provider's result
is accepted and billed like any answer (``jobs._answered``).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from deai.client.sdk import Client
from deai.core import auth, wire
from deai.core.errors import DeAIError
from tests.helpers import (
    CHAT,
    MODEL,
    HandProvider,
    api_key,
    audit_ok,
    billed_once_text_was_sent,
    chat_line,
    chat_stream,
    funded,
    journal,
    running,
)
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from running(Network(tmp_path_factory.mktemp("v1-hangup"), heartbeat_timeout=120.0,
                               lease_ttl=300.0, verify=False))


@pytest.fixture(scope="module")
def hand(net: Network) -> Hand:
    """The only provider: every request of the module runs on it."""
    return Hand(net)


class Hand(HandProvider):
    """A provider offering embeddings and chat, driven by the test."""

    def __init__(self, net: Network) -> None:
        super().__init__(net, memory_mb=8192, slots=4, offer=("embeddings", MODEL),
                         extra_offers=[("chat", CHAT)])

    def dropped(self, aid: str, end: float) -> None:
        while aid not in self.c.heartbeat([aid]).drop:
            assert time.time() < end, "the provider was never told to drop the task"
            time.sleep(0.3)


def settled(owner: Client, hand: Hand, a: wire.AssignmentOut, before: int) -> None:
    """The job is cancelled and refunded whole; the provider's late result earns nothing."""
    end = time.time() + 120
    while owner.job(a.job_id).status != "cancelled":
        assert time.time() < end, owner.job(a.job_id)
        time.sleep(0.3)
    hand.dropped(a.id, end)
    job = owner.job(a.job_id)
    assert job.cost == 0 and job.refunded == job.escrow > 0
    assert owner.balance().available == before
    digest = hand.c.upload(b'{"custom_id": "late"}\n').digest
    with pytest.raises(DeAIError):
        hand.c.submit_result(a.id, wire.ResultIn(
            output_digest=digest, units=a.units,
            signature=hand.ident.sign(auth.result_message(a.id, digest, a.units))))
    assert not [e for e in journal(owner) if e.kind == "payout" and e.body["job"] == a.job_id]
    audit_ok(owner)


def test_a_plain_request_whose_caller_hangs_up_is_cancelled_and_free(net: Network,
                                                                      hand: Hand) -> None:
    owner = funded(net)
    key = api_key(owner, "hangup")
    before = owner.balance().available
    body = json.dumps({"model": MODEL, "input": "a sentence nobody waits for"}).encode()
    u = urlsplit(net.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    a = hand.take_one()  # the request is running on the provider ...
    assert owner.job(a.job_id).status == "running"
    sock.close()  # ... and its caller goes away
    settled(owner, hand, a, before)


def test_a_stream_closed_before_any_text_is_cancelled_and_free(net: Network,
                                                                hand: Hand) -> None:
    owner = funded(net)
    key = api_key(owner, "stream-early")
    before = owner.balance().available
    with chat_stream(net, hand, key, max_tokens=16) as (r, a):
        assert r.headers["x-deai-job"] == a.job_id
        for line in r.iter_lines():
            if line.startswith("data: {"):  # the opening chunk, no text: leave now
                assert json.loads(line[6:])["choices"][0]["delta"] == {
                    "role": "assistant", "content": ""}
                break
    settled(owner, hand, a, before)


def test_a_stream_closed_after_the_first_delta_is_billed(net: Network, hand: Hand) -> None:
    """Before, leaving the stream once "Hello" arrived cancelled the job and refunded it
    whole: the caller kept the text for free, and the provider was never paid."""
    owner = funded(net)
    key = api_key(owner, "stream-hangup")
    before = owner.balance().available
    with chat_stream(net, hand, key, max_tokens=16) as (r, a):
        assert r.headers["x-deai-job"] == a.job_id
        end = time.time() + 60
        seen = ""
        for line in r.iter_lines():
            assert time.time() < end
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            seen += delta.get("content") or ""
            if not seen:  # the opening chunk: now the provider sends its first words
                assert hand.c.progress(a.id, [{"text": "Hello"}])
            if "Hello" in seen:
                break  # leave the stream mid-answer: the connection closes
    assert seen == "Hello"
    # nor may its owner cancel it afterwards; the job is billed
    job = billed_once_text_was_sent(owner, hand, a, [chat_line("Hello there")], before)
    assert job.refunded == job.escrow - job.cost


def test_a_stream_that_is_not_the_recorded_result_ends_in_an_error(net: Network,
                                                                   hand: Hand) -> None:
    """The deltas are relayed as the primary sends them; its submitted result is the
    record. Text it streamed that the record does not start with cannot be taken back:
    before, the stream simply ended, and the caller kept the injected text as the
    answer. Now the stream ends in a ``stream_diverged`` error instead of ``[DONE]``."""
    owner = funded(net)
    with chat_stream(net, hand, api_key(owner, "diverged"), max_tokens=8) as (r, a):
        events: list[dict[str, Any]] = []
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                events.append({"done": True})
                break
            ev = json.loads(line[6:])
            events.append(ev)
            if "error" in ev:
                break
            if len(events) == 1:  # the opening chunk: inject, then record something else
                assert hand.c.progress(a.id, [{"text": "Buy cheap pills"}])
                time.sleep(0.5)
                hand.record_chat(a, [chat_line("Hello")])
    assert events[-1].get("error", {}).get("code") == "stream_diverged", events
    assert not any(e.get("done") for e in events)
