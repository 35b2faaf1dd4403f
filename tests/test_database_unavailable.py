"""A database that cannot answer is a 503 the clients retry, not a 500 bug.

PostgreSQL restarting, out of connections or closed to them (and SQLite's lock held
past its busy timeout) answered every request ``500 internal`` with a traceback in
the log, and the agents and the SDK, which retry a 503, gave up. Now the answer is
``503 unavailable`` with ``Retry-After`` (``store.db.is_unavailable``), one line in
the log, and the coordinator answers again as soon as the database does. A real
PostgreSQL: its database closed to new connections and every open one ended."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from deai.client.sdk import Client, retrying
from deai.coordinator.app import create_app
from deai.coordinator.settings import Settings
from deai.core.errors import Unavailable, from_dict
from deai.store import db
from tests.pg import PgServer

pytestmark = pytest.mark.postgres

READ = "/api/explorer/jobs"  # a public read that goes to the database each time


def close(pg: PgServer, name: str, *, allow: bool) -> None:
    """Open or close database ``name`` to connections; closing ends every open one."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")))
        if not allow:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


@pytest.fixture
def served(pg_server: PgServer, tmp_path: Path) -> Iterator[tuple[TestClient, PgServer, str]]:
    name = pg_server.create_database()
    app = create_app(Settings(data_dir=tmp_path, database_url=pg_server.url(name),
                              devnet=True))
    with TestClient(app, raise_server_exceptions=False) as tc:
        try:
            yield tc, pg_server, name
        finally:
            close(pg_server, name, allow=True)


def test_a_database_closed_to_connections_is_a_503_and_then_answers_again(
        served: tuple[TestClient, PgServer, str], caplog: pytest.LogCaptureFixture) -> None:
    tc, pg, name = served
    assert tc.get(READ).status_code == 200

    close(pg, name, allow=False)
    with caplog.at_level(logging.WARNING, logger="deai.coordinator"):
        answers = [tc.get(READ) for _ in range(3)]
        answers.append(tc.get("/api/accounts/" + "a" * 64))
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "2"
        err = from_dict(r.status_code, r.json())
        assert isinstance(err, Unavailable) and err.details["retry_after"] == 2
    assert "database unavailable" in caplog.text
    assert "unhandled error" not in caplog.text  # not logged as a bug

    close(pg, name, allow=True)
    assert tc.get(READ).status_code == 200


def test_the_sdk_rides_out_the_503_until_the_database_is_back(
        served: tuple[TestClient, PgServer, str]) -> None:
    """``sdk.retrying`` (the agents' calls) backs off on the 503 and gets its answer once
    the database is back; a 500 it would have raised at once."""
    tc, pg, name = served
    client = Client("http://testserver")
    client.http = tc
    close(pg, name, allow=False)
    seen: list[int] = []

    def reopen(exc: Exception, _delay: float) -> None:
        seen.append(getattr(exc, "status", 0))
        if len(seen) == 2:
            close(pg, name, allow=True)

    out = retrying(lambda: client.balance("a" * 64), on_retry=reopen, base=0.05)
    assert out.available == 0
    assert seen == [503, 503]


@pytest.mark.parametrize(("exc", "unavailable"), [
    (OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")), True),
    (OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: jobs")), False),
    (OperationalError("SELECT 1", {}, psycopg.errors.TooManyConnections("too many")), True),
    (ProgrammingError("SELECT 1", {}, psycopg.errors.UndefinedTable("no table")), False),
    (IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate")), False),
    (ValueError("a bug"), False),
])
def test_what_counts_as_unavailable(exc: BaseException, unavailable: bool) -> None:
    assert db.is_unavailable(exc) is unavailable


def test_v1_answers_the_503_in_openai_shape(served: tuple[TestClient, PgServer, str]) -> None:
    """Under /v1 the same 503, in OpenAI's shape, which its client retries."""
    tc, pg, name = served
    close(pg, name, allow=False)
    r = tc.get("/v1/models", headers={"Authorization": "Bearer sk-deai-" + "0" * 40})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert r.headers["x-should-retry"] == "true"
