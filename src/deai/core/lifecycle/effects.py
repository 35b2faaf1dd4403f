"""What a decision asks the world to do: plain frozen records, applied in order.

The coordinator applies a list of effects inside one transaction
(``deai.coordinator.effects``); the simulator and the property tests apply the
same lists to an in-memory ``Machine``. Money effects say who pays whom in the
lifecycle's terms; the settlement port turns them into journal entries.

    Effect
    ├── MoveAssignment   an assignment's new status (checked against the table)
    ├── MoveTask         a task's new status, and the check it waits for (need)
    ├── NeedCheck        a verifying task's wanted check changes (status unchanged)
    ├── MoveJob          a job's new status (placement starts it)
    ├── Accept           the task's output is this assignment's; pay it, task done
    ├── PayCheck         a check fee from the treasury to a checker or referee
    ├── Slash            a confirmed fault: stake cut, bounty, unreleased earnings forfeited
    ├── Forfeit          a task's earnings go back to whoever paid them, no stake cut
    ├── Rate             a pass or a fail for a provider's reputation
    ├── RecordVerdict    the verdict and its evidence, in the journal
    ├── Remember         verified work becomes a future canary
    ├── RetireReference  a canary's known answer proved wrong: never use it again
    ├── Correct          an audit overturned the result: the verifier's output stands
    ├── LookBack         a caught provider's results in their window are audited again
    ├── VoidCheckpoints  a task's checkpoints from a step on are dropped (proved wrong)
    ├── EndJob           close the job: open tasks fail, leases cancel, escrow refunded
    ├── CompleteIfDone   complete the job if every task is done
    ├── RefreshJob       running ⇄ verifying from the tasks' statuses
    └── Emit             an event for the stream
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deai.core.lifecycle.states import AssignmentStatus, JobStatus, Role, TaskStatus


@dataclass(frozen=True)
class MoveAssignment:
    assignment: str
    to: AssignmentStatus
    error: str | None = None


@dataclass(frozen=True)
class MoveTask:
    """A task's new status; ``attempt`` counts a new primary run (placement)."""

    to: TaskStatus
    need: Role | None = None
    error: str | None = None
    attempt: bool = False


@dataclass(frozen=True)
class NeedCheck:
    """A verifying task now waits for a check of this role (None: waits for nothing)."""

    need: Role | None


@dataclass(frozen=True)
class MoveJob:
    to: JobStatus


@dataclass(frozen=True)
class Accept:
    """The task's result is ``assignment``'s output. The client pays it from escrow
    (a canary's is paid by the treasury, like a check); the task is done."""

    assignment: str


@dataclass(frozen=True)
class PayCheck:
    assignment: str


@dataclass(frozen=True)
class Slash:
    provider: str
    reporter: str | None
    role: Role


@dataclass(frozen=True)
class Forfeit:
    """A provider's earnings on the task go back to whoever paid them, and no stake is cut:
    its output was overturned through no fault of its own (it resumed from a checkpoint
    another attempt recorded wrong)."""

    provider: str


@dataclass(frozen=True)
class Rate:
    provider: str
    passed: bool


@dataclass(frozen=True)
class RecordVerdict:
    evidence: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Remember:
    assignment: str


@dataclass(frozen=True)
class RetireReference:
    pass


@dataclass(frozen=True)
class Correct:
    """An audit overturned the task's result: its output becomes ``assignment``'s
    (a trusted verifier's re-run), and the job's result file is made again."""

    assignment: str


@dataclass(frozen=True)
class LookBack:
    """A provider was caught: every result of its still inside the challenge window is
    audited again by a verifier (and its earnings on them held until then)."""

    provider: str


@dataclass(frozen=True)
class VoidCheckpoints:
    """The task's checkpoints (its primaries' chain) at ``step`` and after are dropped: one
    was proved wrong, and every later one grew from it. The next attempt resumes from
    the last before them, or from the start."""

    step: int


@dataclass(frozen=True)
class EndJob:
    to: JobStatus
    error: str | None = None


@dataclass(frozen=True)
class CompleteIfDone:
    pass


@dataclass(frozen=True)
class RefreshJob:
    pass


@dataclass(frozen=True)
class Emit:
    kind: str
    subject: str
    body: dict[str, Any] = field(default_factory=dict, hash=False)


Effect = (MoveAssignment | MoveTask | NeedCheck | MoveJob | Accept | PayCheck | Slash | Forfeit
          | Rate | RecordVerdict | Remember | RetireReference | Correct | LookBack
          | VoidCheckpoints | EndJob | CompleteIfDone | RefreshJob | Emit)
