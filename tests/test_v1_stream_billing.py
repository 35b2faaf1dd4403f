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

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator.openai.routes import _ending, _relayable
from deai.core import auth, wire
from deai.core.errors import DeAIError
from tests.helpers import audit_ok, funded, journal
from tests.netutil import Network

CHAT = "SmolLM2-135M-Instruct"
ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower."


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("v1-stream-billing"), heartbeat_timeout=120.0,
                lease_ttl=300.0, verify=False)
    n.start_coordinator()
    yield n
    n.close()


@pytest.fixture(scope="module")
def prov(net: Network) -> Provider:
    """The only chat provider: every request of the module runs on it."""
    return Provider(net)


class Provider:
    """A chat provider driven by the test."""

    def __init__(self, net: Network) -> None:
        self.ident = Identity.generate()
        self.c = Client(net.url, self.ident)
        self.c.faucet(50_000_000)
        self.c.register(wire.RegisterIn(
            hardware=wire.Hardware(cpu_model="test cpu", cores=2, memory_mb=8192),
            benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=4,
            offers=[wire.OfferIn(workload="chat", model=CHAT, price=1000)]))
        self.c.bond(10_000_000)

    def take(self) -> wire.AssignmentOut:
        end = time.time() + 120
        while True:
            assert time.time() < end, "the request never reached the provider"
            self.c.heartbeat([])
            got = self.c.poll(wait=1.0).assignments
            if got:
                return got[0]

    def record(self, a: wire.AssignmentOut, lines: list[bytes]) -> wire.ResultOut:
        """Submit ``lines`` (one per choice, ``%(cid)s`` for the request's custom_id)."""
        shard = base64.b64decode(a.input_b64 or "").splitlines()
        cids = [json.loads(x)["custom_id"].encode() for x in shard]
        assert len(cids) == len(lines)
        out = b"".join(line.replace(b"%(cid)s", cid) + b"\n"
                       for line, cid in zip(lines, cids, strict=True))
        units = 20 * len(lines) + len(lines)
        digest = hashlib.sha256(out).hexdigest()
        return self.c.submit_result(a.id, wire.ResultIn(
            output_digest=digest, units=units, output_b64=base64.b64encode(out).decode(),
            signature=self.ident.sign(auth.result_message(a.id, digest, units))))


def _line(text: str) -> bytes:
    return json.dumps({"custom_id": "%(cid)s", "token_ids": [19556], "text": text,
                       "finish_reason": "stop", "prompt_tokens": 20,
                       "completion_tokens": 1}).encode()


def _key(owner: Client) -> dict[str, str]:
    key = owner.create_api_key("stream").key
    assert key is not None
    return {"Authorization": f"Bearer {key}"}


def test_hanging_up_once_a_choice_is_complete_still_pays_for_it(
        net: Network, prov: Provider) -> None:
    owner = funded(net)
    headers = _key(owner)
    before = owner.balance().available
    req = {"model": CHAT, "messages": [{"role": "user", "content": "What is the capital?"}],
           "max_tokens": 64, "n": 2, "stream": True}
    got: dict[int, str] = {}
    with httpx.Client(base_url=net.url, timeout=60, headers=headers) as h, \
            h.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        a = prov.take()
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
    with pytest.raises(DeAIError) as refused:  # and cannot cancel it over the native API
        owner.cancel_job(a.job_id)
    assert refused.value.status == 409, refused.value
    assert prov.record(a, [_line(ANSWER), _line("Paris.")]).status == "accepted"
    end = time.time() + 120
    while (job := owner.job(a.job_id)).status != "completed":
        assert time.time() < end, job
        time.sleep(0.3)
    assert job.cost > 0 and owner.balance().available == before - job.cost
    assert [e for e in journal(owner) if e.kind == "payout" and e.body["job"] == a.job_id]
    audit_ok(owner)


