"""Appending to the journal: the one place balances change.

``append`` locks the head row, checks that no account would dip below zero,
chains the entry to the previous hash and updates the materialised balances,
all inside the caller's transaction: the entry and everything else the caller
wrote commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.core import ledger
from deai.core.clock import Clock
from deai.store.models import Balance, JournalEntry, JournalHead


def head(s: Session, *, lock: bool = False) -> JournalHead:
    q = select(JournalHead).where(JournalHead.id == 1)
    if lock:
        q = q.with_for_update()
    row = s.scalars(q).first()
    if row is None:
        row = JournalHead(id=1, seq=0, hash=ledger.GENESIS)
        s.add(row)
        s.flush()
    return row


def balances(s: Session, accounts: Iterable[str], *, lock: bool = False) -> dict[str, int]:
    accts = sorted(set(accounts))
    q = select(Balance).where(Balance.account.in_(accts))
    if lock:
        q = q.with_for_update()
    return {b.account: b.amount for b in s.scalars(q)}


def balance(s: Session, account: str) -> int:
    return balances(s, [account]).get(account, 0)


def append(s: Session, draft: ledger.Draft, clock: Clock) -> ledger.Entry:
    h = head(s, lock=True)
    accounts = [a for a, _ in draft.postings]
    current = balances(s, accounts, lock=True)
    ledger.check_funds(draft, current)
    entry = ledger.chain(draft, h.seq + 1, h.hash, int(clock.now() * 1000))
    s.add(JournalEntry(seq=entry.seq, prev_hash=entry.prev_hash, hash=entry.hash,
                       ts_ms=entry.ts_ms, kind=entry.kind, body=entry.body,
                       postings=[[a, d] for a, d in entry.postings]))
    net: dict[str, int] = {}
    for account, delta in draft.postings:
        net[account] = net.get(account, 0) + delta
    for account in net:
        if account not in current:
            current[account] = 0
            s.add(Balance(account=account, amount=0))
    s.flush()
    for row in s.scalars(select(Balance).where(Balance.account.in_(sorted(net)))):
        row.amount = current[row.account] + net[row.account]
    h.seq, h.hash = entry.seq, entry.hash
    s.flush()
    return entry


def to_entry(row: JournalEntry) -> ledger.Entry:
    return ledger.Entry(row.seq, row.prev_hash, row.ts_ms, row.kind, dict(row.body),
                        tuple((str(a), int(d)) for a, d in row.postings), row.hash)
