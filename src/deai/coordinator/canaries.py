"""The canary pool: verified work kept as known answers, and canaries planted from it.

A canary is a real shard whose answer the network already knows, leased as a
job of its own owned by the network. It is created through the one job-creation
path (``admission``) like every other job.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import admission
from deai.coordinator.service import Coordinator, new_id
from deai.core.lifecycle import AssignmentStatus, Role, TaskStatus
from deai.core.verify import policy
from deai.store.models import Assignment, Canary, Job, Task

NETWORK = admission.NETWORK
POOL = 500  # known answers kept per model


def remember(c: Coordinator, s: Session, job: Job, task: Task, a: Assignment) -> None:
    """Verified work becomes a future canary (its answer is now known)."""
    if job.owner == NETWORK or a.output_digest is None:
        return
    s.add(Canary(kind=job.kind, model=job.model, spec=job.spec, input_digest=task.input_digest,
                 output_digest=a.output_digest, items=task.items, units=task.units,
                 source_task=task.id, created_at=c.now(), active=True, uses=0))
    old = s.scalars(select(Canary).where(Canary.model == job.model, Canary.active.is_(True))
                    .order_by(Canary.id.desc()).offset(POOL)).all()
    for row in old:
        row.active = False


def retire(s: Session, reference_digest: str | None) -> None:
    """The network's own answer was wrong: never use it again."""
    for canary in s.scalars(select(Canary).where(Canary.output_digest == reference_digest)):
        canary.active = False


def wanted(c: Coordinator) -> bool:
    return c.rng.random() < policy.canary_odds(c.settings.verify)


def plant(c: Coordinator, s: Session, pid: str, workload: str, model: str,
          price: int) -> str | None:
    """Lease a canary to ``pid``: a known-answer shard it has never seen, dressed as a job."""
    seen = select(Task.input_digest).join(Assignment, Assignment.task_id == Task.id).where(
        Assignment.provider_id == pid)
    pool = s.scalars(select(Canary).where(
        Canary.kind == workload, Canary.model == model, Canary.active.is_(True),
        Canary.input_digest.not_in(seen)).limit(50)).all()
    if not pool:
        return None
    canary = c.rng.choice(pool)
    canary.uses += 1
    now = c.now()
    spec = dict(canary.spec)
    job, (task,) = admission.create(
        c, s, owner=NETWORK, kind=canary.kind, model=canary.model, spec=spec,
        input_digest=canary.input_digest, max_price=int(spec.get("max_price", price)),
        shards=[admission.ShardIn(canary.input_digest, canary.items, canary.units)],
        escrow=0, deadline=24 * 3600, placed=True, reference=canary.output_digest)
    s.add(Assignment(id=new_id("asg"), task_id=task.id, job_id=job.id, provider_id=pid,
                     role=Role.CANARY, status=AssignmentStatus.LEASED, price=price,
                     leased_at=now, lease_deadline=now + c.settings.lease_ttl, delivered=False))
    c.emit(s, "canary_planted", task.id, provider=pid, model=model)
    assert task.status == TaskStatus.ASSIGNED
    return task.id
