"""Jobs and their tasks: submission, results, cancellation and the upkeep loops.

Every decision (what a result, a lost lease, a cancel or a deadline leads to)
is ``core.lifecycle.decide``'s; this module gathers its inputs, and
``effects.apply`` writes its outputs inside the same transaction. Money rules,
applied by the settlement port: submitting escrows the job's maximum cost; an
accepted task pays its provider's price for the task's units from escrow
(minus the fee) into pending earnings, once; a job that ends for any reason
refunds what is left in its escrow.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.orm import Session

from deai.coordinator import (
    access,
    admission,
    blob_quota,
    canaries,
    capacity,
    checkpoints,
    datasets,
    effects,
    hoarding,
    verify,
)
from deai.coordinator.matching import all_provider_states, run_bound, stake_needed
from deai.coordinator.service import Coordinator
from deai.core import auth, kinds, ledger, market, sealed, specs, wire
from deai.core.errors import Conflict, Forbidden, InvalidInput, NoCapacity, NotFound
from deai.core.lifecycle import (
    JOB_ACTIVE,
    SUBJECT_ROLES,
    AssignmentStatus,
    JobStatus,
    Role,
    TaskStatus,
)
from deai.core.lifecycle import decide as D
from deai.core.lifecycle.effects import RefreshJob
from deai.core.money import cost_for_units
from deai.core.verify import policy
from deai.store import db
from deai.store.blobs import digest_of
from deai.store.models import (
    ApiKeyJob,
    Assignment,
    Event,
    Job,
    JobBlob,
    Payout,
    Provider,
    Task,
)

log = logging.getLogger("deai.coordinator.jobs")

_SHARD_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="deai-shards")
_ORM_TASKS = 64  # up to this many shards, tasks are ORM rows as before; beyond, one bulk insert


def quote(c: Coordinator, q: wire.QuoteIn) -> wire.QuoteOut:
    spec = specs.parse_spec(q.spec)
    if any(u <= 0 for u in q.shard_units):
        raise InvalidInput("shard_units: every shard needs at least one unit",
                           field="shard_units")
    with c.db.read() as s:
        providers = all_provider_states(c, s)
        only = None if spec.dataset_id is None else datasets.trusted(s, spec.dataset_id)
    return _quote_out(c, spec, q.shard_units, providers, only)


def _demand(c: Coordinator, spec: specs.JobSpec, shard_units: list[int],
            only: frozenset[str] | None = None,
            exclude: frozenset[str] = frozenset()) -> market.TaskDemand:
    """The job's largest task, as matching sees it: what a quote is for. ``only``: the
    providers a dataset's owner trusts with its rows (``datasets.trusted``); ``exclude``: the
    job's owner, for a job on a dataset (the matcher never places it there). The
    network's verifiers never count: the matcher gives them no primary."""
    exclude = exclude | c.settings.verifiers
    info = kinds.get(spec.kind).model(spec)
    biggest = max(shard_units)
    return market.TaskDemand(id="quote", workload=spec.kind, model=info.name,
                             max_price=spec.max_price, memory_mb=info.memory_mb, units=biggest,
                             stake_needed=stake_needed(
                                 c, cost_for_units(biggest, spec.max_price),
                                 canary=canaries.could_be(c, spec.model_dump(),
                                                          len(shard_units))),
                             only=only, exclude=exclude)


def _quote_out(c: Coordinator, spec: specs.JobSpec, shard_units: list[int],
               providers: list[market.ProviderState], only: frozenset[str] | None = None,
               exclude: frozenset[str] = frozenset()) -> wire.QuoteOut:
    d = _demand(c, spec, shard_units, only, exclude)
    r = market.quote(d, shard_units, providers, c.settings.min_stake)
    # what is escrowed: its checks too, where its owner pays them (``submit``)
    reserve = policy.check_reserve(r.max_cost, len(shard_units), replicate=spec.replicate,
                                   parties_chosen=spec.sealed or only is not None)
    return wire.QuoteOut(
        units=r.units, best_price=r.best_price, estimated_cost=r.estimated_cost,
        max_cost=r.max_cost + reserve,
        eligible=[{"provider": p, "price": pr} for p, pr in r.eligible[:QUOTE_LIST]],
        ineligible=[{"provider": p, "reasons": rs} for p, rs in r.ineligible[:QUOTE_LIST]],
        eligible_count=len(r.eligible), ineligible_count=len(r.ineligible))


