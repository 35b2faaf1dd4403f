"""Several coordinator replicas on one PostgreSQL: exactly one leads, and when the
leader is SIGKILLed another takes over; signals cross replicas by LISTEN/NOTIFY.

Replicas are real ``python -m deai.coordinator`` processes on their own ports
sharing one fresh database (the way several machines would run them); the
leader is read both from each replica's ``/health`` and from PostgreSQL's own
lock table, where the holder's ``application_name`` names its process id.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from deai.coordinator.leader import LEADER_KEY, conninfo
from deai.coordinator.notifier import Notifier
from tests.netutil import Proc, free_port

pytestmark = pytest.mark.postgres


def lock_holders(url: str) -> list[str]:
    """application_name of every session holding the leader's advisory lock."""
    with psycopg.connect(conninfo(url)) as conn:
        rows = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
            "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (LEADER_KEY,)).fetchall()
    return [r[0] for r in rows]


class Replicas:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.env = {**os.environ, "DEAI_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
        self.procs: dict[int, Proc] = {}  # port -> process

    def start(self, n: int) -> None:
        for i in range(n):
            port = free_port()
            args = [sys.executable, "-m", "deai.coordinator", "--port", str(port),
                    "--data-dir", str(self.root / "coordinator"), "--devnet",
                    "--database-url", self.url]
            self.procs[port] = Proc(args, self.root / f"replica-{i}.log", self.env)
        for port in self.procs:
            self.health(port, wait=180)  # three interpreters importing torch on a busy machine

    def health(self, port: int, wait: float = 0) -> dict[str, object]:
        end = time.time() + wait
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.TransportError:
                if time.time() >= end:
                    raise
            if not self.procs[port].alive():
                raise RuntimeError(f"replica on {port} exited:\n{self.procs[port].tail()}")
            time.sleep(0.2)

    def leaders(self) -> list[int]:
        return [p for p, proc in self.procs.items()
                if proc.alive() and self.health(p).get("leader") is True]

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop(10)


@pytest.fixture
def replicas(tmp_path: Path, fresh_pg_url: str) -> Iterator[Replicas]:
    r = Replicas(tmp_path, fresh_pg_url)
    yield r
    r.stop()


def settle(r: Replicas, timeout: float = 20.0) -> list[int]:
    """Leaders once exactly one holds the lock (startup campaigns race for a moment)."""
    end = time.time() + timeout
    while True:
        leaders = r.leaders()
        if len(leaders) == 1 or time.time() > end:
            return leaders
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_one_leader_and_failover_after_sigkill(replicas: Replicas, n: int) -> None:
    replicas.start(n)
    leaders = settle(replicas)
    assert len(leaders) == 1, leaders
    leader = leaders[0]
    holders = lock_holders(replicas.url)
    assert holders == [f"deai-leader-{replicas.procs[leader].p.pid}"]
    for port in replicas.procs:  # every replica serves the API, leader or not
        assert httpx.get(f"http://127.0.0.1:{port}/api/network", timeout=5).status_code == 200

    replicas.procs[leader].kill()
    killed_at = time.time()
    new: list[int] = []
    while time.time() - killed_at < 5.0:
        new = replicas.leaders()
        if new:
            break
        time.sleep(0.1)
    assert len(new) == 1 and new[0] != leader, f"no takeover within 5 s: {new}"
    assert lock_holders(replicas.url) == [f"deai-leader-{replicas.procs[new[0]].p.pid}"]
    time.sleep(2.0)  # and it stays that way: no second leader appears
    assert replicas.leaders() == new


@pytest.mark.slow
def test_workers_flag_runs_replicas_on_one_port(tmp_path: Path, fresh_pg_url: str) -> None:
    port = free_port()
    env = {**os.environ, "DEAI_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    proc = Proc([sys.executable, "-m", "deai.coordinator", "--port", str(port), "--workers",
                 "3", "--data-dir", str(tmp_path / "coordinator"), "--devnet",
                 "--database-url", fresh_pg_url], tmp_path / "workers.log", env)
    try:
        end = time.time() + 60
        while len(lock_holders(fresh_pg_url)) != 1 or _listeners(fresh_pg_url) < 3:
            assert proc.alive(), proc.tail()
            assert time.time() < end, proc.tail()
            time.sleep(0.3)
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        assert proc.stop(20) == 0, proc.tail()


def _listeners(url: str) -> int:
    """Workers up: each holds one LISTEN connection."""
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE application_name = 'deai-listen'").fetchone()
    return int(row[0]) if row else 0


def test_signals_cross_replicas_by_notify(fresh_pg_url: str) -> None:
    async def scenario() -> None:
        a, b = Notifier(), Notifier()
        loop = asyncio.get_running_loop()
        for x in (a, b):
            x.bind(loop)
            await x.connect(fresh_pg_url)
        try:
            await asyncio.wait_for(asyncio.gather(a.listening.wait(), b.listening.wait()), 30)
            poll = asyncio.create_task(b.wait_provider("p1", 600))
            result = b.watch_result("t1")
            events = b.subscribe()
            match = asyncio.create_task(b.wait_match(600))
            changed: list[list[str]] = []
            heard = asyncio.Event()

            def hear(ids: list[str]) -> None:
                changed.append(ids)
                heard.set()
            b.on_remote_change.append(hear)
            await asyncio.sleep(0)
            # From another thread, as request handlers call it.
            await asyncio.to_thread(a.wake, ["p1"])
            a.result_arrived("t1")
            a.published()
            a.kick()
            await asyncio.to_thread(a.providers_changed, ["p3", "p4"])  # a commit's touch
            await asyncio.wait_for(poll, 30)  # the 600 s waits end only by a wake-up
            await asyncio.wait_for(result.wait(), 30)
            assert await asyncio.wait_for(events.get(), 30) == 1
            await asyncio.wait_for(match, 30)
            await asyncio.wait_for(heard.wait(), 30)
            assert changed == [["p3", "p4"]]  # the other replica's index re-reads them
            assert b.received >= 1 and a.sent >= 1
            assert a.received == 0  # a replica ignores its own notifications
            unrelated = asyncio.create_task(b.wait_provider("p2", 600))
            await asyncio.sleep(0.5)
            assert not unrelated.done()
            unrelated.cancel()
        finally:
            await a.disconnect()
            await b.disconnect()

    asyncio.run(scenario())
