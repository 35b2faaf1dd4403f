"""The relay's in-memory rendezvous (``relay_leases.Hub``) stays bounded: a session whose
owner gave up waiting leaves the provider's queue with its first message, and a provider
has at most ``MAX_QUEUED`` sessions waiting for its poll. Before, every abandoned session
kept its first message (up to ~16 MB) queued for good."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deai.client.keys import Identity
from deai.coordinator import leases, relay_leases
from deai.coordinator.app import create_app
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.errors import Conflict
from deai.core.wire_leases import HostIn, LeaseIn
from deai.store.models import Provider

HOST = "b" * 64


def test_abandoned_sessions_leave_the_queue_and_the_queue_is_capped() -> None:
    async def run() -> None:
        hub = relay_leases.Hub(asyncio.get_running_loop())
        big = {"op": "exec", "argv": ["x" * 1024] * 16}
        for _ in range(3 * relay_leases.MAX_QUEUED):  # every owner gives up waiting
            sid, _ = hub.file(HOST, "lease_x", big)
            hub.drop(sid)
        assert hub.queued == {} and hub.pending == {}

        kept = [hub.file(HOST, "lease_x", big)[0] for _ in range(relay_leases.MAX_QUEUED)]
        with pytest.raises(Conflict):
            hub.file(HOST, "lease_x", big)
        assert hub.file("c" * 64, "lease_y", big)[0]  # another provider's queue is its own
        hub.drop(kept[0])
        assert [x.id for x in hub.queued[HOST]] == kept[1:]
        taken = hub.take(HOST)  # the poll takes the rest; dropping them afterwards is safe
        assert [x.id for x in taken] == kept[1:]
        for sid in kept:
            hub.drop(sid)
        assert HOST not in hub.queued
        assert [p.provider_id for p in hub.pending.values()] == ["c" * 64]

    asyncio.run(run())


def test_an_owner_who_gives_up_leaves_nothing_queued(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """Through the real route: the owner attaches to an active lease whose agent never
    picks the session up; after the wait the owner is refused and the provider's queue
    is empty again. A full queue refuses a new session with 409."""
    monkeypatch.setattr(relay_leases, "AGENT_TIMEOUT", 0.3)
    owner = Identity.generate("owner")
    settings = Settings(data_dir=tmp_path, database_url="", devnet=True)
    c = Coordinator(settings)
    app = create_app(settings, c)
    with TestClient(app) as client:
        with c.db.write() as s:
            s.add(Provider(id=HOST, name="host", hardware={}, benchmark={}, registered_at=0.0,
                           last_seen=c.now(), capabilities={"sandbox": True}))
            s.flush()
            c.settlement.post(s, ledger.faucet(HOST, settings.min_stake))
            c.settlement.post(s, ledger.bond(HOST, settings.min_stake))
            c.settlement.post(s, ledger.faucet(owner.id, 10_000_000))
        cfg = leases.LeaseConfig()
        leases.set_host(c, cfg, HOST, HostIn(cpus=2, memory_mb=4096,
                                             prices={"cpu": 360_000, "memory_gb": 36_000}))
        lid = leases.create(c, owner.id, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                                 max_price_hour=10**6)).id
        leases.heartbeat(c, HOST, [lid], {})
        hub: relay_leases.Hub = app.state.lease_hub
        path = f"/api/leases/{lid}/attach"
        first = json.dumps({"op": "exec", "argv": ["x" * 65536] * 16})

        def attach() -> dict[str, object]:
            with client.websocket_connect(path, headers=owner.headers(
                    "GET", path, b"", network=c.network_id)) as ws:
                ws.send_text(first)
                answer: dict[str, object] = json.loads(ws.receive_text())
                return answer

        for _ in range(3):
            assert attach()["status"] == 404  # the agent did not pick it up in time
        assert hub.queued == {} and hub.pending == {}
        monkeypatch.setattr(relay_leases, "MAX_QUEUED", 0)
        refused = attach()
        assert refused["status"] == 409 and "waiting" in str(refused["message"])
        assert hub.queued == {} and hub.pending == {}


def test_a_wake_is_kept_for_each_poll_in_progress_and_forgotten_after() -> None:
    """A wake between a poll's reads and its wait ends the wait at once; two polls of one
    key each get it (one's next round does not clear the other's); once no poll of a key
    is in progress, the hub keeps nothing for it (a key that once polled costs nothing)."""
    async def run() -> None:
        hub = relay_leases.Hub(asyncio.get_running_loop())
        with hub.watching(HOST) as a, hub.watching(HOST) as b:
            a.reading()
            b.reading()
            hub.woken_elsewhere([HOST])  # between the reads and the waits
            a.reading()  # a's next round of reads: b's wake stays
            await asyncio.wait_for(b.wait(30.0), 5.0)
            hub.woken_elsewhere([HOST])
            await asyncio.wait_for(a.wait(30.0), 5.0)
            with hub.watching("c" * 64) as other:
                other.reading()
                hub.woken_elsewhere([HOST])
                assert not other.event.is_set()  # another key's wake is not its
        assert hub._wakers == {}
        for _ in range(100):  # many keys, each polling once
            with hub.watching(secrets.token_hex(32)) as w:
                w.reading()
        assert hub._wakers == {}

    asyncio.run(run())
