"""Client-side ledger audit: replay the whole journal here, trusting nothing, in
memory that does not grow with the journal.

``client_audit(client)`` streams the journal page by page
(``/api/ledger/journal``, the next page fetched while this one is checked)
through ``core.replay.Replay``, which makes every check of ``core.ledger.audit``:
the hash chain, that every entry balances, that no account but the mint goes
negative, that supply is conserved. Then it reads the balances the coordinator
claims a page at a time (``GET /api/ledger/balances?after=&limit=``; every page
carries the ``head_seq`` of the snapshot it was read from): before comparing a
page it replays up to that page's ``head_seq`` and compares every account of the
page with the replay at that very entry, so a journal that grows during the
audit is no problem. An account the replay knows at a page's ``head_seq`` that
falls in that page's range but is missing from it is claimed as zero. Entries
after the last page's ``head_seq`` are not audited this time.

Memory is the replay's balances (one per account: the replay must hold every
balance) plus a page or two, not the journal nor the claimed balances: entries
are dropped as they are checked unless ``keep_entries`` (the default, for
callers that list or cross-check them; ``deai ledger audit`` keeps only the last
few), claimed pages as they are compared. The coordinator's own
``/api/ledger/audit`` verdict is never consulted.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deai.client.sdk import Client
from deai.core.ledger import AuditReport, Entry
from deai.core.replay import Replay

PAGE = 5000  # the largest page either endpoint serves


def journal_pages(client: Client, *, after: int = 0, upto: int | None = None,
                  page: int = PAGE) -> Iterator[list[dict[str, Any]]]:
    """The journal after ``after`` (up to ``upto`` if given) a page of entries (as the
    endpoint serves them) at a time, in sequence order. The next page is fetched while
    the caller works on this one: the coordinator reads and serialises it meanwhile."""

    def fetch(after: int) -> tuple[list[dict[str, Any]], int]:
        out = client.request("GET", "/api/ledger/journal",
                             params={"after": after, "limit": page}).json()
        return list(out["entries"]), int(out["head_seq"])

    with ThreadPoolExecutor(1, thread_name_prefix="journal-page") as pool:
        nxt: Future[tuple[list[dict[str, Any]], int]] | None = pool.submit(fetch, after)
        while nxt is not None:
            entries, head_seq = nxt.result()
            nxt = None
            if upto is not None:
                entries = [d for d in entries if int(d["seq"]) <= upto]
            if not entries:
                return
            after = int(entries[-1]["seq"])
            if after < head_seq and (upto is None or after < upto):
                nxt = pool.submit(fetch, after)
            yield entries


def journal_stream(client: Client, *, after: int = 0, upto: int | None = None,
                   page: int = PAGE) -> Iterator[Entry]:
    """Journal entries after ``after`` (up to ``upto`` if given), in sequence order."""
    for entries in journal_pages(client, after=after, upto=upto, page=page):
        yield from map(Entry.from_dict, entries)


def fetch_journal(client: Client, *, after: int = 0, page: int = PAGE) -> list[Entry]:
    """Every journal entry after ``after``, in sequence order (held in memory)."""
    return list(journal_stream(client, after=after, page=page))


@dataclass(frozen=True)
class BalancePage:
    head_seq: int
    after: str  # the page covers accounts > after and, unless it is the last, <= last
    last: str | None
    balances: dict[str, int]


def balance_pages(client: Client, *, page: int = PAGE) -> Iterator[BalancePage]:
    after = ""
    while True:
        out = client.request("GET", "/api/ledger/balances",
                             params={"after": after, "limit": page}).json()
        bal = {str(a): int(v) for a, v in out["balances"].items()}
        nxt = out.get("next")
        yield BalancePage(int(out.get("head_seq", 0)), after, nxt, bal)
        if not nxt:
            return
        after = str(nxt)


@dataclass
class ClientAudit:
    """The replay's verdict plus what it was computed from."""

    report: AuditReport
    entries: list[Entry] = field(default_factory=list)  # all, or the last few
    claimed: dict[str, int] = field(default_factory=dict)  # when entries are kept
    paid: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def earnings(self) -> dict[str, int]:
        """What each provider was paid into pending, summed from the journal's payouts."""
        return dict(self.paid)


class _Journal:
    """The journal replayed on demand: ``upto(seq)`` feeds entries until ``seq``."""

    def __init__(self, client: Client, page: int, keep: deque[dict[str, Any]] | list[
            dict[str, Any]], paid: dict[str, int]) -> None:
        self.client, self.page, self.keep, self.paid = client, page, keep, paid
        self.replay = Replay()
        self._pages: Iterator[list[dict[str, Any]]] | None = None
        self._left: Iterator[dict[str, Any]] = iter(())

    def _next(self) -> dict[str, Any] | None:
        for _ in range(2):  # the current pages, then once more from where it stopped
            for d in self._left:
                return d
            if self._pages is None:
                self._pages = journal_pages(self.client, after=self.replay.seq, page=self.page)
            for entries in self._pages:
                self._left = iter(entries)
                return next(self._left)
            self._pages = None  # the journal's end as it was: it may have grown since
        return None

    def upto(self, seq: int) -> None:
        replay = self.replay
        while replay.seq < seq:
            d = self._next()
            if d is None:
                replay.fail(f"balances were read at entry {seq}; the journal ends at "
                            f"{replay.seq}")
                return
            replay.feed_dict(d)
            if d["kind"] == "payout":
                _paid(self.paid, d["postings"])
            self.keep.append(d)

    def close(self) -> None:
        if self._pages is not None:
            self._pages.close()  # type: ignore[attr-defined]


def client_audit(client: Client, *, keep_entries: bool = True, tail: int = 20,
                 page: int = PAGE) -> ClientAudit:
    result = ClientAudit(AuditReport())
    kept: deque[dict[str, Any]] | list[dict[str, Any]] = [] if keep_entries else deque(
        maxlen=tail)
    journal = _Journal(client, page, kept, result.paid)
    running = journal.replay.balances  # the replay's own balances, at the entry last fed
    problems: list[str] = []
    known: list[str] = []  # the replay's accounts, sorted, for the pages' ranges
    try:
        for p in balance_pages(client, page=page):
            journal.upto(p.head_seq)
            if keep_entries:
                result.claimed.update(p.balances)
            if len(known) != len(running):
                known = sorted(running)
            lo = bisect.bisect_right(known, p.after)
            hi = bisect.bisect_right(known, p.last) if p.last is not None else len(known)
            claims = {**dict.fromkeys(known[lo:hi], 0), **p.balances}  # absent means zero
            for account, amount in claims.items():
                have = running.get(account, 0)
                if have != amount:
                    problems.append(f"{account}: claimed {amount} at entry {p.head_seq}, "
                                    f"journal says {have}")
    finally:
        journal.close()
    rep = journal.replay.finish()
    for problem in problems:
        rep.fail(problem)
    result.report = rep
    result.entries = [Entry.from_dict(d) for d in kept]
    return result


def _paid(paid: dict[str, int], postings: list[Any]) -> None:
    for account, delta in postings:
        if account.startswith("pending:") and delta > 0:
            owner = account.removeprefix("pending:")
            paid[owner] = paid.get(owner, 0) + delta


def audit_network(client: Client) -> AuditReport:
    """The verdict alone: ``report.ok``, ``report.problems``, ``report.head``, ``report.supply``."""
    return client_audit(client, keep_entries=False).report
