"""The throwaway PostgreSQL server answers, and each fresh database is its own."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.pg import PgServer

pytestmark = pytest.mark.postgres


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    u = make_url(url)
    assert u.drivername == "postgresql+psycopg" and u.host == "127.0.0.1"
    return psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database)


def test_select_one(pg_url: str) -> None:
    assert make_url(pg_url).database == "deai_test"
    with _connect(pg_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        version = conn.execute("show server_version_num").fetchone()
        assert version is not None and str(version[0]).startswith("15")


def test_fresh_databases_are_separate(fresh_pg_url: str, pg_url: str) -> None:
    assert fresh_pg_url != pg_url
    with _connect(fresh_pg_url) as conn:
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (42)")
        conn.commit()
        assert conn.execute("select x from t").fetchone() == (42,)
    with _connect(pg_url) as conn:
        assert conn.execute("select to_regclass('t')").fetchone() == (None,)


def test_server_listens_on_loopback_only(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn()) as conn:
        row = conn.execute("show listen_addresses").fetchone()
    assert row == ("127.0.0.1",)
