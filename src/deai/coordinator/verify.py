"""Verification on the coordinator: compare outputs, then ask core what follows.

This module reads blobs and runs the kind's comparators (is the replica's output
close enough? whom does the referee side with?), then hands the comparison to
``core.lifecycle.decide``, which returns the effects (who is paid, rated or
slashed, whose output stands). It writes nothing itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import checkpoints
from deai.coordinator import reputation as rep
from deai.coordinator.admission import NETWORK
from deai.coordinator.effects import ctx
from deai.coordinator.service import Coordinator
from deai.core import kinds, sealed
from deai.core.kinds.base import Kind, SpecBase
from deai.core.lifecycle import AssignmentStatus, Role
from deai.core.lifecycle import decide as D
from deai.core.lifecycle.effects import Effect
from deai.core.verify import policy
from deai.core.verify.policy import Fault
from deai.store.models import Assignment, Checkpoint, Job, Task


def party(a: Assignment) -> D.Party:
    return D.Party(a.id, a.provider_id, Role(a.role))


def _always(job: Job) -> bool:
    spec = kinds.get(job.kind).parse_spec(job.spec)
    return bool(getattr(spec, "replicate", False))


def rho(c: Coordinator, s: Session, a: Assignment, job: Job) -> float:
    """The probability that ``a``'s result is replicated."""
    r = rep.get(s, a.provider_id, job.kind)
    return policy.replication_probability(r, c.settings.verify, always=_always(job))


def must_check(c: Coordinator, s: Session, a: Assignment, job: Job) -> bool:
    """Whether policy requires ``a``'s result to be checked (ρ = 1), not merely samples it."""
    return rho(c, s, a, job) >= 1.0


def on_result(c: Coordinator, s: Session, a: Assignment, task: Task,
              job: Job) -> list[Effect]:
    """A structurally valid result of any role: what follows from it."""
    here = ctx(c, job, task)
    role = Role(a.role)
    if sealed.is_sealed(job.spec):  # its checkers compared the plaintext themselves
        from deai.coordinator import sealed_jobs
        done = sealed_jobs.on_result(c, s, a, task, here, lambda: _audit(c))
        if done is not None:
            return done
    if role == Role.PRIMARY:
        # A result resumed from another attempt's checkpoints is always checked where
        # results are checked at all: they were recorded unchecked, by a provider that left.
        p = (1.0 if c.settings.verify.replicate and checkpoints.takes_checkpoints(job.kind)
             and resumed(s, a) else rho(c, s, a, job))
        return D.on_primary(here, party(a), replicate=c.rng.random() < p, rho=p,
                            audit=_audit(c))
    kind = kinds.get(job.kind)
    spec = kind.parse_spec(job.spec)
    shard = c.blobs.get(task.input_digest)
    if role == Role.AUDIT:
        return _on_audit(c, s, a, task, job, kind, spec, shard)
    if role == Role.CANARY:
        reference = c.blobs.get(task.reference_digest or "")
        cmp = kind.compare(spec, shard, reference, c.blobs.get(a.output_digest or ""))
        evidence = {"provider": a.provider_id, "output": a.output_digest,
                    "reference": task.reference_digest, "statistic": cmp.statistic,
                    "detail": cmp.detail}
        return D.on_canary(here, party(a), match=cmp.match, evidence=evidence)
    subject = s.get(Assignment, a.check_of) if a.check_of else None
    if subject is None or subject.output_digest is None:
        return D.on_orphan_check(party(a))
    claimed = c.blobs.get(subject.output_digest)
    if role == Role.REPLICA and a.forced is not None:
        noticed = kind.noticed(spec, a.forced, c.blobs.get(a.output_digest or ""))
        return D.on_forced(here, party(a), noticed=noticed,
                           evidence={"checker": a.provider_id, "subject": subject.provider_id,
                                     "planted": a.forced})
    if role == Role.REPLICA:
        cmp = kind.check(spec, shard, claimed, c.blobs.get(a.output_digest or ""))
        return D.on_replica(here, party(a), party(subject), match=cmp.match,
                            evidence=_evidence(subject, a, cmp.statistic, cmp.detail),
                            audit=_audit(c))
    return _on_referee(c, s, a, task, job, kind, spec, shard, subject)


