"""Sealed jobs on the coordinator: admit, meter, check and assemble without plaintext.

The coordinator never holds a key (``core.sealed``): it admits a sealed job
from the client's manifest (shards already split and encrypted), places every
lease of it only on ``spec.sealed_for`` (``market.TaskDemand.only``), and meters
a result from the units its output envelope states (at most the task's). It
cannot compare ciphertexts, so for a sealed job a check is done where the
plaintext may be: the checker's lease carries a check payload naming the shard
and the claimed output; the checker (a replica in the set, or a trusted
verifier as referee or auditor) decrypts both, re-runs the shard, compares, and
returns its verdict inside its signed output. ``on_result`` turns that verdict
into the same ``core.lifecycle.decide`` calls as an unsealed comparison, so
disputes still go to a trusted referee and audits still re-check agreements.
Sealed jobs are never kept as canaries (the network could not know their answer).

A sealed training task records checkpoints that are envelopes too
(``checkpoint_terms``): the coordinator checks the envelope's shard, step and
seal, and links the chain from the plaintext digest the provider states and
the genesis the client put in the manifest, so the chain's structure is
checked as for an unsealed job while the weights stay ciphertext. Its checks
are segment audits done by the checker, from those checkpoints, decrypted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import access, admission, blob_quota
from deai.coordinator.auth import coordinator
from deai.coordinator.service import Coordinator
from deai.core import kinds, sealed, wire
from deai.core.errors import InvalidInput, NoCapacity, NotFound
from deai.core.kinds.base import SpecBase
from deai.core.lifecycle import AssignmentStatus, Role
from deai.core.lifecycle import decide as D
from deai.core.lifecycle.decide import TaskCtx
from deai.core.lifecycle.effects import Effect
from deai.core.money import cost_for_units
from deai.core.verify import policy
from deai.store.models import Assignment, Checkpoint, Job, Task

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
CHECK_ROLES = (Role.REPLICA, Role.REFEREE, Role.AUDIT)


@router.get("/verifiers")
def verifiers(c: C) -> dict[str, list[str]]:
    """The network's trusted verifiers: a sealed job names them in ``sealed_for`` so that
    its disputes and audits can be decided (public: the list is no secret)."""
    return {"verifiers": sorted(c.settings.verifiers)}


Quote = Callable[[Session, list[int], bool], wire.QuoteOut]
"""The quote of a job of these shard units among the sealed set (online providers only,
or every registered one), as ``jobs`` makes it."""


def submit(c: Coordinator, owner: str, body: wire.JobIn, spec: SpecBase, *, quote: Quote,
           view: Callable[[str], wire.JobOut], key: admission.KeyUse | None = None,
           then: Callable[[Session, Job], Any] | None = None) -> wire.JobOut:
    """Admit a sealed job from its manifest (``body.input_digest``) in one transaction."""
    if spec.kind not in sealed.KINDS:
        raise InvalidInput(f"spec.sealed: sealed jobs run {', '.join(sorted(sealed.KINDS))} "
                           f"for now, not {spec.kind}", field="spec.sealed")
    if c.settings.verifiers and not c.settings.verifiers & set(spec.sealed_for):
        # Without one, a dispute could not be refereed nor an agreement audited (and the
        # earnings an audit holds would wait for it forever).
        raise InvalidInput("spec.sealed_for: name at least one of the network's verifiers "
                           "(GET /api/verifiers)", field="spec.sealed_for")
    if not c.blobs.exists(body.input_digest):
        raise NotFound("input_digest: no uploaded blob has this digest; upload it first",
                       field="input_digest")
    m = sealed.parse_manifest(c.blobs.get(body.input_digest), owner, spec.sealed_for)
    for i, sh in enumerate(m.shards):
        where = f"input_digest.shards[{i}].digest"
        access.require_own_blobs(c, owner, [sh.digest], where)
        env = sealed.parse_envelope(c.blobs.get(sh.digest), where)
        if env.part != "in" or env.idx != i or env.seal != m.seal or env.keys != m.keys:
            raise InvalidInput(f"{where}: not shard {i} of seal {m.seal} with the "
                               "manifest's keys", field=where)
    if spec.kind == "train" and any(sh.genesis is None for sh in m.shards):
        raise InvalidInput("input_digest.shards[0].genesis: a sealed training shard names its "
                           "chain's genesis hash", field="input_digest.shards[0].genesis")
    units = [sh.units for sh in m.shards]
    max_cost = sum(cost_for_units(u, spec.max_price) for u in units)

    reserve = policy.check_reserve(max_cost, len(m.shards), replicate=spec.replicate,
                                   parties_chosen=True)

    def create(s: Session) -> Job:
        q = quote(s, units, True)
        if not any(p["provider"] not in c.settings.verifiers for p in q.eligible):
            q = quote(s, units, False)
        if not any(p["provider"] not in c.settings.verifiers for p in q.eligible):
            raise NoCapacity("spec.sealed_for: no provider in the sealed set (other than "
                             "verifiers) can run this job", field="spec.sealed_for",
                             providers=q.ineligible)
        job, _ = admission.create(
            c, s, owner=owner, kind=spec.kind, model=kinds.get(spec.kind).model(spec).name,
            spec=spec.model_dump(mode="json"), input_digest=body.input_digest,
            max_price=spec.max_price,
            shards=[admission.ShardIn(sh.digest, sh.items, sh.units) for sh in m.shards],
            # its parties are its owner's choice: it pays its replicas
            # (``policy.owner_pays_check``)
            escrow=max_cost + reserve, check_budget=reserve,
            deadline=spec.deadline, key=key, event={"sealed": True})
        if then is not None:
            then(s, job)
        return job

    job = c.db.run(create)
    c.notifier.kick()
    c.notifier.published()
    return view(job.id)


def metering_problem(c: Coordinator, a: Assignment, task: Task, claimed: int) -> str | None:
    """Why a sealed result cannot stand as metered (None: it can). The coordinator cannot
    count vectors in a ciphertext: the envelope states the units, bounded by the task's,
    and a checker's output must carry its verdict."""
    try:
        env = sealed.parse_envelope(c.blobs.get(a.output_digest or ""))
    except (InvalidInput, KeyError) as exc:
        return getattr(exc, "message", "output: not a sealed envelope")
    if env.part != "out" or env.idx != task.idx:
        return f"output: not an output envelope of shard {task.idx}"
    if env.units != claimed:
        return f"units: the envelope states {env.units}, the result claims {claimed}"
    if claimed > task.units:
        return f"units: {claimed} is more than the task's {task.units}"
    if Role(a.role) in CHECK_ROLES and env.verdict is None:
        return "output.verdict: a check of a sealed job returns its verdict"
    return None