QUOTE_LIST = 100  # providers a quote lists on each side, at most (the best first; the
# counts say how many there are): a network's every provider is not one answer's business


def _quote_sealed(c: Coordinator, spec: specs.JobSpec, s: Session, shard_units: list[int],
                  online: bool) -> wire.QuoteOut:
    """A sealed job's quote: only its parties (``spec.sealed_for``) count."""
    return _quote_out(c, spec, shard_units, [p for p in all_provider_states(c, s)
                                             if p.id in spec.sealed_for
                                             and (p.online or not online)])


MAX_NAMED_BLOBS = 1_000  # distinct files a job's commands name by digest, at most


def submit(c: Coordinator, owner: str, body: wire.JobIn, *,
           key: admission.KeyUse | None = None,
           then: Callable[[Session, Job], Any] | None = None) -> wire.JobOut:
    """Split, quote, escrow and record a job in one transaction.

    ``key``: the job is spent through an API key (its cap is held in the same
    transaction); ``then``: more rows to write in that transaction (a /v1 batch).
    """
    spec = specs.parse_spec(body.spec)
    if spec.sealed:  # the client split and encrypted it: admitted from its manifest
        from deai.coordinator import sealed_jobs
        return sealed_jobs.submit(c, owner, body, spec, key=key, then=then,
                                  view=functools.partial(view, c),
                                  quote=functools.partial(_quote_sealed, c, spec))
    kind = kinds.get(spec.kind)
    model = kind.model(spec).name
    if not c.blobs.exists(body.input_digest):
        raise NotFound("input_digest: no uploaded blob has this digest; upload it first",
                       field="input_digest")
    use = None
    if spec.dataset_id is not None:  # planned from the dataset's public summary
        from deai.coordinator import datasets
        use = datasets.prepare(c, spec)
    shards = use.shards if use else kind.split(spec, c.blobs.get(body.input_digest))
    shard_units = [sh.max_units for sh in shards]
    max_cost = sum(cost_for_units(u, spec.max_price) for u in shard_units)
    royalty = use.price if use else 0
    # The shards go to disk (one pack, one fsync for the whole job) while the
    # transaction below checks capacity and escrows; it commits the tasks that name
    # them only once they are durable (the wait at the end of ``create``).
    # The blobs the shards name (a command's files): the owner's to use, and recorded
    # with the job (``JobBlob``), which keeps them after the uploads' records run out.
    named = sorted({d for sh in shards for d in sh.blobs})
    if len(named) > MAX_NAMED_BLOBS:
        raise InvalidInput(f"input.files: {len(named)} distinct files by digest; at most "
                           f"{MAX_NAMED_BLOBS} a job", field="input.files")
    access.require_own_blobs(c, owner, named, "input.files")
    payloads = [sh.payload for sh in shards]
    stored = _SHARD_WRITER.submit(c.blobs.put_many, payloads)
    shard_digests = [digest_of(p) for p in payloads]

    def create(s: Session) -> wire.JobOut:
        if named:  # held until this commits, first (``store.db``: blob holds before rows)
            blob_quota.keep(c, s, named, "input.files")
        only, mine = None, frozenset[str]()
        if use is not None:  # its dataset before the escrow locks the journal's head
            datasets.lock(s, use.dataset_id)
            only, mine = datasets.trusted(s, use.dataset_id), frozenset((owner,))
        # One eligible provider admits the job (read from the offers, a few at a time);
        # every provider is read, for the reasons in the refusal, only when none is.
        if not capacity.any_eligible(c, s, _demand(c, spec, shard_units, only, mine)):
            q = _quote_out(c, spec, shard_units, all_provider_states(c, s), only, mine)
            if not q.eligible:
                reasons = {p["provider"][:12]: p["reasons"] for p in q.ineligible}
                why = "; ".join(f"{k}: {', '.join(v)}" for k, v in reasons.items()) \
                    or "no provider is registered"
                raise NoCapacity(f"no provider can run this job ({why})", field="spec",
                                 providers=q.ineligible)
        # its replicas too, where its owner pays them (``policy.owner_pays_check``)
        reserve = policy.check_reserve(max_cost, len(shards), replicate=spec.replicate,
                                       parties_chosen=only is not None)
        job, _ = admission.create(
            c, s, owner=owner, kind=spec.kind, model=model, spec=spec.model_dump(),
            input_digest=body.input_digest, max_price=spec.max_price,
            shards=[admission.ShardIn(d, sh.items, sh.max_units)
                    for d, sh in zip(shard_digests, shards, strict=True)],
            escrow=max_cost + royalty + reserve, deadline=spec.deadline, key=key,
            want_tasks=len(shards) <= _ORM_TASKS, check_budget=reserve or None)
        if use is not None:  # terms checked again under lock; the royalty from escrow
            datasets.record_use(c, s, job, spec, use)
        if named:
            db.insert_many(s, cast(Table, JobBlob.__table__),
                           [{"job_id": job.id, "digest": d} for d in named])
        if then is not None:
            then(s, job)
        stored.result()  # raises if the shards could not be stored: nothing commits
        return _submitted_out(job, len(shards))

    out = c.db.run(create)
    c.notifier.kick()
    c.notifier.published()
    return out


