"""Applies the lifecycle's effects to the database, inside the caller's transaction.

This is the only module that changes a job's, task's or assignment's status
after creation, and every change goes through ``core.lifecycle.move`` (the
table) first. Money goes through the settlement port. The decisions themselves
are ``core.lifecycle.decide``'s; nothing here chooses what happens next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from deai.coordinator import blob_quota, canaries, datasets, lookback, touch
from deai.coordinator import reputation as rep
from deai.coordinator.service import Coordinator
from deai.core import kinds, ledger, sealed
from deai.core.lifecycle import (
    ASSIGNMENT_MOVES,
    JOB_ACTIVE,
    JOB_MOVES,
    TASK_MOVES,
    AssignmentStatus,
    IllegalTransition,
    JobStatus,
    Role,
    TaskStatus,
    move,
)
from deai.core.lifecycle import decide as D
from deai.core.lifecycle import effects as E
from deai.core.lifecycle.decide import TaskCtx, job_status_for
from deai.core.money import cost_for_units
from deai.core.verify import evidence, policy
from deai.store import db
from deai.store.models import (
    ApiBatch,
    ApiFile,
    Assignment,
    Job,
    JournalEntry,
    Payout,
    Provider,
    Task,
)
from deai.store.models import Reputation as RepRow

NETWORK = canaries.NETWORK
# A lease that ends here has no result standing: its ``ended_at`` is set (the gaps
# between a job's leases are what ``datasets.hold_fee`` charges).
ENDED = frozenset({AssignmentStatus.FAILED, AssignmentStatus.EXPIRED,
                   AssignmentStatus.CANCELLED, AssignmentStatus.REJECTED})


def ctx(c: Coordinator, job: Job, task: Task, job_status: JobStatus | None = None) -> TaskCtx:
    """The task and its job as decisions see them; ``job_status``: the job's as the caller
    read it, when newer than ``job``'s."""
    return TaskCtx(task=task.id, job=job.id, idx=task.idx,
                   job_status=job_status or JobStatus(job.status),
                   task_status=TaskStatus(task.status), attempts=task.attempts,
                   max_attempts=c.settings.max_attempts, canary=job.owner == NETWORK)


def apply(c: Coordinator, s: Session, job: Job, task: Task | None,
          effects: Iterable[E.Effect]) -> None:
    """Apply ``effects`` in order; ``task`` may be None for job-level effects only."""
    _Applier(c, s, job, task).run(effects)


class Placed(NamedTuple):
    """A primary (or canary) leased in a matcher batch, as the batch claimed it."""

    task: str
    job: str
    idx: int
    job_status: str  # the job's, as claimed (an earlier task of the batch may move it)
    task_status: str
    attempts: int
    canary: bool  # the network's own job


def placed_many(c: Coordinator, s: Session, placed: Sequence[Placed]) -> None:
    """``on_placed`` for many primaries (and canaries) leased in one matcher batch: the
    same decisions and the same moves through ``core.lifecycle.move`` as ``apply``, written
    as one executemany per table instead of one ORM update per row. ``placed`` are the
    tasks as the batch claimed them (``matching._commit``: their rows, read under lock,
    not ORM objects, each with no pending check: ``pending_role`` stays NULL and is left
    out of the statement, which spares an index and a trigger per row); a job's status
    moves once, as the applier would move it.

    A decision reads a task's states and counts, not its names (they only say which
    rows its effects move): it is made once per distinct (job status, task status,
    attempts, canary) in the batch, most often once, not once per task (its context and
    its effects were a tenth of a batch)."""
    now = c.now()
    tasks: list[dict[str, Any]] = []
    jobs: dict[str, dict[str, Any]] = {}
    job_now: dict[str, str] = {}
    decided: dict[tuple[str, str, int, bool], tuple[str | None, int, str | None]] = {}
    for x in placed:
        job_status = job_now.get(x.job, x.job_status)  # moved by an earlier task of this batch
        sig = (job_status, x.task_status, x.attempts, x.canary)
        d = decided.get(sig)
        if d is None:
            d = decided[sig] = _on_placed(TaskCtx(
                task=x.task, job=x.job, idx=x.idx, job_status=JobStatus(job_status),
                task_status=TaskStatus(x.task_status), attempts=x.attempts,
                max_attempts=c.settings.max_attempts, canary=x.canary))
        to, more, to_job = d
        if to is not None:
            tasks.append({"b_id": x.task, "b_from": x.task_status, "b_to": to,
                          "b_attempts": x.attempts + more, "b_t": now})
        if to_job is not None:
            jobs.setdefault(x.job, {"b_id": x.job, "b_from": job_status, "b_to": to_job})
            job_now[x.job] = to_job
    tt, jt = cast(Table, Task.__table__), cast(Table, Job.__table__)
    db.update_many(s, tt, tasks, where={"id": "b_id", "status": "b_from"},
                   values={"status": "b_to", "attempts": "b_attempts", "updated_at": "b_t"})
    db.update_many(s, jt, list(jobs.values()), where={"id": "b_id", "status": "b_from"},
                   values={"status": "b_to"})


