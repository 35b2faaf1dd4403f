"""Client-side ledger audit: replay the whole journal here, trusting nothing, in
memory that does not grow with the journal.

``client_audit(client)`` reads the balances the coordinator claims, a page at a
time (``GET /api/ledger/balances?after=&limit=``; every page carries the
``head_seq`` of the snapshot it was read from), then streams the journal page
by page (``/api/ledger/journal``) through ``core.ledger.audit``, which checks
the hash chain, that every entry balances, that no account but the mint goes
negative and that supply is conserved. Alongside, it keeps its own running
balances and, when the replay reaches a page's ``head_seq``, compares every
account of that page with the replay at that very entry, so a journal that
grows during the audit is no problem. An account the replay knows at a page's
``head_seq`` that falls in that page's range but is missing from it is claimed
as zero. Entries after the last page's ``head_seq`` are not audited this time.

Memory is proportional to the number of accounts (the replay must hold every
balance), not to the number of entries: entries are dropped as they are
checked unless ``keep_entries`` (the default, for callers that list or
cross-check them; ``deai ledger audit`` keeps only the last few). The
coordinator's own ``/api/ledger/audit`` verdict is never consulted.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from deai.client.sdk import Client
from deai.core import ledger
from deai.core.ledger import AuditReport, Entry

PAGE = 5000  # the largest page either endpoint serves


def journal_stream(client: Client, *, after: int = 0, upto: int | None = None,
                   page: int = PAGE) -> Iterator[Entry]:
    """Journal entries after ``after`` (up to ``upto`` if given), in sequence order."""
    while True:
        out = client.journal(after=after, limit=page)
        if not out.entries:
            return
        for d in out.entries:
            e = Entry.from_dict(d)
            if upto is not None and e.seq > upto:
                return
            yield e
            after = e.seq
        if after >= out.head_seq or (upto is not None and after >= upto):
            return


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


class _Claims:
    """The claimed balances, grouped by the journal entry at which each was read."""

    def __init__(self, pages: list[BalancePage]) -> None:
        self.at: dict[int, dict[str, int]] = {}
        for p in pages:
            self.at.setdefault(p.head_seq, {}).update(p.balances)
        self._starts = [p.after for p in pages]
        self._seqs = [p.head_seq for p in pages]
        self.due = sorted(self.at)

    def seq_for(self, account: str) -> int:
        """The ``head_seq`` of the page whose range holds ``account``."""
        i = bisect.bisect_left(self._starts, account) - 1
        return self._seqs[max(i, 0)]


def client_audit(client: Client, *, keep_entries: bool = True, tail: int = 20,
                 page: int = PAGE) -> ClientAudit:
    pages = list(balance_pages(client, page=page))
    claims = _Claims(pages)
    result = ClientAudit(AuditReport())
    if keep_entries:
        for p in pages:
            result.claimed.update(p.balances)
    del pages
    kept: deque[Entry] | list[Entry] = [] if keep_entries else deque(maxlen=tail)
    running: dict[str, int] = {}
    problems: list[str] = []

    def compare(seq: int) -> None:
        for account, amount in claims.at.pop(seq, {}).items():
            have = running.get(account, 0)
            if have != amount:
                problems.append(f"{account}: claimed {amount} at entry {seq}, "
                                f"journal says {have}")

    def stream() -> Iterator[Entry]:
        i = 0
        for e in journal_stream(client, upto=claims.due[-1] if claims.due else 0, page=page):
            while i < len(claims.due) and claims.due[i] < e.seq:
                compare(claims.due[i])
                i += 1
            for account, delta in e.postings:
                if account not in running:
                    at = claims.seq_for(account)
                    if at >= e.seq and account not in claims.at.get(at, {}):
                        claims.at.setdefault(at, {})[account] = 0  # absent means zero
                running[account] = running.get(account, 0) + delta
                if e.kind == "payout" and account.startswith("pending:") and delta > 0:
                    owner = account.removeprefix("pending:")
                    result.paid[owner] = result.paid.get(owner, 0) + delta
            kept.append(e)
            yield e
        while i < len(claims.due):
            compare(claims.due[i])
            i += 1

    rep = ledger.audit(stream(), None)
    for problem in problems:
        rep.fail(problem)
    result.report = rep
    result.entries = list(kept)
    return result


def audit_network(client: Client) -> AuditReport:
    """The verdict alone: ``report.ok``, ``report.problems``, ``report.head``, ``report.supply``."""
    return client_audit(client, keep_entries=False).report
