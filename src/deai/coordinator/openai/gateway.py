"""One OpenAI request = one one-task DeAI job, answered from its primary result.

``start`` validates the request as a one-line batch input (the kind's own
rules), escrows its maximum cost at the highest price any online provider
asks for the model, and places the task on the best provider in the same
transaction (``matching.place_now``, from the providers' index and checked against
the chosen provider's rows): it never waits behind queued batch work.
The job belongs to the key's account and is billed like any other, at the
provider's price.

``primary_output`` is what the caller gets: the first structurally valid
output of the task's primary assignment (``submitted`` or ``accepted``).
The caller does not wait for verification: a result held for a replica or a
referee is returned at once, and the checks go on in the background exactly
as for batch work; a provider caught cheating is slashed after the fact.
Waiting is on the notifier's result event (``jobs.submit_result`` fires it),
with a slow re-check as a backstop for jobs that end without a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from deai.coordinator import admission, blob_quota, canaries, jobs, matching, provider_index
from deai.coordinator.openai import keys
from deai.coordinator.openai.errors import ApiError
from deai.coordinator.service import Coordinator
from deai.core import batch, catalog, kinds
from deai.core.errors import DeAIError, InvalidInput, UnknownModel
from deai.core.lifecycle import AssignmentStatus, JobStatus, Role
from deai.core.money import cost_for_units
from deai.store.models import Assignment, Job, Task

DEADLINE = 3600  # seconds for the job: the answer comes at once, its checks may take longer
WAIT = 600.0  # longest a caller waits for an answer before the request is cancelled
URLS = {"embeddings": "/v1/embeddings", "chat": "/v1/chat/completions"}
_LINE = re.compile(r"^input\[line \d+\]\.body\.?")


@dataclass(frozen=True)
class Started:
    job_id: str
    task_id: str
    model: str
    provider: str | None


def going_price(c: Coordinator, workload: str, model: str,
                only: frozenset[str] | None = None) -> int:
    """The most a request (or a batch) pays a unit of ``model``: ``ProviderIndex
    .going_price`` (``only``: a sealed batch's parties); ``UnknownModel`` when no online
    staked provider (of ``only``) serves it."""
    with c.db.read() as s:
        return _going(c, s, workload, model, only)


def _going(c: Coordinator, s: Session, workload: str, model: str,
           only: frozenset[str] | None = None) -> int:
    top = provider_index.of(c).going_price(s, workload, model, only)
    if top is None:
        raise UnknownModel(f"The model `{model}` is not served by any online provider"
                           f"{' the batch is sealed for' if only is not None else ''}.",
                           field="model")
    return top


def _clean(exc: InvalidInput) -> InvalidInput:
    """``input[line 1].body.messages`` -> ``messages``: the caller sent a body, not a file."""
    field = _LINE.sub("", exc.field or "") or None
    msg = _LINE.sub("", exc.message)
    return type(exc)(msg, field=field)


def start(c: Coordinator, key: keys.KeyInfo, workload: str, body: dict[str, object]) -> Started:
    kind = kinds.get(workload)
    info = catalog.lookup(str(body.get("model", "")), field="model", workload=workload)
    custom_id = f"req-{secrets.token_hex(6)}"  # also seeds sampling (core.kinds.chat)
    line = batch.dumps({"custom_id": custom_id, "method": "POST", "url": URLS[workload],
                        "body": body})
    try:
        spec = kind.parse_spec({"kind": workload, "model": info.name, "max_price": 0,
                                "deadline": DEADLINE})
        (shard,) = kind.split(spec, line)
    except InvalidInput as exc:
        raise _clean(exc) from None
    # A lost request blob (machine crash) costs a failed request, not money: no fsync.
    input_digest = c.blobs.put(line, sync=False)
    shard_digest = c.blobs.put(shard.payload, sync=False)

    def admit(s: Session) -> tuple[Job, Task, str | None]:
        # At the going price, not the highest anyone asks: a provider above it is not
        # offered the request (it waits for one at or below it, as a job would).
        priced = spec.model_copy(update={"max_price": _going(c, s, workload, info.name)})
        max_cost = cost_for_units(shard.max_units, priced.max_price)
        job, (task,) = admission.create(
            c, s, owner=key.account, kind=workload, model=info.name, spec=priced.model_dump(),
            input_digest=input_digest, max_price=priced.max_price,
            shards=[admission.ShardIn(shard_digest, shard.items, shard.max_units)],
            escrow=max_cost, deadline=DEADLINE, key=admission.KeyUse(key.id, "request"),
            event={"via": "v1"})
        return job, task, matching.place_now(c, s, task, job)

    # Re-run from scratch if PostgreSQL picks it as a deadlock's victim: it locks the key's
    # row, the journal's head and (its lease's foreign key) the provider's row.
    try:
        job, task, provider = c.db.run(admit)
    except BaseException:  # refused (no provider, no funds, the cap): nothing names them
        blob_quota.discard_quietly(c, [input_digest, shard_digest])
        raise
    if provider is not None:
        provider_index.of(c).leased(provider)
        c.notifier.wake([provider])
        canaries.plant_after(c, 1, [job])  # after the wake: the lease is on its way
    else:
        c.notifier.kick()  # every provider busy: the matcher places it when one frees up
    c.notifier.published()
    return Started(job.id, task.id, info.name, provider)


def primary_output(c: Coordinator, job_id: str, task_id: str) -> bytes | None:
    """The primary's output once submitted; raises when the job ended without one."""
    with c.db.read() as s:
        digest = s.scalars(select(Assignment.output_digest).where(
            Assignment.task_id == task_id, Assignment.role == Role.PRIMARY,
            Assignment.status.in_((AssignmentStatus.SUBMITTED, AssignmentStatus.ACCEPTED)),
            Assignment.output_digest.is_not(None)).limit(1)).first()
        if digest is None:
            job = s.get(Job, job_id)
            if job is not None and job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise ApiError(502 if job.status == JobStatus.FAILED else 499,
                               f"the request's job {job_id} {job.status}: {job.error}",
                               "server_error", "job_" + job.status)
            return None
    return c.blobs.get(digest)


def mark_streamed(c: Coordinator, job_id: str) -> bool:
    """Record, before the first delta leaves, that the caller is being sent the answer: from
    then on the request is billed like an answered one (``jobs._answered`` refuses its
    owner's cancel), so hanging up, or cancelling, once the text is in hand costs what the
    text is worth. Committed before the delta is sent, so no caller holds text unrecorded.
    True, once recorded."""
    def record(s: Session) -> None:
        # The lease that is streaming: the request counts as answered while it holds
        # (``jobs._answered``), not after it failed without a result.
        streaming = s.scalars(select(Assignment.id).where(
            Assignment.job_id == job_id, Assignment.role == Role.PRIMARY,
            Assignment.status == AssignmentStatus.LEASED)).all()
        c.emit(s, jobs.STREAMED, job_id, assignments=list(streaming))
        # The caller holds text now and the request runs on past its wait, billed when it
        # completes: its lease is no longer held only for the caller's wait
        # (``matching.REQUEST_HOLD``), or a slow honest stream lapsed unpaid at ten
        # minutes, ran again from scratch, and its caller could cancel for a refund.
        # The job's deadline bounds it, as any job's.
        if streaming:
            s.execute(update(Assignment).where(Assignment.id.in_(sorted(streaming)))
                      .values(hold_until=None))

    c.db.run(record)
    return True


def cancel(c: Coordinator, owner: str, job_id: str) -> bool:
    """Cancel the request's job for a refund; False when it runs on: already over, or
    answered (text streamed to the caller: billed, ``jobs._answered``)."""
    try:
        jobs.cancel(c, owner, job_id)
    except DeAIError:
        return False
    return True


async def wait_output(c: Coordinator, started: Started, owner: str,
                      request: Request | None = None, timeout: float = WAIT) -> bytes:
    """Wait for the primary's output; a caller that hangs up cancels the job (refund)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    ev = c.notifier.watch_result(started.task_id)
    try:
        while True:
            ev.clear()
            out = await run_in_threadpool(primary_output, c, started.job_id, started.task_id)
            if out is not None:
                return out
            left = deadline - loop.time()
            if left <= 0 or c.notifier.closing:
                if await run_in_threadpool(cancel, c, owner, started.job_id):
                    raise ApiError(504, "no provider answered in time; the request was "
                                   "cancelled", "server_error", "timeout")
                raise ApiError(504, f"no result in time; part of the answer was already "
                               f"sent, so job {started.job_id} runs on and is billed when "
                               "it completes (GET /api/jobs/{id}/results)", "server_error",
                               "timeout")
            if request is not None and await request.is_disconnected():
                await run_in_threadpool(cancel, c, owner, started.job_id)
                raise ApiError(499, "client closed the request", "server_error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), min(left, 1.0))
    finally:
        c.notifier.unwatch_result(started.task_id)
