"""Leader election among coordinator replicas that share one PostgreSQL.

Every replica serves the API; only the leader runs the background loops
(matching, lease expiry, deadlines, settlement, nonce purge). The leader is
whoever holds a session-level ``pg_try_advisory_lock(LEADER_KEY)`` on a
dedicated connection that belongs to no pool:

- A follower tries for the lock every ``period`` seconds. When it wins it
  calls ``start()`` (which runs ``jobs.recover`` and creates the loop tasks)
  and becomes the leader.
- The leader checks its connection every ``period`` seconds. If the
  connection is lost the lock is gone with it: the loops are cancelled at once
  and the replica goes back to trying.
- When the leader process dies (SIGKILL included) the kernel closes its
  socket, PostgreSQL ends the session and frees the lock, and the next
  follower to try takes over: failover within about ``period`` seconds. TCP
  keepalives on the connection bound the time for a leader whose host
  vanished without closing anything.
- A clean shutdown closes the connection, releasing the lock immediately.

The lock is not a fence: a leader partitioned from PostgreSQL may run a loop
iteration after a follower took over. Loops must therefore stay correct when
two run at once (claim rows with ``FOR UPDATE SKIP LOCKED``, check states
before changing them); the election only makes that rare.

On SQLite there is one process, and it is always the leader.

Every replica, leader or follower, also stamps ``network_meta``'s ``fleet_alive`` row
every ``period`` through its own pool (``stamp``): the newest moment, by the database's
clock, that some replica reached the database and so could take heartbeats.
``jobs.recover`` reads it (``silence``) on each election: a takeover while replicas kept
stamping is no outage, and changes no provider's liveness or deadline; a long silence
(the database or every replica down) is, and so is a replica that has just started
(``served_for``).

``migrate(db)`` runs the Alembic upgrade under another advisory lock so
replicas starting together do not race to create the same tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from deai.store import migrate as migrations
from deai.store.db import Database

log = logging.getLogger("deai.coordinator.leader")

LEADER_KEY = 0x0DEA1_1EAD  # advisory lock keys are per database
MIGRATE_KEY = 0x0DEA1_0A16
FLEET_ALIVE = "fleet_alive"  # network_meta's key: a replica last reached the database


def conninfo(url: str) -> str:
    """A libpq URL for psycopg from the SQLAlchemy URL (``postgresql+psycopg://...``)."""
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


async def connect(url: str, name: str) -> psycopg.AsyncConnection:
    """A dedicated autocommit connection with keepalives, named for pg_stat_activity."""
    return await psycopg.AsyncConnection.connect(
        conninfo(url), autocommit=True, application_name=name, connect_timeout=5,
        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)


def migrate(db: Database) -> None:
    """Upgrade the schema; on PostgreSQL one replica at a time."""
    if db.is_sqlite:
        migrations.upgrade(db.engine)
        return
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_KEY})
        try:
            migrations.upgrade(db.engine)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_KEY})
            conn.commit()


def stamp(db: Database) -> None:
    """Record that this replica reaches the database now, by the database's clock (one
    clock for every replica). SQLite: nothing (one process)."""
    if db.is_sqlite:
        return
    with db.write() as s:
        s.execute(text("INSERT INTO network_meta (key, value) "
                       "VALUES (:k, CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS TEXT)) "
                       "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"),
                  {"k": FLEET_ALIVE})


def silence(s: Session) -> float | None:
    """Seconds since a replica last stamped, by the database's clock; None on SQLite or
    before any replica has."""
    if s.get_bind().dialect.name == "sqlite":
        return None
    quiet = s.scalar(text("SELECT EXTRACT(EPOCH FROM clock_timestamp()) "
                          "- CAST(value AS DOUBLE PRECISION) FROM network_meta WHERE key = :k"),
                     {"k": FLEET_ALIVE})
    return None if quiet is None else float(quiet)


Start = Callable[[], Awaitable[list["asyncio.Task[None]"]]]


class Leader:
    def __init__(self, db: Database, *, period: float = 1.0, key: int = LEADER_KEY) -> None:
        self.db = db
        self.period = period
        self.key = key
        self.is_leader = False
        self.terms = 0  # how many times this replica became the leader
        self._conn: psycopg.AsyncConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._since: float | None = None  # monotonic time of the first campaign

    @property
    def name(self) -> str:
        return f"deai-leader-{os.getpid()}"

    def served_for(self) -> float:
        """Seconds since this replica's first campaign (it serves from then on)."""
        return 0.0 if self._since is None else time.monotonic() - self._since

    async def campaign(self, start: Start) -> None:
        """One attempt, awaited at start-up so a sole replica recovers before it serves."""
        if self._since is None:
            self._since = time.monotonic()
        try:
            if self.db.is_sqlite:
                if not self.is_leader:
                    await self._elected(start)
            elif not self.is_leader:
                if await self._try_lock():
                    await self._elected(start)
            else:
                await self._check()
        except Exception as exc:  # a lost connection, or start() failed
            if not isinstance(exc, (psycopg.Error, OSError, TimeoutError)):
                log.exception("starting the background loops failed")
            await self._lost(f"{type(exc).__name__}: {exc}")

    async def run(self, start: Start) -> None:
        """Hold or seek the leadership until cancelled; ``start`` makes the loops."""
        try:
            while True:
                await asyncio.sleep(self.period)
                await self.campaign(start)
                await self._stamp()  # after the campaign: an election reads the others'
        finally:
            await self._stop_loops()
            await self._close()

    async def _stamp(self) -> None:
        if self.db.is_sqlite:
            return
        try:
            await asyncio.to_thread(stamp, self.db)
        except Exception as exc:  # the database is away: the silence is what it records
            log.debug("fleet_alive stamp failed: %s", exc)

    async def _try_lock(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self.db.url, self.name)
        cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _check(self) -> None:
        assert self._conn is not None
        await asyncio.wait_for(self._conn.execute("SELECT 1"), timeout=max(2.0, self.period))

    async def _elected(self, start: Start) -> None:
        self.is_leader = True
        self.terms += 1
        log.info("this replica (pid %d) is the leader", os.getpid())
        self._tasks = await start()

    async def _lost(self, why: str) -> None:
        if self.is_leader:
            log.warning("leadership lost (%s); stopping the background loops", why)
        self.is_leader = False
        await self._stop_loops()
        await self._close()

    async def _stop_loops(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
