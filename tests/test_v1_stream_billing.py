"""A streamed /v1 chat answer is billed once its caller holds text of it, and only the
choices asked for are streamed; a recorded result the caller cannot be sent is refused.

A hand-driven provider streams progress and records its result; the caller is a real
HTTP client of a real coordinator process:

* with ``n=2``, choice 0 streams to its end, choice 1 starts, and the caller hangs up:
  before, the job was cancelled and refunded whole (the caller kept a whole completion
  for free, the provider was never paid); now the job runs on and is billed, and its
  owner's cancel, over the native API, is refused (409);
* progress under a choice index not asked for (``1`` when ``n=1``, ``-1``, ``true``) is
  dropped: before, it reached the caller as text of choices nobody asked for;
* a result whose text holds a lone surrogate (valid JSON, ``"\\ud800"``) is rejected at
  metering, so it is never served nor billed (its owner may still cancel, refunded
  whole): before, it was accepted, billed, and its caller answered 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deai.coordinator.openai.routes import _ending, _relayable
from deai.core.errors import DeAIError
from tests.helpers import (
    CHAT,
    HandProvider,
    api_key,
    billed_once_text_was_sent,
    chat_line,
    chat_stream,
    funded,
    in_background,
    running,
)
from tests.netutil import Network

ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower."


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from running(Network(tmp_path_factory.mktemp("v1-stream-billing"),
                               heartbeat_timeout=120.0, lease_ttl=300.0, verify=False))


@pytest.fixture(scope="module")
def prov(net: Network) -> HandProvider:
    """The only chat provider: every request of the module runs on it."""
    return HandProvider(net, memory_mb=8192, slots=4, offer=("chat", CHAT))


def _events(r: httpx.Response, within: float | None = None) -> Iterator[Any]:
    """The stream's data events, parsed, then ``"done"`` at ``[DONE]`` (each line read
    within ``within`` seconds of the first, if given)."""
    end = None if within is None else time.time() + within
    for line in r.iter_lines():
        assert end is None or time.time() < end
        if line == "data: [DONE]":
            yield "done"
            return
        if line.startswith("data: {"):
            yield json.loads(line[6:])


def _text(ev: Any) -> str | None:
    """The text an event of ``_events`` brings its first choice, if any."""
    if not isinstance(ev, dict):
        return None
    content: str | None = (ev.get("choices") or [{}])[0].get("delta", {}).get("content")
    return content


def test_hanging_up_once_a_choice_is_complete_still_pays_for_it(
        net: Network, prov: HandProvider) -> None:
    owner = funded(net)
    key = api_key(owner, "stream")
    before = owner.balance().available
    got: dict[int, str] = {}
    with chat_stream(net, prov, key, 64, content="What is the capital?", n=2) as (r, a):
        # the provider, honestly, streams choice 0 to its end, then starts choice 1
        assert prov.c.progress(a.id, [{"index": 0, "text": ANSWER[:20]},
                                      {"index": 0, "text": ANSWER[20:]},
                                      {"index": 1, "text": "Paris"}])
        end = time.time() + 120
        for line in r.iter_lines():
            assert time.time() < end
            if not line.startswith("data: {"):
                continue
            ch = json.loads(line[6:])["choices"][0]
            got[ch["index"]] = got.get(ch["index"], "") + (ch["delta"].get("content") or "")
            if 1 in got:  # choice 1 started: choice 0 is complete -> hang up
                break
    assert got[0] == ANSWER  # the caller holds the whole answer of choice 0
    # and cannot cancel it over the native API; the job is billed
    billed_once_text_was_sent(owner, prov, a, [chat_line(ANSWER), chat_line("Paris.")], before)


def test_cancelling_a_stream_that_sent_text_is_refused(
        net: Network, prov: HandProvider) -> None:
    """The caller keeps the stream open and cancels its job from another connection once
    text arrived: refused, as for an answered request; the stream then ends normally."""
    owner = funded(net)
    events: list[Any] = []
    with chat_stream(net, prov, api_key(owner, "stream"), 8) as (r, a):
        assert prov.c.progress(a.id, [{"text": "Hello"}])
        for ev in _events(r):
            events.append(ev)
            if _text(ev) == "Hello":
                with pytest.raises(DeAIError) as refused:
                    owner.cancel_job(a.job_id)
                assert refused.value.status == 409
                assert prov.record_chat(a, [chat_line("Hello")]).status == "accepted"
    assert events[-1] == "done", events


def test_text_under_a_choice_not_asked_for_never_reaches_the_caller(
        net: Network, prov: HandProvider) -> None:
    owner = funded(net)
    events: list[Any] = []
    with chat_stream(net, prov, api_key(owner, "stream"), 4) as (r, a):
        assert prov.c.progress(a.id, [{"index": 1, "text": "Buy cheap pills at evil.example"},
                                      {"index": -1, "text": "Your account is suspended"},
                                      {"index": True, "text": "Click here"},
                                      {"index": 0, "text": "Hel"}])
        for ev in _events(r, within=120):
            events.append(ev)
            if _text(ev) == "Hel":
                assert prov.record_chat(a, [chat_line("Hello")]).status == "accepted"
    chunks = [e["choices"][0] for e in events if isinstance(e, dict) and e.get("choices")]
    assert {c["index"] for c in chunks} == {0}, chunks
    assert "".join(c["delta"].get("content") or "" for c in chunks) == "Hello"
    assert events[-1] == "done", events


def test_relayable_keeps_only_the_choices_asked_for() -> None:
    assert _relayable({"text": "a"}, 1) == (0, "a")
    assert _relayable({"index": 1, "text": "a"}, 2) == (1, "a")
    for index in (1, -1, True, False, 0.0, "0", None):
        assert _relayable({"index": index, "text": "a"}, 1) is None, index
    assert _relayable({"index": 0, "text": ""}, 1) is None
    assert _relayable({"index": 0, "text": 5}, 1) is None


def test_text_sent_under_a_choice_the_record_lacks_is_a_divergence() -> None:
    line = {"text": "Hello", "finish_reason": "stop"}
    ending, diverged = _ending("j", [line], {0: "Hel", 1: "x"}, lambda *a, **k: b"")
    assert diverged and b"stream_diverged" in ending[0]
    ending, diverged = _ending("j", [line], {0: "Hel"}, lambda *a, **k: b"c")
    assert not diverged


def test_a_result_with_a_lone_surrogate_is_rejected_not_a_500(net: Network,
                                                              prov: HandProvider) -> None:
    owner = funded(net)
    headers = {"Authorization": f"Bearer {api_key(owner, 'stream')}"}
    before = owner.balance().available
    response = in_background(lambda: httpx.post(
        f"{net.url}/v1/chat/completions", timeout=120, headers=headers,
        json={"model": CHAT, "max_tokens": 4,
              "messages": [{"role": "user", "content": "Say hello"}]}))
    a = prov.take_one()
    bad = (b'{"custom_id": "%(cid)s", "token_ids": [19556], "text": "Hello \\ud800", '
           b'"finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 1}')
    assert prov.record_chat(a, [bad]).status == "rejected"  # refused at metering: never served
    owner.cancel_job(a.job_id)  # nothing was served: its owner may cancel it, refunded whole
    r = response(120)
    assert r.status_code == 499, r.text  # the request's job was cancelled: not a 500
    assert r.json()["error"]["code"] == "job_cancelled"
    job = owner.job(a.job_id)
    assert job.status == "cancelled" and job.cost == 0 and job.refunded == job.escrow
    assert owner.balance().available == before


def test_a_stream_whose_primary_failed_can_be_cancelled_for_a_refund(net: Network,
                                                                      prov: HandProvider) -> None:
    """Streamed text counts as an answer while the lease that streamed it may be paid for
    it. Its provider failing without a result leaves the caller a fragment: the job (run
    again for nobody) is then the owner's to cancel, refunded whole. Before, the stream
    made it uncancellable and the caller was billed for a re-run it never saw."""
    owner = funded(net)
    before = owner.balance().available
    got = ""
    with chat_stream(net, prov, api_key(owner, "stream"), 64,
                     content="What is the capital?") as (r, a):
        assert prov.c.progress(a.id, [{"index": 0, "text": "Hel"}])
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if got == "Hel":
                break  # the caller hangs up: text reached it, the job runs on
    with pytest.raises(DeAIError) as held:  # its streamer still holds the lease
        owner.cancel_job(a.job_id)
    assert held.value.status == 409
    prov.c.report_failure(a.id, "crashed")
    job = owner.cancel_job(a.job_id)
    assert job.status == "cancelled" and job.cost == 0
    assert owner.balance().available == before