def _on_referee(c: Coordinator, s: Session, ref: Assignment, task: Task, job: Job, kind: Kind,
                spec: SpecBase, shard: bytes, subject: Assignment) -> list[Effect]:
    claimed = c.blobs.get(subject.output_digest or "")
    ref_out = c.blobs.get(ref.output_digest or "")
    agree_subject = kind.check(spec, shard, claimed, ref_out)
    checker = s.scalars(select(Assignment).where(
        Assignment.task_id == task.id, Assignment.role == Role.REPLICA,
        Assignment.status == AssignmentStatus.SUBMITTED)).first()
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
    blamed = (_inherited(s, task, subject, kind.wrong_checkpoints(claimed, ref_out))
              if v.fault in (Fault.SUBJECT, Fault.BOTH) and job.owner != NETWORK else None)
    evidence: dict[str, Any] = {
        "fault": v.fault.value, "subject": subject.provider_id, "checker": reporter,
        "referee": ref.provider_id, "subject_output": subject.output_digest,
        "checker_output": checker.output_digest if checker else task.reference_digest,
        "referee_output": ref.output_digest, "statistic": agree_subject.statistic,
        "detail": agree_subject.detail, "canary": job.owner == NETWORK,
    }
    if blamed is not None:
        recorders, void_from = blamed
        evidence |= {"fault": "inherited", "recorders": sorted({r.provider_id
                                                                for r in recorders})}
        return D.on_inherited(ctx(c, job, task), party(ref), party(subject),
                              party(checker) if checker is not None else None,
                              [party(r) for r in recorders],
                              checker_bad=v.fault == Fault.BOTH, void_from=void_from,
                              evidence=evidence)
    return D.on_verdict(ctx(c, job, task), v.fault, party(ref), party(subject),
                        party(checker) if checker is not None else None,
                        reexec=kind.check_payload(spec, shard, claimed) is None,
                        evidence=evidence)


def _inherited(s: Session, task: Task, subject: Assignment, wrong: list[tuple[int, str]]
               ) -> tuple[list[Assignment], int] | None:
    """Who recorded the claimed checkpoints a check shows ``wrong``, when none is the
    subject's own: the earlier attempts the subject resumed from, and the first step
    of the task's chain to void (the first checkpoint any of their providers recorded
    for the task: nothing a caught provider recorded is built on again). None when
    the subject is to blame (a wrong checkpoint of its own, or of its provider's).

    A checkpoint is inherited only when the claim's chain hash there is the recorded
    one, which commits to every checkpoint before it: a resumer that swapped an earlier
    recorded digest for junk (so that an honest checker, replaying from the junk, could
    not reach the next recorded checkpoint) framed its honest recorder otherwise. One
    provider is blamed once, however many of its leases recorded the chain."""
    if not wrong:
        return None
    recorded = {cp.step: cp for cp in checkpoints.chain_of(s, task.id)}
    recorders: dict[str, Assignment] = {}
    for step, chain_hash in wrong:
        cp = recorded.get(step)
        if cp is None or cp.chain_hash != chain_hash or cp.assignment_id == subject.id:
            return None
        a = s.get(Assignment, cp.assignment_id)
        if a is None or a.provider_id == subject.provider_id:
            return None
        recorders.setdefault(a.provider_id, a)
    providers = set(recorders)
    first = min(cp.step for cp in recorded.values() if cp.provider_id in providers)
    return list(recorders.values()), first


def resumed(s: Session, a: Assignment) -> bool:
    """Whether primary ``a`` grew its chain from another attempt's checkpoints."""
    return s.scalar(select(Checkpoint.id).join(Assignment, Assignment.id ==
                                               Checkpoint.assignment_id)
                    .where(Checkpoint.task_id == a.task_id, Assignment.role == Role.PRIMARY,
                           Checkpoint.assignment_id != a.id).limit(1)) is not None