def _submitted_out(job: Job, tasks: int) -> wire.JobOut:
    """A job as it commits: every task queued, nothing paid or placed yet (what
    ``_job_out`` would read back, without reading)."""
    return wire.JobOut(
        id=job.id, owner=job.owner, status=job.status, spec=job.spec,
        created_at=job.created_at, deadline_at=job.deadline_at, items=job.items,
        units=job.units, tasks={TaskStatus.QUEUED: tasks}, escrow=job.escrow, cost=job.cost,
        refunded=job.refunded, providers={})


def view(c: Coordinator, job_id: str) -> wire.JobOut:
    with c.db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="job")
        return _job_out(s, job, c)


def _job_out(s: Session, job: Job, c: Coordinator | None = None) -> wire.JobOut:
    counts: dict[str, int] = {}
    auditing = 0
    audit = (Task.pending_role == Role.AUDIT.value).label("audit")
    for st, need, n in s.execute(select(Task.status, audit, func.count())
                                 .where(Task.job_id == job.id).group_by(Task.status, audit)):
        counts[st] = counts.get(st, 0) + int(n)  # counted by the database, not row by row
        auditing += int(n) if need else 0
    final_at = None
    if job.finished_at is not None and not auditing and c is not None and s.scalar(
            live_audits().where(Assignment.job_id == job.id).limit(1)) is None:
        last = s.scalar(select(func.max(Payout.release_at)).where(Payout.job_id == job.id))
        final_at = max(job.finished_at + c.settings.challenge_window, last or 0.0)
    corrected = s.scalar(select(func.count()).select_from(Event).where(
        Event.kind == "result_corrected", Event.of_subject(job.id))) or 0
    providers: dict[str, int] = {}
    for pid in s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id == job.id, Assignment.status == AssignmentStatus.ACCEPTED)):
        providers[pid] = providers.get(pid, 0) + 1
    return wire.JobOut(
        id=job.id, owner=job.owner, status=job.status, spec=job.spec, created_at=job.created_at,
        deadline_at=job.deadline_at, finished_at=job.finished_at, error=job.error,
        items=job.items, units=job.units, tasks=counts, escrow=job.escrow, cost=job.cost,
        refunded=job.refunded, providers=providers, output_digest=job.output_digest,
        final=final_at is not None and c is not None and final_at <= c.now(),
        final_at=final_at, corrected=int(corrected))


def list_jobs(c: Coordinator, owner: str | None, limit: int) -> list[wire.JobOut]:
    with c.db.read() as s:
        # Canaries are listed like any job (publicly, nothing tells them apart).
        q = (select(Job).order_by(Job.created_at.desc())
             .limit(max(1, min(limit, 500))))
        if owner:
            q = q.where(Job.owner == owner)
        return [_job_out(s, j, c) for j in s.scalars(q)]


