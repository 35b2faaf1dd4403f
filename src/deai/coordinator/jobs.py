"""Jobs and their tasks: submission with escrow, results, settlement, failure.

Money rules, each applied inside the same transaction as the state change it
belongs to: submitting escrows the job's maximum cost; an accepted task pays
its provider's price for the task's units from escrow (minus the fee) into
pending earnings, once; a job that ends for any reason refunds what is left in
its escrow.
"""

from __future__ import annotations

import base64
import hashlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deai.coordinator import checkpoints, verify
from deai.coordinator.matching import all_provider_states, stake_needed
from deai.coordinator.service import Coordinator, new_id
from deai.core import auth, kinds, ledger, market, specs, wire
from deai.core.errors import Conflict, Forbidden, InvalidInput, NoCapacity, NotFound
from deai.core.money import cost_for_units
from deai.store import journal
from deai.store.models import Assignment, Event, Job, Payout, Provider, Task

ACTIVE = ("pending", "running", "verifying")


def quote(c: Coordinator, q: wire.QuoteIn) -> wire.QuoteOut:
    spec = specs.parse_spec(q.spec)
    if any(u <= 0 for u in q.shard_units):
        raise InvalidInput("shard_units: every shard needs at least one unit",
                           field="shard_units")
    with c.db.read() as s:
        providers = all_provider_states(c, s)
    return _quote_out(c, spec, q.shard_units, providers)


def _quote_out(c: Coordinator, spec: specs.JobSpec, shard_units: list[int],
               providers: list[market.ProviderState]) -> wire.QuoteOut:
    info = kinds.get(spec.kind).model(spec)
    biggest = max(shard_units)
    d = market.TaskDemand(id="quote", workload=spec.kind, model=info.name,
                          max_price=spec.max_price, memory_mb=info.memory_mb, units=biggest,
                          stake_needed=stake_needed(c, cost_for_units(biggest,
                                                                      spec.max_price)))
    r = market.quote(d, shard_units, providers, c.settings.min_stake)
    return wire.QuoteOut(
        units=r.units, best_price=r.best_price, estimated_cost=r.estimated_cost,
        max_cost=r.max_cost,
        eligible=[{"provider": p, "price": pr} for p, pr in r.eligible],
        ineligible=[{"provider": p, "reasons": rs} for p, rs in r.ineligible])


def submit(c: Coordinator, owner: str, body: wire.JobIn) -> wire.JobOut:
    spec = specs.parse_spec(body.spec)
    kind = kinds.get(spec.kind)
    model = kind.model(spec).name
    if not c.blobs.exists(body.input_digest):
        raise NotFound("input_digest: no uploaded blob has this digest; upload it first",
                       field="input_digest")
    shards = kind.split(spec, c.blobs.get(body.input_digest))
    shard_units = [sh.max_units for sh in shards]
    max_cost = sum(cost_for_units(u, spec.max_price) for u in shard_units)
    shard_digests = [c.blobs.put(sh.payload) for sh in shards]
    now = c.now()
    job_id = new_id("job")
    with c.db.write() as s:
        q = _quote_out(c, spec, shard_units, all_provider_states(c, s))
        if not q.eligible:
            reasons = {p["provider"][:12]: p["reasons"] for p in q.ineligible}
            why = "; ".join(f"{k}: {', '.join(v)}" for k, v in reasons.items()) \
                or "no provider is registered"
            raise NoCapacity(f"no provider can run this job ({why})", field="spec",
                             providers=q.ineligible)
        if max_cost > 0:
            journal.append(s, ledger.escrow_job(owner, job_id, max_cost), c.clock)
        s.add(Job(id=job_id, owner=owner, status="pending", kind=spec.kind, model=model,
                  spec=spec.model_dump(), input_digest=body.input_digest,
                  items=sum(sh.items for sh in shards),
                  units=sum(shard_units), max_price=spec.max_price, escrow=max_cost, cost=0,
                  refunded=0, created_at=now, deadline_at=now + spec.deadline))
        s.flush()
        for i, (dg, sh) in enumerate(zip(shard_digests, shards, strict=True)):
            s.add(Task(id=f"{job_id}.t{i:05d}", job_id=job_id, idx=i, status="queued",
                       input_digest=dg, items=sh.items, units=sh.max_units, attempts=0,
                       updated_at=now))
        c.emit(s, "job_submitted", job_id, owner=owner, tasks=len(shards), escrow=max_cost,
               model=model, units=sum(shard_units))
    c.notifier.kick()
    c.notifier.published()
    return view(c, job_id)


