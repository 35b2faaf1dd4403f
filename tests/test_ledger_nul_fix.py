"""A NUL character in a ledger read's path or query once answered 500 on PostgreSQL
(psycopg refuses NUL in a text parameter); it is a 422 naming the parameter, on both
databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deai.coordinator.app import create_app
from deai.coordinator.settings import Settings


@pytest.fixture(params=["sqlite", "postgres"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    with TestClient(create_app(Settings(data_dir=tmp_path, database_url=url, devnet=True)),
                    raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("path", "field"), [("/api/ledger/balances?after=%00", "after"),
                                             ("/api/ledger/balances?after=a%00b", "after"),
                                             ("/api/accounts/a%00b", "account")])
def test_a_nul_in_a_ledger_read_is_a_422_naming_it(client: TestClient, path: str,
                                                     field: str) -> None:
    r = client.get(path)
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.json()["error"]["field"] == field


def test_ordinary_reads_still_answer(client: TestClient) -> None:
    assert client.get("/api/ledger/balances?after=acct:").status_code == 200
    assert client.get("/api/accounts/" + "a1" * 32).status_code == 200
