"""Verification on the coordinator: replicas, canaries, referees, verdicts and slashes.

The decisions are ``core.verify``'s; this module applies them to the database.
A result moves through these steps, each inside the caller's transaction:

    primary result ── replicate? ──no──▶ accepted and paid from escrow
          │ yes (ρ from the provider's reputation, or the client asked)
          ▼
    task verifying, a replica placed on another provider
          │ replica result: does it support the primary's?
          ├── yes ─▶ primary paid from escrow, replica from the treasury; both pass
          └── no ──▶ a referee placed on a third provider
                        │ referee result: whom does it side with?
                        └─▶ verdict in the journal; the party that contradicts the
                            referee is slashed, loses its unreleased earnings for the
                            job, resets to CV 0 on probation; the task's result is the
                            one the referee confirms, paid from escrow (redone at no
                            extra cost to the client).

Canaries are tasks with a known answer (verified earlier work), dispatched
like any other; a wrong answer goes to a referee before anyone is slashed.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator, new_id
from deai.core import kinds, ledger
from deai.core.kinds.base import Kind, SpecBase
from deai.core.money import cost_for_units
from deai.core.verify import policy
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.store import journal
from deai.store.models import Assignment, Canary, Job, JournalEntry, Payout, Provider, Task
from deai.store.models import Reputation as RepRow

NETWORK = "network"  # owner of canary jobs
CANARY_POOL = 500  # known answers kept per model
_rng = secrets.SystemRandom()


def params(c: Coordinator) -> VerifyParams:
    return c.settings.verify


# --- reputation ----------------------------------------------------------------------------

def get_rep(s: Session, pid: str, workload: str) -> Reputation:
    row = s.get(RepRow, (pid, workload))
    if row is None:
        return Reputation()
    return Reputation(row.cv, row.passes, row.fails, row.probation, row.updated_at)


def _put_rep(s: Session, pid: str, workload: str, rep: Reputation) -> None:
    row = s.get(RepRow, (pid, workload))
    if row is None:
        row = RepRow(provider_id=pid, workload=workload)
        s.add(row)
    row.cv, row.passes, row.fails = rep.cv, rep.passes, rep.fails
    row.probation, row.updated_at = rep.probation, rep.updated_at
    prov = s.get(Provider, pid)
    if prov is not None:
        prov.reputation = round(rep.score(), 4)


def _passed(c: Coordinator, s: Session, pid: str, workload: str) -> None:
    _put_rep(s, pid, workload, get_rep(s, pid, workload).passed(c.now(), params(c)))


def _failed(c: Coordinator, s: Session, pid: str, workload: str) -> None:
    _put_rep(s, pid, workload, get_rep(s, pid, workload).failed(c.now(), params(c)))


# --- money -----------------------------------------------------------------------------------

def pay(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job, *,
        from_escrow: bool) -> int:
    """Pay an assignment its price for its metered units: the task's price from the job's
    escrow, or a check fee from the treasury. Returns what the provider will receive."""
    cost = cost_for_units(a.units or 0, a.price)
    if cost <= 0:
        return 0
    if from_escrow:
        fee = cost * c.settings.fee_bps // 10_000
        entry = journal.append(s, ledger.payout(job.id, task.id, a.id, a.provider_id, cost,
                                                fee), c.clock)
        job.cost += cost
        amount = cost - fee
    else:
        available = journal.balance(s, ledger.FEE)
        amount = min(cost, available)
        if amount <= 0:
            c.emit(s, "check_unpaid", a.id, provider=a.provider_id, owed=cost)
            return 0
        entry = journal.append(s, ledger.check_fee(a.provider_id, amount, a.id, a.role),
                               c.clock)
    s.add(Payout(assignment_id=a.id, task_id=task.id, provider_id=a.provider_id,
                 amount=amount, release_at=c.now() + c.settings.challenge_window,
                 released=False, journal_seq=entry.seq, job_id=job.id))
    return amount


def _slash(c: Coordinator, s: Session, pid: str, job: Job, bounty_to: str | None,
           evidence: dict[str, Any]) -> None:
    p = params(c)
    stake = journal.balance(s, ledger.stake(pid))
    cut = policy.slash_amounts(stake, p, reporter=bounty_to is not None)
    if cut.amount > 0:
        journal.append(s, ledger.slash(pid, cut.amount, bounty_to, cut.bounty, evidence),
                       c.clock)
    forfeited = fee_back = 0
    for row in s.scalars(select(Payout).where(Payout.provider_id == pid, Payout.job_id == job.id,
                                              Payout.released.is_(False),
                                              Payout.forfeited.is_(False))):
        row.forfeited, row.released = True, True
        forfeited += row.amount
        entry = s.get(JournalEntry, row.journal_seq)
        if entry is not None and entry.kind == "payout":  # the client paid a fee on it too
            fee_back += int(entry.body.get("fee", 0))
    if forfeited or fee_back:
        fee_back = min(fee_back, journal.balance(s, ledger.FEE))
        if job.owner == NETWORK:
            to, fee_back = ledger.FEE, 0
        elif job.status in ("pending", "running", "verifying"):
            to = ledger.escrow(job.id)
        else:
            to = ledger.acct(job.owner)
        journal.append(s, ledger.forfeit(pid, job.id, forfeited, fee_back, to), c.clock)
        if job.owner != NETWORK:
            job.cost -= forfeited + fee_back
            if to != ledger.escrow(job.id):
                job.refunded += forfeited + fee_back
    c.emit(s, "slash", pid, job=job.id, amount=cut.amount, bounty=cut.bounty,
           bounty_to=bounty_to, forfeited=forfeited, **evidence)


# --- the flow ----------------------------------------------------------------------------------

def on_primary(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job) -> str:
    """A structurally valid primary result: accept it, or hold it for a replica."""
    spec = kinds.get(job.kind).parse_spec(job.spec)
    rep = get_rep(s, a.provider_id, job.kind)
    always = bool(getattr(spec, "replicate", False))
    if policy.should_replicate(rep, params(c), _rng.random(), always=always):
        a.status = "submitted"
        task.status, task.pending_role, task.updated_at = "verifying", "replica", c.now()
        c.emit(s, "check_started", task.id, job=job.id, provider=a.provider_id,
               role="replica", rho=policy.replication_probability(rep, params(c),
                                                                  always=always))
        return "submitted"
    accept(c, s, a, task, job)
    return "accepted"


def must_check(c: Coordinator, s: Session, a: Assignment, job: Job) -> bool:
    """Whether policy requires ``a``'s result to be checked (ρ = 1), not merely samples it."""
    spec = kinds.get(job.kind).parse_spec(job.spec)
    rep = get_rep(s, a.provider_id, job.kind)
    always = bool(getattr(spec, "replicate", False))
    return policy.replication_probability(rep, params(c), always=always) >= 1.0


