"""The shared lease-session rendezvous, two replicas in one process on one PostgreSQL.

Replicas A and B are two apps with their own coordinator, hub, notifier and internal
relay endpoint; the tests drive the owner's socket on A and the provider's poll and
session socket on B by hand: the session crosses (frames both ways), only the lease's
provider can pick it up, the secret and endpoint never leave the coordinators, the
queue's cap counts every replica's sessions, a wrong secret is refused by the internal
endpoint, and a session whose owner's replica is gone is closed, never a 5xx, and swept.
``tests/test_lease_relay_replicas.py`` runs the same path with real processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from deai.client.keys import Identity
from deai.coordinator import leases, relay_leases
from deai.coordinator.app import create_app
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.wire_leases import HostIn, LeaseIn
from deai.store.models import Provider
from deai.store.models_relay import LeaseSession

pytestmark = pytest.mark.postgres


@dataclass
class World:
    c: Coordinator
    a: TestClient
    b: TestClient
    app_a: FastAPI
    app_b: FastAPI
    owner: Identity
    host: Identity
    lease_id: str

    def signed(self, who: Identity, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        return who.headers(method, path, body, network=self.c.network_id)

    def poll(self, cl: TestClient, wait: float, known: list[str]) -> tuple[float, Any]:
        body = json.dumps({"wait": wait, "known": known}).encode()
        p = "/api/provider/leases/poll"
        t0 = time.time()
        r = cl.post(p, content=body, headers={**self.signed(self.host, "POST", p, body),
                                               "content-type": "application/json"})
        assert r.status_code == 200, r.text
        return time.time() - t0, r

    def rows(self) -> list[LeaseSession]:
        with self.c.db.read() as s:
            rows = list(s.scalars(select(LeaseSession)).all())
            s.expunge_all()  # detached with their values loaded: the read's rollback expires
            return rows


@pytest.fixture
def world(tmp_path: Path, fresh_pg_url: str) -> Iterator[World]:
    owner, host = Identity.generate("owner"), Identity.generate("host")
    apps = []
    for i in range(2):
        s = Settings(data_dir=tmp_path / f"r{i}", database_url=fresh_pg_url, devnet=True)
        c = Coordinator(s)
        apps.append((c, create_app(s, c)))
    (c, app_a), (_, app_b) = apps
    with TestClient(app_a) as a, TestClient(app_b) as b:
        with c.db.write() as s:
            s.add(Provider(id=host.id, name="host", hardware={}, benchmark={},
                           registered_at=0.0, last_seen=c.now(),
                           capabilities={"sandbox": True}))
            s.flush()
            c.settlement.post(s, ledger.faucet(host.id, c.settings.min_stake))
            c.settlement.post(s, ledger.bond(host.id, c.settings.min_stake))
            c.settlement.post(s, ledger.faucet(owner.id, 10_000_000))
        cfg = leases.LeaseConfig()
        leases.set_host(c, cfg, host.id, HostIn(cpus=4, memory_mb=8192,
                                                prices={"cpu": 360_000, "memory_gb": 36_000}))
        lid = leases.create(c, owner.id, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                                 max_price_hour=10**6)).id
        leases.heartbeat(c, host.id, [lid], {})  # active
        yield World(c, a, b, app_a, app_b, owner, host, lid)


def _attach(w: World, cl: TestClient, first: dict[str, Any], out: dict[str, Any],
            then: tuple[bytes, ...] = ()) -> None:
    path = f"/api/leases/{w.lease_id}/attach"
    # The test client's portal may cancel the socket's close once the server has ended
    # the session: what was received is in ``out`` by then, which the test checks.
    with contextlib.suppress(concurrent.futures.CancelledError), \
            cl.websocket_connect(path, headers=w.signed(w.owner, "GET", path)) as ws:
        ws.send_text(json.dumps(first))
        out["first"] = json.loads(ws.receive_text())
        if out["first"].get("type") != "open":
            return
        for data in then:
            ws.send_bytes(data)
        out["text"] = json.loads(ws.receive_text())
        out["bytes"] = ws.receive_bytes()


def _owner_waiting(w: World) -> tuple[threading.Thread, dict[str, Any]]:
    """The owner's ``get`` of ``x`` attached on A in a thread, once its session is filed
    (within 10 s): the thread, and the dict ``_attach`` fills."""
    out: dict[str, Any] = {}
    waiting = threading.Thread(target=_attach, args=(w, w.a, {"op": "get", "path": "x"}, out))
    waiting.start()
    end = time.time() + 10
    while not w.rows():
        assert time.time() < end
        time.sleep(0.05)
    return waiting, out


def _refusal(cl: TestClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    with cl.websocket_connect(path, headers=headers) as ws:
        answer: dict[str, Any] = json.loads(ws.receive_text())
        return answer


def test_a_session_crosses_replicas(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # the pickup window well past this test's steps on a loaded machine (the 15 s one
    # ran out in the full suite's loaded CI before the agent's socket came)
    monkeypatch.setattr(relay_leases, "AGENT_TIMEOUT", 120.0)
    w = world
    # the agent's poll is held on B before the owner attaches on A
    polled: dict[str, Any] = {}
    th = threading.Thread(target=lambda: polled.update(r=w.poll(w.b, 20, [w.lease_id])))
    th.start()
    time.sleep(0.5)
    out: dict[str, Any] = {}
    owner = threading.Thread(target=_attach, args=(w, w.a, {"op": "exec", "argv": ["cat"]},
                                                   out, (b"\x00hello",)))
    owner.start()
    th.join(30)
    _, r = polled["r"]  # woken on B by A's NOTIFY (before, B never heard of the session)
    sessions = r.json()["sessions"]
    assert [x["params"]["argv"] for x in sessions] == [["cat"]]
    sid = sessions[0]["id"]
    (row,) = w.rows()
    assert row.secret not in r.text and row.endpoint not in r.text and row.taken

    # only the lease's provider picks it up; an unknown session is a 404
    path = f"/api/provider/leases/sessions/{sid}"
    other = Identity.generate("other")
    assert _refusal(w.b, path, w.signed(other, "GET", path))["status"] == 403
    nopath = "/api/provider/leases/sessions/nosuchsession"
    assert _refusal(w.b, nopath, w.signed(w.host, "GET", nopath))["status"] == 404
    assert len(w.rows()) == 1  # a refused claim takes nothing

    with contextlib.suppress(concurrent.futures.CancelledError), \
            w.b.websocket_connect(path, headers=w.signed(w.host, "GET", path)) as agent:
        assert agent.receive_bytes() == b"\x00hello"
        agent.send_text('{"type": "exit", "code": 7}')
        agent.send_bytes(b"\x01" + b"x" * 300_000)
        owner.join(30)
    assert out["first"] == {"type": "open"}
    assert out["text"] == {"type": "exit", "code": 7}
    assert out["bytes"] == b"\x01" + b"x" * 300_000
    assert w.rows() == []
    hub_a: relay_leases.Hub = w.app_a.state.lease_hub
    assert hub_a.pending == {} and hub_a.queued == {}


def test_the_queue_cap_counts_every_replica(world: World,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_leases, "MAX_QUEUED", 1)
    monkeypatch.setattr(relay_leases, "AGENT_TIMEOUT", 3.0)
    w = world
    waiting, out = _owner_waiting(w)
    refused: dict[str, Any] = {}
    _attach(w, w.b, {"op": "get", "path": "y"}, refused)
    assert refused["first"]["status"] == 409 and "waiting" in refused["first"]["message"]
    waiting.join(30)
    assert out["first"]["status"] == 404  # nobody picked it up: cleaned up
    assert w.rows() == []


def test_the_internal_endpoint_wants_the_secret(world: World,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_leases, "AGENT_TIMEOUT", 4.0)
    w = world
    waiting, out = _owner_waiting(w)
    (row,) = w.rows()
    host, _, port = row.endpoint.rpartition(":")
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(json.dumps({"sid": row.id, "secret": "x" + row.secret[1:]}).encode() + b"\n")
        assert s.makefile("rb").readline() == b"no\n"
    waiting.join(30)
    assert out["first"]["status"] == 404  # still waiting for the real agent until then


def test_an_owner_replica_gone_closes_the_agent_and_its_row_is_swept(world: World) -> None:
    w = world
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    old = w.c.now() - 10 * relay_leases.AGENT_TIMEOUT
    with w.c.db.write() as s:
        s.add(LeaseSession(id="gone-session", provider_id=w.host.id, lease_id=w.lease_id,
                           params={"op": "get", "path": "x"}, endpoint=dead,
                           secret="s" * 43, created_at=w.c.now(), taken=False))
        s.add(LeaseSession(id="stale-session", provider_id=w.host.id, lease_id=w.lease_id,
                           params={"op": "get", "path": "x"}, endpoint=dead,
                           secret="s" * 43, created_at=old, taken=False))
    _, r = w.poll(w.b, 0, [w.lease_id])
    assert [x["id"] for x in r.json()["sessions"]] == ["gone-session"]  # not the stale one
    path = "/api/provider/leases/sessions/gone-session"
    with w.b.websocket_connect(path, headers=w.signed(w.host, "GET", path)) as agent:
        msg = agent.receive()
    assert msg["type"] == "websocket.close" and msg["code"] == 4408
    relay = w.app_b.state.lease_hub.relay
    relay._swept = 0.0
    assert relay.sweep() == 1
    assert w.rows() == []
