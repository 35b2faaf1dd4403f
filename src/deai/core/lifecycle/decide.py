"""Outcome → effects: every decision about a job, a task or an assignment.

Each function takes the state it needs as plain data and one outcome (a result
arrived, a check agreed or disagreed, a verdict, a lease lost, a check given
up, a cancel, a deadline, a placement) and returns the effects to apply, in
order. Nothing here reads a database or a clock; the coordinator and the
simulator both call these functions, so they cannot disagree.

Verification flow (research/verification.md):

    primary result ── replicate? ──no──▶ Accept(primary)
          │ yes
          ▼
    verifying, need replica ──▶ replica agrees ──▶ Accept(primary), checker paid a fee
                                  │ disagrees
                                  ▼
                            need referee ──▶ verdict: the party that contradicts the
                                             referee is slashed; the output that stands
                                             is accepted, or the task runs again
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deai.core.lifecycle.effects import (
    Accept,
    CompleteIfDone,
    Correct,
    Effect,
    Emit,
    EndJob,
    Forfeit,
    LookBack,
    MoveAssignment,
    MoveJob,
    MoveTask,
    NeedCheck,
    PayCheck,
    Rate,
    RecordVerdict,
    RefreshJob,
    Remember,
    RetireReference,
    Slash,
    VoidCheckpoints,
)
from deai.core.lifecycle.states import (
    CHECK_ROLES,
    JOB_ACTIVE,
    AssignmentStatus,
    JobStatus,
    Role,
    TaskStatus,
)
from deai.core.verify.policy import Fault

A, T, J = AssignmentStatus, TaskStatus, JobStatus


@dataclass(frozen=True)
class Party:
    """An assignment as decisions see it."""

    assignment: str
    provider: str
    role: Role


@dataclass(frozen=True)
class TaskCtx:
    """A task and its job, as decisions see them."""

    task: str
    job: str
    idx: int
    job_status: JobStatus
    task_status: TaskStatus
    attempts: int
    max_attempts: int
    canary: bool = False  # a canary job: the network's own, with a known answer

    @property
    def job_active(self) -> bool:
        return self.job_status in JOB_ACTIVE


# --- results ----------------------------------------------------------------------------------

def on_primary(ctx: TaskCtx, a: Party, *, replicate: bool, rho: float,
               audit: bool = False) -> list[Effect]:
    """A structurally valid primary result: accept it (provisionally: ``audit`` asks a
    trusted verifier to re-run it inside the window), or hold it for a replica."""
    if replicate:
        return [MoveAssignment(a.assignment, A.SUBMITTED),
                MoveTask(T.VERIFYING, need=Role.REPLICA),
                Emit("check_started", ctx.task, {"job": ctx.job, "provider": a.provider,
                                                 "role": Role.REPLICA.value, "rho": rho}),
                RefreshJob()]
    return [Accept(a.assignment), *_audit(audit)]


def _audit(wanted: bool) -> list[Effect]:
    return [NeedCheck(Role.AUDIT)] if wanted else []


def on_replica(ctx: TaskCtx, check: Party, subject: Party, *, match: bool,
               evidence: dict[str, Any], audit: bool = False) -> list[Effect]:
    """A replica's result, compared with the subject's. An agreement is accepted, and
    with ``audit`` re-run by a trusted verifier: two colluders who agree on a wrong
    answer are both slashed when an audit catches them."""
    if match:
        return [MoveAssignment(check.assignment, A.ACCEPTED), PayCheck(check.assignment),
                Rate(check.provider, True), Rate(subject.provider, True),
                Emit("check_passed", ctx.task, {"role": Role.REPLICA.value, **evidence}),
                Accept(subject.assignment), Remember(subject.assignment), *_audit(audit)]
    return [MoveAssignment(check.assignment, A.SUBMITTED), NeedCheck(Role.REFEREE),
            Emit("check_failed", ctx.task, {"role": Role.REPLICA.value, **evidence})]


def on_canary(ctx: TaskCtx, a: Party, *, match: bool, evidence: dict[str, Any]) -> list[Effect]:
    """A canary's result, compared with the network's known answer."""
    if match:
        return [Rate(a.provider, True),
                Emit("check_passed", ctx.task, {"role": Role.CANARY.value, **evidence}),
                Accept(a.assignment)]
    return [MoveAssignment(a.assignment, A.SUBMITTED), MoveTask(T.VERIFYING, need=Role.REFEREE),
            Emit("check_failed", ctx.task, {"role": Role.CANARY.value, **evidence})]


def on_forced(ctx: TaskCtx, check: Party, *, noticed: bool,
              evidence: dict[str, Any]) -> list[Effect]:
    """A checker was handed a claim the network made wrong on purpose (a forced error).

    Noticing it is the checker's job: it is paid and rated like any check. Not noticing
    it is rubber-stamping, which the network knows without a referee: the checker is
    slashed and its other results are looked at again. Either way the task still waits
    for a real check.
    """
    if noticed:
        return [MoveAssignment(check.assignment, A.ACCEPTED), PayCheck(check.assignment),
                Rate(check.provider, True), Emit("forced_error_noticed", ctx.task,
                                                 {"job": ctx.job, **evidence}),
                NeedCheck(Role.REPLICA)]
    return [RecordVerdict({**evidence, "fault": "rubber_stamp"}),
            Emit("verdict", ctx.task, {"job": ctx.job, "fault": "rubber_stamp", **evidence}),
            MoveAssignment(check.assignment, A.REJECTED), Rate(check.provider, False),
            Slash(check.provider, None, check.role), LookBack(check.provider),
            NeedCheck(Role.REPLICA)]


def on_orphan_check(a: Party) -> list[Effect]:
    """A check whose subject is gone (the task was settled meanwhile): nothing to decide."""
    return [MoveAssignment(a.assignment, A.REJECTED)]


def on_verdict(ctx: TaskCtx, fault: Fault, referee: Party, subject: Party,
               checker: Party | None, *, reexec: bool,
               evidence: dict[str, Any]) -> list[Effect]:
    """A referee decided: rate, slash, pay and settle whose output stands.

    ``checker`` is the replica that disagreed, or None when the subject was a
    canary (the network's known answer was the checker). ``reexec``: the referee
    re-ran the task, so its output is a result in its own right (not a re-score).
    """
    F = Fault
    out: list[Effect] = [RecordVerdict(evidence),
                         Emit("verdict", ctx.task, {"job": ctx.job, **evidence})]
    subject_bad, checker_bad = fault in (F.SUBJECT, F.BOTH), fault in (F.CHECKER, F.BOTH)
    # The referee's own output becomes the result only when it re-ran the task and
    # neither the subject's nor an honest checker's output can stand (see the end).
    referee_result = (reexec and subject_bad and not ctx.canary
                      and (checker is None or checker_bad))
    if not referee_result:
        out.append(MoveAssignment(referee.assignment, A.ACCEPTED))
    out.append(Rate(referee.provider, True))
    if subject_bad:
        reporter = checker.provider if checker is not None and fault == F.SUBJECT else None
        out += [MoveAssignment(subject.assignment, A.REJECTED), Rate(subject.provider, False),
                Slash(subject.provider, reporter, subject.role), LookBack(subject.provider)]
    if checker_bad:
        if checker is not None:
            reporter = subject.provider if fault == F.CHECKER else None
            out += [MoveAssignment(checker.assignment, A.REJECTED),
                    Rate(checker.provider, False), Slash(checker.provider, reporter, checker.role),
                    LookBack(checker.provider)]
        else:
            out.append(RetireReference())
    if not subject_bad:
        out.append(Rate(subject.provider, True))
    if checker is not None and not checker_bad:
        out.append(Rate(checker.provider, True))

    if not subject_bad:  # the subject's output stands
        out.append(PayCheck(referee.assignment))
        if checker is not None and not checker_bad:
            out += [MoveAssignment(checker.assignment, A.ACCEPTED), PayCheck(checker.assignment)]
        out.append(Accept(subject.assignment))
    elif ctx.canary:  # a canary caught a cheat: it needs no result
        out += [PayCheck(referee.assignment), MoveTask(T.DONE), CompleteIfDone()]
    elif checker is not None and not checker_bad and reexec:
        out += [PayCheck(referee.assignment), Accept(checker.assignment)]
    elif reexec:
        out.append(Accept(referee.assignment))  # the referee re-ran it: its output stands
    else:  # the referee only re-scored: nobody's output stands, run the task again
        out.append(PayCheck(referee.assignment))
        if checker is not None and not checker_bad:
            out += [MoveAssignment(checker.assignment, A.ACCEPTED), PayCheck(checker.assignment)]
        out += [MoveTask(T.QUEUED), RefreshJob()]
    return out


INHERITED = "resumed from a checkpoint an earlier attempt recorded wrong"
UNPROVEN = "overturned by an audit; wrong only where others answered for it"


def on_inherited(ctx: TaskCtx, referee: Party, subject: Party, checker: Party | None,
                 recorders: list[Party], *, checker_bad: bool, void_from: int,
                 evidence: dict[str, Any]) -> list[Effect]:
    """A referee found the subject's claim wrong only in checkpoints it inherited: earlier
    attempts (``recorders``) recorded them, and the subject resumed from them.

    The recorders are slashed as the claim's liars would be; the subject is neither
    rated nor slashed, but its output does not stand (its model grew from a wrong
    checkpoint), so it is rejected unpaid. The task's chain from ``void_from`` on is
    dropped and the task runs again from the last checkpoint before it. Before, the
    resumer was blamed: one provider that recorded junk and let its lease lapse got the
    honest provider that took the task over slashed.
    """
    out: list[Effect] = [RecordVerdict(evidence),
                         Emit("verdict", ctx.task, {"job": ctx.job, **evidence}),
                         MoveAssignment(referee.assignment, A.ACCEPTED),
                         Rate(referee.provider, True), PayCheck(referee.assignment)]
    for r in recorders:
        out += [Rate(r.provider, False), Slash(r.provider, None, r.role), LookBack(r.provider)]
    if checker is not None and checker_bad:
        out += [MoveAssignment(checker.assignment, A.REJECTED), Rate(checker.provider, False),
                Slash(checker.provider, None, checker.role), LookBack(checker.provider)]
    elif checker is not None:
        out += [MoveAssignment(checker.assignment, A.ACCEPTED), Rate(checker.provider, True),
                PayCheck(checker.assignment)]
    return out + [MoveAssignment(subject.assignment, A.REJECTED, INHERITED),
                  VoidCheckpoints(void_from), MoveTask(T.QUEUED), RefreshJob()]


def on_audit(ctx: TaskCtx, audit: Party, stood: list[Party], *, match: bool,
             evidence: dict[str, Any], released: list[Party] | None = None,
             recorders: list[Party] | None = None) -> list[Effect]:
    """A trusted verifier re-ran an accepted result.

    ``stood``: the parties whose word made the result stand (the accepted primary or
    canary, and the replica that agreed with it). The verifier is trusted: if it
    disagrees, every one of them is slashed, their other results in the window are
    audited in turn, and the verifier's output replaces the result (the client keeps
    the corrected shard and pays nothing for the wrong one).

    ``released``: parties whose word the overturned result stood on but whom the audit
    cannot show wrong: a primary whose output was wrong only where it inherited
    checkpoints that ``recorders`` (earlier attempts) recorded, who are slashed in its
    stead; a replica that replayed a few segments, none of them the first wrong one.
    They are not slashed: their earnings on the task go back to whoever paid them, and
    their other results in the window are looked at again.
    """
    out: list[Effect] = [MoveAssignment(audit.assignment, A.ACCEPTED), PayCheck(audit.assignment),
                         NeedCheck(None)]
    if match:
        return out + [Emit("audit_passed", ctx.task, {"job": ctx.job, **evidence})]
    out += [RecordVerdict({**evidence, "fault": "audit"}),
            Emit("verdict", ctx.task, {"job": ctx.job, "fault": "audit", **evidence})]
    for p in stood:
        out += [MoveAssignment(p.assignment, A.REJECTED), Rate(p.provider, False),
                Slash(p.provider, None, p.role), LookBack(p.provider)]
    for p in released or []:
        out += [MoveAssignment(p.assignment, A.REJECTED, UNPROVEN), Forfeit(p.provider),
                LookBack(p.provider)]
    for p in recorders or []:
        out += [Rate(p.provider, False), Slash(p.provider, None, p.role), LookBack(p.provider)]
    return out + [Correct(audit.assignment)]


# --- leases that end without a usable result ---------------------------------------------------

def on_rejected(ctx: TaskCtx, a: Party, error: str) -> list[Effect]:
    """The output does not match its claim (e.g. the metered units)."""
    out: list[Effect] = [MoveAssignment(a.assignment, A.REJECTED, error),
                         Emit("result_rejected", ctx.task, {"provider": a.provider,
                                                            "error": error, "role": a.role.value})]
    return out + _retry(ctx, a, f"rejected output from {a.provider[:12]}: {error}")


def on_failed(ctx: TaskCtx, a: Party, error: str) -> list[Effect]:
    """The provider reports that it could not run the task."""
    out: list[Effect] = [MoveAssignment(a.assignment, A.FAILED, error),
                         Emit("task_failed", ctx.task, {"provider": a.provider,
                                                        "error": error[:500],
                                                        "role": a.role.value})]
    return out + _retry(ctx, a, f"provider {a.provider[:12]} failed: {error}")


def on_refused(ctx: TaskCtx, a: Party, why: str) -> list[Effect]:
    """A dataset's owner turned the lease's provider away before releasing it the key:
    the lease ends as failed (the matcher then avoids the provider, and anyone sharing
    its identity, on the task) and its role is placed again as after a failure; its
    event is ``lease_refused``, not ``task_failed``: it is no failure of the provider's."""
    out: list[Effect] = [MoveAssignment(a.assignment, A.FAILED, why),
                         Emit("lease_refused", ctx.task, {"provider": a.provider,
                                                          "role": a.role.value})]
    return out + _retry(ctx, a, f"provider {a.provider[:12]} {why}")