def results(c: Coordinator, job_id: str) -> bytes:
    with c.db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="job")
        if job.status != JobStatus.COMPLETED or job.output_digest is None:
            raise Conflict(f"job {job_id} is {job.status}; results exist once it completes",
                           status=job.status)
        digest = job.output_digest
    return c.blobs.get(digest)


def cancel(c: Coordinator, owner: str, job_id: str) -> wire.JobOut:
    def body(s: Session) -> None:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id}", field="job")
        if job.owner != owner:
            raise Forbidden("only the job's owner may cancel it")
        if job.status not in JOB_ACTIVE:
            raise Conflict(f"job {job_id} is already {job.status}", status=job.status)
        if _answered(s, job_id):
            raise Conflict(f"job {job_id} answered its /v1 request already (a result or "
                           "streamed text its caller may hold): it runs on and is billed, "
                           "and is refunded if a check finds the result wrong",
                           status=job.status)
        effects.apply(c, s, job, None, D.on_cancel(JobStatus(job.status)))

    c.db.run(body)
    c.notifier.published()
    return view(c, job_id)


STREAMED = "answer_streamed"  # an event: a /v1 stream relayed text of this job to its caller


def _answered(s: Session, job_id: str) -> bool:
    """Whether ``job_id`` is an interactive /v1 request whose caller may hold its answer, so
    that cancelling it would refund the whole escrow and leave the provider who did the
    work unpaid: a primary's output that was not found wrong (``REJECTED``): submitted,
    accepted, or expired once its required check could not be placed
    (``openai.gateway.primary_output`` hands it back before the checks end), or text
    relayed to a stream (``STREAMED``) unless a primary's result was found wrong."""
    if s.scalar(select(ApiKeyJob.job_id).where(ApiKeyJob.job_id == job_id,
                                               ApiKeyJob.source == "request")) is None:
        return False
    primary = (Assignment.job_id == job_id, Assignment.role == Role.PRIMARY,
               Assignment.output_digest.is_not(None))
    if s.scalar(select(Assignment.id).where(
            *primary, Assignment.status != AssignmentStatus.REJECTED).limit(1)) is not None:
        return True
    # Streamed text counts while the lease that streamed it may still be paid for it: one
    # that failed or lapsed without a result leaves the caller a fragment, and the job
    # (run again on another provider for nobody) may be cancelled for a refund.
    streamers = {aid for body in s.scalars(select(Event.body).where(
        Event.of_subject(job_id), Event.kind == STREAMED))
        for aid in (body or {}).get("assignments", [])}
    return bool(streamers) and s.scalar(select(Assignment.id).where(
        Assignment.id.in_(streamers), Assignment.status.in_(
            (AssignmentStatus.LEASED, AssignmentStatus.SUBMITTED,
             AssignmentStatus.ACCEPTED))).limit(1)) is not None


# --- results from providers -----------------------------------------------------------------

def submit_result(c: Coordinator, pid: str, assignment_id: str,
                  r: wire.ResultIn) -> wire.ResultOut:
    c.check_signature(pid, auth.result_message(assignment_id, r.output_digest, r.units),
                      r.signature)
    # The lease before the digest: a made-up assignment, or another's, answers the same
    # whatever digest it names; and no bytes are stored for a lease that is not the
    # caller's, live.
    with c.db.read() as s:
        c.live_lease(s, pid, assignment_id, lock=False)
    inline = None
    if r.output_b64 is not None:
        try:
            inline = base64.b64decode(r.output_b64, validate=True)
        except ValueError:
            raise InvalidInput("output_b64: not base64", field="output_b64") from None
        if hashlib.sha256(inline).hexdigest() != r.output_digest:
            raise InvalidInput("output_b64: its sha256 is not output_digest", field="output_b64")
        c.blobs.put(inline, sync=False)  # the commit below is what makes the result count
    else:  # its own upload, never another account's blob; stored or not, the same 404
        access.require_own_blobs(c, pid, [r.output_digest], "output_digest")

    def body(s: Session) -> tuple[str, str, int]:
        if inline is not None:  # kept from a discard of the same bytes (another's upload
            blob_quota.hold(c, s, inline)  # that ran out) until the row names them
        a, task, job = _locked(c, s, pid, assignment_id)
        a.submitted_at, a.output_digest = c.now(), r.output_digest
        a.units, a.seconds, a.signature = r.units, r.seconds, r.signature
        problem = datasets.require_key(s, job, a) or _metering_problem(c, a, task, job,
                                                                      r.units)
        if problem is not None:
            todo = D.on_rejected(effects.ctx(c, job, task), verify.party(a), problem)
        else:
            todo = verify.on_result(c, s, a, task, job)
        before = c.settlement.balance(s, ledger.pending(pid))
        effects.apply(c, s, job, task, [*todo, RefreshJob()])
        paid = c.settlement.balance(s, ledger.pending(pid)) - before
        return task.id, D.outcome(todo, a.id), paid

    try:
        task_id, outcome, paid = c.db.run(body)
    except Exception:
        if inline is not None:  # refused after all (the lease ended meanwhile): not kept
            blob_quota.discard_quietly(c, [r.output_digest])  # unless something uses them
        raise
    c.notifier.result_arrived(task_id)  # an interactive caller may be waiting (/v1)
    c.notifier.kick()
    c.notifier.published()
    return wire.ResultOut(status=outcome, paid=max(0, paid))


