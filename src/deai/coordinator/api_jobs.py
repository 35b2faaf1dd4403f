"""Routes for providers, their assignments, and jobs (native API under /api).

Jobs are private: listing, reading and fetching the results of a job take a
request signed by its owner (``access``); anyone else, signed or not, gets the
404 of a job that does not exist. A job may only name an input its owner may
read. The explorer shows every job's public face instead.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from deai.coordinator import access, admission, idempotency, jobs, liveness
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.openai import keys as api_keys
from deai.coordinator.public_reads import public_read
from deai.coordinator.service import MAX_PAGE, Coordinator
from deai.core import wire
from deai.core.diversity import client_address

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]
JobId = Annotated[str, Path(min_length=1, max_length=40)]
ProviderId = Annotated[str, Path(min_length=1, max_length=64)]
AssignmentId = Annotated[str, Path(min_length=1, max_length=40)]


@router.post("/providers/register", response_model=wire.ProviderOut)
def register(body: wire.RegisterIn, c: C, me: Signer, request: Request) -> wire.ProviderOut:
    address = client_address(request.client.host if request.client else None,
                             request.headers.get("x-forwarded-for"),
                             c.settings.trust_forwarded_for)
    return c.register(me, body, address=address)


@router.post("/providers/bond", response_model=wire.BalanceOut)
def bond(body: wire.BondIn, c: C, me: Signer) -> wire.BalanceOut:
    return c.bond(me, body.amount)


@router.post("/providers/heartbeat", response_model=wire.HeartbeatOut)
async def heartbeat(body: wire.HeartbeatIn, c: C,
                    beat: liveness.SignedBeat) -> wire.HeartbeatOut:
    """No nonce row: the signed timestamp must pass the provider's last (``liveness``).
    A beat that reads nothing (a known provider, no leases to confirm) is answered on the
    event loop; the thread pool's hop would cost more than the beat."""
    live = liveness.of(c)
    if live.reads(beat.account, body.running):
        return await run_in_threadpool(live.heartbeat, beat.account, beat.stamp, body.running)
    return live.heartbeat(beat.account, beat.stamp, body.running)


@router.post("/providers/heartbeats", response_model=wire.HeartbeatsOut)
def heartbeats(body: wire.HeartbeatsIn, c: C) -> wire.HeartbeatsOut:
    """Up to 500 providers' heartbeats in one request, each signed by its own provider
    exactly as ``/providers/heartbeat`` takes it: a farm's gateway or any relay forwards
    them, and can delay or drop a beat but not forge, alter or replay one. The request
    itself needs no signature; each beat is answered on its own (``error`` or ``drop``)."""
    return wire.HeartbeatsOut(results=liveness.of(c).relayed(body.beats))


RECHECK_S = 5.0  # a waiting poll reads the database at least this often, woken or not


