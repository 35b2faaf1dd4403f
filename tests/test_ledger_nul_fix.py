"""A NUL character in a ledger read's path or query once answered 500 on PostgreSQL
(psycopg refuses NUL in a text parameter); it is a 422 naming the parameter, on both
databases."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(("path", "field"), [("/api/ledger/balances?after=%00", "after"),
                                             ("/api/ledger/balances?after=a%00b", "after"),
                                             ("/api/accounts/a%00b", "account")])
def test_a_nul_in_a_ledger_read_is_a_422_naming_it(devnet_app: TestClient, path: str,
                                                     field: str) -> None:
    r = devnet_app.get(path)
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.json()["error"]["field"] == field


def test_ordinary_reads_still_answer(devnet_app: TestClient) -> None:
    assert devnet_app.get("/api/ledger/balances?after=acct:").status_code == 200
    assert devnet_app.get("/api/accounts/" + "a1" * 32).status_code == 200