def test_cancelling_a_stream_that_sent_text_is_refused(
        net: Network, prov: Provider) -> None:
    """The caller keeps the stream open and cancels its job from another connection once
    text arrived: refused, as for an answered request; the stream then ends normally."""
    owner = funded(net)
    req = {"model": CHAT, "messages": [{"role": "user", "content": "Say hello"}],
           "max_tokens": 8, "stream": True}
    events: list[Any] = []
    with httpx.Client(base_url=net.url, timeout=60, headers=_key(owner)) as h, \
            h.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        a = prov.take()
        assert prov.c.progress(a.id, [{"text": "Hello"}])
        for line in r.iter_lines():
            if line == "data: [DONE]":
                events.append("done")
                break
            if not line.startswith("data: {"):
                continue
            events.append(ev := json.loads(line[6:]))
            if (ev.get("choices") or [{}])[0].get("delta", {}).get("content") == "Hello":
                with pytest.raises(DeAIError) as refused:
                    owner.cancel_job(a.job_id)
                assert refused.value.status == 409
                assert prov.record(a, [_line("Hello")]).status == "accepted"
    assert events[-1] == "done", events


def test_text_under_a_choice_not_asked_for_never_reaches_the_caller(
        net: Network, prov: Provider) -> None:
    owner = funded(net)
    req = {"model": CHAT, "messages": [{"role": "user", "content": "Say hello"}],
           "max_tokens": 4, "stream": True}
    events: list[Any] = []
    with httpx.Client(base_url=net.url, timeout=60, headers=_key(owner)) as h, \
            h.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        a = prov.take()
        assert prov.c.progress(a.id, [{"index": 1, "text": "Buy cheap pills at evil.example"},
                                      {"index": -1, "text": "Your account is suspended"},
                                      {"index": True, "text": "Click here"},
                                      {"index": 0, "text": "Hel"}])
        end = time.time() + 120
        for line in r.iter_lines():
            assert time.time() < end
            if line == "data: [DONE]":
                events.append("done")
                break
            if not line.startswith("data: {"):
                continue
            events.append(ev := json.loads(line[6:]))
            if (ev.get("choices") or [{}])[0].get("delta", {}).get("content") == "Hel":
                assert prov.record(a, [_line("Hello")]).status == "accepted"
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


def test_a_result_with_a_lone_surrogate_is_rejected_not_a_500(net: Network, prov: Provider) -> None:
    owner = funded(net)
    headers = _key(owner)
    before = owner.balance().available
    got: dict[str, httpx.Response] = {}

    def call() -> None:
        got["r"] = httpx.post(f"{net.url}/v1/chat/completions", timeout=120, headers=headers,
                              json={"model": CHAT, "max_tokens": 4,
                                    "messages": [{"role": "user", "content": "Say hello"}]})

    caller = threading.Thread(target=call)
    caller.start()
    a = prov.take()
    bad = (b'{"custom_id": "%(cid)s", "token_ids": [19556], "text": "Hello \\ud800", '
           b'"finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 1}')
    assert prov.record(a, [bad]).status == "rejected"  # refused at metering: never served
    owner.cancel_job(a.job_id)  # nothing was served: its owner may cancel it, refunded whole
    caller.join(120)
    r = got["r"]
    assert r.status_code == 499, r.text  # the request's job was cancelled: not a 500
    assert r.json()["error"]["code"] == "job_cancelled"
    job = owner.job(a.job_id)
    assert job.status == "cancelled" and job.cost == 0 and job.refunded == job.escrow
    assert owner.balance().available == before


def test_a_stream_whose_primary_failed_can_be_cancelled_for_a_refund(net: Network,
                                                                      prov: Provider) -> None:
    """Streamed text counts as an answer while the lease that streamed it may be paid for
    it. Its provider failing without a result leaves the caller a fragment: the job (run
    again for nobody) is then the owner's to cancel, refunded whole. Before, the stream
    made it uncancellable and the caller was billed for a re-run it never saw."""
    owner = funded(net)
    before = owner.balance().available
    req = {"model": CHAT, "messages": [{"role": "user", "content": "What is the capital?"}],
           "max_tokens": 64, "stream": True}
    got = ""
    with httpx.Client(base_url=net.url, timeout=60, headers=_key(owner)) as h, \
            h.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        a = prov.take()
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
