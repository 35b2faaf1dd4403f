"""A small network whose history covers every standing and every shard mark, for the
explorer's view and browser tests.

Built with the coordinator's own applier (``tests.lifecycle_worlds.DbWorld``: a real
SQLite database, ``effects.apply`` of ``core.lifecycle.decide``'s effects) on an
injected clock, so what the explorer shows comes from the same code paths as on a
live network, without waiting for a cheater to be caught:

- p0 runs the shard; a replica (p1) disagrees; a referee (p2) re-runs it and sides
  with the replica: p0 is slashed, put on probation, and the replica's result stands
  (the shard was **redone** after a verdict: one attempt, yet not p0's result);
- a trusted auditor (p3) re-runs the accepted result and disagrees: p1 is slashed
  and the shard's result is **corrected**;
- p4 fails a check that slashes nothing (probation only), p5 heartbeats (online),
  the others are silent (offline), and ``BELOW`` heartbeats with no stake bonded.

``serve`` runs the coordinator's ASGI app over that coordinator with uvicorn on a
loopback port, in a thread of the test process (the clock is the test's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from deai.coordinator.app import create_app
from deai.coordinator.service import Coordinator
from deai.core.clock import ManualClock
from deai.core.lifecycle import Role
from deai.core.lifecycle import decide as D
from deai.core.lifecycle import effects as E
from deai.core.verify.policy import Fault
from deai.store.models import Lease, LeaseHost, Provider
from deai.store.models_clusters import Cluster
from deai.store.models_datasets import Dataset
from tests.lifecycle_worlds import DbWorld
from tests.netutil import free_port

BELOW = "b" * 64
EXTRA_ENTRIES = 40  # faucets, so the journal spans more than two explorer pages
LEASE_ESCROW = 7_654_321  # private: never on a public page
DATASETS = ("ds_" + "7" * 24, "ds_" + "8" * 24)


@dataclass
class World:
    c: Coordinator
    job_id: str
    task_id: str
    standing: dict[str, str]  # provider id -> the standing it must show
    names: dict[str, str]  # provider id -> its name


def build(root: Path) -> World:
    w = DbWorld(root)
    clock = w.c.clock
    assert isinstance(clock, ManualClock)
    p = w.providers
    primary, replica, referee = (w.seat(r) for r in (Role.PRIMARY, Role.REPLICA, Role.REFEREE))
    party = {x.id: D.Party(x.id, x.provider, x.role) for x in (primary, replica, referee)}
    w.apply(D.on_placed(w.ctx(), Role.PRIMARY))
    w.apply(D.on_primary(w.ctx(), party[primary.id], replicate=True, rho=1.0))
    w.apply(D.on_replica(w.ctx(), party[replica.id], party[primary.id], match=False,
                         evidence={"statistic": 0.5}))
    w.apply(D.on_verdict(w.ctx(), Fault.SUBJECT, party[referee.id], party[primary.id],
                         party[replica.id], reexec=True, evidence={"fault": "subject"}))
    w.apply([E.NeedCheck(Role.AUDIT)])
    audit = w.seat(Role.AUDIT)  # leased once the job completed (ending it cancels leases)
    party[audit.id] = D.Party(audit.id, audit.provider, audit.role)
    w.apply(D.on_audit(w.ctx(), party[audit.id], [party[replica.id]], match=False,
                       evidence={"statistic": 0.9}))
    w.apply([E.Rate(p[4], False)])  # a fault that slashes nothing: probation only
    with w.c.db.write() as s:
        s.add(Provider(id=BELOW, name="unbonded", hardware={}, benchmark={},
                       registered_at=clock.now(), last_seen=0.0))
        for i in range(EXTRA_ENTRIES):
            w.c.settlement.faucet(s, w.client, 1_000 + i)
        # Leases and a cluster (their lifecycle is tested in test_lease_* and
        # test_cluster_*): rows as those modules leave them, for the Leases page.
        now = clock.now()
        for lid, pid, ended in (("lse_head", p[5], False), ("lse_worker", p[2], False),
                                ("lse_gone", p[3], True)):
            s.add(Lease(id=lid, owner=w.client, provider_id=pid,
                        status="ended" if ended else "active",
                        end_reason="provider lost" if ended else None, cpus=2, memory_mb=2048,
                        price_hour=360_000, max_price_hour=500_000, escrow=LEASE_ESCROW,
                        created_at=now, started_at=now, ended_at=now if ended else None))
        for pid in (p[5], p[2], p[3]):
            s.add(LeaseHost(provider_id=pid, cpus=4, memory_mb=8192, gpus=0,
                            prices={"cpu": 360_000, "memory_gb": 36_000}, updated_at=now))
        s.add(Cluster(id="cl_world", owner=w.client, status="running", nodes=2,
                      leases=["lse_head", "lse_worker"], lost=[], created_at=now,
                      form_by=now + 180, ready_at=now, ray={"token": "never shown"}))
        # Two datasets on offer: one any provider may run, one its owner named two for.
        for dsid, name, named in ((DATASETS[0], "open rows", None),
                                  (DATASETS[1], "named rows", [p[5], p[2]])):
            s.add(Dataset(id=dsid, owner=w.client, name=name, blob_digest="0" * 64, size=2048,
                          info={"n": 64, "features": 4, "classes": 2, "sha256": "1" * 64},
                          owner_key="never shown", price_per_use=250_000, allow=["train"],
                          expires_at=None, max_uses=10, uses=0, royalties=0, created_at=now,
                          providers=named))
    clock.advance(w.c.settings.challenge_window + 1)  # every event of the job is public
    for pid in (p[5], BELOW):
        w.c.heartbeat(pid, [])
    with w.c.db.read() as s:
        names = {pid: name for pid, name in s.query(Provider.id, Provider.name)}
    standing = {pid: "offline" for pid in p}  # silent since the start, bonded
    standing |= {p[0]: "slashed", p[1]: "slashed", p[4]: "probation", p[5]: "online",
                 BELOW: "below_stake"}
    return World(w.c, w.job_id, w.task_id, standing, names)


def beat(world: World) -> None:
    """Keep the online ones online (the clock does not move by itself)."""
    for pid, st in world.standing.items():
        if st in ("online", "below_stake"):
            world.c.heartbeat(pid, [])


@contextmanager
def serve(c: Coordinator) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(c.settings, c), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/providers", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < end and thread.is_alive(), "the world's coordinator never came up"
        time.sleep(0.2)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
