"""An in-memory world for one task: applies effects exactly as their contract says.

The simulator derives what a verdict costs whom from it, and the property tests
drive it with arbitrary histories; a test applies the same histories through
the coordinator against a real database and compares the two. Money lives in
integer accounts whose sum never changes:

    client       the job owner's spendable balance
    escrow       the job's escrow
    fee          the network's fees and treasury (check fees are paid from it)
    pending:<p>  a provider's unreleased earnings
    stake:<p>    a provider's bond
    acct:<p>     a provider's (or reporter's) spendable balance
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deai.core.lifecycle import effects as E
from deai.core.lifecycle.decide import TaskCtx, job_status_for
from deai.core.lifecycle.states import (
    ASSIGNMENT_MOVES,
    JOB_ACTIVE,
    JOB_MOVES,
    TASK_MOVES,
    TASK_OPEN,
    AssignmentStatus,
    JobStatus,
    Role,
    TaskStatus,
    move,
)
from deai.core.money import fee_of
from deai.core.verify.params import VerifyParams
from deai.core.verify.policy import slash_amounts


@dataclass
class Seat:
    provider: str
    role: Role
    status: AssignmentStatus
    cost: int  # what the assignment's work costs at its price


@dataclass
class Payout:
    assignment: str
    provider: str
    amount: int
    fee: int
    from_escrow: bool
    forfeited: bool = False


@dataclass
class Machine:
    escrow: int
    fee_bps: int
    params: VerifyParams
    stakes: dict[str, int]
    canary: bool = False
    treasury: int = 10**12
    max_attempts: int = 5
    job_status: JobStatus = JobStatus.PENDING
    task_status: TaskStatus = TaskStatus.QUEUED
    need: Role | None = None
    attempts: int = 0
    output: str | None = None
    seats: dict[str, Seat] = field(default_factory=dict)
    payouts: list[Payout] = field(default_factory=list)
    money: dict[str, int] = field(default_factory=dict)
    verdicts: int = 0
    # (who, reporter, verdicts recorded before the slash)
    slashes: list[tuple[str, str | None, int]] = field(default_factory=list)
    accepts: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.money.setdefault("escrow", self.escrow)
        self.money.setdefault("fee", self.treasury)
        for p, amount in self.stakes.items():
            self.money[f"stake:{p}"] = amount

    # --- the world's questions ------------------------------------------------------------

    def ctx(self) -> TaskCtx:
        return TaskCtx("t", "j", 0, self.job_status, self.task_status, self.attempts,
                       self.max_attempts, canary=self.canary)

    def total(self) -> int:
        return sum(self.money.values())

    def client_payments(self) -> int:
        """Escrow payouts for the task that still stand (not forfeited)."""
        return sum(1 for p in self.payouts if p.from_escrow and not p.forfeited)

    def _add(self, account: str, delta: int) -> None:
        self.money[account] = self.money.get(account, 0) + delta

    # --- effects --------------------------------------------------------------------------

    def seat(self, assignment: str, provider: str, role: Role, cost: int) -> None:
        """A new lease (placement happens outside the decisions)."""
        self.seats[assignment] = Seat(provider, role, AssignmentStatus.LEASED, cost)

    def apply(self, effects: list[E.Effect]) -> None:
        for e in effects:
            self._apply(e)

    def _apply(self, e: E.Effect) -> None:  # noqa: C901 - one branch per effect type
        if isinstance(e, E.MoveAssignment):
            seat = self.seats[e.assignment]
            seat.status = move(ASSIGNMENT_MOVES, seat.status, e.to)
        elif isinstance(e, E.MoveTask):
            self.task_status = move(TASK_MOVES, self.task_status, e.to)
            self.need = e.need
            self.attempts += int(e.attempt)
        elif isinstance(e, E.NeedCheck):
            self.need = e.need
        elif isinstance(e, E.Correct):
            self.output = e.assignment
            self.accepts = [e.assignment]
        elif isinstance(e, E.MoveJob):
            self.job_status = move(JOB_MOVES, self.job_status, e.to)
        elif isinstance(e, E.Accept):
            self._accept(e.assignment)
        elif isinstance(e, E.PayCheck):
            self._pay_check(e.assignment)
        elif isinstance(e, E.Slash):
            self._slash(e.provider, e.reporter)
        elif isinstance(e, E.Forfeit):
            self._forfeit(e.provider)
        elif isinstance(e, E.RecordVerdict):
            self.verdicts += 1
        elif isinstance(e, E.EndJob):
            self._end(e.to)
        elif isinstance(e, E.CompleteIfDone):
            if self.task_status == TaskStatus.DONE and self.job_status in JOB_ACTIVE:
                self._end(JobStatus.COMPLETED)
        elif isinstance(e, E.RefreshJob):
            if self.job_status in (JobStatus.RUNNING, JobStatus.VERIFYING) \
                    and self.task_status in TASK_OPEN:
                self.job_status = job_status_for({self.task_status})
        elif isinstance(e, E.Emit):
            self.events.append(e.kind)
        # Rate, Remember, RetireReference, LookBack and VoidCheckpoints change no money and
        # no status here.

    def _accept(self, assignment: str) -> None:
        seat = self.seats[assignment]
        if seat.status != AssignmentStatus.ACCEPTED:
            seat.status = move(ASSIGNMENT_MOVES, seat.status, AssignmentStatus.ACCEPTED)
        self.task_status = move(TASK_MOVES, self.task_status, TaskStatus.DONE)
        self.need, self.output = None, assignment
        self.accepts.append(assignment)
        if self.canary:
            self._pay_check(assignment)
        elif seat.cost > 0:
            fee = fee_of(seat.cost, self.fee_bps)
            self._add("escrow", -seat.cost)
            self._add("fee", fee)
            self._add(f"pending:{seat.provider}", seat.cost - fee)
            self.payouts.append(Payout(assignment, seat.provider, seat.cost - fee, fee, True))
        self.apply([E.CompleteIfDone()])

    def _pay_check(self, assignment: str) -> None:
        seat = self.seats[assignment]
        amount = min(seat.cost, self.money["fee"])
        if amount <= 0:
            return
        self._add("fee", -amount)
        self._add(f"pending:{seat.provider}", amount)
        self.payouts.append(Payout(assignment, seat.provider, amount, 0, False))

    def _slash(self, provider: str, reporter: str | None) -> None:
        cut = slash_amounts(self.money.get(f"stake:{provider}", 0), self.params,
                            reporter=reporter is not None)
        self._add(f"stake:{provider}", -cut.amount)
        if reporter is not None:
            self._add(f"acct:{reporter}", cut.bounty)
        self._add("fee", cut.amount - cut.bounty)
        self.slashes.append((provider, reporter, self.verdicts))
        self._forfeit(provider)

    def _forfeit(self, provider: str) -> None:
        """``provider``'s earnings on the task go back to whoever paid them."""
        back = fee_back = treasury = 0
        for p in self.payouts:
            if p.provider == provider and not p.forfeited:
                p.forfeited = True
                if p.from_escrow and not self.canary:
                    back += p.amount
                    fee_back += p.fee
                else:
                    treasury += p.amount
        if treasury:
            self._add(f"pending:{provider}", -treasury)
            self._add("fee", treasury)
        if back or fee_back:
            fee_back = min(fee_back, self.money["fee"])
            to = "escrow" if self.job_status in JOB_ACTIVE else "client"
            self._add(f"pending:{provider}", -back)
            self._add("fee", -fee_back)
            self._add(to, back + fee_back)

    def _end(self, to: JobStatus) -> None:
        if self.task_status in TASK_OPEN:
            self.task_status = move(TASK_MOVES, self.task_status, TaskStatus.FAILED)
        if self.task_status != TaskStatus.DONE:
            self.need = None
        for seat in self.seats.values():
            if seat.status == AssignmentStatus.LEASED:
                seat.status = AssignmentStatus.CANCELLED
        left = self.money["escrow"]
        if left > 0:
            self._add("escrow", -left)
            self._add("client", left)
        self.job_status = move(JOB_MOVES, self.job_status, to)