def check_payload(c: Coordinator, s: Session, task: Task, job: Job, role: Role,
                  check_of: str) -> str | None:
    """The blob a sealed job's checker leases: what to decrypt and compare."""
    subject = s.get(Assignment, check_of)
    if subject is None or subject.output_digest is None:
        return None
    checker = None
    if role == Role.REFEREE:
        checker = s.scalars(select(Assignment.output_digest).where(
            Assignment.task_id == task.id, Assignment.role == Role.REPLICA,
            Assignment.status == AssignmentStatus.SUBMITTED)).first()
    claimed = task.output_digest if role == Role.AUDIT else subject.output_digest
    return blob_quota.hold(c, s, sealed.CheckPayload(
        shard=task.input_digest, claimed=claimed or subject.output_digest,
        claimed_units=subject.units or 0, spec=job.spec, checker=checker,
        checkpoints=_recorded(s, task) if job.kind == "train" else {},
        nonce=c.check_nonce(check_of).hex()).to_bytes())


def _recorded(s: Session, task: Task) -> dict[str, str]:
    """A training task's recorded checkpoints: plaintext digest (as the chain names it, stated
    by the provider) → the sealed blob; the checker decrypts and checks the pairing."""
    rows = s.scalars(select(Checkpoint).where(Checkpoint.task_id == task.id)
                     .order_by(Checkpoint.id)).all()
    out: dict[str, str] = {}
    for cp in rows:
        plain = (cp.meta or {}).get("plain")
        if isinstance(plain, str):
            out.setdefault(plain, cp.digest)
    return out


def checkpoint_terms(c: Coordinator, job: Job, task: Task, body: wire.CheckpointIn
                     ) -> tuple[str, int, int, str]:
    """(digest the chain commits to, data order seed, steps, genesis) for recording a sealed
    training checkpoint: its blob must be this shard's checkpoint envelope at ``body.step``;
    the chain commits to the plaintext's digest, which the provider states in ``meta.plain``
    (a checker that decrypts the blob checks it); seed and steps come from the public spec
    and the task, the genesis from the client's manifest."""
    try:
        env = sealed.parse_envelope(c.blobs.get(body.digest), "digest")
    except KeyError:
        raise InvalidInput("digest: upload the checkpoint blob first", field="digest") from None
    m = sealed.parse_manifest(c.blobs.get(job.input_digest), job.owner,
                              tuple(job.spec.get("sealed_for") or ()))
    if env.part != "ckpt" or env.idx != task.idx or env.step != body.step or env.seal != m.seal:
        raise InvalidInput(f"digest: not a sealed checkpoint of shard {task.idx} at step "
                           f"{body.step}", field="digest")
    plain = body.meta.get("plain")
    if not isinstance(plain, str) or len(plain) != 64 or set(plain) - set("0123456789abcdef"):
        raise InvalidInput("meta.plain: the sha256 of the checkpoint before sealing",
                           field="meta.plain")
    genesis = m.shards[task.idx].genesis if task.idx < len(m.shards) else None
    seed = job.spec.get("seed")
    if genesis is None or not isinstance(seed, int):
        raise InvalidInput("assignment: this sealed job takes no checkpoints",
                           field="assignment")
    return plain, seed, task.items, genesis


