"""Look-back on the coordinator: a caught provider's results are re-checked by verifiers.

``core.verify.lookback`` decides how far back (by default every result since the
provider's last look-back, and always everything still in the challenge window);
this module finds those results, queues each for a trusted verifier's audit
(``Task.pending_role = audit``: matching places it, ``decide.on_audit`` judges it,
``Correct`` replaces a wrong shard and re-assembles the job's result), and, when a
result that a look-back proved wrong had its earnings released already, claws them
back through the journal. Called from ``coordinator.effects`` inside its
transaction; it writes nothing else.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deai.coordinator import canaries
from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core.lifecycle import JOB_ACTIVE, AssignmentStatus, Role, TaskStatus
from deai.core.verify import lookback
from deai.store.models import Assignment, Event, Job, JournalEntry, Payout, Task

REACH = lookback.DEFAULT


def marks(s: Session, provider: str) -> lookback.Marks:
    """The provider's record: when a look-back last covered it (None: never)."""
    last = s.scalar(select(func.max(Event.ts)).where(Event.kind == "look_back",
                                                     Event.subject == provider))
    return lookback.Marks(last_review=last)


def queue(c: Coordinator, s: Session, provider: str) -> int:
    """Queue every accepted result of ``provider`` within the look-back's reach for an
    audit; returns how many tasks were queued."""
    now, window = c.now(), c.settings.challenge_window
    since = lookback.since(REACH, marks(s, provider), now=now, window=window)
    q = (select(Task).join(Assignment, Assignment.task_id == Task.id)
         .join(Payout, Payout.assignment_id == Assignment.id)
         .where(Assignment.provider_id == provider,
                Assignment.status == AssignmentStatus.ACCEPTED,
                Task.status == TaskStatus.DONE, Task.pending_role.is_(None)))
    if since != -float("inf"):  # accepted at release_at − window
        q = q.where(Payout.release_at >= since + window)
    rows = {t.id: t for t in s.execute(q).scalars().all()}
    past = 0
    for t in rows.values():
        t.pending_role, t.updated_at = Role.AUDIT, now
    if rows:
        past = s.scalar(select(func.count(func.distinct(Payout.task_id))).where(
            Payout.task_id.in_(list(rows)), Payout.provider_id == provider,
            Payout.release_at <= now)) or 0
    c.emit(s, "look_back", provider, tasks=len(rows), past_window=past,
           since=None if since == -float("inf") else since)
    return len(rows)


def claw_back(c: Coordinator, s: Session, job: Job, task_id: str, provider: str) -> int:
    """Earnings ``provider`` was paid for ``task_id`` and that already left pending go
    back to whoever paid them (the client's escrow or account, the fee with them; the
    treasury for a check fee or a canary). Returns the amount returned."""
    back = 0
    for row in s.scalars(select(Payout).where(
            Payout.provider_id == provider, Payout.task_id == task_id,
            Payout.released.is_(True), Payout.forfeited.is_(False))):
        row.forfeited = True
        entry = s.get(JournalEntry, row.journal_seq)
        client = (entry is not None and entry.kind == "payout"
                  and job.owner != canaries.NETWORK)
        fee = int(entry.body.get("fee", 0)) if client and entry is not None else 0
        if not client:
            to = ledger.FEE
        elif job.status in JOB_ACTIVE:
            to = ledger.escrow(job.id)
        else:
            to = ledger.acct(job.owner)
        got = c.settlement.claw_back(s, provider, job.id, task_id, row.amount, fee, to)
        back += got
        if client:
            job.cost -= got
            if to != ledger.escrow(job.id):
                job.refunded += got
    return back
