"""How many database connections a coordinator may hold (``DEAI_DB_CONNECTIONS``).

Several replicas on one PostgreSQL each opened up to 50 pooled connections, so three of
them under load passed its default ``max_connections`` (100) and the third's requests
failed. A replica given fewer holds no more than that, and a request past them waits for
one instead of failing. A real PostgreSQL, counted from ``pg_stat_activity``."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from deai.coordinator.app import create_app
from deai.coordinator.settings import Settings
from deai.store import db
from tests.pg import PgServer

READ = "/api/explorer/jobs"  # a public read that goes to the database each time


def pooled(pg: PgServer, name: str) -> int:
    """Connections to database ``name`` from SQLAlchemy's pool: not the coordinator's
    own named ones (``leader.connect``: the listener, the leader's lock, stream claims)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND application_name NOT LIKE 'deai-%%'", (name,)).fetchone()
    assert row is not None
    return int(row[0])


class Peak:
    """The most pooled connections seen while it runs (sampled every 10 ms)."""

    def __init__(self, pg: PgServer, name: str) -> None:
        self.pg, self.name, self.most = pg, name, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.most = max(self.most, pooled(self.pg, self.name))

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.postgres
def test_a_database_given_three_connections_holds_no_more_and_queues_the_rest(
        pg_server: PgServer) -> None:
    name = pg_server.create_database()
    d = db.Database(pg_server.url(name), connections=3)

    def slow(i: int) -> int:
        with d.read() as s:
            return int(s.connection().exec_driver_sql(
                f"SELECT {i} FROM pg_sleep(0.1)").scalar_one())

    with Peak(pg_server, name) as peak, ThreadPoolExecutor(12) as pool:
        got = list(pool.map(slow, range(24)))
    assert got == list(range(24))  # every one answered, none refused
    assert 1 <= peak.most <= 3
    d.engine.dispose()


@pytest.mark.postgres
def test_a_coordinator_given_few_connections_serves_concurrent_requests_within_them(
        pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = pg_server.create_database()
    monkeypatch.setenv("DEAI_DB_CONNECTIONS", "4")
    settings = Settings(data_dir=tmp_path, database_url=pg_server.url(name), devnet=True)
    assert settings.db_connections == 4
    with TestClient(create_app(settings), raise_server_exceptions=False) as tc, \
            Peak(pg_server, name) as peak, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: tc.get(READ).status_code, range(160)))
    assert codes == [200] * 160
    assert 1 <= peak.most <= 4


@pytest.mark.parametrize("raw", ["1", "0", "-3", "many", "10001"])
def test_a_connection_count_out_of_bounds_is_refused_by_name(
        raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAI_DB_CONNECTIONS", raw)
    with pytest.raises(SystemExit, match="DEAI_DB_CONNECTIONS"):
        Settings()


def test_the_default_outnumbers_the_threads_that_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEAI_DB_CONNECTIONS", raising=False)
    assert Settings().db_connections == db.CONNECTIONS > db.THREADS
    with pytest.raises(ValueError, match="connections"):
        db.Database("sqlite://", connections=1)
