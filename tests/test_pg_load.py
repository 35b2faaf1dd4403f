"""PostgreSQL under ordinary load, through real coordinator processes.

- One coordinator, 4 providers (threads polling, answering and heartbeating as
  agents do), 3 clients submitting 120 jobs of 3 shards at once: every job
  completes, the log shows no deadlock and no 5xx, every result is accepted
  (none refused, so none thrown away), each client pays exactly what its jobs
  cost and the journal audits.
- Two coordinator replicas on one database (verification on), providers and
  clients spread over both: no task is ever leased twice for one role, and each
  client pays exactly the price of the accepted primaries (read from the
  database itself).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from deai.client.sdk import Client
from deai.coordinator.leader import conninfo
from deai.core.errors import DeAIError
from deai.core.money import cost_for_units
from tests.helpers import SPEC, HandProvider, audit_ok, lines
from tests.netutil import Network
from tests.test_delivery import Beating
from tests.test_replicas import Replicas, settle

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FUNDS = 100_000_000


class Driver:
    """A provider's poll → answer loop in a thread, recording every outcome."""

    def __init__(self, p: HandProvider, errors: list[str]) -> None:
        self.p, self.errors = p, errors
        self.outcomes: list[str] = []
        self.stop = threading.Event()
        self.beat = Beating(p)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        ack: list[str] = []
        while not self.stop.is_set():
            try:
                got = self.p.c.poll(wait=1.0, ack=ack).assignments
                ack = [a.id for a in got]
                for a in got:
                    self.outcomes.append(self.p.answer(a).status)
            except DeAIError as exc:
                self.errors.append(f"provider {self.p.id[:8]}: {type(exc).__name__} {exc}")
            except Exception as exc:  # noqa: BLE001 - a transport error is a finding too
                self.errors.append(f"provider {self.p.id[:8]}: {exc!r}")

    def close(self) -> None:
        self.stop.set()
        self.t.join(30)
        self.beat.close()


def submit_all(clients: list[Client], jobs_each: int, errors: list[str]) -> dict[str, list[str]]:
    """Each client submits ``jobs_each`` 3-shard jobs from its own thread, all at once."""
    out: dict[str, list[str]] = {c.identity.id: [] for c in clients if c.identity}

    def one(c: Client) -> None:
        assert c.identity is not None
        for i in range(jobs_each):
            try:
                digest = c.upload(lines(6, 6 * i)).digest
                out[c.identity.id].append(c.submit_job({**SPEC, "shard_size": 2}, digest).id)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"client {c.identity.id[:8]}: {exc!r}")

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return out


def wait_done(view: Callable[[str], str], job_ids: list[str], timeout: float) -> dict[str, str]:
    end = time.monotonic() + timeout
    status: dict[str, str] = {}
    while time.monotonic() < end:
        status = {j: view(j) for j in job_ids}
        if all(s in ("completed", "failed", "cancelled") for s in status.values()):
            break
        time.sleep(1.0)
    return status


def client(url: str) -> Client:
    from deai.client.keys import Identity

    c = Client(url, Identity.generate())
    c.faucet(FUNDS)
    return c


def test_four_providers_120_jobs_three_clients(tmp_path: Path, fresh_pg_url: str) -> None:
    net = Network(tmp_path, fresh_pg_url, heartbeat_timeout=30.0, lease_ttl=120.0,
                  verify=False)
    net.start_coordinator()
    errors: list[str] = []
    drivers: list[Driver] = []
    try:
        drivers = [Driver(HandProvider(net, price=1000, slots=2), errors) for _ in range(4)]
        clients = [client(net.url) for _ in range(3)]
        by_client = submit_all(clients, 40, errors)
        ids = [j for js in by_client.values() for j in js]
        assert len(ids) == 120, errors
        views = {c.identity.id: c for c in clients if c.identity}
        owner = {j: o for o, js in by_client.items() for j in js}
        status = wait_done(lambda j: views[owner[j]].job(j).status, ids, 600)
        assert list(status.values()).count("completed") == 120, status
        for o, js in by_client.items():
            jobs = [views[o].job(j) for j in js]
            assert all(j.cost + j.refunded == j.escrow for j in jobs)
            assert views[o].balance().available == FUNDS - sum(j.cost for j in jobs)
        outcomes = [s for d in drivers for s in d.outcomes]
        assert len(outcomes) == 360 and set(outcomes) == {"accepted"}, outcomes
        audit_ok(clients[0])
    finally:
        for d in drivers:
            d.close()
        net.close()
    log = (tmp_path / "coordinator.log").read_text(errors="replace")
    assert log.count("deadlock detected") == 0
    assert not re.findall(r'" 5\d\d\b', log) and "Traceback" not in log, log[-4000:]
    assert errors == []


def test_two_replicas_never_lease_a_task_twice(tmp_path: Path, fresh_pg_url: str) -> None:
    replicas = Replicas(tmp_path, fresh_pg_url)
    errors: list[str] = []
    drivers: list[Driver] = []
    try:
        replicas.start(2)
        assert len(settle(replicas)) == 1
        urls = [f"http://127.0.0.1:{port}" for port in replicas.procs]
        nets = [_At(u) for u in urls]
        drivers = [Driver(HandProvider(nets[i % 2], price=1000, slots=2), errors)  # type: ignore[arg-type]
                   for i in range(4)]
        clients = [client(urls[i % 2]) for i in range(2)]
        by_client = submit_all(clients, 5, errors)
        ids = [j for js in by_client.values() for j in js]
        assert len(ids) == 10, errors
        views = {c.identity.id: c for c in clients if c.identity}
        owner = {j: o for o, js in by_client.items() for j in js}
        status = wait_done(lambda j: views[owner[j]].job(j).status, ids, 300)
        assert list(status.values()).count("completed") == 10, status
        with psycopg.connect(conninfo(fresh_pg_url)) as conn:
            # A task may also have a check (a replica on another provider), never a second
            # lease of one role: that would be the same work leased twice.
            twice = conn.execute("SELECT task_id, role, count(*) FROM assignments "
                                 "GROUP BY task_id, role HAVING count(*) > 1").fetchall()
            assert twice == []
            for o, js in by_client.items():  # the client pays the primaries; checks are the
                rows = conn.execute(  # network's
                    "SELECT units, price FROM assignments WHERE job_id = ANY(%s) "
                    "AND status = 'accepted' AND role = 'primary'", (js,)).fetchall()
                assert len(rows) == 3 * len(js)
                work = sum(cost_for_units(u or 0, p) for u, p in rows)
                assert views[o].balance().available == FUNDS - work
        audit_ok(clients[0])
    finally:
        for d in drivers:
            d.close()
        replicas.stop()
    for i, _port in enumerate(replicas.procs):
        log = (tmp_path / f"replica-{i}.log").read_text(errors="replace")
        assert log.count("deadlock detected") == 0
        assert not re.findall(r'" 5\d\d\b', log) and "Traceback" not in log, log[-4000:]
    assert errors == []


class _At:
    """What HandProvider needs of a network: its URL."""

    def __init__(self, url: str) -> None:
        self.url = url