def accept(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job) -> int:
    """The task's result is ``a``'s: pay it from escrow and finish the job if it was last."""
    from deai.coordinator import jobs  # jobs imports this module

    paid = pay(c, s, a, task, job, from_escrow=job.owner != NETWORK)
    a.status = "accepted"
    task.status, task.output_digest, task.updated_at = "done", a.output_digest, c.now()
    task.pending_role = None
    prov = s.get(Provider, a.provider_id)
    if prov is not None:
        prov.tasks_done += 1
    c.emit(s, "task_accepted", task.id, job=job.id, provider=a.provider_id,
           cost=cost_for_units(a.units or 0, a.price), role=a.role)
    s.flush()
    jobs.maybe_complete(c, s, job)
    return paid


def on_check(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job) -> str:
    """A replica's, canary's or referee's structurally valid result."""
    kind = kinds.get(job.kind)
    spec = kind.parse_spec(job.spec)
    shard = c.blobs.get(task.input_digest)
    if a.role == "canary":
        return _on_canary(c, s, a, task, job, kind, spec, shard)
    subject = s.get(Assignment, a.check_of) if a.check_of else None
    if subject is None or subject.output_digest is None:
        a.status = "rejected"
        return "rejected"
    claimed = c.blobs.get(subject.output_digest)
    mine = c.blobs.get(a.output_digest or "")
    if a.role == "replica":
        cmp = kind.check(spec, shard, claimed, mine)
        evidence = _evidence(subject, a, cmp.statistic, cmp.detail)
        if cmp.match:
            a.status = "accepted"
            pay(c, s, a, task, job, from_escrow=False)
            _passed(c, s, a.provider_id, job.kind)
            _passed(c, s, subject.provider_id, job.kind)
            c.emit(s, "check_passed", task.id, role="replica", **evidence)
            accept(c, s, subject, task, job)
            _remember(c, s, job, task, subject)
            return "accepted"
        a.status = "submitted"
        task.pending_role, task.updated_at = "referee", c.now()
        c.emit(s, "check_failed", task.id, role="replica", **evidence)
        return "submitted"
    if a.role == "referee":
        return _on_referee(c, s, a, task, job, kind, spec, shard, subject)
    a.status = "rejected"
    return "rejected"