def _locked(c: Coordinator, s: Session, pid: str,
            assignment_id: str) -> tuple[Assignment, Task, Job]:
    """The live lease ``pid`` holds, with its task and job, locked in the documented
    order (job → task → assignment): the unlocked read only learns which rows."""
    row = s.execute(select(Assignment.job_id, Assignment.task_id)
                    .where(Assignment.id == assignment_id)).first()
    if row is None:
        raise NotFound(f"no assignment {assignment_id}", field="assignment")
    job = s.get(Job, row.job_id, with_for_update=True)
    task = s.get(Task, row.task_id, with_for_update=True)
    assert task is not None and job is not None
    return c.live_lease(s, pid, assignment_id), task, job


def _metering_problem(c: Coordinator, a: Assignment, task: Task, job: Job,
                      claimed: int) -> str | None:
    """Why the output does not match the result's claim, or None when it does."""
    if sealed.is_sealed(job.spec):  # ciphertext: the envelope states its units
        from deai.coordinator import sealed_jobs
        return sealed_jobs.metering_problem(c, a, task, claimed)
    kind = kinds.get(job.kind)
    spec = kind.parse_spec(job.spec)
    try:
        payload = c.blobs.get(a.input_digest or task.input_digest)
        output = c.blobs.get(a.output_digest or "")
        metered = (kind.meter(spec, payload, output) if a.input_digest is None
                   else kind.meter_check(spec, payload, output))
    except InvalidInput as exc:
        return exc.message
    if claimed != metered:
        return f"units: the output shows {metered}, the result claims {claimed}"
    return None


def report_failure(c: Coordinator, pid: str, assignment_id: str, error: str) -> wire.ResultOut:
    def body(s: Session) -> None:
        a, task, job = _locked(c, s, pid, assignment_id)
        effects.apply(c, s, job, task, D.on_failed(effects.ctx(c, job, task), verify.party(a),
                                                   error))

    c.db.run(body)
    c.notifier.kick()
    c.notifier.published()
    return wire.ResultOut(status=AssignmentStatus.FAILED.value)


HOLD_PASSED = "held past its hold"  # a lease that reached a hold no declared bound set


