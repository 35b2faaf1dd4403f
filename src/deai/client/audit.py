"""Client-side ledger audit: fetch the whole journal and replay it here, trusting nothing.

``audit_network(client)`` pages through ``/api/ledger/journal``, rebuilds
each entry with ``core.ledger.Entry.from_dict`` and replays them with
``core.ledger.audit`` against the balances the coordinator claims, returning the
``AuditReport``; ``client_audit`` returns the entries and claims beside it. The
coordinator's own ``/api/ledger/audit`` verdict is never consulted.

The journal can grow while we read it. Balances are fetched between two reads
of the journal's head; if the head moved, the snapshot is retried a few times so
that the claimed balances and the replayed entries describe the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deai.client.sdk import Client
from deai.core import ledger
from deai.core.ledger import AuditReport, Entry

PAGE = 1000
SNAPSHOT_ATTEMPTS = 5


def fetch_journal(client: Client, *, after: int = 0, page: int = PAGE) -> list[Entry]:
    """Every journal entry after ``after``, in sequence order."""
    entries: list[Entry] = []
    while True:
        out = client.journal(after=after, limit=page)
        batch = [Entry.from_dict(d) for d in out.entries]
        entries.extend(batch)
        if not batch or batch[-1].seq >= out.head_seq:
            return entries
        after = batch[-1].seq


@dataclass
class ClientAudit:
    """The replay's verdict plus what it was computed from."""

    report: AuditReport
    entries: list[Entry] = field(default_factory=list)
    claimed: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def earnings(self) -> dict[str, int]:
        """What each provider was paid into pending, summed from the journal's payouts."""
        paid: dict[str, int] = {}
        for e in self.entries:
            for account, delta in e.postings:
                if e.kind == "payout" and account.startswith("pending:") and delta > 0:
                    owner = account.removeprefix("pending:")
                    paid[owner] = paid.get(owner, 0) + delta
        return paid


def snapshot(client: Client) -> tuple[list[Entry], dict[str, int]]:
    """A journal and the balances the coordinator claims, taken at the same head."""
    entries = fetch_journal(client)
    claimed: dict[str, int] = {}
    for _ in range(SNAPSHOT_ATTEMPTS):
        claimed = client.all_balances()
        more = fetch_journal(client, after=entries[-1].seq if entries else 0)
        if not more:
            break
        entries.extend(more)
    return entries, claimed


def client_audit(client: Client) -> ClientAudit:
    entries, claimed = snapshot(client)
    return ClientAudit(ledger.audit(entries, claimed), entries, claimed)


def audit_network(client: Client) -> AuditReport:
    """The verdict alone: ``report.ok``, ``report.problems``, ``report.head``, ``report.supply``."""
    return client_audit(client).report
