"""Engine and transactions for SQLite (embedded default) and PostgreSQL.

``Database.write()`` and ``Database.run(fn)`` are the only ways to change state.
On SQLite a process-wide lock and ``BEGIN IMMEDIATE`` make writers queue
instead of failing with "database is locked". On PostgreSQL several API
replicas share the database, so a transaction can lose a race: PostgreSQL
aborts it with a deadlock (SQLSTATE 40P01) or a serialization failure
(40001). ``run(fn)`` runs ``fn(session)`` in a fresh transaction and, when it
aborts for one of those reasons (or SQLite reports "database is locked"),
rolls back and calls ``fn`` again, up to ``attempts`` times with a short
jittered back-off. ``fn`` must therefore only touch the database and its own
locals before it returns: side effects (notifications, blob writes that are
not idempotent, journal cursors) go after ``run`` returns. ``write()`` remains
a plain context manager for callers that cannot be re-run; it does not retry.

Lock order (PostgreSQL; the rule every write transaction follows)
------------------------------------------------------------------
A row is locked when it is UPDATEd, DELETEd or read ``FOR UPDATE``. Within a
transaction take row locks in this order, and within one table in ascending
primary key::

    jobs → tasks → assignments → providers → offers, reputation → payouts
         → datasets → journal_head → balances (ascending account)

Inserts of new rows (events, nonces, journal entries, assignments being
created) may happen at any point, but an insert's foreign key takes a KEY
SHARE lock on the row it names (an assignment's provider, a task's job). So a
row that others' inserts name is locked ``FOR NO KEY UPDATE``
(``with_for_update(key_share=True)``), never ``FOR UPDATE``, unless its key
changes or it is deleted: providers above all (a /v1 request inserts its lease
after the journal's head, while a result holds the provider and waits for the
head; with ``FOR UPDATE`` those two deadlocked).

Consequences:
- The journal head is the last lock before the balances: ``journal.append``
  flushes the session first (autoflush), so the caller's pending changes to
  earlier tables are written, and locked, before the head. Changes to a
  provider or reputation row must be made (and flushed) *before* the
  payout/append that follows them, not after.
- A transaction that starts from an assignment id (a result, a failure) reads
  the assignment without a lock to learn its task and job, then locks job,
  task, assignment in that order and re-checks what it read.
- Heartbeats and deliveries lock assignments before the provider row
  (``coordinator.liveness`` does so in ascending id, with ``SKIP LOCKED``).
- Hardware challenges lock the provider row first, then its claim and its
  challenges (``coordinator.hardware._locked``); the expiry takes one
  provider a transaction.
- A dataset is locked after its using job and before the journal's head (a key's
  release pays the job's royalty; a submission locks it before its escrow). One
  exception: a job that ends gives an unpaid royalty back and locks its dataset
  then, after whatever the ending already posted (a slash, a forfeit); it can meet
  a release for another job on the same dataset, and ``run`` retries the loser.
- Hourly leases: a lease's rows in ascending id, then its provider, then the
  journal's head; a cluster's row, then its leases (one cluster a transaction);
  a volume, then its mounts.
- A decision made from a row read earlier without a lock (a status, an
  amount, a balance an amount is clamped to) is read again locked before it
  is written: PostgreSQL's READ COMMITTED lets another writer commit in
  between. ``Session.get(..., with_for_update=True)`` returns an object the
  session already holds as it was unless ``populate_existing=True``.
- A blob's hold (an advisory lock on its digest, ``coordinator.blob_quota``) comes
  before any row lock: an upload's record, a discard, a job submission naming
  files, a dataset's publication, a result sent inline take it first. Three take it
  later, where the bytes are made inside the transaction: a job's assembled output
  (its job row held), a check's payload (the matcher's batch holds its jobs and
  tasks) and a snapshot or a batch's output file. They can meet a submission naming
  the same bytes in a cycle; ``run`` retries the loser.
- A lease that ends withdraws the preemption notices it caused (``leases.finish``):
  the victims' rows are locked after the ending lease's, whatever their ids, and can
  meet the leader's tick, which locks live leases in ascending id; ``run`` retries
  the loser.
Anything that cannot follow the order is still safe, only slower: ``run``
retries the loser of a deadlock.
"""

