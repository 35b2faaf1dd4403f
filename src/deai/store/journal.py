"""Appending to the journal: the one place balances change.

``append_many(s, drafts, clock)`` appends a batch of entries in a handful of
statements whatever its size: it flushes the caller's pending changes (so rows
of earlier tables in the lock order are locked first, see ``store.db``), locks
the head row, reads and locks the balances of the accounts the batch debits,
checks entry by entry that no account but the mint would dip below zero (an
entry sees the balances left by the ones before it, exactly as the audit
replays them), chains every entry to the previous hash, inserts the entries
with one executemany, moves the materialised balances with one upsert
(``INSERT ... ON CONFLICT DO UPDATE SET amount = amount + excluded.amount``)
and moves the head once. ``append(s, draft, clock)`` is a batch of one. All of
it happens inside the caller's transaction: the entries and everything else
the caller wrote commit together or not at all; if any draft is refused
(``InsufficientFunds``) nothing of the batch is written.

The writes are Core statements on the session's connection (compiled once,
cached, executemany), so ORM objects of these tables loaded earlier in the same
session are not refreshed by them: read through ``balances`` and ``head`` (which
select columns, or refresh), never through a ``Balance`` or ``JournalHead``
object held across an append.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from deai.core import ledger
from deai.core.clock import Clock
from deai.store.models import Balance, JournalEntry, JournalHead


def dialect_insert(s: Session, table: Any) -> Any:
    """``INSERT`` with ``on_conflict_do_update``/``_nothing`` for the session's engine."""
    dialect = s.get_bind().dialect.name
    mod = postgresql if dialect == "postgresql" else sqlite
    return mod.insert(table)


def head(s: Session, *, lock: bool = False) -> JournalHead:
    q = select(JournalHead).where(JournalHead.id == 1).execution_options(
        populate_existing=True)
    if lock:
        q = q.with_for_update()
    row = s.scalars(q).first()
    if row is None:
        # Two replicas may create the head at once: whoever loses simply reads it.
        s.execute(dialect_insert(s, JournalHead).values(id=1, seq=0, hash=ledger.GENESIS)
                  .on_conflict_do_nothing(index_elements=["id"]))
        row = s.scalars(q).one()
    return row


def balances(s: Session, accounts: Iterable[str], *, lock: bool = False) -> dict[str, int]:
    accts = sorted(set(accounts))
    if not accts:
        return {}
    q = (select(Balance.account, Balance.amount).where(Balance.account.in_(accts))
         .order_by(Balance.account))
    if lock:
        q = q.with_for_update()
    return {a: int(v) for a, v in s.execute(q)}


def balance(s: Session, account: str) -> int:
    return balances(s, [account]).get(account, 0)


def append(s: Session, draft: ledger.Draft, clock: Clock) -> ledger.Entry:
    return append_many(s, [draft], clock)[0]


def append_many(s: Session, drafts: Sequence[ledger.Draft], clock: Clock) -> list[ledger.Entry]:
    """Chain ``drafts`` in order onto the journal; all of them or, on a refusal, none."""
    if not drafts:
        return []
    s.flush()  # the caller's earlier-in-order row locks come before the head's
    conn = s.connection()  # Core from here on: statements compile once and are cached
    ht = cast(Table, JournalHead.__table__)
    lock_head = select(ht.c.seq, ht.c.hash).where(ht.c.id == 1).with_for_update()
    row = conn.execute(lock_head).first()
    if row is None:  # two replicas may create the head at once: the loser reads it
        conn.execute(dialect_insert(s, ht).values(id=1, seq=0, hash=ledger.GENESIS)
                     .on_conflict_do_nothing(index_elements=["id"]))
        row = conn.execute(lock_head).one()
    seq, prev = int(row[0]), str(row[1])
    net: dict[str, int] = {}
    for d in drafts:
        for account, delta in d.postings:
            net[account] = net.get(account, 0) + delta
    debited = {a for d in drafts for a, delta in d.postings if delta < 0 and a != ledger.MINT}
    running = dict.fromkeys(net, 0)
    running.update(balances(s, debited, lock=True))
    ts_ms = int(clock.now() * 1000)
    entries: list[ledger.Entry] = []
    rows: list[tuple[Any, ...]] = []
    for d in drafts:
        ledger.check_funds(d, running)
        for account, delta in d.postings:
            running[account] += delta
        seq += 1
        e, body_json, postings_json = _chain(d, seq, prev, ts_ms)
        entries.append(e)
        rows.append((e.seq, e.prev_hash, e.hash, e.ts_ms, e.kind, body_json, postings_json))
        prev = e.hash
    # The driver's executemany with JSON serialised here: SQLAlchemy's per-row parameter
    # processing would cost more than the inserts themselves.
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    conn.exec_driver_sql(
        f"INSERT INTO journal (seq, prev_hash, hash, ts_ms, kind, body, postings) "
        f"VALUES ({', '.join([ph] * 7)})",
        rows)
    if net:  # accounts that net to zero are still created: they have been posted to
        conn.exec_driver_sql(
            f"INSERT INTO balances (account, amount) VALUES ({ph}, {ph}) ON CONFLICT (account) "
            f"DO UPDATE SET amount = balances.amount + excluded.amount", sorted(net.items()))
    conn.execute(update(ht).where(ht.c.id == 1).values(seq=seq, hash=prev))
    return entries


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


def _quoted(s: str) -> str:
    """A JSON string: plain ASCII names (kinds, hex hashes) need no encoder."""
    plain = s.isascii() and s.replace("_", "").isalnum()
    return f'"{s}"' if plain else _canonical(s)


def _chain_fast(d: ledger.Draft, seq: int, prev: str, ts_ms: int
                ) -> tuple[ledger.Entry, str, str]:
    """``ledger.chain`` plus the stored JSON of body and postings, serialising each once:
    the hash's canonical payload is a JSON list whose last two items are exactly these."""
    body_json = _canonical(d.body)
    postings_json = _canonical([[a, v] for a, v in d.postings])
    payload = f"[{seq},{_quoted(prev)},{ts_ms},{_quoted(d.kind)},{body_json},{postings_json}]"
    h = hashlib.sha256(payload.encode()).hexdigest()
    return ledger.Entry(seq, prev, ts_ms, d.kind, d.body, d.postings, h), body_json, postings_json


def _chain_core(d: ledger.Draft, seq: int, prev: str, ts_ms: int
                ) -> tuple[ledger.Entry, str, str]:
    e = ledger.chain(d, seq, prev, ts_ms)
    return e, json.dumps(e.body), json.dumps([[a, v] for a, v in e.postings])


def _pick_chain() -> Any:
    """The fast path only while it agrees with ``core.ledger.entry_hash``."""
    probe = ledger.Draft("probe", {"z": [1, "é"], "a": {"b": None}}, (("x", -5), ("y", 5)))
    fast = _chain_fast(probe, 7, "ab" * 32, 123)[0].hash
    return _chain_fast if fast == ledger.chain(probe, 7, "ab" * 32, 123).hash else _chain_core


_chain = _pick_chain()


def to_entry(row: JournalEntry) -> ledger.Entry:
    return ledger.Entry(row.seq, row.prev_hash, row.ts_ms, row.kind, dict(row.body),
                        tuple((str(a), int(d)) for a, d in row.postings), row.hash)
