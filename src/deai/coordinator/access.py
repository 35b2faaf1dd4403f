"""Who may read what: private data is its owner's, or a live lease's while it needs it.

A blob is readable by an account that

- uploaded it (a ``blob_refs`` row, written by ``PUT /api/blobs``), or
- owns a job that uses it: the job's input or output, a task's shard or
  output, an assignment's payload or output, a checkpoint of one of its tasks,
  or one of its ``/v1`` files;

and by the owner of a lease volume with that snapshot, or the provider of a live lease
that mounts the volume (``volumes.may_read``);

and by a provider holding a live lease (status ``leased``, deadline not
passed) whose task needs it: the task's shard, the assignment's check payload,
a checkpoint of that task (a resume point), or a digest named inside that
payload that the job's owner may read itself (files of a command job, the
shard and checkpoints of a network audit). The last condition stops a job
owner from naming someone else's digest in a payload and reading it back
through a provider of its own. The network owns no data: a canary's lease reads
its shard, its check payload and its checkpoints, and of what its shard names only
the files the client job that shard came from named and owned (``named_by_source``).

Everyone else gets the same 404 as for a digest that does not exist, so a
guess confirms nothing. Jobs follow the same rule: a job's spec, status and
results are its owner's (``require_job``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from deai.coordinator import volumes
from deai.coordinator.service import Coordinator
from deai.core.errors import NotFound
from deai.core.lifecycle import AssignmentStatus, JobStatus
from deai.store.models import (
    ApiFile,
    Assignment,
    BlobRef,
    Canary,
    Checkpoint,
    Job,
    JobBlob,
    Task,
)

NETWORK = "network"
"""Owner of the jobs the coordinator makes itself (canaries, audits): ``verify.NETWORK``."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def record_upload(c: Coordinator, account: str, digest: str, size: int) -> None:
    """Remember that ``account`` uploaded ``digest`` (idempotent)."""
    try:
        with c.db.write() as s:
            if s.get(BlobRef, (digest, account)) is None:
                s.add(BlobRef(digest=digest, account=account, size=size, created_at=c.now()))
    except IntegrityError:  # a concurrent upload of the same blob by the same account
        pass


def owner_may_read(s: Session, account: str, digest: str) -> bool:
    """``account`` uploaded the blob or owns a job (or /v1 file) that uses it."""
    return digest in owner_may_read_many(s, account, [digest])


def owner_may_read_many(s: Session, account: str, digests: Sequence[str]) -> set[str]:
    """Those of ``digests`` (at most a few hundred: one ``IN`` list) that ``account``
    uploaded or that a job (or /v1 file) it owns uses: a statement per place a digest
    can stand, whatever their number. One digest at a time, a command job naming 1,000
    made-up files cost 7,005 statements (2.8 s on an empty SQLite)."""
    want = set(digests)
    if not want:
        return set()
    part = sorted(want)
    mine = select(Job.id).where(Job.owner == account)
    pairs = (
        select(Job.input_digest, Job.output_digest).where(
            Job.owner == account, or_(Job.input_digest.in_(part), Job.output_digest.in_(part))),
        select(Task.input_digest, Task.output_digest).where(
            Task.job_id.in_(mine), or_(Task.input_digest.in_(part),
                                       Task.output_digest.in_(part))),
        select(Assignment.input_digest, Assignment.output_digest).where(
            Assignment.job_id.in_(mine), or_(Assignment.input_digest.in_(part),
                                             Assignment.output_digest.in_(part))),
    )
    singles = (
        select(BlobRef.digest).where(BlobRef.account == account, BlobRef.digest.in_(part)),
        select(Checkpoint.digest).join(Task, Task.id == Checkpoint.task_id)
        .where(Task.job_id.in_(mine), Checkpoint.digest.in_(part), shown_to_owner()),
        select(ApiFile.digest).where(ApiFile.account == account, ApiFile.digest.in_(part)),
        select(JobBlob.digest).where(JobBlob.digest.in_(part), JobBlob.job_id.in_(mine)),
    )
    found: set[str] = set()
    for q in pairs:
        for a, b in s.execute(q.distinct()):
            found.update(d for d in (a, b) if d is not None and d in want)
    for q1 in singles:
        found.update(d for d in s.scalars(q1.distinct()) if d in want)
    return found