from __future__ import annotations

import json
import logging
import operator
import random
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import JSON, Engine, Table, case, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
log = logging.getLogger("deai.store.db")

RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
DEFAULT_ATTEMPTS = 8


# Connections: by default more than the threads that can ask for one at a time. Each
# database call runs on anyio's thread pool (40 threads) and holds one connection; a pool
# smaller than that made the 16th (SQLite) or 31st (PostgreSQL) concurrent reader wait
# 30 s, whatever it was for. The margin covers the threads of our own (checkpoints).
# Several replicas on one PostgreSQL may each be given fewer (``DEAI_DB_CONNECTIONS``,
# ``Settings.db_connections``) to fit its ``max_connections``: a request then waits for a
# connection (up to the pool's 30 s, then 503 ``unavailable``) instead of being refused.
THREADS = 40  # anyio's default thread limiter
POOL_SIZE = 10  # kept open
CONNECTIONS = THREADS + 10  # at most, kept and opened under load (closed when returned)
MIN_CONNECTIONS = 2  # the leader's loop and one request at a time


def _pool(connections: int) -> dict[str, int]:
    if not MIN_CONNECTIONS <= connections <= 10_000:
        raise ValueError(f"connections must be {MIN_CONNECTIONS}..10000, not {connections}")
    size = min(POOL_SIZE, connections)
    return {"pool_size": size, "max_overflow": connections - size}


def make_engine(url: str, connections: int = CONNECTIONS) -> Engine:
    pool = _pool(connections)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        in_memory = not path or path == ":memory:" or "mode=memory" in url
        if not in_memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A file's pool is sized; an in-memory database has one connection a thread
        # (SQLAlchemy's SingletonThreadPool, which takes no size).
        sized = {} if in_memory else pool
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **sized)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed at any instant
            # (the guarantee the coordinator gives); only a power cut can lose the last
            # commits, never corrupt the file. Deployments that need more use PostgreSQL.
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run on a thread of their own (``_Checkpointer``); a writer checkpoints
            # only if that thread falls this far behind.
            cur.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            cur.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # Temporary tables and indexes (a sort, a DISTINCT) in memory, not in files.
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def is_retryable(exc: BaseException) -> bool:
    """A transaction that lost a race and may succeed if run again from the start."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return False
    code = getattr(exc.orig, "sqlstate", None)
    if code in RETRY_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot answer now, and the same request may succeed later:
    PostgreSQL down, restarting or refusing connections (out of them, a database closed
    to them), a connection lost, a lock or statement timeout, a race still lost after
    ``run``'s retries; SQLite's lock held past its busy timeout; or no pooled connection
    free within the pool's timeout. A bug (a missing table, a violated constraint, bad
    SQL) is not: psycopg raises those as other classes than ``OperationalError``."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError):
        return True
    return isinstance(exc.orig, sqlite3.OperationalError) and any(
        m in str(exc.orig) for m in ("database is locked", "database is busy"))


BACKSTOP_PAGES = 4_000  # ~16 MB of log: a writer checkpoints itself past this
WAL_LIMIT_BYTES = 64 << 20  # the log file truncated to this after a checkpoint resets it
CHECKPOINT_AFTER_S = 0.05  # a checkpoint this long after a write (more writes gather)


class _Checkpointer:
    """SQLite's write-ahead log copied back into the database file by a thread of its own.

    By default SQLite checkpoints on the committing writer's thread whenever the log
    passes 1,000 pages: at 10,000 providers, ~60 % of a matcher batch's commit was that
    copy (``bench/bench_matcher.py``). Here a commit only appends to the log; soon after
    writes, this thread runs a PASSIVE checkpoint on its own connection (no reader or
    writer waits on it, and the driver releases the interpreter lock while it copies,
    so it runs beside the writers on another core). The writers' own checkpoint stays,
    at ``BACKSTOP_PAGES``, should this thread fall behind or stop.

    The thread holds no reference to its ``Database``: it ends on ``dispose`` or when the
    ``Database`` is collected. One that died (its connection refused) is started again by
    the next write.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._wrote = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.checkpoints = 0

    def wrote(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if ((self._thread is None or not self._thread.is_alive())
                        and not self._stop.is_set()):
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="sqlite-checkpoint")
                    self._thread.start()
        self._wrote.set()

    def signal_stop(self) -> None:
        """Ask the thread to end (it does within one pause); waits for nothing: a
        collected ``Database``'s finalizer may run on any thread, the event loop's too."""
        self._stop.set()
        self._wrote.set()

    def stop(self) -> None:
        self.signal_stop()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except Exception:  # the next write starts another; the backstop holds meanwhile
            log.warning("background checkpoints: cannot open %s", self.path, exc_info=True)
            return
        try:
            while True:
                self._wrote.wait()
                if self._stop.wait(CHECKPOINT_AFTER_S):
                    break
                self._wrote.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except Exception:  # busy, or the file went away: the backstop remains
                    log.debug("background checkpoint failed", exc_info=True)
        finally:
            conn.close()