def view(c: Coordinator, job_id: str) -> wire.JobOut:
    with c.db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="job")
        return _job_out(s, job)


def _job_out(s: Session, job: Job) -> wire.JobOut:
    counts: dict[str, int] = {}
    for st in s.scalars(select(Task.status).where(Task.job_id == job.id)):
        counts[st] = counts.get(st, 0) + 1
    providers: dict[str, int] = {}
    for pid in s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id == job.id, Assignment.status == "accepted")):
        providers[pid] = providers.get(pid, 0) + 1
    return wire.JobOut(
        id=job.id, owner=job.owner, status=job.status, spec=job.spec, created_at=job.created_at,
        deadline_at=job.deadline_at, finished_at=job.finished_at, error=job.error,
        items=job.items, units=job.units, tasks=counts, escrow=job.escrow, cost=job.cost,
        refunded=job.refunded, providers=providers, output_digest=job.output_digest)


def list_jobs(c: Coordinator, owner: str | None, limit: int) -> list[wire.JobOut]:
    with c.db.read() as s:
        q = (select(Job).where(Job.owner != verify.NETWORK).order_by(Job.created_at.desc())
             .limit(max(1, min(limit, 500))))
        if owner:
            q = q.where(Job.owner == owner)
        return [_job_out(s, j) for j in s.scalars(q)]


def results(c: Coordinator, job_id: str) -> bytes:
    with c.db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="job")
        if job.status != "completed" or job.output_digest is None:
            raise Conflict(f"job {job_id} is {job.status}; results exist once it completes",
                           status=job.status)
        digest = job.output_digest
    return c.blobs.get(digest)


def cancel(c: Coordinator, owner: str, job_id: str) -> wire.JobOut:
    with c.db.write() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id}", field="job")
        if job.owner != owner:
            raise Forbidden("only the job's owner may cancel it")
        if job.status not in ACTIVE:
            raise Conflict(f"job {job_id} is already {job.status}", status=job.status)
        _end(c, s, job, "cancelled", "cancelled by its owner")
    c.notifier.published()
    return view(c, job_id)


def _end(c: Coordinator, s: Session, job: Job, status: str, error: str | None) -> None:
    """Close a job: stop its tasks and leases and refund what is left in escrow."""
    now = c.now()
    for t in s.scalars(select(Task).where(Task.job_id == job.id, Task.status != "done")):
        t.status, t.updated_at = "failed", now
    for a in s.scalars(select(Assignment).where(Assignment.job_id == job.id,
                                                Assignment.status == "leased")):
        a.status = "cancelled"
    left = journal.balance(s, ledger.escrow(job.id))
    if left > 0:
        journal.append(s, ledger.refund(job.owner, job.id, left, status), c.clock)
    job.status, job.error, job.finished_at = status, error, now
    job.refunded += left
    c.emit(s, f"job_{status}", job.id, refunded=left, cost=job.cost, error=error)


# --- results from providers -----------------------------------------------------------------

