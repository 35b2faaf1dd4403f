"""Statuses, roles and the transitions allowed between them: the lifecycle table.

This is the one place a status or a role is spelled. The database holds CHECK
constraints built from these enums (``CHECKS``), and ``move`` refuses any change
that the table does not list, so no code path can invent a transition.

    job:        pending ─▶ running ⇄ verifying ─▶ completed | failed | cancelled
                pending ─▶ failed | cancelled                 (ended before placement)
    task:       queued ─▶ assigned ─▶ verifying ─▶ done
                assigned ─▶ done                             (accepted unchecked)
                assigned | verifying ─▶ queued               (run again)
                queued | assigned | verifying ─▶ failed       (job ended, or out of attempts)
    assignment: leased ─▶ submitted ─▶ accepted | rejected | expired
                leased ─▶ accepted | rejected | failed | expired | cancelled
                accepted ─▶ rejected                         (overturned by an audit)

A verifying task may wait for a check to be placed: ``Task.need`` names the role
(replica or referee) the next assignment must fill; it is part of the state, not
a hidden flag. A ``done`` task is provisional until its challenge window closes:
it may wait for an ``audit`` (a trusted verifier re-runs it), and an audit that
disagrees corrects its output.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from deai.core.errors import Conflict


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"


class AssignmentStatus(StrEnum):
    LEASED = "leased"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Role(StrEnum):
    PRIMARY = "primary"    # runs the task
    REPLICA = "replica"    # runs it again on another provider, to compare
    REFEREE = "referee"    # decides a disagreement
    CANARY = "canary"      # runs a task whose answer the network knows
    AUDIT = "audit"        # a trusted verifier re-runs an accepted result in its window


class ProviderStatus(StrEnum):
    ACTIVE = "active"


J, T, A = JobStatus, TaskStatus, AssignmentStatus

JOB_ACTIVE: frozenset[JobStatus] = frozenset({J.PENDING, J.RUNNING, J.VERIFYING})
TASK_OPEN: frozenset[TaskStatus] = frozenset({T.QUEUED, T.ASSIGNED, T.VERIFYING})
CHECK_ROLES: frozenset[Role] = frozenset({Role.REPLICA, Role.REFEREE})
TRUSTED_ROLES: frozenset[Role] = frozenset({Role.REFEREE, Role.AUDIT})
"""Roles only a verifier the network trusts may fill: they decide verdicts."""
SUBJECT_ROLES: frozenset[Role] = frozenset({Role.PRIMARY, Role.CANARY})

JOB_INITIAL: frozenset[JobStatus] = frozenset({J.PENDING, J.RUNNING})
TASK_INITIAL: frozenset[TaskStatus] = frozenset({T.QUEUED, T.ASSIGNED})
ASSIGNMENT_INITIAL: frozenset[AssignmentStatus] = frozenset({A.LEASED})

JOB_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    J.PENDING: frozenset({J.RUNNING, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.RUNNING: frozenset({J.VERIFYING, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.VERIFYING: frozenset({J.RUNNING, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.COMPLETED: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELLED: frozenset(),
}
TASK_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    T.QUEUED: frozenset({T.ASSIGNED, T.FAILED}),
    T.ASSIGNED: frozenset({T.VERIFYING, T.DONE, T.QUEUED, T.FAILED}),
    T.VERIFYING: frozenset({T.DONE, T.QUEUED, T.FAILED}),
    T.DONE: frozenset(),
    T.FAILED: frozenset(),
}
ASSIGNMENT_MOVES: dict[AssignmentStatus, frozenset[AssignmentStatus]] = {
    A.LEASED: frozenset({A.SUBMITTED, A.ACCEPTED, A.REJECTED, A.FAILED, A.EXPIRED,
                         A.CANCELLED}),
    A.SUBMITTED: frozenset({A.ACCEPTED, A.REJECTED, A.EXPIRED}),
    A.ACCEPTED: frozenset({A.REJECTED}),  # an audit overturned a provisional acceptance
    A.REJECTED: frozenset(),
    A.FAILED: frozenset(),
    A.EXPIRED: frozenset(),
    A.CANCELLED: frozenset(),
}

TABLES = {"job": JOB_MOVES, "task": TASK_MOVES, "assignment": ASSIGNMENT_MOVES}


class IllegalTransition(Conflict):
    """A change the lifecycle table does not allow: refused, nothing written.

    Raised when a late or duplicated message (a result for a task that another
    replica of the coordinator has already settled) meets a state that moved on.
    """

    code = "illegal_transition"


S = TypeVar("S", bound=StrEnum)


def move(table: dict[S, frozenset[S]], current: str, new: S) -> S:
    """``new`` if the table allows ``current → new``; otherwise ``IllegalTransition``."""
    cur = type(new)(current)
    if new not in table[cur]:
        raise IllegalTransition(f"{type(new).__name__.lower()} cannot go from {cur} to {new}",
                                status=str(cur))
    return new


def check_constraint(column: str, enum: type[StrEnum], *, nullable: bool = False) -> str:
    """SQL for a CHECK constraint that admits only the enum's values."""
    values = ", ".join(f"'{m.value}'" for m in enum)
    clause = f"{column} IN ({values})"
    return f"{column} IS NULL OR {clause}" if nullable else clause


# table -> [(constraint name, SQL)]: the same text in the models and the migration.
CHECKS: dict[str, list[tuple[str, str]]] = {
    "jobs": [("ck_jobs_status", check_constraint("status", JobStatus))],
    "tasks": [("ck_tasks_status", check_constraint("status", TaskStatus)),
              ("ck_tasks_need", check_constraint("pending_role", Role, nullable=True))],
    "assignments": [("ck_assignments_status", check_constraint("status", AssignmentStatus)),
                    ("ck_assignments_role", check_constraint("role", Role))],
    "providers": [("ck_providers_status", check_constraint("status", ProviderStatus))],
}


def mermaid(name: str) -> str:
    """The state diagram of one table, as Mermaid text (docs/architecture.md embeds it)."""
    table: dict[Any, frozenset[Any]] = TABLES[name]  # type: ignore[assignment]
    initial: frozenset[StrEnum] = {"job": JOB_INITIAL, "task": TASK_INITIAL,
                                   "assignment": ASSIGNMENT_INITIAL}[name]
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {s}" for s in sorted(initial)]
    for src in table:
        for dst in sorted(table[src]):
            lines.append(f"    {src} --> {dst}")
        if not table[src]:
            lines.append(f"    {src} --> [*]")
    return "\n".join(lines)