def _verdict(c: Coordinator, a: Assignment) -> sealed.Verdict:
    v = sealed.parse_envelope(c.blobs.get(a.output_digest or "")).verdict
    assert v is not None  # metering_problem refused a check without one
    return v


def party(a: Assignment) -> D.Party:
    return D.Party(a.id, a.provider_id, Role(a.role))


def on_result(c: Coordinator, s: Session, a: Assignment, task: Task, here: TaskCtx,
              audit: Callable[[], bool]) -> list[Effect] | None:
    """A sealed check's signed verdict, as ``verify.on_result`` would decide a comparison
    (``audit`` draws whether an agreement is audited); None for a primary (handled as any
    other)."""
    role = Role(a.role)
    if role not in CHECK_ROLES:
        return None
    v = _verdict(c, a)
    if role == Role.AUDIT:
        accepted = s.scalars(select(Assignment).where(
            Assignment.task_id == task.id, Assignment.status == AssignmentStatus.ACCEPTED,
            Assignment.id != a.id)).all()
        subject = [x for x in accepted if x.output_digest == task.output_digest
                   and x.role in (Role.PRIMARY, Role.REFEREE)]
        agreed = [x for x in accepted if x.role == Role.REPLICA
                  and x.check_of in {y.id for y in subject}]
        stood = ([party(x) for x in subject if x.role != Role.REFEREE]
                 + [party(x) for x in agreed])
        evidence = {"auditor": a.provider_id, "subject": [x.provider_id for x in subject],
                    "checker": [x.provider_id for x in agreed], "statistic": v.statistic,
                    "detail": v.detail, "subject_output": task.output_digest,
                    "auditor_output": a.output_digest, "sealed": True}
        return D.on_audit(here, party(a), stood, match=v.subject, evidence=evidence)
    subj = s.get(Assignment, a.check_of) if a.check_of else None
    if subj is None or subj.output_digest is None:
        return D.on_orphan_check(party(a))
    if role == Role.REPLICA:
        return D.on_replica(here, party(a), party(subj), match=v.subject,
                            evidence={"subject": subj.provider_id, "checker": a.provider_id,
                                      "subject_output": subj.output_digest,
                                      "checker_output": a.output_digest,
                                      "statistic": v.statistic, "detail": v.detail,
                                      "sealed": True},
                            audit=audit())
    checker = s.scalars(select(Assignment).where(
        Assignment.task_id == task.id, Assignment.role == Role.REPLICA,
        Assignment.status == AssignmentStatus.SUBMITTED)).first()
    agree_checker = v.checker if v.checker is not None else True
    fault = policy.verdict([v.subject], [agree_checker]).fault
    evidence = {"fault": fault.value, "subject": subj.provider_id,
                "checker": checker.provider_id if checker else None,
                "referee": a.provider_id, "subject_output": subj.output_digest,
                "checker_output": checker.output_digest if checker else None,
                "referee_output": a.output_digest, "statistic": v.statistic,
                "detail": v.detail, "canary": False, "sealed": True}
    return D.on_verdict(here, fault, party(a), party(subj),
                        party(checker) if checker is not None else None,
                        reexec=True, evidence=evidence)


def assemble(c: Coordinator, job: Job, outputs: list[bytes]) -> bytes:
    """The result file of a sealed job: a header with the wrapped keys (so its owner needs
    nothing kept locally), then each shard's output envelope, in shard order."""
    m = sealed.parse_manifest(c.blobs.get(job.input_digest), job.owner,
                              tuple(job.spec.get("sealed_for") or ()))
    head = sealed.dumps({"deai_sealed": sealed.MAGIC, "part": "results", "seal": m.seal,
                         "keys": m.keys})
    return b"".join(line + b"\n" for line in (head, *outputs))
