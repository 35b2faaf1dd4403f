"""SQLite's write-ahead log is checkpointed by ``store.db``'s own thread, not by the
committing writer: commits append to the log, the thread copies it back soon after, and
the writers' own checkpoint stays only as a backstop. The thread ends with its
``Database``."""

from __future__ import annotations

import gc
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from deai.store import db as dbm
from deai.store.db import Database


def _write_rows(d: Database, n: int) -> None:
    with d.write() as s:
        s.execute(text("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)"))
    for i in range(n):
        with d.write() as s:
            s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": f"row {i} " + "x" * 500})


def _wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):  # a wait for an event, not a timing: 10 s at most on a busy machine
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def test_commits_are_checkpointed_by_the_database_thread(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    d = Database(f"sqlite:///{path}")
    assert d.checkpointer is not None
    with d.engine.connect() as conn:  # the writers' own checkpoint is only a backstop
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == dbm.BACKSTOP_PAGES
    _write_rows(d, 300)  # ~40 pages of log at least
    _wait_for(lambda: d.checkpointer is not None and d.checkpointer.checkpoints > 0,
              "a background checkpoint")

    def copied() -> bool:  # everything the log holds is in the database file already
        with sqlite3.connect(path) as probe:
            busy, frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(busy == 0 and frames > 0 and frames == done)

    _wait_for(copied, "the log copied back")
    with d.write() as s:
        assert s.execute(text("SELECT count(*) FROM t")).scalar() == 300
    d.dispose()


def test_dispose_ends_the_thread_and_a_collected_database_too(tmp_path: Path) -> None:
    d = Database(f"sqlite:///{tmp_path / 'a.db'}")
    _write_rows(d, 3)
    assert d.checkpointer is not None and d.checkpointer._thread is not None
    t = d.checkpointer._thread
    d.dispose()
    assert not t.is_alive()

    e = Database(f"sqlite:///{tmp_path / 'b.db'}")
    _write_rows(e, 3)
    assert e.checkpointer is not None and e.checkpointer._thread is not None
    t = e.checkpointer._thread
    e.engine.dispose()
    del e
    gc.collect()
    t.join(timeout=10)
    assert not t.is_alive()


def test_an_in_memory_database_has_no_checkpointer() -> None:
    assert Database("sqlite:///:memory:").checkpointer is None


def test_a_checkpoint_thread_that_died_is_started_by_the_next_write(tmp_path: Path) -> None:
    d = Database(f"sqlite:///{tmp_path / 'r.db'}")
    cp = d.checkpointer
    assert cp is not None
    good, cp.path = cp.path, str(tmp_path / "no such dir" / "r.db")  # its connect fails
    _write_rows(d, 1)
    dead = cp._thread
    assert dead is not None
    dead.join(timeout=10)
    assert not dead.is_alive() and cp.checkpoints == 0
    cp.path = good
    _write_rows(d, 5)
    assert cp._thread is not dead
    _wait_for(lambda: cp.checkpoints > 0, "a checkpoint by the new thread")
    d.dispose()
