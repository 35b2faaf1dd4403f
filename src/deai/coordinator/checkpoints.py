"""Training checkpoints: providers record them as they go; a resumed task starts from the last.

    POST /api/assignments/{id}/checkpoint   (signed by the provider holding the lease)
    body  wire.CheckpointIn {step, digest, chain_hash, meta}
    →     wire.CheckpointOut {status: "recorded", step}
    GET  /api/jobs/{id}/checkpoints         (signed by the job's owner)
          → {"checkpoints": [{task_id, step, ...}, ...]}

A checkpoint is recorded only if the lease is the signer's and still live,
the blob was uploaded, the step advances past the assignment's own last
checkpoint, and ``chain_hash`` links to the chain so far: it must equal
``core.checkpoints.link(sha256(blob), H_prev, prev_step, step, seed)`` where
``H_prev`` and ``prev_step`` come from the latest checkpoint of the same task
and role below ``step`` (the task's genesis and step 0 when there is none)
and ``seed`` is the payload's data order seed. Refusals: 403 another
provider's lease, 409 a lease that is over or a step that does not advance,
422 a missing blob, a step past the run or a hash that does not link.

Chains are kept per role, so a replica or referee that re-runs a task
builds its own chain instead of resuming the primary's. ``resume_for`` gives
``deliver`` the checkpoint a new assignment resumes from.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from deai.coordinator import access, datasets
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.service import Coordinator
from deai.core import checkpoints, sealed, wire
from deai.core.errors import Conflict, InvalidInput, NotFound
from deai.core.kinds import train
from deai.core.lifecycle import Role
from deai.store.models import Assignment, Checkpoint, Job, Task

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]


@router.post("/assignments/{assignment_id}/checkpoint", response_model=wire.CheckpointOut)
def checkpoint(assignment_id: str, body: wire.CheckpointIn, c: C,
               me: Signer) -> wire.CheckpointOut:
    return record(c, me, assignment_id, body)


PAGE = 1000  # checkpoints listed at once, at most: a long run records one every few steps


@router.get("/jobs/{job_id}/checkpoints", response_model=dict[str, Any])
def listing(job_id: str, c: C, me: Signer,
            after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
            limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE) -> dict[str, Any]:
    """The checkpoints recorded for a job's tasks after the cursor ``after`` (a
    checkpoint's ``id``), oldest first, ``limit`` at most, and ``next_after`` for the next
    page (null: the last) (progress, audits): the job's owner's to read, like the job."""
    access.require_job(c, me, job_id)
    with c.db.read() as s:
        if s.get(Job, job_id) is None:
            raise NotFound(f"no job {job_id}", field="job")
        rows = s.execute(select(Checkpoint, Assignment.role)
                         .join(Assignment, Assignment.id == Checkpoint.assignment_id)
                         .join(Task, Task.id == Checkpoint.task_id)
                         .where(Assignment.job_id == job_id, Checkpoint.id > after,
                                access.shown_to_owner())
                         .order_by(Checkpoint.id).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return {"checkpoints": [
            {"id": cp.id, "task_id": cp.task_id, "step": cp.step, "digest": cp.digest,
             "chain_hash": cp.chain_hash, "meta": cp.meta, "assignment_id": cp.assignment_id,
             "provider_id": cp.provider_id, "role": role, "created_at": cp.created_at}
            for cp, role in rows], "next_after": rows[-1][0].id if more else None}


def record(c: Coordinator, pid: str, assignment_id: str,
           body: wire.CheckpointIn) -> wire.CheckpointOut:
    with c.db.read() as s:  # the lease before the digest, as ``jobs.submit_result``
        c.live_lease(s, pid, assignment_id, lock=False)
    # Its own, not a leased read; stored or not, the same 404 (a guess confirms nothing).
    access.require_own_blobs(c, pid, [body.digest], "digest")
    blob_digest = hashlib.sha256(c.blobs.get(body.digest)).hexdigest()
    with c.db.write() as s:
        a = c.live_lease(s, pid, assignment_id)
        job, task = s.get(Job, a.job_id), s.get(Task, a.task_id)
        assert job is not None and task is not None
        if not takes_checkpoints(job.kind):
            raise InvalidInput(f"assignment: {job.kind} jobs take no checkpoints",
                               field="assignment")
        keyless = datasets.require_key(s, job, a)
        if keyless is not None:  # a chain made without the rows, for another to resume
            raise Conflict(f"assignment: {keyless}", field="assignment")
        if sealed.is_sealed(job.spec):  # ciphertext: the chain commits to the stated plaintext
            from deai.coordinator import sealed_jobs
            blob_digest, seed, steps, genesis = sealed_jobs.checkpoint_terms(c, job, task, body)
            every = job.spec.get("checkpoint_every")
        else:
            payload_digest = a.input_digest or task.input_digest
            seed, steps, every = _run_of(c, payload_digest)
            genesis = checkpoints.genesis(payload_digest)
        if body.step > steps:
            raise InvalidInput(f"step: the run has {steps} steps", field="step")
        # On the grid only (each multiple of ``checkpoint_every``, and the last step): one
        # off it became every later attempt's resume point, whose honest chains then could
        # not end on the grid, and failed until the job did.
        if not (isinstance(every, int) and every > 0
                and (body.step % every == 0 or body.step == steps)):
            raise InvalidInput(f"step: checkpoints are at multiples of {every} and at step "
                               f"{steps}", field="step")
        own = s.scalar(select(Checkpoint.step).where(Checkpoint.assignment_id == a.id)
                       .order_by(Checkpoint.step.desc()).limit(1))
        if own is not None and body.step <= own:
            raise Conflict(f"step: {body.step} does not advance past this assignment's "
                           f"checkpoint at step {own}", status="stale")
        prev = _latest(s, a.task_id, a.role, below=body.step)
        prev_hash = prev.chain_hash if prev else genesis
        prev_step = prev.step if prev else 0
        want = checkpoints.link(blob_digest, prev_hash, prev_step, body.step, seed)
        if body.chain_hash != want:
            raise InvalidInput(f"chain_hash: does not link the checkpoint at step {body.step} "
                               f"to the one at step {prev_step}", field="chain_hash")
        s.add(Checkpoint(task_id=a.task_id, step=body.step, digest=body.digest,
                         chain_hash=body.chain_hash, meta=body.meta, assignment_id=a.id,
                         provider_id=pid, created_at=c.now()))
        c.emit(s, "checkpoint", a.task_id, provider=pid, step=body.step, digest=body.digest,
               role=a.role)
    c.notifier.published()
    return wire.CheckpointOut(status="recorded", step=body.step)


def takes_checkpoints(kind: str) -> bool:
    """Whether leases of ``kind`` jobs record checkpoints (training only)."""
    return kind == train.TrainKind.name


def resume_for(s: Session, a: Assignment, kind: str) -> dict[str, Any] | None:
    """The checkpoint assignment ``a`` (of a ``kind`` job) resumes from: its task's latest,
    in its role's chain; None without a read for kinds that take no checkpoints."""
    if not takes_checkpoints(kind):
        return None
    cp = _latest(s, a.task_id, a.role)
    if cp is None:
        return None
    return {"step": cp.step, "digest": cp.digest, "chain_hash": cp.chain_hash,
            "meta": cp.meta}