def _on_canary(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job, kind: Kind,
               spec: SpecBase, shard: bytes) -> str:
    reference = c.blobs.get(task.reference_digest or "")
    cmp = kind.compare(spec, shard, reference, c.blobs.get(a.output_digest or ""))
    evidence = {"provider": a.provider_id, "output": a.output_digest,
                "reference": task.reference_digest, "statistic": cmp.statistic,
                "detail": cmp.detail}
    if cmp.match:
        _passed(c, s, a.provider_id, job.kind)
        c.emit(s, "check_passed", task.id, role="canary", **evidence)
        accept(c, s, a, task, job)
        return "accepted"
    a.status = "submitted"
    task.status, task.pending_role, task.updated_at = "verifying", "referee", c.now()
    c.emit(s, "check_failed", task.id, role="canary", **evidence)
    return "submitted"


def _on_referee(c: Coordinator, s: Session, ref: Assignment, task: Task, job: Job, kind: Kind,
                spec: SpecBase, shard: bytes, subject: Assignment) -> str:
    claimed = c.blobs.get(subject.output_digest or "")
    ref_out = c.blobs.get(ref.output_digest or "")
    agree_subject = kind.check(spec, shard, claimed, ref_out)
    checker = s.scalars(select(Assignment).where(
        Assignment.task_id == task.id, Assignment.role == "replica",
        Assignment.status == "submitted")).first()
    payload = c.blobs.get(ref.input_digest) if ref.input_digest else shard
    if checker is not None and checker.output_digest:
        agree_checker = kind.compare_checks(spec, payload, c.blobs.get(checker.output_digest),
                                            ref_out).match
        reporter: str | None = checker.provider_id
    else:  # a canary: the checker is the network's reference answer
        reference = c.blobs.get(task.reference_digest or "")
        agree_checker = kind.check(spec, shard, reference, ref_out).match
        reporter = None
    v = policy.verdict([agree_subject.match], [agree_checker])
    evidence = {
        "fault": v.fault.value, "subject": subject.provider_id, "checker": reporter,
        "referee": ref.provider_id, "subject_output": subject.output_digest,
        "checker_output": checker.output_digest if checker else task.reference_digest,
        "referee_output": ref.output_digest, "statistic": agree_subject.statistic,
        "detail": agree_subject.detail, "canary": job.owner == NETWORK,
    }
    journal.append(s, ledger.verdict(task.id, evidence), c.clock)
    c.emit(s, "verdict", task.id, job=job.id, **evidence)
    fault, F = v.fault, policy.Fault
    ref.status = "accepted"
    _passed(c, s, ref.provider_id, job.kind)
    if fault in (F.SUBJECT, F.BOTH):
        subject.status = "rejected"
        _failed(c, s, subject.provider_id, job.kind)
        _slash(c, s, subject.provider_id, job, reporter if fault == F.SUBJECT else None,
               {"task": task.id, "role": subject.role})
    if fault in (F.CHECKER, F.BOTH):
        if checker is not None:
            checker.status = "rejected"
            _failed(c, s, checker.provider_id, job.kind)
            _slash(c, s, checker.provider_id, job,
                   subject.provider_id if fault == F.CHECKER else None,
                   {"task": task.id, "role": "replica"})
        else:  # the network's own answer was wrong: never reuse it
            for canary in s.scalars(select(Canary).where(
                    Canary.output_digest == task.reference_digest)):
                canary.active = False
    if fault in (F.NONE, F.CHECKER):
        _passed(c, s, subject.provider_id, job.kind)
    if checker is not None and fault in (F.NONE, F.SUBJECT):
        _passed(c, s, checker.provider_id, job.kind)

    reexec = kind.check_payload(spec, shard, claimed) is None
    if fault in (F.NONE, F.CHECKER):
        pay(c, s, ref, task, job, from_escrow=False)
        if checker is not None and fault == F.NONE:
            checker.status = "accepted"
            pay(c, s, checker, task, job, from_escrow=False)
        accept(c, s, subject, task, job)
    elif job.owner == NETWORK:  # a canary caught a cheat; it needs no result
        pay(c, s, ref, task, job, from_escrow=False)
        task.status, task.pending_role = "done", None
        from deai.coordinator import jobs

        jobs.maybe_complete(c, s, job)
    elif fault == F.SUBJECT and checker is not None and reexec:
        pay(c, s, ref, task, job, from_escrow=False)
        accept(c, s, checker, task, job)  # the honest replica's result, at its own price
    elif reexec:
        accept(c, s, ref, task, job)  # the referee re-ran the shard: its output is the result
    else:  # nobody's output stands and the referee only re-scored it: run the task again
        pay(c, s, ref, task, job, from_escrow=False)
        task.status, task.pending_role, task.updated_at = "queued", None, c.now()
    return "accepted"