def submit_result(c: Coordinator, pid: str, assignment_id: str,
                  r: wire.ResultIn) -> wire.ResultOut:
    c.check_signature(pid, auth.result_message(assignment_id, r.output_digest, r.units),
                      r.signature)
    if r.output_b64 is not None:
        try:
            inline = base64.b64decode(r.output_b64, validate=True)
        except ValueError:
            raise InvalidInput("output_b64: not base64", field="output_b64") from None
        if hashlib.sha256(inline).hexdigest() != r.output_digest:
            raise InvalidInput("output_b64: its sha256 is not output_digest", field="output_b64")
        c.blobs.put(inline, sync=False)  # the commit below is what makes the result count
    if not c.blobs.exists(r.output_digest):
        raise InvalidInput("output_digest: upload the output blob first", field="output_digest")
    with c.db.write() as s:
        a = c.live_lease(s, pid, assignment_id)
        task = s.get(Task, a.task_id, with_for_update=True)
        job = s.get(Job, a.job_id, with_for_update=True)
        assert task is not None and job is not None
        a.submitted_at, a.output_digest = c.now(), r.output_digest
        a.units, a.seconds, a.signature = r.units, r.seconds, r.signature
        kind = kinds.get(job.kind)
        spec = kind.parse_spec(job.spec)
        try:
            payload = c.blobs.get(a.input_digest or task.input_digest)
            output = c.blobs.get(r.output_digest)
            metered = (kind.meter(spec, payload, output) if a.input_digest is None
                       else kind.meter_check(spec, payload, output))
            if r.units != metered:
                raise InvalidInput(f"units: the output shows {metered}, the result claims "
                                   f"{r.units}", field="units")
        except InvalidInput as exc:
            a.status, a.error = "rejected", exc.message
            c.emit(s, "result_rejected", task.id, provider=pid, error=exc.message, role=a.role)
            _retry(c, s, a, task, job, f"rejected output from {pid[:12]}: {exc.message}")
            return wire.ResultOut(status="rejected")
        before = journal.balance(s, ledger.pending(pid))
        status = (verify.on_primary(c, s, a, task, job) if a.role == "primary"
                  else verify.on_check(c, s, a, task, job))
        paid = journal.balance(s, ledger.pending(pid)) - before
        refresh_status(s, job)
    c.notifier.result_arrived(a.task_id)  # an interactive caller may be waiting (/v1)
    c.notifier.kick()
    c.notifier.published()
    return wire.ResultOut(status=status, paid=max(0, paid))


def refresh_status(s: Session, job: Job) -> None:
    """running ↔ verifying: a job whose open tasks are all being checked is verifying."""
    if job.status not in ("running", "verifying"):
        return
    s.flush()
    open_statuses = set(s.scalars(select(Task.status).where(
        Task.job_id == job.id, Task.status.not_in(("done", "failed")))))
    job.status = "verifying" if open_statuses == {"verifying"} else "running"


def maybe_complete(c: Coordinator, s: Session, job: Job) -> None:
    s.flush()
    left = s.scalar(select(Task.id).where(Task.job_id == job.id, Task.status != "done")
                    .limit(1))
    if left is None and job.status in ACTIVE:
        _complete(c, s, job)


def _complete(c: Coordinator, s: Session, job: Job) -> None:
    if job.owner == verify.NETWORK:  # a canary: nothing to assemble
        _end(c, s, job, "completed", None)
        return
    digests = list(s.scalars(select(Task.output_digest).where(Task.job_id == job.id)
                             .order_by(Task.idx)))
    kind = kinds.get(job.kind)
    outputs = [c.blobs.get(d) for d in digests if d]
    job.output_digest = c.blobs.put(kind.assemble(job.id, kind.parse_spec(job.spec), outputs))
    # Work that ran and failed on its own terms (a command over its limit) is still
    # accepted work; the job completes and says what went wrong.
    problems = kind.errors(outputs)
    error = None
    if problems:
        error = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)"
                                            if len(problems) > 5 else "")
    _end(c, s, job, "completed", error)


