"""A provider may ask, before any work, whether a caller listens to its lease's stream
(``POST /api/assignments/{id}/progress`` with no events). A canary planted from a
streamed /v1 request carries the request's ``"stream": true``; it was answered
``listening: false`` while a real streamed request's primary was answered ``true``, so
the probe told a provider it held a canary before it did the work (a role reader cheats
only where no check is expected). A canary's probe is now answered as a real one's.

And only a streamed /v1 request's canary hears ``true``: a chat job sent through
/api/jobs (or a /v1 batch) keeps ``"stream": true`` in its lines while nobody streams
it, so its primary hears ``false``, and so must a canary copied from it."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from deai.coordinator import admission
from deai.coordinator.openai import relay
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import auth, wire
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store import migrate
from deai.store.models import ApiKeyJob, Assignment, Canary, Provider
from tests.helpers import CHAT, HandProvider, api_key, chat_line, funded
from tests.netutil import Network


def _with_streamed_lines(tmp_path: Path, source: str | None) -> tuple[bool, bool]:
    """What the probe of the primary of a chat job whose shard asks to stream hears, and of
    a canary copied from it; ``source``: the job's ``ApiKeyJob.source`` (None: sent
    through /api/jobs)."""
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    try:
        now = c.now()
        shard = c.blobs.put(json.dumps({"custom_id": "a", "stream": True,
                                        "messages": []}).encode() + b"\n")
        answer = c.blobs.put(b"known\n")
        spec = {"kind": "chat", "model": CHAT, "max_price": 2000, "deadline": 3600}
        with c.db.write() as s:
            s.add(Provider(id="p" * 64, hardware={}, benchmark={}, registered_at=now,
                           last_seen=now))
            job, (task,) = admission.create(
                c, s, owner="client", kind="chat", model=CHAT, spec=spec,
                input_digest=shard, max_price=2000, shards=[admission.ShardIn(shard, 1, 10)],
                escrow=0, deadline=3600.0)
            if source is not None:
                s.add(ApiKeyJob(job_id=job.id, api_key_id="key", source=source,
                                created_at=now))
            s.add(Canary(kind="chat", model=CHAT, spec=spec, input_digest=shard,
                         output_digest=answer, items=1, units=10, source_task=task.id,
                         created_at=now))
            canary, (ctask,) = admission.create(
                c, s, owner=admission.NETWORK, kind="chat", model=CHAT, spec=spec,
                input_digest=shard, max_price=2000,
                shards=[admission.ShardIn(shard, 1, 10, reference=answer)], escrow=0,
                deadline=3600.0)
            for aid, t, j, role in (("asg_primary", task, job, Role.PRIMARY),
                                    ("asg_canary", ctask, canary, Role.CANARY)):
                s.add(Assignment(id=aid, task_id=t.id, job_id=j.id, provider_id="p" * 64,
                                 role=role, status=AssignmentStatus.LEASED, price=900,
                                 leased_at=now, lease_deadline=now + 600, delivered=True))
        primary, canary_ = relay._route(c, "asg_primary"), relay._route(c, "asg_canary")
        return (primary[0] is not None and primary[1],
                canary_[0] is not None and canary_[1])
    finally:
        c.db.dispose()


@pytest.mark.parametrize("source", [None, "batch"])
def test_a_canary_of_a_job_nobody_streams_is_heard_like_its_primary(
        tmp_path: Path, source: str | None) -> None:
    assert _with_streamed_lines(tmp_path, source) == (False, False)


def test_a_canary_of_a_streamed_request_hears_a_listener(tmp_path: Path) -> None:
    # Its primary heard ``true`` while the caller's stream was open (here nobody claims
    # it: a coordinator without PostgreSQL), and its canary does.
    assert _with_streamed_lines(tmp_path, "request")[1] is True


@pytest.mark.slow


def _caller(url: str, key: str) -> None:
    req = {"model": CHAT, "messages": [{"role": "user", "content": "Say hello"}],
           "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.Client(base_url=url, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as h, \
            h.stream("POST", "/v1/chat/completions", json=req) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                return


def _streams(a: wire.AssignmentOut) -> bool:
    raw = base64.b64decode(a.input_b64 or "")
    return any(json.loads(x).get("stream") is True for x in raw.splitlines())


def _agree(hand: HandProvider, a: wire.AssignmentOut) -> None:
    """A chat check's answer: the claim's one-token text, with margins."""
    rows = [json.loads(x) for x in base64.b64decode(a.input_b64 or "").splitlines()]
    out = b"".join(json.dumps({"custom_id": r["custom_id"], "text": "Hello",
                               "margins": [0.0] * len(r["token_ids"]),
                               "prompt_tokens": 20}).encode() + b"\n" for r in rows)
    digest, units = hand.c.upload(out).digest, 21 * len(rows)
    hand.c.submit_result(a.id, wire.ResultIn(output_digest=digest, units=units,
                         signature=hand.ident.sign(auth.result_message(a.id, digest, units))))


def _role(net: Network, assignment_id: str) -> str:
    db = sqlite3.connect(net.root / "coordinator" / "deai.sqlite3")
    try:
        row = db.execute("SELECT role FROM assignments WHERE id = ?", (assignment_id,)).fetchone()
    finally:
        db.close()
    return str(row[0])


def test_a_canary_of_a_streamed_request_is_heard_like_the_request(tmp_path: Path) -> None:
    net = Network(tmp_path, heartbeat_timeout=60.0, lease_ttl=120.0, challenge_window=300.0,
                  extra=("--canary-share", "1", "--forced-share", "0"))
    net.start_coordinator()
    try:
        hands = [HandProvider(net, price=900 + 10 * i, memory_mb=8192, slots=4,
                              offer=("chat", CHAT)) for i in range(3)]
        key = api_key(funded(net), "k")
        heard: dict[str, bool] = {}  # role -> what the first probe of such a lease heard
        end = time.time() + 240
        while "canary" not in heard:  # a request at a time; a canary is planted from the
            assert time.time() < end, heard  # pool of accepted ones as later ones place
            caller = threading.Thread(target=_caller, args=(net.url, key), daemon=True)
            caller.start()
            while caller.is_alive() and time.time() < end:
                for hand in hands:
                    for a in hand.take(wait=0.2):
                        if base64.b64decode(a.input_b64 or "").startswith(b'{"check"'):
                            _agree(hand, a)  # a replica's check: the pool takes only
                            continue  # answers checked
                        role = _role(net, a.id)
                        assert _streams(a), role
                        probe_end = time.time() + (30 if role == "primary" else 0)
                        while not (got := hand.c.progress(a.id, [])) \
                                and time.time() < probe_end:  # the caller's stream opens
                            time.sleep(0.2)  # as the request is placed
                        heard.setdefault(role, got)
                        if role == "canary":
                            others = [h for h in hands if h is not hand]
                            assert others[0].c.progress(a.id, []) is False  # not its lease
                        hand.c.progress(a.id, [{"text": "Hello"}])
                        hand.record_chat(a, [chat_line("Hello")])
        assert heard == {"primary": True, "canary": True}, "the probe told a canary apart"
    finally:
        net.close()
