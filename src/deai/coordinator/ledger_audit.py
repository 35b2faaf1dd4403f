"""The coordinator's own audit of its journal, cached, shared and incremental.

``GET /api/ledger/audit`` is anonymous, so it must not replay the whole
journal per call. One ``ServerAudit`` per process keeps the replay's state
(sequence and hash reached, replayed balances, problems found so far). A call
replays only the entries appended since the state was taken, in one read
snapshot together with the claimed balances and the head, then compares every
claimed balance with the replay. Concurrent callers share one computation
(a lock; whoever waited reuses the answer if it is fresh), and an answer
younger than ``ttl`` seconds is returned as is. The whole journal is replayed
from genesis again every ``full_every`` seconds (and whenever the stored tail
no longer carries the hash the state ended on), so an old entry edited in
place is still caught, just not on every call.
"""

from __future__ import annotations

import threading
import time
from json.encoder import encode_basestring_ascii

from sqlalchemy import Text, cast, select

from deai.core import ledger, wire
from deai.core.replay import Replay
from deai.store import journal
from deai.store.db import Database
from deai.store.models import Balance, JournalEntry, JournalHead


class _State(Replay):
    def __init__(self, full_at: float = 0.0) -> None:
        super().__init__()
        self.full_at = full_at


class ServerAudit:
    def __init__(self, db: Database, *, ttl: float = 5.0, full_every: float = 3600.0) -> None:
        self.db, self.ttl, self.full_every = db, ttl, full_every
        self._lock = threading.Lock()
        self._state = _State()
        self._answer: tuple[float, wire.AuditOut] | None = None
        self.replayed = 0  # entries replayed, for tests and metrics

    def summary(self) -> wire.AuditOut:
        now = time.monotonic()
        cached = self._answer
        if cached and now - cached[0] < self.ttl:
            return cached[1]
        with self._lock:
            cached = self._answer
            if cached and time.monotonic() - cached[0] < self.ttl:
                return cached[1]
            out = self._run()
            self._answer = (time.monotonic(), out)
            return out

    def _run(self) -> wire.AuditOut:
        st = self._state
        if time.monotonic() - st.full_at > self.full_every:
            st = _State(full_at=time.monotonic())
        with self.db.read() as s:
            if st.seq and s.scalar(select(JournalEntry.hash)
                                   .where(JournalEntry.seq == st.seq)) != st.head:
                st = _State(full_at=time.monotonic())  # the tail changed under us: start over
            head = s.get(JournalHead, 1)
            rows = s.scalars(select(JournalEntry)
                             .where(JournalEntry.seq > st.seq,
                                    JournalEntry.seq <= (head.seq if head else 0))
                             .order_by(JournalEntry.seq).execution_options(yield_per=1000))
            for r in rows:
                self._replay(st, journal.to_entry(r))
            claimed = {a: int(v) for a, v in s.execute(select(Balance.account, Balance.amount))}
        self._state = st
        problems = list(st.problems)
        total = sum(st.balances.values())
        if total != 0:
            problems.append(f"supply not conserved: balances sum to {total}")
        for account in sorted(set(claimed) | set(st.balances)):
            if claimed.get(account, 0) != st.balances.get(account, 0) and len(problems) < 50:
                problems.append(f"{account}: claimed {claimed.get(account, 0)}, "
                                f"journal says {st.balances.get(account, 0)}")
        return wire.AuditOut(ok=not problems, entries=st.entries, head=st.head,
                             supply=-st.balances.get(ledger.MINT, 0),
                             accounts=len(st.balances), problems=problems)

    def _replay(self, st: _State, e: ledger.Entry) -> None:
        """The checks of ``core.ledger.audit`` for one entry, carried on from ``st``."""
        self.replayed += 1
        st.feed_entry(e)


def journal_page(db: Database, after: int, limit: int) -> str:
    """``GET /api/ledger/journal``'s answer as JSON text, made straight from the rows:
    body and postings are the JSON the journal stored (``CAST`` to text, never parsed
    and serialised again), the other fields escaped here. The same document as
    ``wire.JournalOut`` of ``ledger.Entry.to_dict``s, at a fraction of the cost; an
    auditor recomputes every hash from it anyway."""
    j = JournalEntry
    with db.read() as s:
        rows = s.execute(select(j.seq, j.prev_hash, j.ts_ms, j.kind, cast(j.body, Text),
                                cast(j.postings, Text), j.hash)
                         .where(j.seq > after).order_by(j.seq).limit(limit)).all()
        head = s.scalar(select(JournalHead.seq).where(JournalHead.id == 1)) or 0
    q = encode_basestring_ascii
    entries = ",".join(
        f'{{"seq":{int(seq)},"prev_hash":{q(prev)},"ts_ms":{int(ts)},"kind":{q(kind)},'
        f'"body":{body},"postings":{postings},"hash":{q(h)}}}'
        for seq, prev, ts, kind, body, postings, h in rows)
    return f'{{"entries":[{entries}],"head_seq":{int(head)}}}'


def of(c: object) -> ServerAudit:
    """The coordinator's one ``ServerAudit`` (made on first use)."""
    found: ServerAudit | None = c.__dict__.get("_ledger_audit")
    if found is None:
        found = c.__dict__.setdefault("_ledger_audit", ServerAudit(c.db))  # type: ignore[attr-defined]
    return found
