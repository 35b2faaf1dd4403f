"""Audit at scale: the client streams the journal against paginated balances, also
while the journal grows; the server's audit replays only what is new.

The client audit runs against a real coordinator process (SQLite); the server
audit's state machine runs on real SQLite and PostgreSQL databases, with
entries appended through ``store.journal`` and tampering done in SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from deai.client.audit import client_audit
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator.ledger_audit import ServerAudit
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.store import journal
from deai.store.db import Database
from deai.store.models import Base
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("audit"), "", verify=False)
    n.start_coordinator()
    yield n
    n.close()


def fund(net: Network, n: int) -> list[Identity]:
    people = [Identity.generate() for _ in range(n)]
    for p in people:
        with Client(net.url, p) as c:
            c.faucet(1000)
    return people


def test_balances_are_paginated_with_their_head(net: Network) -> None:
    fund(net, 7)
    seen: dict[str, int] = {}
    after = ""
    pages = 0
    while True:
        r = httpx.get(f"{net.url}/api/ledger/balances", params={"after": after, "limit": 3})
        assert r.status_code == 200
        body = r.json()
        assert len(body["balances"]) <= 3 and body["head_seq"] >= 7
        assert not set(body["balances"]) & set(seen)
        seen.update(body["balances"])
        pages += 1
        if body["next"] is None:
            break
        after = body["next"]
    assert pages >= 3 and seen == Client(net.url).all_balances()
    bad = httpx.get(f"{net.url}/api/ledger/balances", params={"limit": 0})
    assert bad.status_code == 422


def test_streaming_audit_keeps_only_a_tail(net: Network) -> None:
    fund(net, 5)
    with Client(net.url) as c:
        full = client_audit(c, page=4)
        lean = client_audit(c, keep_entries=False, tail=3, page=4)
    assert full.ok and lean.ok, (full.report.problems, lean.report.problems)
    assert lean.report.entries == full.report.entries == len(full.entries)
    assert [e.seq for e in lean.entries] == [e.seq for e in full.entries[-3:]]
    assert lean.report.head == full.report.head


class Busy(Client):
    """A client that makes the journal grow while the audit reads the balances."""

    def __init__(self, url: str, others: list[Identity]) -> None:
        super().__init__(url)
        self.others = others
        self.pages = 0

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = super().request(method, path, **kw)
        if path == "/api/ledger/balances":
            self.pages += 1
            if self.pages <= len(self.others):  # a new account and a moved one per page
                with Client(self.url, self.others[self.pages - 1]) as c:
                    c.faucet(7)
                    c.faucet(11)
        return r

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")


def test_audit_while_the_journal_grows(net: Network) -> None:
    fund(net, 6)
    with Busy(net.url, [Identity.generate() for _ in range(4)]) as c:
        result = client_audit(c, keep_entries=False, page=2)
    assert result.ok, result.report.problems
    assert c.pages >= 4


def test_a_false_claim_is_caught(net: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    fund(net, 2)
    real = Client.request

    def lying(self: Client, method: str, path: str, **kw: Any) -> httpx.Response:
        r = real(self, method, path, **kw)
        if path == "/api/ledger/balances":
            body = r.json()
            if body["balances"]:
                k = next(iter(body["balances"]))
                body["balances"][k] += 1
            return httpx.Response(200, json=body)
        return r

    monkeypatch.setattr(Client, "request", lying)
    with Client(net.url) as c:
        result = client_audit(c, keep_entries=False, page=50)
    assert not result.ok and any("claimed" in p for p in result.report.problems)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = (f"sqlite:///{tmp_path / 'a.sqlite3'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_pg_url"))
    d = Database(url)
    Base.metadata.create_all(d.engine)
    yield d
    d.dispose()


def grow(db: Database, n: int, start: int = 0) -> None:
    with db.write() as s:
        journal.append_many(s, [ledger.faucet(f"{i:064x}", 100 + i)
                                for i in range(start, start + n)], ManualClock())


def test_server_audit_is_incremental_and_catches_tampering(db: Database) -> None:
    audit = ServerAudit(db, ttl=0.0)
    grow(db, 50)
    first = audit.summary()
    assert first.ok and first.entries == 50 and audit.replayed == 50
    grow(db, 5, start=50)
    second = audit.summary()
    assert second.ok and second.entries == 55 and audit.replayed == 55  # only the new five
    with db.write() as s:
        s.execute(text("update balances set amount = amount + 1 where account = :a"),
                  {"a": ledger.acct(f"{3:064x}")})
    third = audit.summary()
    assert not third.ok and any("claimed" in p for p in third.problems)


def test_server_audit_full_replay_catches_an_edited_old_entry(db: Database) -> None:
    grow(db, 20)
    audit = ServerAudit(db, ttl=0.0, full_every=0.0)  # every call starts from genesis
    assert audit.summary().ok
    with db.write() as s:
        s.execute(text("update journal set ts_ms = ts_ms + 1 where seq = 4"))
    rep = audit.summary()
    assert not rep.ok and any("entry 4" in p for p in rep.problems)


def test_server_audit_answers_are_shared_within_the_ttl(db: Database) -> None:
    grow(db, 10)
    audit = ServerAudit(db, ttl=3600.0)
    a = audit.summary()
    grow(db, 10, start=10)
    assert audit.summary() is a and audit.replayed == 10