def _audit(c: Coordinator) -> bool:
    """Draw whether an accepted result is audited by a trusted verifier."""
    return c.rng.random() < c.settings.verify.audit_share


def _on_audit(c: Coordinator, s: Session, a: Assignment, task: Task, job: Job, kind: Kind,
              spec: SpecBase, shard: bytes) -> list[Effect]:
    """A verifier re-ran a done task: does the result that stands survive it?"""
    accepted = s.scalars(select(Assignment).where(
        Assignment.task_id == task.id, Assignment.status == AssignmentStatus.ACCEPTED,
        Assignment.id != a.id)).all()
    subject = [x for x in accepted if x.output_digest == task.output_digest
               and x.role in (Role.PRIMARY, Role.CANARY, Role.REFEREE)]
    agreed = [x for x in accepted if x.role == Role.REPLICA and x.check_of in
              {y.id for y in subject}]
    mine = c.blobs.get(a.output_digest or "")
    stands = c.blobs.get(task.output_digest or "")
    cmp = kind.compare(spec, shard, stands, mine)
    spared: list[Assignment] = []
    released: list[Assignment] = []
    recorders: list[Assignment] = []
    if not cmp.match:
        # A replica that ran the task again is judged by its own output, not by the
        # result it agreed with: agreement within a tolerance is not transitive (a
        # command's bill padded within reach of a slow honest replica, but not of the
        # verifier's run), and an honest replica must not pay for the primary's lie.
        # One that re-scored a claim (a check payload) vouched for that claim itself.
        spared = [x for x in agreed if x.input_digest is None and kind.compare(
            spec, shard, c.blobs.get(x.output_digest or ""), mine).match]
        agreed = [x for x in agreed if x not in spared]
        wrong = kind.wrong_checkpoints(stands, mine)
        if wrong:
            # A check that replayed a few segments of the claim answers for those. One
            # that replayed the first wrong checkpoint vouched for a lie: slashed. One that
            # did not may be honest (its sample missed the cheat) or may have stamped a
            # later segment that does not replay either, which the verifier's re-run
            # cannot tell (past the first wrong checkpoint the claim's starts are not the
            # true ones): it is neither slashed nor paid (its fee back, ``Forfeit``) and
            # its other results are looked at again. Before, it was slashed: an honest
            # replica paid for what others answered.
            first = min(step for step, _ in wrong)
            unproven = [x for x in agreed if x.input_digest is not None
                        and first not in kind.vouched(c.blobs.get(x.output_digest or ""))]
            released += unproven
            agreed = [x for x in agreed if x not in unproven]
            for x in subject:
                blamed = (_inherited(s, task, x, wrong) if x.role == Role.PRIMARY
                          else None)
                if blamed is not None:
                    released.append(x)
                    known = {r.provider_id for r in recorders}
                    recorders += [r for r in blamed[0] if r.provider_id not in known]
    evidence = {"auditor": a.provider_id, "subject": [x.provider_id for x in subject],
                "checker": [x.provider_id for x in agreed], "statistic": cmp.statistic,
                "detail": cmp.detail, "subject_output": task.output_digest,
                "auditor_output": a.output_digest,
                **({"spared": [x.provider_id for x in spared]} if spared else {}),
                **({"released": [x.provider_id for x in released]} if released else {}),
                **({"recorders": sorted({r.provider_id for r in recorders})}
                   if recorders else {})}
    stood = ([party(x) for x in subject if x.role != Role.REFEREE and x not in released]
             + [party(x) for x in agreed])
    return D.on_audit(ctx(c, job, task), party(a), stood, match=cmp.match, evidence=evidence,
                      released=[party(x) for x in released],
                      recorders=[party(r) for r in recorders])


def _evidence(subject: Assignment, checker: Assignment, statistic: float,
              detail: str) -> dict[str, Any]:
    return {"subject": subject.provider_id, "checker": checker.provider_id,
            "subject_output": subject.output_digest, "checker_output": checker.output_digest,
            "statistic": statistic, "detail": detail}
