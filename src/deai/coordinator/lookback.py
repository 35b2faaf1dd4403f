"""Look-back on the coordinator: a caught provider's results are re-checked by verifiers.

``core.verify.lookback`` decides how far back (by default every result since the
provider's last look-back, and always everything still in the challenge window);
this module finds those results, queues each for a trusted verifier's audit
(``Task.pending_role = audit``: matching places it, ``decide.on_audit`` judges it,
``Correct`` replaces a wrong shard and re-assembles the job's result) at a bounded
rate (``settings.look_back_batch`` at a time, newest first; ``resume``, from the
upkeep loop, queues the backlog a batch at a time), and, when a
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
from deai.store import db
from deai.store.models import Assignment, Event, Job, JournalEntry, Payout, Task

REACH = lookback.DEFAULT
NEVER = -float("inf")


def _latest(s: Session, provider: str) -> Event | None:
    return s.scalars(select(Event).where(Event.kind == "look_back", Event.of_subject(provider))
                     .order_by(Event.id.desc()).limit(1)).first()


def marks(s: Session, provider: str) -> lookback.Marks:
    """The provider's record: when a look-back last covered it (None: never). One whose
    backlog still waits has not covered its reach yet: until it has, its own anchor
    stands, so a later look-back reaches at least as far back."""
    last = _latest(s, provider)
    if last is None:
        return lookback.Marks()
    body = last.body or {}
    if body.get("backlog"):
        since = body.get("since")
        return lookback.Marks(last_review=None if since is None else float(since))
    return lookback.Marks(last_review=float(body.get("at", last.ts)))


def queue(c: Coordinator, s: Session, provider: str) -> int:
    """Queue the accepted results of ``provider`` within the look-back's reach for an
    audit, newest first, at most ``settings.look_back_batch`` now; the rest is the
    look-back's backlog, which ``resume`` queues later. Returns how many were queued."""
    now, window = c.now(), c.settings.challenge_window
    since = lookback.since(REACH, marks(s, provider), now=now, window=window)
    return _queue(c, s, provider, since, None, now)


def resume(c: Coordinator) -> int:
    """The next batch of every look-back whose backlog waits, once none of its last
    batch still waits to be placed (a bounded rate: at most one batch per provider
    queued at a time). Called from the coordinator's upkeep loop."""
    def body(s: Session) -> int:
        latest = (select(func.max(Event.id)).where(Event.kind == "look_back")
                  .group_by(Event.subject))
        n = [0]

        def step(ev: Event) -> None:
            b = ev.body or {}
            if not b.get("backlog") or _waiting(s, ev.subject):
                return
            since = NEVER if b.get("since") is None else float(b["since"])
            after = (float(b["before"]), str(b["before_task"]))
            n[0] += _queue(c, s, ev.subject, since, after, float(b.get("at", ev.ts)))

        db.each_alone(s, s.scalars(select(Event).where(Event.id.in_(latest))).all(), step,
                      what=lambda ev: f"the look-back backlog of {ev.subject}")
        return n[0]

    return c.db.run(body)


def _waiting(s: Session, provider: str) -> bool:
    """Whether a result of ``provider`` is queued for an audit and not placed yet."""
    return s.scalar(select(func.count()).select_from(Task)
                    .join(Assignment, Assignment.task_id == Task.id)
                    .where(Assignment.provider_id == provider,
                           Assignment.status == AssignmentStatus.ACCEPTED,
                           Task.pending_role == Role.AUDIT)) != 0


def _queue(c: Coordinator, s: Session, provider: str, since: float,
           after: tuple[float, str] | None, at: float) -> int:
    """Queue a batch of the results accepted since ``since`` (and older than ``after``,
    the (release time, task) the previous batch ended at); emit the ``look_back``."""
    now, window = c.now(), c.settings.challenge_window
    q = (select(Task, Payout.release_at).join(Assignment, Assignment.task_id == Task.id)
         .join(Payout, Payout.assignment_id == Assignment.id)
         .where(Assignment.provider_id == provider,
                Assignment.status == AssignmentStatus.ACCEPTED,
                Task.status == TaskStatus.DONE, Task.pending_role.is_(None)))
    if since != NEVER:  # accepted at release_at − window
        q = q.where(Payout.release_at >= since + window)
    found: dict[str, tuple[Task, float]] = {}
    for t, release_at in s.execute(q).all():
        if after is None or release_at < after[0] or (release_at == after[0]
                                                      and t.id > after[1]):
            found[t.id] = (t, release_at)
    picked, rest = lookback.batch(((k, r) for k, (_, r) in found.items()),
                                  c.settings.look_back_batch)
    for k in picked:
        found[k][0].pending_role, found[k][0].updated_at = Role.AUDIT, now
    past = 0
    if picked:
        past = s.scalar(select(func.count(func.distinct(Payout.task_id))).where(
            Payout.task_id.in_(picked), Payout.provider_id == provider,
            Payout.release_at <= now)) or 0
    end = {"before": found[picked[-1]][1], "before_task": picked[-1]} if rest else {}
    c.emit(s, "look_back", provider, tasks=len(picked), backlog=len(rest), past_window=past,
           since=None if since == NEVER else since, at=at, **end)
    return len(picked)


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
