"""Engine and transactions for SQLite (embedded default) and PostgreSQL.

``Database.write()`` is the only way to change state. On SQLite it takes a
process-wide lock and ``BEGIN IMMEDIATE`` so writers queue instead of failing
with "database is locked"; on PostgreSQL rows are locked with ``FOR UPDATE``
where order matters (the journal head), so several API replicas can share it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed at any instant
            # (the guarantee the coordinator gives); only a power cut can lose the last
            # commits, never corrupt the file. Deployments that need more use PostgreSQL.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction: committed on success, rolled back on any error."""
        if self.is_sqlite:
            with self._write_lock, self.engine.connect() as conn:
                conn.info["write"] = True
                try:
                    with Session(bind=conn, expire_on_commit=False) as s, s.begin():
                        yield s
                finally:
                    conn.info.pop("write", None)
        else:
            with self._factory() as s, s.begin():
                yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot: every query inside sees the same committed state."""
        with self._factory() as s:
            if not self.is_sqlite:
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield s
            s.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