def expire_leases(c: Coordinator) -> int:
    """Expire leases past their deadline or held by providers that stopped heartbeating.

    Candidates come from a plain read; each is then expired in its own transaction
    that locks job → task → assignment and checks again that the lease is still
    live and still lapsed (a result may have arrived in between).
    """
    now = c.now()
    stale = now - c.settings.heartbeat_timeout
    with c.db.read() as s:
        rows = s.execute(select(Assignment.id, Assignment.job_id, Assignment.task_id)
                         .join(Provider, Provider.id == Assignment.provider_id)
                         .where(Assignment.status == AssignmentStatus.LEASED,
                                or_(Assignment.lease_deadline < now,
                                    Provider.last_seen < stale))
                         .order_by(Assignment.job_id, Assignment.task_id)).all()

    def expire(s: Session, aid: str, job_id: str, task_id: str) -> bool:
        job = s.get(Job, job_id, with_for_update=True)
        task = s.get(Task, task_id, with_for_update=True)
        a = s.get(Assignment, aid, with_for_update=True)
        assert job is not None and task is not None and a is not None
        if a.status != AssignmentStatus.LEASED:
            return False
        last_seen = s.scalar(select(Provider.last_seen).where(Provider.id == a.provider_id))
        if (a.lease_deadline < now and a.hold_until is not None
                and a.lease_deadline >= a.hold_until and run_bound(job) is None):
            # Held as long as its hold allows, on a job whose spec bounds no run: the task
            # waits no longer and goes to someone else, at no charge, for a check's hold
            # then follows the checked result's claimed run, which a colluding primary can
            # make short (a long chat shard, a training run). A hold a declared bound set
            # (a command's wall-clock limit: ``matching.check_hold``, ``primary_hold``)
            # covers any honest run, and reaching it is hoarding, below.
            why = HOLD_PASSED
        elif a.lease_deadline < now and a.delivered and (last_seen or 0.0) >= stale:
            why = hoarding.LAPSE  # handed over, alive, and sat on it: that costs
            hoarding.on_lapse(c, s, a, job.kind)
        elif a.lease_deadline < now:
            why = "lease deadline passed"
        elif (last_seen or 0.0) < stale:
            why = "provider stopped heartbeating"
        else:
            return False
        effects.apply(c, s, job, task, D.on_expired(effects.ctx(c, job, task),
                                                    verify.party(a), why))
        return True

    n = 0
    for r in rows:  # each alone: one that fails is logged, and the others still expire
        try:
            n += c.db.run(functools.partial(_expire_row, expire, r))
        except Exception:
            log.exception("expiring lease %s failed and was skipped", r.id)
    if n:
        c.notifier.kick()
        c.notifier.published()
    return n


def enforce_deadlines(c: Coordinator) -> int:
    def body(s: Session) -> int:
        jobs = s.scalars(select(Job).where(Job.status.in_(JOB_ACTIVE),
                                           Job.deadline_at < c.now())
                         .order_by(Job.id).with_for_update(skip_locked=True)).all()
        for job in jobs:
            if _answered(s, job.id):
                _accept_served(c, s, job)
            if job.status in JOB_ACTIVE:
                effects.apply(c, s, job, None, D.on_deadline(JobStatus(job.status)))
        return len(jobs)

    n = c.db.run(body)
    if n:
        c.notifier.published()
    return n


def _accept_served(c: Coordinator, s: Session, job: Job) -> None:
    """A /v1 request past its deadline whose served result still waits for a check nobody
    could place: the result stands, marked unverified (``decide.on_check_abandoned``'s
    ``accept_unverified``), and is paid like any; its look-back window still applies.
    Before, the deadline refunded the whole escrow: the caller kept the answer free and
    the provider who made it was never paid."""
    for task in s.scalars(select(Task).where(Task.job_id == job.id,
                                             Task.status == TaskStatus.VERIFYING)
                          .order_by(Task.id).with_for_update()):
        submitted = s.scalars(select(Assignment).where(
            Assignment.task_id == task.id,
            Assignment.status == AssignmentStatus.SUBMITTED)).all()
        subject = next((a for a in submitted if a.role in SUBJECT_ROLES), None)
        if subject is None:
            continue
        effects.apply(c, s, job, task, D.on_check_abandoned(
            effects.ctx(c, job, task), Role.REPLICA, verify.party(subject),
            [verify.party(a) for a in submitted], required=True, accept_unverified=True,
            served=True))