def chain_of(s: Session, task_id: str, role: str = "primary") -> list[Checkpoint]:
    """A task's recorded checkpoints in one role, by step (first recorded wins a tie)."""
    rows = s.scalars(select(Checkpoint).join(Assignment, Assignment.id ==
                                             Checkpoint.assignment_id)
                     .where(Checkpoint.task_id == task_id, Assignment.role == role)
                     .order_by(Checkpoint.step, Checkpoint.id)).all()
    by_step: dict[int, Checkpoint] = {}
    for cp in rows:
        by_step.setdefault(cp.step, cp)
    return list(by_step.values())


def void(s: Session, task_id: str, step: int) -> int:
    """Delete a task's primary checkpoints at ``step`` and after (one of them was proved
    wrong: every later one grew from it); returns how many. Their blobs, referenced no
    more, are swept like any unreferenced upload (``blob_quota``)."""
    ids = s.scalars(select(Checkpoint.id).join(Assignment, Assignment.id ==
                                                Checkpoint.assignment_id)
                    .where(Checkpoint.task_id == task_id, Assignment.role == Role.PRIMARY,
                           Checkpoint.step >= step)).all()
    if ids:
        s.execute(delete(Checkpoint).where(Checkpoint.id.in_(ids)))
    return len(ids)


def _latest(s: Session, task_id: str, role: str, below: int | None = None) -> Checkpoint | None:
    q = (select(Checkpoint).join(Assignment, Assignment.id == Checkpoint.assignment_id)
         .where(Checkpoint.task_id == task_id, Assignment.role == role))
    if below is not None:
        q = q.where(Checkpoint.step < below)
    return s.scalar(q.order_by(Checkpoint.step.desc(), Checkpoint.id).limit(1))


_RUNS: dict[str, tuple[int, int, int]] = {}
_RUNS_LOCK = threading.Lock()


def _run_of(c: Coordinator, payload_digest: str) -> tuple[int, int, int]:
    """(data order seed, steps, checkpoint_every) of a payload; cached, as a user's data
    can make it large."""
    with _RUNS_LOCK:
        run = _RUNS.get(payload_digest)
    if run is None:
        p = train.parse_payload(c.blobs.get(payload_digest))
        run = (p.seed, p.steps, p.checkpoint_every)
        with _RUNS_LOCK:
            _RUNS[payload_digest] = run
            if len(_RUNS) > 1024:
                _RUNS.pop(next(iter(_RUNS)))
    return run


