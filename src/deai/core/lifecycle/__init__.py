"""The lifecycle of jobs, tasks and assignments: one table, pure decisions, effects.

``states``   the enums and the allowed transitions (the table)
``effects``  what a decision asks for, as plain records
``decide``   outcome → effects, for every outcome the network knows
``machine``  an in-memory interpreter of effects (the simulator's and the tests' world)
"""

from deai.core.lifecycle.states import (
    ASSIGNMENT_MOVES,
    CHECK_ROLES,
    JOB_ACTIVE,
    JOB_MOVES,
    SUBJECT_ROLES,
    TASK_MOVES,
    TASK_OPEN,
    TRUSTED_ROLES,
    AssignmentStatus,
    IllegalTransition,
    JobStatus,
    ProviderStatus,
    Role,
    TaskStatus,
    move,
)

__all__ = [
    "ASSIGNMENT_MOVES",
    "CHECK_ROLES",
    "JOB_ACTIVE",
    "JOB_MOVES",
    "SUBJECT_ROLES",
    "TASK_MOVES",
    "TASK_OPEN",
    "TRUSTED_ROLES",
    "AssignmentStatus",
    "IllegalTransition",
    "JobStatus",
    "ProviderStatus",
    "Role",
    "TaskStatus",
    "move",
]