def give_up_checks(c: Coordinator) -> int:
    """Checks nobody could place in time (``decide.on_check_abandoned`` says what follows)."""
    cutoff = c.now() - c.settings.verify_timeout
    def body(s: Session) -> int:
        stuck = s.execute(select(Task, Job).join(Job, Job.id == Task.job_id).where(
            Task.status == TaskStatus.VERIFYING, Task.pending_role.is_not(None),
            Task.updated_at < cutoff).order_by(Job.id, Task.id)
            .with_for_update(skip_locked=True, of=[Job, Task])).all()

        def give_up(row: Any) -> None:
            task, job = row
            submitted = s.scalars(select(Assignment).where(
                Assignment.task_id == task.id,
                Assignment.status == AssignmentStatus.SUBMITTED)).all()
            subject = next((a for a in submitted if a.role in SUBJECT_ROLES), None)
            required = subject is not None and verify.must_check(c, s, subject, job)
            spec = kinds.get(job.kind).parse_spec(job.spec)
            effects.apply(c, s, job, task, D.on_check_abandoned(
                effects.ctx(c, job, task), Role(task.pending_role or Role.REPLICA),
                verify.party(subject) if subject is not None else None,
                [verify.party(a) for a in submitted], required=required,
                accept_unverified=spec.accept_unverified,
                served=subject is not None and _answered(s, job.id)))

        failed = db.each_alone(s, stuck, give_up,
                               what=lambda r: f"giving up the check of task {r[0].id}")
        return len(stuck) - len(failed)

    n = c.db.run(body)
    if n:
        c.notifier.kick()
        c.notifier.published()
    return n


def live_audits() -> Any:
    """The tasks (``Assignment.task_id``) whose audit is leased or submitted and not yet
    decided. ``decide.on_placed`` clears a task's ``pending_role`` once its audit is
    leased, so ``pending_role`` alone would let a result's earnings go, and its job read
    final, while a verifier is still re-running it."""
    return select(Assignment.task_id).where(
        Assignment.role == Role.AUDIT,
        Assignment.status.in_((AssignmentStatus.LEASED, AssignmentStatus.SUBMITTED)))


def release_earnings(c: Coordinator) -> int:
    """Move pending earnings past their challenge window to the provider's balance."""
    def body(s: Session) -> int:
        # A result still waiting for its audit, or being audited, keeps its earnings until
        # the audit says (docs/verification.md, "Audits of agreements").
        audited = select(Task.id).where(Task.pending_role == Role.AUDIT)
        due = s.scalars(select(Payout).where(Payout.released.is_(False),
                                             Payout.release_at <= c.now(),
                                             Payout.task_id.not_in(audited),
                                             Payout.task_id.not_in(live_audits()))
                        .order_by(Payout.id).with_for_update(skip_locked=True)).all()
        by_provider: dict[str, list[Payout]] = {}
        for p in due:
            by_provider.setdefault(p.provider_id, []).append(p)

        def release(pid: str) -> None:
            rows = by_provider[pid]
            amount = sum(p.amount for p in rows)
            c.settlement.release(s, pid, amount, [p.id for p in rows])
            for p in rows:
                p.released = True
            c.emit(s, "earnings_released", pid, amount=amount)

        failed = db.each_alone(s, sorted(by_provider), release,
                               what=lambda pid: f"releasing the earnings of {pid}")
        return len(due) - sum(len(by_provider[pid]) for pid in failed)

    n = c.db.run(body)
    if n:
        c.notifier.published()
    return n