def on_expired(ctx: TaskCtx, a: Party, why: str) -> list[Effect]:
    """The lease ran out, or its provider stopped heartbeating."""
    out: list[Effect] = [MoveAssignment(a.assignment, A.EXPIRED, why),
                         Emit("lease_expired", ctx.task, {"provider": a.provider, "reason": why,
                                                          "role": a.role.value})]
    return out + _retry(ctx, a, why)


def _retry(ctx: TaskCtx, a: Party, why: str) -> list[Effect]:
    """Place the lost assignment's role again, where that still makes sense. An audit is
    asked for again whatever its job's state (it checks a done task of a job that has
    usually ended): dropped with its lapsed lease, the task's earnings were released and
    its job read final with no verdict."""
    if a.role == Role.AUDIT:
        return [NeedCheck(Role.AUDIT)] if ctx.task_status == T.DONE else []
    if not ctx.job_active:
        return []
    if a.role == Role.CANARY:  # never re-placed: a second try would reveal it
        return [EndJob(J.FAILED, why)]
    if a.role in CHECK_ROLES:
        return [NeedCheck(a.role)] if ctx.task_status == T.VERIFYING else []
    if ctx.task_status == T.ASSIGNED:
        return requeue(ctx, why)
    return []


def requeue(ctx: TaskCtx, why: str) -> list[Effect]:
    if ctx.attempts >= ctx.max_attempts:
        return [MoveTask(T.FAILED, error=why),
                EndJob(J.FAILED, f"task {ctx.idx} failed {ctx.attempts} times; last: {why}")]
    return [MoveTask(T.QUEUED, error=why), RefreshJob()]


