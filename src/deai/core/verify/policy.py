"""Who gets checked and who is at fault, as pure functions.

Replication (research/verification.md §10.4): ρ = 1 while a provider's CV is
under the bootstrap threshold, while it is on probation, or when the client
asked for it; otherwise ρ = max(ρ_min, 1/CV). Canaries are drawn at share q
among dispatched tasks. A mismatch never slashes by itself: a referee re-runs
the work and the party that contradicts the referee is at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from deai.core import sealed
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation


def replication_probability(rep: Reputation, p: VerifyParams, *, always: bool = False) -> float:
    if always:
        return 1.0
    if not p.replicate:
        return 0.0
    if rep.probation > 0 or rep.cv < p.cv_bootstrap:
        return 1.0
    return max(p.rho_min, 1.0 / rep.cv)


def should_replicate(rep: Reputation, p: VerifyParams, draw: float, *,
                     always: bool = False) -> bool:
    """``draw`` is a uniform number in [0, 1) from the coordinator's RNG."""
    return draw < replication_probability(rep, p, always=always)


def owner_pays_replicas(*, replicate: bool, parties_chosen: bool) -> bool:
    """Whether a client's job pays its own replicas, from its escrow, not the treasury:
    one whose owner chose who may run it (a sealed job's parties, a dataset's listed
    providers), or asked for every task to be replicated (``replicate``). The treasury
    pays the checks the network chose and placed. A client and its own providers, on a
    job sealed for them alone with every task replicated, were paid 95% of what the job
    cost again by the treasury, for honest work no check could fault, on every job."""
    return replicate or parties_chosen


def owner_pays_check(role: str, *, forced: bool) -> bool:
    """On a job that pays its own replicas (``owner_pays_replicas``), whether this check
    is one: a replica, not one carrying a forced error (the network's test of its
    checker). Audits and referees (the network's verifiers) and canaries stay the
    treasury's."""
    return role == "replica" and not forced


def check_reserve(max_cost: int, tasks: int, *, replicate: bool, parties_chosen: bool) -> int:
    """What a job's escrow holds beyond its tasks' cost at its price (``max_cost``) when
    it pays its own replicas (``owner_pays_replicas``): as much again, and 1 µ a task
    for the rounding of each; what no replica used is refunded with the rest. None of
    it is spent on the tasks' own runs, which ``max_cost`` covers."""
    return max_cost + tasks if owner_pays_replicas(replicate=replicate,
                                                   parties_chosen=parties_chosen) else 0


def canary_odds(p: VerifyParams) -> float:
    """Canaries per real task so that canaries are a share q of all dispatched tasks."""
    return p.canary_share / (1.0 - p.canary_share) if p.canary_share < 1.0 else float("inf")


MAX_CANARY_SHARDS = 4  # a canary job has one to four shards (``coordinator.canaries``)


def may_be_canary(spec: Mapping[str, Any] | None, shards: int) -> bool:
    """Whether a job could be a canary, as anyone can tell from its public face: a sealed
    job's answer is no known answer (the network cannot read it), a dataset job's rows
    reach only its own leases, and a canary job has at most ``MAX_CANARY_SHARDS``
    shards. A provider leased work of any other job knows no canary can come."""
    return (shards <= MAX_CANARY_SHARDS and not sealed.is_sealed(dict(spec or {}))
            and not (spec or {}).get("dataset_id"))


def check_probability(rep: Reputation, p: VerifyParams, *, canary: bool = True) -> float:
    """p = q + (1 − q)·(1 − (1 − ρ)(1 − a)): the chance that a given dispatched task is
    checked, by a canary, a replica or a verifier's audit of the accepted result.

    ``canary=False``: the task is of a job that can never be a canary
    (``may_be_canary``), which its provider can see: p = 1 − (1 − ρ)(1 − a)."""
    q = p.canary_share if canary else 0.0
    rho = replication_probability(rep, p)
    return q + (1.0 - q) * (1.0 - (1.0 - rho) * (1.0 - p.audit_share))


class Fault(StrEnum):
    NONE = "none"          # the parties agree with the referee
    SUBJECT = "subject"    # the checked party contradicts the referee
    CHECKER = "checker"    # the replica (or canary reference) contradicts the referee
    BOTH = "both"          # the referee agrees with neither


@dataclass(frozen=True)
class Verdict:
    fault: Fault
    votes_subject: int
    votes_checker: int
    referees: int

    @property
    def accepted(self) -> str:
        """Whose output becomes the task's result: subject, checker or referee."""
        return {Fault.NONE: "subject", Fault.SUBJECT: "checker",
                Fault.CHECKER: "subject", Fault.BOTH: "referee"}[self.fault]


def verdict(referee_agrees_subject: Sequence[bool],
            referee_agrees_checker: Sequence[bool]) -> Verdict:
    """Majority of the referee committee decides; ties convict nobody."""
    n = len(referee_agrees_subject)
    if n == 0 or n != len(referee_agrees_checker):
        raise ValueError("need one vote on each party from every referee")
    s, c = sum(referee_agrees_subject), sum(referee_agrees_checker)
    subject_ok, checker_ok = 2 * s > n, 2 * c > n
    subject_bad, checker_bad = 2 * s < n, 2 * c < n
    if subject_ok and checker_ok:
        fault = Fault.NONE
    elif subject_bad and checker_ok:
        fault = Fault.SUBJECT
    elif checker_bad and subject_ok:
        fault = Fault.CHECKER
    elif subject_bad and checker_bad:
        fault = Fault.BOTH
    else:
        fault = Fault.NONE  # a tied committee convicts nobody
    return Verdict(fault, s, c, n)


@dataclass(frozen=True)
class Slash:
    amount: int
    bounty: int
    treasury: int


def slash_amounts(stake: int, p: VerifyParams, *, reporter: bool) -> Slash:
    """How much of ``stake`` a confirmed fault costs and where it goes."""
    amount = int(stake * p.slash_fraction)
    bounty = int(amount * p.bounty_share) if reporter else 0
    return Slash(amount, bounty, amount - bounty)