def deliver(c: Coordinator, pid: str, ack: list[str] | None = None, *,
            woken: bool = False) -> list[wire.AssignmentOut]:
    """Hand a provider the leases placed on it that it has not acknowledged.

    ``ack`` is the ids the provider received from its previous poll: those count
    as delivered from now on. Every other live lease of the provider that is not
    delivered is handed out (again) on each poll, so an answer lost on the way
    (a client timeout, a coordinator killed after its commit) is redelivered at
    the provider's next poll. ``ack=None`` is a client that predates
    acknowledgements: what it is handed counts as delivered at once. ``woken``: the
    matcher has just placed work on this provider, so the read that tells an idle poll
    there is nothing (most polls) is skipped.

    Liveness is ``coordinator.liveness``'s alone: a poll does not refresh
    ``Provider.last_seen``. Locks: assignments only (ascending id).
    """
    now = c.now()
    if not ack and not woken:  # most polls find nothing: a read, not a write
        # transaction, tells them
        with c.db.read() as s:
            c.require_provider(s, pid)
            if s.scalar(select(Assignment.id).where(
                    Assignment.provider_id == pid, Assignment.status == AssignmentStatus.LEASED,
                    Assignment.delivered.is_(False)).limit(1)) is None:
                return []

    def body(s: Session) -> list[wire.AssignmentOut]:
        if ack:
            s.execute(update(Assignment).where(
                Assignment.id.in_(sorted(set(ack))[:1000]), Assignment.provider_id == pid,
                Assignment.status == AssignmentStatus.LEASED).values(delivered=True))
        rows = s.execute(select(Assignment, Task, Job)
                         .join(Task, Task.id == Assignment.task_id)
                         .join(Job, Job.id == Assignment.job_id)
                         .where(Assignment.provider_id == pid,
                                Assignment.status == AssignmentStatus.LEASED,
                                Assignment.delivered.is_(False))
                         .order_by(Assignment.id)
                         .with_for_update(skip_locked=True, of=Assignment)).all()
        if not rows:  # nothing for it; a key with leases is a provider's (one read less)
            c.require_provider(s, pid)
        out = []
        for a, t, j in rows:
            a.delivered = ack is None
            a.lease_deadline = min(now + c.settings.lease_ttl, a.hold_until or math.inf)
            digest = a.input_digest or t.input_digest
            inline = None
            if c.blobs.size(digest) <= wire.INLINE_MAX:
                inline = base64.b64encode(c.blobs.get(digest)).decode()
            out.append(wire.AssignmentOut(
                id=a.id, task_id=t.id, job_id=j.id, workload=j.kind, model=j.model,
                input_digest=digest, units=t.units, price=a.price,
                lease_deadline=a.lease_deadline, resume=checkpoints.resume_for(s, a, j.kind),
                input_b64=inline))
        return out

    return c.db.run(body)


def recover(c: Coordinator, served_for: float = 0.0) -> None:
    """A new leader's first act; after an outage of the whole fleet, it gives providers a
    heartbeat's grace before declaring them gone.

    The coordinator was down, not they: providers seen shortly before are seen now, and
    leases that lapsed while it was away are extended so work finished during the outage
    can still be submitted (event ``coordinator_started``). An outage is this replica
    having just started (``served_for``, seconds since its first campaign, under the
    heartbeat timeout: a restart, the only case on SQLite) or no replica having reached
    the database for longer than a provider's heartbeat interval (``leader.silence``). A
    takeover on a live fleet (replicas served and took heartbeats all along) changes no
    provider's liveness and no deadline: granted there, the grace kept dead providers
    online and moved deadlines for as long as leadership changed hands every few seconds.
    """
    from deai.coordinator.leader import silence

    now = c.now()
    timeout = c.settings.heartbeat_timeout

    def body(s: Session) -> None:
        quiet = silence(s)
        outage = served_for < timeout or quiet is None or quiet > timeout / 3
        if not outage:
            log.info("leader takeover on a live fleet (replicas silent %.1f s): no grace",
                     quiet)
        else:
            last_alive = max(s.scalar(select(func.max(Event.ts))) or 0.0,
                             s.scalar(select(func.max(Provider.last_seen))) or 0.0)
            # The leases, then their providers (``store.db``'s order: a result locks its
            # assignment, then its provider), each one statement.
            until = now + c.settings.lease_ttl
            s.execute(update(Assignment).where(Assignment.status == AssignmentStatus.LEASED,
                                               Assignment.lease_deadline < until)
                      .values(lease_deadline=until))
            s.execute(update(Provider).where(
                Provider.last_seen >= last_alive - timeout,
                Provider.last_seen < now).values(last_seen=now))
            from deai.coordinator import leases  # the hourly leases' loop: the same grace
            leases.resumed(c, s)
        if c.settings.devnet and c.settings.treasury_grant > 0 and s.scalar(
                select(func.count()).select_from(Event).where(
                    Event.kind == "treasury_granted")) == 0:
            c.settlement.grant(s, c.settings.treasury_grant, "devnet genesis")
            c.emit(s, "treasury_granted", "", amount=c.settings.treasury_grant)
        if outage:
            c.emit(s, "coordinator_started", "")

    c.db.run(body)  # a leader's first act: re-run, not given up, if it loses a deadlock


def _expire_row(expire: Callable[[Session, str, str, str], bool], r: Any, s: Session) -> bool:
    return expire(s, r.id, r.job_id, r.task_id)