# --- checks nobody could place ------------------------------------------------------------

def on_check_abandoned(ctx: TaskCtx, need: Role, subject: Party | None,
                       submitted: list[Party], *, required: bool,
                       accept_unverified: bool = False, served: bool = False) -> list[Effect]:
    """A wanted check found no checker in time.

    Nothing is accepted unchecked unless the job said so (``accept_unverified``):
    then the subject's result stands, marked unverified. A required replica (a new or
    probationary provider) sends the task to run again elsewhere; a sampled one, a
    referee or an audit keeps waiting for a checker (only a trusted verifier may
    referee or audit). A canary without a referee fails. Nobody is paid or penalised.
    A result already ``served`` (a /v1 caller holds it) keeps waiting too: run again,
    the task would bill a second run for an answer nobody receives, and the first
    provider, whose answer the caller kept, would never be paid.
    """
    out: list[Effect] = [Emit("check_abandoned", ctx.task, {"role": need.value})]
    if need == Role.REPLICA and subject is not None and accept_unverified:
        return out + [Emit("unverified", ctx.task, {"job": ctx.job, "provider": subject.provider}),
                      NeedCheck(None), Accept(subject.assignment), RefreshJob()]
    if ctx.canary and need == Role.REFEREE:
        return out + [EndJob(J.FAILED, "no referee available")]
    if need == Role.REPLICA and required and ctx.attempts < ctx.max_attempts and not served:
        out += [MoveAssignment(p.assignment, A.EXPIRED) for p in submitted]
        return out + [MoveTask(T.QUEUED), RefreshJob()]
    return out + [Emit("check_waiting", ctx.task, {"role": need.value}), NeedCheck(need)]


