"""A /v1 chat stream open on one coordinator replica gets the progress its provider posts
to another replica on the same PostgreSQL.

Two real coordinator processes share one fresh database; the caller streams through
replica A, and the provider (driven by hand) posts most of its progress to replica B:

* B answers ``listening: true`` once A has claimed the stream (before: B held no stream
  in its memory and answered false for good, so an agent stopped posting and the caller
  got no delta, only the final result);
* B's deltas reach the caller, in the provider's order (``n``) even where a later post
  went through A and arrived first, and one delta larger than a NOTIFY payload (8,000
  bytes) arrives whole; a delta for a choice not asked for is still dropped;
* text streamed is billed as before: the owner's cancel is refused once a delta reached
  the caller; the stream ends with the recorded result, not ``stream_diverged``;
* nothing a provider sends through B is a 5xx, and once the task is over B says nobody
  listens;
* a real provider agent connected to B only streams a real model's answer to a caller
  on A token by token (before: the caller got one chunk, the final result).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deai.client.sdk import Client
from deai.core.errors import DeAIError
from tests.helpers import CHAT, HandProvider, api_key, chat_line, chat_stream, funded
from tests.netutil import Network, Proc, free_port

pytestmark = pytest.mark.postgres

BIG = "".join(chr(0x1F600 + i % 64) if i % 3 else "\u00e9" for i in range(6000))  # > 8 kB


def _replica(net: Network, tmp_path: Path, url: str) -> tuple[Proc, str]:
    """A second coordinator process on the network's database: (process, base URL)."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "deai.coordinator", "--port", str(port),
                 "--data-dir", str(tmp_path / "coordinator"), "--devnet", *net.flags,
                 "--database-url", url], tmp_path / "replica-b.log", net.env)
    base = f"http://127.0.0.1:{port}"
    end = time.time() + 180  # an interpreter importing torch on a busy machine
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert proc.alive() and time.time() < end, proc.tail()
        time.sleep(0.3)


def _network(tmp_path: Path, url: str) -> tuple[Network, Proc, str]:
    """A network (its coordinator, replica A, started) and a replica B on ``url``."""
    net = Network(tmp_path, url, heartbeat_timeout=120.0, lease_ttl=300.0, verify=False)
    net.start_coordinator()
    try:
        b, url_b = _replica(net, tmp_path, url)
    except BaseException:
        net.close()
        raise
    return net, b, url_b


def _deltas(r: httpx.Response) -> Iterator[Any]:
    """The stream's data events, parsed, then ``"done"``."""
    for line in r.iter_lines():
        if line == "data: [DONE]":
            yield "done"
            return
        if line.startswith("data: {"):
            yield json.loads(line[6:])


def test_progress_posted_to_another_replica_reaches_the_stream(
        tmp_path: Path, fresh_pg_url: str) -> None:
    net, b, url_b = _network(tmp_path, fresh_pg_url)
    try:
        prov = HandProvider(net, memory_mb=8192, slots=4, offer=("chat", CHAT))
        via_b = Client(url_b, prov.ident)
        owner = funded(net)
        with chat_stream(net, prov, api_key(owner, "stream"), 16) as (r, a):
            events = _deltas(r)
            first = next(events)
            assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            end = time.time() + 30  # A claims the stream as it opens; B reads the claim
            while not via_b.progress(a.id, []):
                assert time.time() < end, "replica B never learned that A streams the task"
                time.sleep(0.2)
            assert via_b.progress(a.id, [{"n": 0, "index": 0, "text": "Hello"},
                                         {"n": 1, "index": 1, "text": "not asked"},
                                         {"n": 2, "index": 0, "text": BIG}])
            assert prov.c.progress(a.id, [{"n": 4, "index": 0, "text": " world"}])  # via A,
            assert via_b.progress(a.id, [{"n": 3, "index": 0, "text": ","}])  # before 3
            want = "Hello" + BIG + ", world"
            got = ""
            deadline = time.time() + 60
            while got != want:
                assert time.time() < deadline and want.startswith(got), got[:80]
                ev = next(events)
                assert ev != "done" and "error" not in ev, ev
                ch = ev["choices"][0]
                assert ch["index"] == 0, ev  # the choice not asked for was dropped
                got += ch["delta"].get("content") or ""
            with pytest.raises(DeAIError) as refused:  # text streamed: billed, as ever
                owner.cancel_job(a.job_id)
            assert refused.value.status == 409, refused.value
            # nothing a provider sends through B is a 5xx
            for junk in ([{"n": "x", "text": 5}], [{"n": True, "index": "0"}], [{"n": -1}],
                         [{"n": 10**30, "text": "later"}], [{"index": 3, "text": "y" * 9000}]):
                resp = via_b.request("POST", f"/api/assignments/{a.id}/progress",
                                     json_body={"events": junk})
                assert resp.status_code == 200, (junk, resp.text)
            assert prov.record_chat(a, [chat_line(want + "!")]).status == "accepted"
            rest = list(events)
        assert rest[-1] == "done" and not any("error" in e for e in rest[:-1]), rest
        tail = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in rest[:-1] if e["choices"])
        assert tail == "!"  # the recorded result completes the text the caller holds
        end = time.time() + 10  # the task is over: nobody listens (B re-reads within 2 s)
        while via_b.progress(a.id, [{"n": 5, "text": "late"}]):
            assert time.time() < end
            time.sleep(0.5)
    finally:
        b.stop(10)
        net.close()


@pytest.mark.slow
def test_an_agent_on_another_replica_streams_token_by_token(
        tmp_path: Path, fresh_pg_url: str) -> None:
    net, b, url_b = _network(tmp_path, fresh_pg_url)
    try:
        net.start_provider("chat", 1000, "--models", CHAT, "--coordinator", url_b)
        net.wait_providers(1)
        owner = funded(net)
        req = {"model": CHAT, "messages": [{"role": "user", "content": "Count to twenty."}],
               "max_tokens": 24, "temperature": 0, "stream": True}
        with httpx.Client(base_url=net.url, timeout=180, headers={
                "Authorization": f"Bearer {api_key(owner, 'stream')}"}) as h, \
                h.stream("POST", "/v1/chat/completions", json=req) as r:
            assert r.status_code == 200
            events = list(_deltas(r))
        assert events[-1] == "done" and not any("error" in e for e in events[:-1]), events
        texts = [t for e in events[:-1] if e["choices"]
                 if (t := e["choices"][0]["delta"].get("content"))]
        assert len(texts) >= 2, texts  # deltas as they came (before: one, the result)
        job = owner.job(r.headers["x-deai-job"])
        assert job.status in ("running", "verifying", "completed"), job
    finally:
        b.stop(10)
        net.close()