@router.post("/providers/poll", response_model=wire.PollOut)
async def poll(body: wire.PollIn, c: C, me: Signer, request: Request) -> wire.PollOut:
    """Long-poll for work: answers as soon as a lease is placed on the caller, or after
    ``wait`` seconds with nothing. ``ack``: the ids the previous answer carried
    (``jobs.deliver``). The wait ends as soon as the client goes away (checked every
    second), and a poll never counts as a sign of life: heartbeats do. The database is
    read again when the matcher wakes this provider, and every ``RECHECK_S`` in case a
    wake-up was lost (they are hints), not every second: hundreds of waiting polls
    re-reading each second took the core the matcher needs.

    One live poll per provider key (per replica): a newer one ends the older with an
    empty answer within a second (after the older has taken its ``ack``), and only a
    poll that found none live asks the matcher to run. A provider polls in one loop; a
    thousand concurrent polls of one free key each kicked the matcher and re-read the
    database."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait
    live = _live_polls.setdefault(c, {})
    mine = object()
    if live.setdefault(me, mine) is mine:
        c.notifier.kick()
    live[me] = mine  # whichever poll was live is now superseded
    ack = body.ack
    check, woken, checked = True, False, loop.time()
    try:
        while True:
            if check:
                got = await run_in_threadpool(functools.partial(jobs.deliver, c, me, ack,
                                                                woken=woken))
                ack, checked = None if ack is None else [], loop.time()  # acknowledged once
                if got:
                    return wire.PollOut(assignments=got)
            left = deadline - loop.time()
            if left <= 0 or c.notifier.closing or live.get(me) is not mine:
                return wire.PollOut(assignments=[])
            woken = await c.notifier.wait_provider(me, min(left, 1.0))
            if await request.is_disconnected() or live.get(me) is not mine:
                return wire.PollOut(assignments=[])
            check = woken or loop.time() - checked >= RECHECK_S or loop.time() >= deadline
    finally:
        if live.get(me) is mine:
            del live[me]


# The live long-poll of each provider key, by coordinator (touched on the event loop only).
_live_polls: weakref.WeakKeyDictionary[Coordinator, dict[str, object]] = (
    weakref.WeakKeyDictionary())


@router.get("/providers", response_model=wire.ProvidersOut,
            dependencies=[Depends(public_read)])
def providers(c: C, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
              after: Annotated[str | None, Query(max_length=64)] = None) -> wire.ProvidersOut:
    """Providers by id, ``limit`` at a time: follow ``next`` (as ``after``) to the end."""
    return c.providers_page(limit, after)


@router.get("/providers/{provider_id}", response_model=wire.ProviderOut)
def provider(provider_id: ProviderId, c: C) -> wire.ProviderOut:
    return c.provider(provider_id)


@router.post("/assignments/{assignment_id}/result", response_model=wire.ResultOut)
def result(assignment_id: AssignmentId, body: wire.ResultIn, c: C, me: Signer) -> wire.ResultOut:
    return jobs.submit_result(c, me, assignment_id, body)


@router.post("/assignments/{assignment_id}/fail", response_model=wire.ResultOut)
def fail(assignment_id: AssignmentId, body: wire.FailIn, c: C, me: Signer) -> wire.ResultOut:
    return jobs.report_failure(c, me, assignment_id, body.error)


@router.post("/market/quote", response_model=wire.QuoteOut)
def quote(body: wire.QuoteIn, c: C) -> wire.QuoteOut:
    return jobs.quote(c, body)


async def spender(request: Request) -> tuple[str, admission.KeyUse | None]:
    """Who pays for a job: the signer, or the account behind ``Authorization: Bearer``
    (then the key's spend cap holds, as on /v1)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        c: Coordinator = request.app.state.coordinator
        key = await run_in_threadpool(api_keys.authenticate, c, token.strip())
        return key.account, admission.KeyUse(key.id, "job")
    return await signer(request), None


@router.post("/jobs", response_model=wire.JobOut, status_code=201)
def submit(body: wire.JobIn, c: C,
           who: Annotated[tuple[str, admission.KeyUse | None], Depends(spender)],
           request: Request, response: Response) -> wire.JobOut:
    """``Idempotency-Key``: a retry with the same key gets the same job, escrowed once
    (``idempotency``)."""
    me, key = who
    claim = idempotency.claim(request, me, "POST /api/jobs",
                              idempotency.canonical(body.model_dump(mode="json")))

    def create(hook: idempotency.Hook | None) -> wire.JobOut:
        access.require_own_blobs(c, me, [body.input_digest], "input_digest")
        return jobs.submit(c, me, body, key=key, then=None if hook is None else (
            lambda s, job: hook(s, job.id)))

    out, replayed = idempotency.once(c, claim, create, lambda job_id: jobs.view(c, job_id))
    if replayed:
        response.headers[idempotency.REPLAYED] = "true"
    return out


@router.get("/jobs", response_model=dict[str, list[wire.JobOut]])
def list_jobs(c: C, me: Signer,
              owner: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, list[wire.JobOut]]:
    """The signer's own jobs, newest first (``owner``, if given, must be the signer)."""
    if owner is not None and owner != me:
        return {"jobs": []}
    return {"jobs": jobs.list_jobs(c, me, limit)}


@router.get("/jobs/{job_id}", response_model=wire.JobOut)
def job(job_id: JobId, c: C, me: Signer) -> wire.JobOut:
    access.require_job(c, me, job_id)
    return jobs.view(c, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=wire.JobOut)
def cancel(job_id: JobId, c: C, me: Signer) -> wire.JobOut:
    return jobs.cancel(c, me, job_id)


@router.get("/jobs/{job_id}/results")
def results(job_id: JobId, c: C, me: Signer) -> Response:
    access.require_job(c, me, job_id)
    return Response(jobs.results(c, job_id), media_type="application/jsonl")