# --- placement and the job as a whole ---------------------------------------------------------

def on_placed(ctx: TaskCtx, role: Role) -> list[Effect]:
    """A lease was placed for ``role``: a primary starts a run, a check stops waiting."""
    if role == Role.PRIMARY:
        out: list[Effect] = [MoveTask(T.ASSIGNED, attempt=True)]
        if ctx.job_status == J.PENDING:
            out.append(MoveJob(J.RUNNING))
        return out
    return [NeedCheck(None)]


def on_cancel(job_status: JobStatus) -> list[Effect]:
    return [EndJob(J.CANCELLED, "cancelled by its owner")] if job_status in JOB_ACTIVE else []


def on_deadline(job_status: JobStatus) -> list[Effect]:
    if job_status not in JOB_ACTIVE:
        return []
    return [EndJob(J.FAILED, "deadline passed before every task was accepted")]


def job_status_for(open_tasks: set[TaskStatus]) -> JobStatus:
    """running ⇄ verifying: a job whose open tasks are all being checked is verifying."""
    return J.VERIFYING if open_tasks == {T.VERIFYING} else J.RUNNING


def outcome(effects: list[Effect], assignment: str) -> str:
    """What a submitter is told: accepted, submitted (held for checks) or rejected."""
    said = "accepted"
    for e in effects:
        if isinstance(e, Accept) and e.assignment == assignment:
            return "accepted"
        if isinstance(e, MoveAssignment) and e.assignment == assignment:
            said = e.to.value
    return said