def report_failure(c: Coordinator, pid: str, assignment_id: str, error: str) -> wire.ResultOut:
    with c.db.write() as s:
        a = c.live_lease(s, pid, assignment_id)
        task, job = s.get(Task, a.task_id), s.get(Job, a.job_id)
        assert task is not None and job is not None
        a.status, a.error = "failed", error
        c.emit(s, "task_failed", task.id, provider=pid, error=error[:500], role=a.role)
        _retry(c, s, a, task, job, f"provider {pid[:12]} failed: {error}")
    c.notifier.kick()
    c.notifier.published()
    return wire.ResultOut(status="failed")


def _retry(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job, why: str) -> None:
    """An assignment ended without a usable result: place its role again."""
    if a.role == "canary":
        _end(c, s, job, "failed", why)  # a canary is never re-placed: it would reveal itself
    elif a.role in ("replica", "referee"):
        if task.status == "verifying" and job.status in ACTIVE:
            task.pending_role, task.updated_at = a.role, c.now()
    elif task.status == "assigned" and job.status in ACTIVE:
        _requeue(c, s, task, job, why)


def _requeue(c: Coordinator, s: Session, task: Task, job: Job, why: str) -> None:
    task.error, task.updated_at = why, c.now()
    if task.attempts >= c.settings.max_attempts:
        task.status = "failed"
        _end(c, s, job, "failed", f"task {task.idx} failed {task.attempts} times; last: {why}")
    else:
        task.status = "queued"


def _expire(c: Coordinator, s: Session, a: Assignment, why: str) -> None:
    a.status, a.error = "expired", why
    task, job = s.get(Task, a.task_id), s.get(Job, a.job_id)
    assert task is not None and job is not None
    c.emit(s, "lease_expired", task.id, provider=a.provider_id, reason=why, role=a.role)
    _retry(c, s, a, task, job, why)


# --- periodic upkeep -----------------------------------------------------------------------

def expire_leases(c: Coordinator) -> int:
    """Expire leases past their deadline or held by providers that stopped heartbeating."""
    now = c.now()
    stale = now - c.settings.heartbeat_timeout
    with c.db.write() as s:
        rows = s.execute(select(Assignment, Provider.last_seen)
                         .join(Provider, Provider.id == Assignment.provider_id)
                         .where(Assignment.status == "leased")).all()
        n = 0
        for a, last_seen in rows:
            if a.lease_deadline < now:
                _expire(c, s, a, "lease deadline passed")
            elif last_seen < stale:
                _expire(c, s, a, "provider stopped heartbeating")
            else:
                continue
            n += 1
    if n:
        c.notifier.kick()
        c.notifier.published()
    return n


def enforce_deadlines(c: Coordinator) -> int:
    with c.db.write() as s:
        jobs = s.scalars(select(Job).where(Job.status.in_(ACTIVE),
                                           Job.deadline_at < c.now())).all()
        for job in jobs:
            _end(c, s, job, "failed", "deadline passed before every task was accepted")
    if jobs:
        c.notifier.published()
    return len(jobs)


def give_up_checks(c: Coordinator) -> int:
    """A check nobody could place in time. A sampled replica (an established provider,
    ρ < 1) is skipped and the primary accepted; a check that policy requires (a new or
    probationary provider, a client that asked) or a stuck referee sends the task back
    to be run again from scratch. Nobody is paid or penalised."""
    cutoff = c.now() - c.settings.verify_timeout
    with c.db.write() as s:
        stuck = s.execute(select(Task, Job).join(Job, Job.id == Task.job_id).where(
            Task.status == "verifying", Task.pending_role.is_not(None),
            Task.updated_at < cutoff)).all()
        for task, job in stuck:
            subject = s.scalars(select(Assignment).where(
                Assignment.task_id == task.id, Assignment.status == "submitted",
                Assignment.role.in_(("primary", "canary")))).first()
            c.emit(s, "check_abandoned", task.id, role=task.pending_role)
            if task.pending_role == "replica" and subject is not None and (
                    not verify.must_check(c, s, subject, job)
                    or task.attempts >= c.settings.max_attempts):
                # Sampled checks may be skipped; a required one is retried a few times
                # (perhaps a checker turns up), then accepted and marked unverified.
                c.emit(s, "unverified", task.id, job=job.id, provider=subject.provider_id)
                verify.accept(c, s, subject, task, job)
            elif job.owner == verify.NETWORK:
                _end(c, s, job, "failed", "no referee available")
            else:
                for a in s.scalars(select(Assignment).where(Assignment.task_id == task.id,
                                                            Assignment.status == "submitted")):
                    a.status = "expired"
                task.status, task.pending_role, task.updated_at = "queued", None, c.now()
            refresh_status(s, job)
    if stuck:
        c.notifier.kick()
        c.notifier.published()
    return len(stuck)


