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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from deai.core import ledger
from deai.core.clock import Clock
from deai.store import db
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
    """The balances of ``accounts`` (those that have one), read in parts of ``IN_PART``
    in ascending account (the lock order's): a list of every provider's stake would
    otherwise pass the driver's limit on bound parameters."""
    accts = sorted(set(accounts))
    out: dict[str, int] = {}
    for i in range(0, len(accts), IN_PART):
        q = (select(Balance.account, Balance.amount)
             .where(Balance.account.in_(accts[i:i + IN_PART])).order_by(Balance.account))
        if lock:
            q = q.with_for_update()
        out.update((a, int(v)) for a, v in s.execute(q))
    return out


IN_PART = 1_000  # ids bound in one IN list, at most


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
    ph = db.placeholder(conn)
    debited = {a for d in drafts for a, delta in d.postings if delta < 0}
    debited.discard(ledger.MINT)
    start = _read_balances(conn, ph, debited)
    running: defaultdict[str, int] = defaultdict(int, start)  # an account not read holds 0
    ts_ms = int(clock.now() * 1000)
    entries, rows = _chain_all(drafts, running, seq, prev, ts_ms)
    seq, prev = entries[-1].seq, entries[-1].hash
    # accounts that net to zero are still created: they have been posted to
    net = sorted((a, v - start.get(a, 0)) for a, v in running.items())
    # The driver's executemany with JSON serialised here: SQLAlchemy's per-row parameter
    # processing would cost more than the inserts themselves.
    conn.exec_driver_sql(
        f"INSERT INTO journal (seq, prev_hash, hash, ts_ms, kind, body, postings) "
        f"VALUES ({', '.join([ph] * 7)})",
        rows)
    if net:
        conn.exec_driver_sql(
            f"INSERT INTO balances (account, amount) VALUES ({ph}, {ph}) ON CONFLICT (account) "
            f"DO UPDATE SET amount = balances.amount + excluded.amount", net)
    conn.execute(update(ht).where(ht.c.id == 1).values(seq=seq, hash=prev))
    return entries


def _read_balances(conn: Connection, ph: str, accounts: set[str]) -> dict[str, int]:
    """The balances of ``accounts``, locked (``FOR UPDATE`` on PostgreSQL, in one statement
    up to 30,000 accounts; SQLite's one writer holds the whole database): the driver's
    own statements, as SQLAlchemy's expanding ``IN`` costs more than the read."""
    accts = sorted(accounts)
    pg = conn.dialect.name == "postgresql"
    lock, size = (" FOR UPDATE", 30_000) if pg else ("", 500)
    out: dict[str, int] = {}
    for i in range(0, len(accts), size):
        chunk = tuple(accts[i:i + size])
        out.update((a, int(v)) for a, v in conn.exec_driver_sql(
            f"SELECT account, amount FROM balances WHERE account IN "
            f"({', '.join([ph] * len(chunk))}) ORDER BY account{lock}", chunk))
    return out


Rows = list[tuple[int, str, str, int, str, str, str]]

_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
# ``_canonical`` builds a C encoder on every call; this is the same C encoder (sorted keys,
# compact separators, ASCII escapes, NaN allowed) made once. No cycle check: drafts are trees.
_iterencode: Any = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ":", ",",
    True, False, True) if getattr(json.encoder, "c_make_encoder", None) else None
_quote = json.encoder.encode_basestring_ascii


def _refuse(d: ledger.Draft, running: dict[str, int]) -> None:
    """Undo ``d``'s postings and raise the refusal ``ledger.check_funds`` makes of it."""
    for account, delta in d.postings:
        running[account] -= delta
    ledger.check_funds(d, running)
    raise AssertionError(f"{d.kind} left an account negative yet passed check_funds")