class Database:
    def __init__(self, url: str, connections: int = CONNECTIONS) -> None:
        self.url = url
        self.engine = make_engine(url, connections)
        self.is_sqlite = url.startswith("sqlite")
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()
        self.retries = 0  # transactions re-run after a deadlock or serialization failure
        path = self.engine.url.database if self.is_sqlite else None
        self.checkpointer = (_Checkpointer(path) if path and path != ":memory:"
                             and not self.engine.url.query else None)  # a plain file only
        if self.checkpointer is not None:
            weakref.finalize(self, self.checkpointer.signal_stop)

    @contextmanager
    def write(self, isolation: str | None = None) -> Iterator[Session]:
        """A read-write transaction: committed on success, rolled back on any error.

        ``isolation`` (PostgreSQL only) is e.g. ``"REPEATABLE READ"``; the default is
        READ COMMITTED. Not retried: use ``run`` for a body that can be re-run.
        """
        if self.is_sqlite:
            with self._write_lock, self.engine.connect() as conn:
                conn.info["write"] = True
                try:
                    with Session(bind=conn, expire_on_commit=False) as s, s.begin():
                        yield s
                finally:
                    conn.info.pop("write", None)
            if self.checkpointer is not None:  # committed: the log has grown
                self.checkpointer.wrote()
        else:
            with self._factory() as s, s.begin():
                if isolation:
                    s.connection(execution_options={"isolation_level": isolation})
                yield s

    def run(self, fn: Callable[[Session], T], *, attempts: int = DEFAULT_ATTEMPTS,
            isolation: str | None = None) -> T:
        """``fn(session)`` in a write transaction, re-run from scratch when it loses a race.

        Returns what ``fn`` returns, after the commit. Any other exception, or the
        last retryable one after ``attempts`` tries, propagates unchanged.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.write(isolation) as s:
                    return fn(s)
            except DBAPIError as exc:
                if attempt == attempts or not is_retryable(exc):
                    raise
                self.retries += 1
                code = getattr(exc.orig, "sqlstate", None) or "locked"
                log.info("transaction lost a race (%s); retry %d of %d", code, attempt,
                         attempts - 1)
                # Jittered exponential back-off: 2, 4, 8 ... ms, at most 250 ms.
                time.sleep(random.uniform(0.5, 1.0) * min(0.25, 0.002 * 2 ** attempt))
        raise AssertionError("unreachable")

    write_retrying = run

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot: every query inside sees the same committed state."""
        with self._factory() as s:
            s.info["snapshot"] = True  # for caches: changes committed after its start are unseen
            if not self.is_sqlite:
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield s
            s.rollback()

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()


_IN = re.compile(r"(\w+) IN \(([^)]*)\)")


def sqlite_equalities(sql: str) -> str:
    """A CHECK predicate for SQLite: ``col IN ('a', 'b')`` as ``(col = 'a' OR col = 'b')``,
    elsewhere unchanged; the same truth table, NULL included (``NULL = 'x'`` is NULL as
    ``NULL IN (...)`` is). SQLite evaluates an IN list by building an ephemeral table
    each time the statement (or trigger) runs: an executemany builds one per row."""
    return _IN.sub(lambda m: "(" + " OR ".join(f"{m[1]} = {v.strip()}"
                                                 for v in m[2].split(",")) + ")", sql)