def _evidence(subject: Assignment, checker: Assignment, statistic: float,
              detail: str) -> dict[str, Any]:
    return {"subject": subject.provider_id, "checker": checker.provider_id,
            "subject_output": subject.output_digest, "checker_output": checker.output_digest,
            "statistic": statistic, "detail": detail}


def _remember(c: Coordinator, s: Session, job: Job, task: Task, a: Assignment) -> None:
    """Verified work becomes a future canary (its answer is now known)."""
    if job.owner == NETWORK or a.output_digest is None:
        return
    s.add(Canary(kind=job.kind, model=job.model, spec=job.spec, input_digest=task.input_digest,
                 output_digest=a.output_digest, items=task.items, units=task.units,
                 source_task=task.id, created_at=c.now(), active=True, uses=0))
    old = s.scalars(select(Canary).where(Canary.model == job.model, Canary.active.is_(True))
                    .order_by(Canary.id.desc()).offset(CANARY_POOL)).all()
    for row in old:
        row.active = False


def plant_canary(c: Coordinator, s: Session, pid: str, workload: str, model: str,
                 price: int) -> str | None:
    """Lease a canary to ``pid``: a known-answer shard it has never seen, dressed as a job."""
    seen = select(Task.input_digest).join(Assignment, Assignment.task_id == Task.id).where(
        Assignment.provider_id == pid)
    pool = s.scalars(select(Canary).where(
        Canary.kind == workload, Canary.model == model, Canary.active.is_(True),
        Canary.input_digest.not_in(seen)).limit(50)).all()
    if not pool:
        return None
    canary = _rng.choice(pool)
    canary.uses += 1
    now = c.now()
    spec = dict(canary.spec)
    job_id = new_id("job")
    s.add(Job(id=job_id, owner=NETWORK, status="running", kind=canary.kind, model=canary.model,
              spec=spec, input_digest=canary.input_digest, items=canary.items,
              units=canary.units, max_price=int(spec.get("max_price", price)), escrow=0,
              cost=0, refunded=0, created_at=now, deadline_at=now + 24 * 3600))
    s.flush()  # no relationship() orders these inserts: the job must exist first
    task_id = f"{job_id}.t00000"
    s.add(Task(id=task_id, job_id=job_id, idx=0, status="assigned",
               input_digest=canary.input_digest, items=canary.items, units=canary.units,
               attempts=1, updated_at=now, reference_digest=canary.output_digest))
    s.flush()
    s.add(Assignment(id=new_id("asg"), task_id=task_id, job_id=job_id, provider_id=pid,
                     role="canary", status="leased", price=price, leased_at=now,
                     lease_deadline=now + c.settings.lease_ttl, delivered=False))
    c.emit(s, "canary_planted", task_id, provider=pid, model=model)
    return task_id


def want_canary(c: Coordinator) -> bool:
    return _rng.random() < policy.canary_odds(params(c))