def release_earnings(c: Coordinator) -> int:
    """Move pending earnings past their challenge window to the provider's balance."""
    with c.db.write() as s:
        due = s.scalars(select(Payout).where(Payout.released.is_(False),
                                             Payout.release_at <= c.now())
                        .order_by(Payout.id)).all()
        by_provider: dict[str, list[Payout]] = {}
        for p in due:
            by_provider.setdefault(p.provider_id, []).append(p)
        for pid, rows in by_provider.items():
            amount = sum(p.amount for p in rows)
            if amount > 0:
                journal.append(s, ledger.release(pid, amount, [p.id for p in rows]), c.clock)
            for p in rows:
                p.released = True
            c.emit(s, "earnings_released", pid, amount=amount)
    if due:
        c.notifier.published()
    return len(due)


def deliver(c: Coordinator, pid: str) -> list[wire.AssignmentOut]:
    """Hand a provider the leases placed on it that it has not yet received."""
    now = c.now()
    with c.db.write() as s:
        p = c.require_provider(s, pid)
        p.last_seen = now
        rows = s.execute(select(Assignment, Task, Job)
                         .join(Task, Task.id == Assignment.task_id)
                         .join(Job, Job.id == Assignment.job_id)
                         .where(Assignment.provider_id == pid, Assignment.status == "leased",
                                Assignment.delivered.is_(False))).all()
        out = []
        for a, t, j in rows:
            a.delivered = True
            a.lease_deadline = now + c.settings.lease_ttl
            digest = a.input_digest or t.input_digest
            inline = None
            if c.blobs.size(digest) <= wire.INLINE_MAX:
                inline = base64.b64encode(c.blobs.get(digest)).decode()
            out.append(wire.AssignmentOut(
                id=a.id, task_id=t.id, job_id=j.id, workload=j.kind, model=j.model,
                input_digest=digest, units=t.units, price=a.price,
                lease_deadline=a.lease_deadline, resume=checkpoints.resume_for(s, a),
                input_b64=inline))
        return out


def recover(c: Coordinator) -> None:
    """After a restart, give providers a heartbeat's grace before declaring them gone.

    The coordinator was down, not they: leases that lapsed while it was away are
    extended so work finished during the outage can still be submitted.
    """
    now = c.now()
    with c.db.write() as s:
        last_alive = max(s.scalar(select(func.max(Event.ts))) or 0.0,
                         s.scalar(select(func.max(Provider.last_seen))) or 0.0)
        for p in s.scalars(select(Provider).where(
                Provider.last_seen >= last_alive - c.settings.heartbeat_timeout)):
            p.last_seen = max(p.last_seen, now)
        for a in s.scalars(select(Assignment).where(Assignment.status == "leased")):
            a.lease_deadline = max(a.lease_deadline, now + c.settings.lease_ttl)
        if c.settings.devnet and c.settings.treasury_grant > 0 and s.scalar(
                select(func.count()).select_from(Event).where(
                    Event.kind == "treasury_granted")) == 0:
            journal.append(s, ledger.treasury_grant(c.settings.treasury_grant,
                                                    "devnet genesis"), c.clock)
            c.emit(s, "treasury_granted", "", amount=c.settings.treasury_grant)
        c.emit(s, "coordinator_started", "")