def capped(value: Any, bound: Any) -> Any:
    """``value``, but no more than the column ``bound`` where it is not NULL, in SQL (a
    lease's deadline extended no later than its ``hold_until``)."""
    return case((bound < value, bound), else_=value)


def changed(result: Any) -> int:
    """The rows an UPDATE or DELETE changed (``Session.execute`` types its result as one
    that may have no ``rowcount``)."""
    return int(getattr(result, "rowcount", 0) or 0)


def placeholder(conn: Any) -> str:
    """The driver's parameter marker for SQL written by hand: ``?`` (sqlite3) or ``%s``."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def each_alone(s: Session, items: Iterable[T], fn: Callable[[T], Any], *,
               what: Callable[[T], str]) -> list[T]:
    """``fn(item)`` for each item, each in a savepoint of ``s``'s transaction; returns the
    items that failed. An item whose ``fn`` raises is rolled back alone and logged, and
    the others go on: one bad row (a spec an upgrade no longer parses, a blob gone from
    disk, an account short of what it owes) must not stop a loop's work for everyone,
    pass after pass. A lost race is not a bad row: it propagates, and ``Database.run``
    runs the whole pass again."""
    failed: list[T] = []
    for item in items:
        try:
            with s.begin_nested():
                fn(item)
        except Exception as exc:
            if is_retryable(exc) or (isinstance(exc, DBAPIError)
                                     and exc.connection_invalidated):
                raise
            log.exception("%s failed and was skipped; the rest went on", what(item))
            failed.append(item)
    return failed


def insert_many(s: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``s.execute(insert(table), rows)`` as one executemany of the driver's own SQL, in
    ``s``'s transaction: the same rows (JSON columns dumped as SQLAlchemy dumps them,
    ``None`` as JSON ``null``), without SQLAlchemy's statement execution and per-row
    parameter processing. For the matcher's bulk writes; everything else goes through
    SQLAlchemy."""
    if not rows:
        return
    cols = _checked(table, list(rows[0]))
    ph = placeholder(s.connection())
    _many(s, table, f"INSERT INTO {table.name} ({', '.join(cols)}) "
                    f"VALUES ({', '.join([ph] * len(cols))})", cols, cols, rows)


def update_many(s: Session, table: Table, rows: Sequence[Mapping[str, Any]], *,
                values: Mapping[str, str], where: Mapping[str, str]) -> None:
    """``UPDATE table SET col = row[key], ... WHERE col = row[key] AND ...`` for each row,
    one executemany of the driver's own SQL (``values`` and ``where`` map each column to
    its key in the rows)."""
    if not rows:
        return
    sets, wheres = _checked(table, list(values)), _checked(table, list(where))
    ph = placeholder(s.connection())
    _many(s, table, f"UPDATE {table.name} SET {', '.join(f'{c} = {ph}' for c in sets)} "
                    f"WHERE {' AND '.join(f'{c} = {ph}' for c in wheres)}",
          [*sets, *wheres], [*values.values(), *where.values()], rows)


def _checked(table: Table, cols: list[str]) -> list[str]:
    known = {c.name for c in table.columns}
    for c in cols:  # only the table's own column names reach the statement's text
        if c not in known:
            raise ValueError(f"{table.name} has no column {c!r}")
    return cols


def _many(s: Session, table: Table, sql: str, cols: list[str], keys: list[str],
          rows: Sequence[Mapping[str, Any]]) -> None:
    """``sql`` once per row: each column's value is ``row[key]``, JSON dumped. The
    values are picked in C (``itemgetter``) and only the JSON columns' are touched in
    Python: building each row's parameters value by value cost a tenth of a matcher
    batch."""
    if len(cols) != len(keys):
        raise ValueError("one key per column")
    json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
    dumped = [i for i, c in enumerate(cols) if c in json_cols]
    pick = operator.itemgetter(*keys)
    if len(keys) == 1:
        params: list[Any] = [(pick(r),) for r in rows]
    else:
        params = [pick(r) for r in rows]
    if dumped:
        dumps = json.dumps
        for n, p in enumerate(params):
            v = list(p)
            for i in dumped:
                v[i] = "null" if v[i] is None else dumps(v[i])
            params[n] = tuple(v)
    s.connection().exec_driver_sql(sql, params)
