"""Shared fixtures: a throwaway PostgreSQL server for the whole session.

``pg_server`` starts lazily, the first time a test asks for a database, and is
stopped at the end of the session. ``pg_url`` is the session's ``deai_test``
database; ``module_pg_url`` and ``fresh_pg_url`` create a new, empty database for
each module or test, ``fresh_url`` one on each engine in turn. Without the server
binaries these fixtures fail, they do not skip. ``devnet_app`` is an in-process
coordinator's app on each engine in turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.pg import PgServer, PgUnavailable

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer.start()
    except PgUnavailable as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(f"PostgreSQL is required for this test and could not start: {problem}",
                    pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/deai_test``, shared by the session."""
    return pg_server.url(pg_server.create_database("deai_test"))


@pytest.fixture(scope="module")
def module_pg_url(pg_server: PgServer) -> str:
    """An empty database of its own for one test module."""
    return pg_server.url(pg_server.create_database())


@pytest.fixture
def fresh_pg_url(pg_server: PgServer) -> str:
    """An empty database of its own for one test."""
    return pg_server.url(pg_server.create_database())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database of its own for one test, on each engine in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'deai.sqlite3'}"
    return str(request.getfixturevalue("fresh_pg_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def devnet_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """A devnet coordinator's app, in process, on SQLite and then on PostgreSQL (a fresh
    database), its errors answered as they would be over HTTP (500), not raised."""
    from fastapi.testclient import TestClient  # the app's imports: only where it is used

    from deai.coordinator.app import create_app
    from deai.coordinator.settings import Settings

    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    with TestClient(create_app(Settings(data_dir=tmp_path, database_url=url, devnet=True)),
                    raise_server_exceptions=False) as tc:
        yield tc


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Collect what the last test left behind before pytest's own teardown looks for
    unraisable exceptions: a client socket reclaimed at exit is not a test failure
    (leaks inside a test still fail it, as warnings are errors there)."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