def _on_placed(x: TaskCtx) -> tuple[str | None, int, str | None]:
    """A primary's ``on_placed`` as (the task's new status and the attempts it adds, the
    job's new status; None where it does not move), each move checked by
    ``core.lifecycle.move``."""
    to: str | None = None
    to_job: str | None = None
    more = 0
    for e in D.on_placed(x, Role.PRIMARY):
        if isinstance(e, E.MoveTask):
            if e.need is not None:  # a primary's task waits for no check, before or after
                raise IllegalTransition(f"placed_many: a primary cannot need {e.need}")
            to, more = move(TASK_MOVES, x.task_status, e.to), int(e.attempt)
        elif isinstance(e, E.MoveJob):
            to_job = move(JOB_MOVES, x.job_status, e.to)
        else:
            raise IllegalTransition(f"placed_many: unexpected effect {e!r}")
    return to, more, to_job


class _Applier:
    def __init__(self, c: Coordinator, s: Session, job: Job, task: Task | None) -> None:
        self.c, self.s, self.job, self._task = c, s, job, task
        self.handlers: dict[type, Callable[[Any], None]] = {
            E.MoveAssignment: self.move_assignment, E.MoveTask: self.move_task,
            E.NeedCheck: self.need_check, E.MoveJob: self.move_job, E.Accept: self.accept,
            E.PayCheck: self.pay_check, E.Slash: self.slash, E.Rate: self.rate,
            E.RecordVerdict: self.record_verdict, E.Remember: self.remember,
            E.RetireReference: self.retire_reference, E.Correct: self.correct,
            E.LookBack: self.look_back, E.VoidCheckpoints: self.void_checkpoints,
            E.Forfeit: self.forfeit,
            E.EndJob: self.end_job,
            E.CompleteIfDone: self.complete_if_done, E.RefreshJob: self.refresh_job,
            E.Emit: self.emit,
        }

    @property
    def task(self) -> Task:
        if self._task is None:
            raise IllegalTransition("a task effect without a task")
        return self._task

    def run(self, effects: Iterable[E.Effect]) -> None:
        todo = list(effects)
        self._lock_parties(todo)
        for e in todo:
            self.handlers[type(e)](e)
        self._touch(todo)

    def _touch(self, todo: list[E.Effect]) -> None:
        """Tell matching's index which providers' load, rating or stake these changed."""
        pids: set[str] = set()
        for e in todo:
            if isinstance(e, (E.Rate, E.Slash)):
                pids.add(e.provider)
            elif isinstance(e, (E.MoveAssignment, E.Accept, E.PayCheck)):
                a = self.s.get(Assignment, e.assignment)
                if a is not None:
                    pids.add(a.provider_id)
        if pids:
            touch.touched(self.s, pids)

    def _lock_parties(self, todo: list[E.Effect]) -> None:
        """Lock the providers (and their reputation for this workload) that the effects
        pay, rate or slash, in ascending id, before any of them touches the journal:
        the lock order of ``store.db`` puts providers and reputation before the journal
        head, whatever order the decision lists its effects in. PostgreSQL only."""
        if self.c.db.is_sqlite:
            return
        pids: set[str] = set()
        for e in todo:
            if isinstance(e, (E.Rate, E.Slash, E.Forfeit)):
                pids.add(e.provider)
            elif isinstance(e, (E.Accept, E.PayCheck)):
                a = self.s.get(Assignment, e.assignment)
                if a is not None:
                    pids.add(a.provider_id)
        if not pids:
            return
        ids = sorted(pids)
        self.s.execute(select(Provider.id).where(Provider.id.in_(ids))
                       .order_by(Provider.id).with_for_update(key_share=True))
        self.s.execute(select(RepRow.provider_id).where(
            RepRow.provider_id.in_(ids), RepRow.workload == self.job.kind)
            .order_by(RepRow.provider_id).with_for_update())
        # The earnings a slash or a forfeit takes back: a release (``jobs.release_earnings``,
        # which skips locked payouts) that claimed one first has committed by now, and none
        # claims them until this commits, so one payout is never both released and taken
        # back. Before the journal head (``RecordVerdict`` comes first in a verdict).
        takers = sorted({e.provider for e in todo if isinstance(e, (E.Slash, E.Forfeit))})
        if takers:
            self.s.execute(select(Payout.id).where(Payout.provider_id.in_(takers),
                                                   Payout.job_id == self.job.id)
                           .order_by(Payout.id).with_for_update())

    def _assignment(self, aid: str) -> Assignment:
        a = self.s.get(Assignment, aid)
        if a is None:
            raise IllegalTransition(f"no assignment {aid}")
        return a

    # --- statuses ---------------------------------------------------------------------------

    def move_assignment(self, e: E.MoveAssignment) -> None:
        a = self._assignment(e.assignment)
        a.status = move(ASSIGNMENT_MOVES, a.status, e.to)
        if e.to in ENDED:
            a.ended_at = self.c.now()
        if e.error is not None:
            a.error = e.error

    def move_task(self, e: E.MoveTask) -> None:
        t = self.task
        t.status = move(TASK_MOVES, t.status, e.to)
        t.pending_role = e.need
        t.attempts += int(e.attempt)
        if e.error is not None:
            t.error = e.error
        t.updated_at = self.c.now()

    def need_check(self, e: E.NeedCheck) -> None:
        t = self.task
        allowed = TaskStatus.DONE if e.need == Role.AUDIT else TaskStatus.VERIFYING
        if e.need is not None and t.status != allowed:
            raise IllegalTransition(f"a {t.status} task cannot wait for a {e.need} check",
                                    status=t.status)
        t.pending_role, t.updated_at = e.need, self.c.now()

    def move_job(self, e: E.MoveJob) -> None:
        self.job.status = move(JOB_MOVES, self.job.status, e.to)

    # --- money ------------------------------------------------------------------------------

    def _payout(self, a: Assignment, amount: int, entry: ledger.Entry) -> None:
        self.s.add(Payout(assignment_id=a.id, task_id=a.task_id, provider_id=a.provider_id,
                          amount=amount, release_at=self.c.now() + self.c.settings.challenge_window,
                          released=False, journal_seq=entry.seq, job_id=a.job_id))

    def accept(self, e: E.Accept) -> None:
        """Pay the assignment (escrow; a canary's from the treasury), task done."""
        a, t, job = self._assignment(e.assignment), self.task, self.job
        cost = cost_for_units(a.units or 0, a.price)
        prov = self.s.get(Provider, a.provider_id)
        if prov is not None:  # before the journal posting (lock order, ``store.db``)
            prov.tasks_done += 1
            self.s.flush()
        if job.owner == NETWORK:
            self.pay_check(E.PayCheck(a.id))
        elif cost > 0:
            entry, to_provider, _ = self.c.settlement.pay_task(
                self.s, job.id, t.id, a.id, a.provider_id, cost)
            job.cost += cost
            self._payout(a, to_provider, entry)
        if a.status != AssignmentStatus.ACCEPTED:
            a.status = move(ASSIGNMENT_MOVES, a.status, AssignmentStatus.ACCEPTED)
        t.status = move(TASK_MOVES, t.status, TaskStatus.DONE)
        t.output_digest, t.pending_role, t.updated_at = a.output_digest, None, self.c.now()
        self.c.emit(self.s, "task_accepted", t.id, job=job.id, provider=a.provider_id,
                    cost=cost, role=a.role)
        self.s.flush()
        self.complete_if_done(E.CompleteIfDone())

    def pay_check(self, e: E.PayCheck) -> None:
        a = self._assignment(e.assignment)
        cost = cost_for_units(*self._check_terms(a))
        if cost <= 0:
            return
        if self._owner_pays(a):
            self._pay_check_from_escrow(a, cost)
            return
        entry, amount = self.c.settlement.pay_check(self.s, a.provider_id, cost, a.id, a.role)
        if entry is None:
            self.c.emit(self.s, "check_unpaid", a.id, provider=a.provider_id, owed=cost)
            return
        self._payout(a, amount, entry)

    def _owner_pays(self, a: Assignment) -> bool:
        """``policy.owner_pays_check`` for ``a``, as decided when the job was submitted: a
        job with a check budget (``Job.check_budget``) pays its own replicas."""
        return self.job.check_budget is not None and policy.owner_pays_check(
            a.role, forced=a.forced is not None)

    def _pay_check_from_escrow(self, a: Assignment, cost: int) -> None:
        """Pay a replica the job's owner pays (``policy.owner_pays_check``) from what its
        escrow holds for them (``Job.check_budget``, set aside at submission beyond its
        tasks' cost and royalty), as a payout, so a forfeit returns it to the owner; the
        rest, if the budget is spent, is owed unpaid."""
        s, job = self.s, self.job
        left = min(job.check_budget or 0, self.c.settlement.balance(s, ledger.escrow(job.id)))
        amount = min(cost, left)
        if amount > 0:
            entry, to_provider, _ = self.c.settlement.pay_task(
                s, job.id, a.task_id, a.id, a.provider_id, amount)
            job.cost += amount
            job.check_budget = (job.check_budget or 0) - amount
            self._payout(a, to_provider, entry)
        if amount < cost:
            self.c.emit(s, "check_unpaid", a.id, provider=a.provider_id,
                        owed=cost - max(amount, 0), payer="escrow")

    def _check_terms(self, a: Assignment) -> tuple[int, int]:
        """What a check is paid for: (units, price per unit).

        The price is that of the result it checks, whatever the checker asks. Checkers
        are drawn by stake and reputation, and a fixed fee means an inflated ask earns
        nothing more from the treasury either. The lease itself still shows the checker's
        own price, like every lease (blind work).

        The units are the check's own, as metered from its output, but never more than
        the result it checks was metered at. A check does that result's work again, and
        its output is the checker's to write: a chat checker claiming two billion prompt
        tokens was otherwise paid for them from the treasury, up to all of it.

        A canary checks nobody's result: it is paid at its own price, like the work it
        imitates, for at most its task's units (what the shard can hold)."""
        units = a.units or 0
        subject = self.s.get(Assignment, a.check_of) if a.check_of is not None else None
        if subject is None:
            return min(units, self.task.units), a.price
        return min(units, subject.units or 0), subject.price

    def slash(self, e: E.Slash) -> None:
        """Cut the stake, pay the bounty, and forfeit the job's unreleased earnings."""
        s, c, job = self.s, self.c, self.job
        stake = c.settlement.balance(s, ledger.stake(e.provider))
        cut = policy.slash_amounts(stake, c.settings.verify, reporter=e.reporter is not None)
        why = {"task": self.task.id, "role": e.role.value}
        taken = c.settlement.slash(s, e.provider, cut.amount, e.reporter, cut.bounty, why)
        clawed, forfeited = self._take_back(e.provider, whole_job=True)
        c.emit(s, "slash", e.provider, job=job.id, amount=taken, bounty=min(cut.bounty, taken),
               bounty_to=e.reporter, forfeited=forfeited, clawed_back=clawed, **why)

    def forfeit(self, e: E.Forfeit) -> None:
        """The task's earnings go back where they came from; no stake is cut."""
        clawed, forfeited = self._take_back(e.provider, whole_job=False)
        if forfeited:
            self.c.emit(self.s, "forfeit", e.provider, job=self.job.id, task=self.task.id,
                        forfeited=forfeited, clawed_back=clawed)

    def _take_back(self, provider: str, *, whole_job: bool) -> tuple[int, int]:
        """Return ``provider``'s earnings on this task (``whole_job``: its unreleased ones
        on the whole job too) to whoever paid them: what the client paid (and the fee on
        it) to the client, check fees and canaries' pay to the treasury. Returns (what had
        already left pending, everything returned). On PostgreSQL the payouts were
        locked before any effect (``_lock_parties``)."""
        s, c, job = self.s, self.c, self.job
        # this task's earnings that already left pending (a look-back past the window)
        clawed = lookback.claw_back(c, s, job, self.task.id, provider)
        forfeited = fee_back = from_treasury = 0
        rows = select(Payout).where(Payout.provider_id == provider, Payout.job_id == job.id,
                                    Payout.released.is_(False), Payout.forfeited.is_(False))
        if not whole_job:
            rows = rows.where(Payout.task_id == self.task.id)
        for row in s.scalars(rows.execution_options(populate_existing=True)):
            row.forfeited, row.released = True, True
            entry = s.get(JournalEntry, row.journal_seq)
            if entry is not None and entry.kind == "payout" and job.owner != NETWORK:
                forfeited += row.amount
                fee_back += int(entry.body.get("fee", 0))
            else:
                from_treasury += row.amount
        if from_treasury:
            c.settlement.forfeit(s, provider, job.id, from_treasury, 0, ledger.FEE)
        if forfeited or fee_back:
            to = ledger.escrow(job.id) if job.status in JOB_ACTIVE else ledger.acct(job.owner)
            fee_back = c.settlement.forfeit(s, provider, job.id, forfeited, fee_back, to)
            job.cost -= forfeited + fee_back
            if to != ledger.escrow(job.id):
                job.refunded += forfeited + fee_back
        return clawed, forfeited + from_treasury + clawed

    # --- verification records ---------------------------------------------------------------

    def rate(self, e: E.Rate) -> None:
        rep.rate(self.s, e.provider, self.job.kind, e.passed, self.c.now(),
                 self.c.settings.verify)

    def record_verdict(self, e: E.RecordVerdict) -> None:
        # The journal is public: outputs appear as commitments (``core.verify.evidence``).
        self.c.settlement.record(self.s, self.task.id,
                                 evidence.blind(e.evidence, self.task.input_digest))

    def remember(self, e: E.Remember) -> None:
        canaries.remember(self.c, self.s, self.job, self.task, self._assignment(e.assignment))

    def retire_reference(self, _: E.RetireReference) -> None:
        canaries.retire(self.s, self.task.reference_digest)

    def correct(self, e: E.Correct) -> None:
        """The verifier's output replaces the task's; the job's result is made again."""
        s, c, job, t = self.s, self.c, self.job, self.task
        a = self._assignment(e.assignment)
        before = t.output_digest
        t.output_digest, t.updated_at = a.output_digest, c.now()
        if job.status == JobStatus.COMPLETED and job.owner != NETWORK:
            s.flush()
            job.error = self._assemble()
            self._refresh_batch_output()
        c.emit(s, "result_corrected", job.id, task=t.id, idx=t.idx, owner=job.owner,
               was=before)

    def _refresh_batch_output(self) -> None:
        """A ``/v1`` batch's output file is the job's result: it follows a correction."""
        job = self.job
        if not job.output_digest:
            return
        for b in self.s.scalars(select(ApiBatch).where(ApiBatch.job_id == job.id,
                                                       ApiBatch.output_file_id.is_not(None))):
            f = self.s.get(ApiFile, b.output_file_id)
            if f is not None and f.digest != job.output_digest:
                f.digest, f.size = job.output_digest, len(self.c.blobs.get(job.output_digest))

    def look_back(self, e: E.LookBack) -> None:
        """Audit again every result of ``e.provider`` within core's look-back reach."""
        lookback.queue(self.c, self.s, e.provider)

    # --- the job ------------------------------------------------------------------------------

    def void_checkpoints(self, e: E.VoidCheckpoints) -> None:
        """Drop the task's primary chain from ``e.step`` on (``checkpoints.void``)."""
        from deai.coordinator import checkpoints

        n = checkpoints.void(self.s, self.task.id, e.step)
        if n:
            self.c.emit(self.s, "checkpoints_voided", self.task.id, step=e.step, count=n)

    def end_job(self, e: E.EndJob) -> None:
        """Close the job: open tasks fail, live leases are cancelled, escrow refunded."""
        s, c, job = self.s, self.c, self.job
        now = c.now()
        for t in s.scalars(select(Task).where(Task.job_id == job.id,
                                              Task.status != TaskStatus.DONE)):
            if t.status != TaskStatus.FAILED:
                t.status = move(TASK_MOVES, t.status, TaskStatus.FAILED)
            t.pending_role, t.updated_at = None, now
        for a in s.scalars(select(Assignment).where(Assignment.job_id == job.id,
                                                    Assignment.status == AssignmentStatus.LEASED)):
            a.status = move(ASSIGNMENT_MOVES, a.status, AssignmentStatus.CANCELLED)
            a.ended_at = now
        if job.spec.get("dataset_id"):  # paid when a model was made, else given back
            if e.to == JobStatus.COMPLETED:
                datasets.pay_use(c, s, job)
            else:
                datasets.end_use(c, s, job)
        left = c.settlement.refund(s, job.owner, job.id, e.to.value)
        job.status = move(JOB_MOVES, job.status, e.to)
        job.error, job.finished_at = e.error, now
        job.refunded += left
        c.emit(s, f"job_{e.to.value}", job.id, refunded=left, cost=job.cost, error=e.error)

    def complete_if_done(self, _: E.CompleteIfDone) -> None:
        s, job = self.s, self.job
        s.flush()
        left = s.scalar(select(Task.id).where(Task.job_id == job.id,
                                              Task.status != TaskStatus.DONE).limit(1))
        if left is not None or job.status not in JOB_ACTIVE:
            return
        error = None
        if job.owner != NETWORK:  # a canary has nothing to assemble
            error = self._assemble()
        self.end_job(E.EndJob(JobStatus.COMPLETED, error))

    def _assemble(self) -> str | None:
        s, c, job = self.s, self.c, self.job
        digests = list(s.scalars(select(Task.output_digest).where(Task.job_id == job.id)
                                 .order_by(Task.idx)))
        kind = kinds.get(job.kind)
        outputs = [c.blobs.get(d) for d in digests if d]
        if sealed.is_sealed(job.spec):  # ciphertexts only: the owner decrypts (client.sealed)
            from deai.coordinator import sealed_jobs
            job.output_digest = blob_quota.hold(c, s, sealed_jobs.assemble(c, job, outputs))
            return None
        # held until this commits: a discard of equal bytes cannot take them from the job
        job.output_digest = blob_quota.hold(
            c, s, kind.assemble(job.id, kind.parse_spec(job.spec), outputs))
        # Work that ran and failed on its own terms (a command over its limit) is still
        # accepted work; the job completes and says what went wrong.
        problems = kind.errors(outputs)
        if not problems:
            return None
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        return "; ".join(problems[:5]) + more

    def refresh_job(self, _: E.RefreshJob) -> None:
        s, job = self.s, self.job
        if job.status not in (JobStatus.RUNNING, JobStatus.VERIFYING):
            return
        s.flush()
        open_ = {TaskStatus(x) for x in s.scalars(select(Task.status).where(
            Task.job_id == job.id, Task.status.not_in((TaskStatus.DONE, TaskStatus.FAILED))))}
        want = job_status_for(open_)
        if want != job.status:
            job.status = move(JOB_MOVES, job.status, want)

    def emit(self, e: E.Emit) -> None:
        self.c.emit(self.s, e.kind, e.subject, **e.body)

