"""The one way a job comes into being: client jobs, /v1 requests and batches, canaries.

``create`` runs inside the caller's write transaction and does, atomically:
check and hold an API key's spend cap (the key's row is locked, so concurrent
requests on one key serialise and can never commit more than the cap, and a key
revoked since the request was authenticated spends nothing more), escrow
the maximum cost through the settlement port, and write the job and its tasks.
Either all of it commits or none of it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator, ordered_ids
from deai.core.errors import AuthError, DeAIError
from deai.core.lifecycle import JobStatus, TaskStatus
from deai.store.models import ApiKey, ApiKeyJob, Job, Task

NETWORK = "network"  # owner of canary jobs


@dataclass(frozen=True)
class ShardIn:
    digest: str
    items: int
    units: int
    reference: str | None = None  # a canary's known answer


@dataclass(frozen=True)
class KeyUse:
    """Spending through an API key: its id, and where the job came from."""

    key_id: str
    source: str  # request | batch


class SpendCapExceeded(DeAIError):
    """The API key's spend cap cannot cover the request's maximum cost."""

    status = 429
    code = "spend_cap_exceeded"


def committed(s: Session, key_id: str) -> int:
    """What a key has committed: its jobs' escrow minus what they refunded."""
    total = s.scalar(select(func.coalesce(func.sum(Job.escrow - Job.refunded), 0))
                     .join(ApiKeyJob, ApiKeyJob.job_id == Job.id)
                     .where(ApiKeyJob.api_key_id == key_id))
    return int(total or 0)


def committed_many(s: Session, key_ids: list[str]) -> dict[str, int]:
    """``committed`` of each of ``key_ids`` (those with jobs), in one grouped read."""
    if not key_ids:
        return {}
    return {str(k): int(v) for k, v in s.execute(
        select(ApiKeyJob.api_key_id, func.coalesce(func.sum(Job.escrow - Job.refunded), 0))
        .join(Job, Job.id == ApiKeyJob.job_id)
        .where(ApiKeyJob.api_key_id.in_(key_ids)).group_by(ApiKeyJob.api_key_id))}


def hold_cap(s: Session, key_id: str, amount: int) -> None:
    """Lock the key and refuse ``amount`` if it would take the key past its cap, or if
    the key was revoked since the request was authenticated (``AuthError``, 401)."""
    # populate_existing: the locked read, not a copy the session may hold from before it
    row = s.scalars(select(ApiKey).where(ApiKey.id == key_id).with_for_update()
                    .execution_options(populate_existing=True)).first()
    if row is not None and row.revoked_at is not None:
        # Authentication read the key earlier, unlocked; a revocation that committed
        # since then must stop the spending (and one that comes later waits for it).
        raise AuthError("This API key has been revoked.")
    if row is None or row.spend_cap is None:
        return
    used = committed(s, key_id)
    if used + amount > row.spend_cap:
        raise SpendCapExceeded(
            f"this API key's spend cap is {row.spend_cap} µ; {used} µ is committed and the "
            f"request may cost up to {amount} µ", spend_cap=row.spend_cap, committed=used,
            needed=amount)


def create(c: Coordinator, s: Session, *, owner: str, kind: str, model: str,
           spec: dict[str, Any], input_digest: str, max_price: int, shards: Sequence[ShardIn],
           escrow: int, deadline: float, key: KeyUse | None = None, placed: bool = False,
           event: dict[str, Any] | None = None, want_tasks: bool = True,
           check_budget: int | None = None) -> tuple[Job, list[Task]]:
    """Create a job and its tasks; ``placed``: the caller leases its tasks at once;
    ``check_budget``: what of ``escrow`` is for the checks its owner pays (None: none).

    ``want_tasks=False``: the tasks are written in bulk and not returned (the list is
    empty), for callers that do not touch them in this transaction.
    """
    if key is not None:
        hold_cap(s, key.key_id, escrow)
    now = c.now()
    # Ordered by time: a job's row and its tasks' (ids made from its) go to the end of
    # their tables' primary keys (a /v1 request makes a job of one task each).
    job_id = ordered_ids("job", 1)[0]
    c.settlement.escrow(s, owner, job_id, escrow)
    job = Job(id=job_id, owner=owner, status=JobStatus.RUNNING if placed else JobStatus.PENDING,
              kind=kind, model=model, spec=spec, input_digest=input_digest,
              items=sum(sh.items for sh in shards), units=sum(sh.units for sh in shards),
              max_price=max_price, escrow=escrow, cost=0, refunded=0, created_at=now,
              deadline_at=now + deadline, check_budget=check_budget)
    s.add(job)
    s.flush()  # no relationship() orders these inserts: the job must exist first
    rows = [{"id": f"{job_id}.t{i:05d}", "job_id": job_id, "idx": i,
             "status": TaskStatus.ASSIGNED if placed else TaskStatus.QUEUED,
             "input_digest": sh.digest, "items": sh.items, "units": sh.units,
             "attempts": 1 if placed else 0, "updated_at": now, "reference_digest": sh.reference}
            for i, sh in enumerate(shards)]
    tasks: list[Task] = []
    if want_tasks:
        tasks = [Task(**r) for r in rows]
        s.add_all(tasks)
    else:  # one multi-row insert: 10,000 ORM objects would cost seconds
        s.execute(insert(Task), rows)
    if key is not None:
        s.add(ApiKeyJob(job_id=job_id, api_key_id=key.key_id, source=key.source,
                        created_at=now))
    # Every job, a canary too: a job nobody announced would be a canary to anyone reading
    # the event stream. Its owner and escrow stay sealed for the window (``public``).
    c.emit(s, "job_submitted", job_id, owner=owner, tasks=len(rows), escrow=escrow,
           model=model, units=job.units, **(event or {}))
    s.flush()
    return job, tasks