def shown_to_owner() -> ColumnElement[bool]:
    """The checkpoints a job's owner may read: all of them, but on a dataset only its
    final model, once the job has completed. With one row a training step, the change
    between two checkpoints gives the row; a buyer pays for a model, not for the rows."""
    # A dataset job by its spec, not by its use: a job that ends uncompleted gives its
    # use back (``datasets.end_use`` deletes it), and a buyer that cancelled at the last
    # step read every checkpoint with no royalty paid.
    last = aliased(Checkpoint)
    final = Checkpoint.step == select(func.max(last.step)).where(
        last.task_id == Checkpoint.task_id).scalar_subquery()
    on_dataset = select(Job.id).where(
        Job.id == Task.job_id, Job.spec["dataset_id"].as_string().is_not(None)).exists()
    completed = select(Job.id).where(Job.id == Task.job_id,
                                     Job.status == JobStatus.COMPLETED).exists()
    return or_(~on_dataset, and_(completed, final))


def lease_may_read(c: Coordinator, s: Session, provider: str, digest: str) -> bool:
    """``provider`` holds a live lease on a task that needs the blob."""
    rows = s.execute(select(Assignment, Task, Job.owner)
                     .join(Task, Task.id == Assignment.task_id)
                     .join(Job, Job.id == Assignment.job_id)
                     .where(Assignment.provider_id == provider,
                            Assignment.status == AssignmentStatus.LEASED,
                            Assignment.lease_deadline >= c.now())).all()
    if not rows:
        return False
    for a, t, _ in rows:
        if digest in (a.input_digest, t.input_digest):
            return True
    tasks = [t.id for _, t, _ in rows]
    if s.scalar(select(Checkpoint.id).where(Checkpoint.task_id.in_(tasks),
                                            Checkpoint.digest == digest).limit(1)) is not None:
        return True
    needle = digest.encode()
    for a, t, owner in rows:
        payload = a.input_digest or t.input_digest
        if not c.blobs.exists(payload) or needle not in c.blobs.get(payload):
            continue
        if owner == NETWORK:
            if named_by_source(s, t.input_digest, digest):
                return True
        elif owner_may_read(s, owner, digest):
            return True
    return False


def named_by_source(s: Session, shard: str, digest: str) -> bool:
    """A canary re-runs a client's shard (``canaries.plant_jobs``): the files that shard's
    job named by digest, checked as its owner's and recorded with it at admission
    (``JobBlob``), are what the canary's lease may read besides the shard itself.

    Not "anything its payload names": a canary's payload is old client text, so a digest
    in it is only a string someone typed (another account's blob, say). The network's
    own check payloads name the shard and the task's checkpoints, both allowed above.
    """
    sources = select(Task.job_id).join(Job, Job.id == Task.job_id).where(
        Task.id.in_(select(Canary.source_task).where(Canary.input_digest == shard)),
        Job.owner != NETWORK)
    return s.scalar(select(JobBlob.job_id).where(JobBlob.digest == digest,
                                                 JobBlob.job_id.in_(sources)).limit(1)) is not None


def may_read_blob(c: Coordinator, account: str, digest: str) -> bool:
    if not _HEX64.match(digest) or not c.blobs.exists(digest):
        return False
    with c.db.read() as s:
        return (owner_may_read(s, account, digest) or lease_may_read(c, s, account, digest)
                or volumes.may_read(s, account, digest))


def require_blob(c: Coordinator, account: str, digest: str, field: str = "digest") -> None:
    """Raise the not-found error unless ``account`` may read the blob (or use it in a job)."""
    if not may_read_blob(c, account, digest):
        raise NotFound(f"{field}: no blob {digest} that this key may read "
                       "(upload it first)", field=field)


def require_own_blobs(c: Coordinator, account: str, digests: list[str], field: str) -> None:
    """Raise the not-found error unless ``account`` uploaded each blob or owns something
    that uses it: not a blob it may read only through a provider's lease or a mount, whose
    reading ends with them (a job naming it would keep it, and the right to read it).

    Whose first, then whether stored, and only for its own: a digest that is not stored
    and one another account uploaded get the same error, naming the first of ``digests``
    (in the caller's order) that fails either way, so that neither the answer nor the
    digest it names tells whether a guessed digest is stored (``docs/security.md``). In
    one read, a few statements per 500 digests (``owner_may_read_many``)."""
    valid = [d for d in dict.fromkeys(digests) if _HEX64.match(d)]
    mine: set[str] = set()
    with c.db.read() as s:
        for i in range(0, len(valid), 500):
            mine |= owner_may_read_many(s, account, valid[i:i + 500])
    bad = next((d for d in digests if d not in mine or not c.blobs.exists(d)), None)
    if bad is not None:
        raise NotFound(f"{field}: no blob {bad} that this key uploaded or owns "
                       "(upload it first)", field=field)


def require_job(c: Coordinator, account: str, job_id: str) -> None:
    """Raise the not-found error unless ``account`` owns the job."""
    with c.db.read() as s:
        owner = s.scalar(select(Job.owner).where(Job.id == job_id))
    if owner is None or owner != account:
        raise NotFound(f"no job {job_id} owned by this key", field="job")