def _chain_fast(drafts: Sequence[ledger.Draft], running: dict[str, int], seq: int, prev: str,
                ts_ms: int) -> tuple[list[ledger.Entry], Rows]:
    """Check funds, chain and serialise every draft: ``ledger.check_funds`` and
    ``ledger.chain`` with the Python per entry cut to the bone. The hash's canonical
    payload is a JSON list whose last two items are exactly the stored body and postings,
    so each is serialised once. An entry is judged on the balances after all its
    postings, which is what ``check_funds`` computes (have + net < 0)."""
    enc, q, sha, mint = _iterencode, _quote, hashlib.sha256, ledger.MINT
    new, cls = object.__new__, ledger.Entry
    entries: list[ledger.Entry] = []
    rows: Rows = []
    for d in drafts:
        ps = d.postings
        for account, delta in ps:
            running[account] += delta
        for account, _ in ps:
            if running[account] < 0 and account != mint:
                _refuse(d, running)
        seq += 1
        kind, body = d.kind, d.body
        body_json = "".join(enc(body, 0))
        postings_json = "".join(enc(ps, 0))
        h = sha(f"[{seq},{q(prev)},{ts_ms},{q(kind)},{body_json},{postings_json}]"
                .encode()).hexdigest()
        e = new(cls)  # the frozen dataclass's __init__ costs more than filling its dict
        e.__dict__.update(seq=seq, prev_hash=prev, ts_ms=ts_ms, kind=kind, body=body,
                          postings=ps, hash=h)
        entries.append(e)
        rows.append((seq, prev, h, ts_ms, kind, body_json, postings_json))
        prev = h
    return entries, rows


def _chain_core(drafts: Sequence[ledger.Draft], running: dict[str, int], seq: int, prev: str,
                ts_ms: int) -> tuple[list[ledger.Entry], Rows]:
    """The same through ``core.ledger`` as written: the reference, and the fallback."""
    entries: list[ledger.Entry] = []
    rows: Rows = []
    for d in drafts:
        ledger.check_funds(d, running)
        for account, delta in d.postings:
            running[account] += delta
        seq += 1
        e = ledger.chain(d, seq, prev, ts_ms)
        entries.append(e)
        rows.append((e.seq, e.prev_hash, e.hash, e.ts_ms, e.kind, json.dumps(e.body),
                     json.dumps([[a, v] for a, v in e.postings])))
        prev = e.hash
    return entries, rows


PROBES = (
    ledger.Draft("probe", {"z": [1, "é"], "a": {"b": None}}, (("x", -5), ("y", 5))),
    ledger.Draft("payout", {"job": "job-1", "cost": 800, "f": 0.1, "t": True, "n": None,
                            "q": 'a"b\\c\x01\x7f\u2028\U0001f600', "l": (1, [2.5e300, -0.0]),
                            "big": 10**30, "d": {"k": {"é": []}}},
                 (("acct:\u00e9", -(10**20)), ("mint", 10**20), ("escrow:j-1", 0))),
    ledger.Draft("verdict", {}, ()),
)


def _pick_chain() -> Callable[[Sequence[ledger.Draft], dict[str, int], int, str, int],
                                tuple[list[ledger.Entry], Rows]]:
    """The fast path only while it agrees byte for byte with ``core.ledger``."""
    if _iterencode is None:
        return _chain_core
    try:
        for i, d in enumerate(PROBES):
            fast = _chain_fast([d, d], {a: 10**21 for a, _ in d.postings}, 7, "ab" * 32, i)
            ref = _chain_core([d, d], {a: 10**21 for a, _ in d.postings}, 7, "ab" * 32, i)
            if fast[0] != ref[0] or repr(fast[0]) != repr(ref[0]) or any(
                    f[:5] != r[:5] or json.loads(f[5]) != json.loads(r[5])
                    or json.loads(f[6]) != json.loads(r[6])
                    for f, r in zip(fast[1], ref[1], strict=True)):
                return _chain_core
    except Exception:  # noqa: BLE001 - e.g. Entry grew slots or a field: take the reference
        return _chain_core
    return _chain_fast


_chain_all = _pick_chain()


def to_entry(row: JournalEntry) -> ledger.Entry:
    return ledger.Entry(row.seq, row.prev_hash, row.ts_ms, row.kind, dict(row.body),
                        tuple((str(a), int(d)) for a, d in row.postings), row.hash)
