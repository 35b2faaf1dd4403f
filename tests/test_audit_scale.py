"""Audit at scale: the client streams the journal against paginated balances, also
while the journal grows; the server's audit replays only what is new.

The client audit runs against a real coordinator process (SQLite); the server
audit's state machine runs on real SQLite and PostgreSQL databases, with
entries appended through ``store.journal`` and tampering done in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from deai.client.audit import client_audit
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator.ledger_audit import ServerAudit, journal_page
from deai.core import ledger, wire
from deai.core.clock import ManualClock
from deai.core.replay import Replay
from deai.store import journal
from deai.store.db import Database
from deai.store.models import Base
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("audit"), "", verify=False)
    try:
        n.start_coordinator()
    except TimeoutError:  # a loaded machine: the process is there, give it longer
        n.wait_ready(600)
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


def test_the_journal_page_is_the_entries_as_stored(db: Database) -> None:
    """``GET /api/ledger/journal`` is written from the rows' stored JSON: it parses to
    exactly ``Entry.to_dict`` of every entry, odd characters included."""
    with db.write() as s:
        entries = journal.append_many(s, [
            ledger.faucet(f"{1:064x}", 5),
            ledger.verdict("t-é", {"why": 'quote " backslash \\ tab \t ☃', "n": [1, None]}),
            ledger.escrow_job(f"{1:064x}", "job-1", 3)], ManualClock())
    page = json.loads(journal_page(db, 0, 10))
    assert wire.JournalOut.model_validate(page).head_seq == 3
    assert page["entries"] == [e.to_dict() for e in entries]
    assert json.loads(journal_page(db, 2, 10))["entries"] == [entries[2].to_dict()]
    assert json.loads(journal_page(db, 3, 10)) == {"entries": [], "head_seq": 3}


def chained(n: int) -> list[ledger.Entry]:
    out, prev = [], ledger.GENESIS
    for i in range(n):
        d = (ledger.faucet(f"{i % 3:064x}", 10 + i) if i % 2 == 0 else
             ledger.escrow_job(f"{(i - 1) % 3:064x}", f"job-{i}", 4))
        e = ledger.chain(d, i + 1, prev, 1000 + i)
        out.append(e)
        prev = e.hash
    return out


@pytest.mark.parametrize("tamper", ["none", "hash", "amount", "seq", "prev", "negative",
                                    "types"])
def test_the_replay_finds_what_core_audit_finds(tamper: str) -> None:
    """``core.replay.Replay`` (the client's and the server's) against ``ledger.audit``."""
    entries = chained(12)
    e = entries[5]
    bad = {"none": e,
           "hash": replace(e, ts_ms=e.ts_ms + 1),
           "amount": replace(e, postings=((e.postings[0][0], e.postings[0][1] - 1),
                                          e.postings[1])),
           "seq": replace(e, seq=9),
           "prev": replace(e, prev_hash="0" * 64),
           "negative": replace(e, postings=tuple((a, v * 1000) for a, v in e.postings)),
           "types": e}[tamper]
    entries[5] = bad
    want = ledger.audit(entries)
    r = Replay()
    for x in entries:
        d = x.to_dict()
        if tamper == "types" and x is bad:  # a server sending numbers as strings
            d = {**d, "seq": str(d["seq"]), "postings": [[a, str(v)] for a, v in d["postings"]]}
        r.feed_dict(d)
    got = r.finish()
    assert (got.ok, got.problems, got.entries, got.head, got.supply, got.accounts) == (
        want.ok, want.problems, want.entries, want.head, want.supply, want.accounts)
    assert got.ok == (tamper in ("none", "types"))
