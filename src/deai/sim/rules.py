"""What the lifecycle decides about a simulated check, read off core's own decisions.

The simulator does not restate who is paid, slashed or believed after a check:
for each kind of outcome (the referee's fault, or agreement; replicated or not;
canary or real; a forced error noticed or not; an audit that matches or not)
it asks ``core.lifecycle.decide`` once, with stand-in parties, and reads the
answer off the effects (``Slash``, ``LookBack``, ``Accept``, ``Correct``,
``NeedCheck``, ``Rate``). The coordinator applies the same effects
to its database, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from deai.core.lifecycle import JobStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from deai.core.lifecycle import effects as E
from deai.core.verify.policy import Fault

FAULTS = (Fault.NONE, Fault.SUBJECT, Fault.CHECKER, Fault.BOTH)
AGREE = len(FAULTS)  # outcome code: no mismatch, nobody escalated

SUBJECT, CHECKER, REFEREE = "subject", "checker", "referee"


@dataclass(frozen=True)
class Rule:
    subject_paid: bool          # the subject's output is accepted and paid
    checker_paid: bool          # the replica is paid (a check fee, or as the result)
    subject_slashed: bool
    checker_slashed: bool
    subject_reported: bool      # the replica gets the bounty for the subject's slash
    checker_reported: bool      # the subject gets the bounty for the replica's slash
    stands: str | None          # whose output is the task's result
    audited: bool = False       # the accepted result goes to a trusted verifier's audit
    looks_back: frozenset[str] = frozenset()  # whose results in the window are re-checked


@cache
def rule(code: int, replicated: bool, canary: bool, audit: bool = False) -> Rule:
    """The rule for one outcome: ``code`` is a fault index, or ``AGREE``."""
    ctx = D.TaskCtx("t", "j", 0, JobStatus.VERIFYING, TaskStatus.VERIFYING, 1, 5, canary=canary)
    s = D.Party(SUBJECT, SUBJECT, Role.CANARY if canary else Role.PRIMARY)
    c = D.Party(CHECKER, CHECKER, Role.REPLICA) if replicated else None
    r = D.Party(REFEREE, REFEREE, Role.REFEREE)
    if code == AGREE:
        if canary:
            effects = D.on_canary(ctx, s, match=True, evidence={})
        elif c is not None:
            effects = D.on_replica(ctx, c, s, match=True, evidence={}, audit=audit)
        else:
            effects = D.on_primary(ctx, s, replicate=False, rho=0.0, audit=audit)
    else:
        effects = D.on_verdict(ctx, FAULTS[code], r, s, c, reexec=True, evidence={})
    accepted = [e.assignment for e in effects if isinstance(e, E.Accept)]
    paid = {e.assignment for e in effects if isinstance(e, E.PayCheck)} | set(accepted)
    slashes = {e.provider: e.reporter for e in effects if isinstance(e, E.Slash)}
    return Rule(subject_paid=SUBJECT in accepted, checker_paid=CHECKER in paid,
                subject_slashed=SUBJECT in slashes, checker_slashed=CHECKER in slashes,
                subject_reported=slashes.get(SUBJECT) == CHECKER,
                checker_reported=slashes.get(CHECKER) == SUBJECT,
                stands=accepted[-1] if accepted else None,
                audited=any(isinstance(e, E.NeedCheck) and e.need == Role.AUDIT
                            for e in effects),
                looks_back=frozenset(e.provider for e in effects if isinstance(e, E.LookBack)))


@dataclass(frozen=True)
class Forced:
    slashed: bool      # the checker is slashed (no referee: the network planted the error)
    rated_ok: bool     # the checker passes a check
    paid: bool         # the checker is paid a check fee
    looks_back: bool   # the checker's results in the window are re-checked
    check_again: bool  # the task still waits for a real replica


@cache
def forced(noticed: bool) -> Forced:
    """``decide.on_forced``: a checker handed a claim the network made wrong on purpose."""
    ctx = D.TaskCtx("t", "j", 0, JobStatus.VERIFYING, TaskStatus.VERIFYING, 1, 5)
    c = D.Party(CHECKER, CHECKER, Role.REPLICA)
    effects = D.on_forced(ctx, c, noticed=noticed, evidence={})
    return Forced(slashed=any(isinstance(e, E.Slash) and e.provider == CHECKER for e in effects),
                  rated_ok=any(isinstance(e, E.Rate) and e.provider == CHECKER and e.passed
                               for e in effects),
                  paid=any(isinstance(e, E.PayCheck) for e in effects),
                  looks_back=any(isinstance(e, E.LookBack) for e in effects),
                  check_again=any(isinstance(e, E.NeedCheck) and e.need == Role.REPLICA
                                  for e in effects))


@dataclass(frozen=True)
class Audit:
    slashed: frozenset[str]    # of the parties whose word made the result stand
    looks_back: frozenset[str]
    corrected: bool            # the verifier's output replaces the result


@cache
def audit(match: bool, replicated: bool) -> Audit:
    """``decide.on_audit``: a trusted verifier re-ran an accepted result."""
    ctx = D.TaskCtx("t", "j", 0, JobStatus.COMPLETED, TaskStatus.DONE, 1, 5)
    a = D.Party(REFEREE, REFEREE, Role.AUDIT)
    stood = [D.Party(SUBJECT, SUBJECT, Role.PRIMARY)]
    if replicated:
        stood.append(D.Party(CHECKER, CHECKER, Role.REPLICA))
    effects = D.on_audit(ctx, a, stood, match=match, evidence={})
    return Audit(slashed=frozenset(e.provider for e in effects if isinstance(e, E.Slash)),
                 looks_back=frozenset(e.provider for e in effects if isinstance(e, E.LookBack)),
                 corrected=any(isinstance(e, E.Correct) for e in effects))


@cache
def table(field: str) -> np.ndarray:
    """``rule(...).field`` for every outcome, indexed [code, replicated, canary]."""
    out = np.empty((AGREE + 1, 2, 2), dtype=object if field == "stands" else bool)
    for code in range(AGREE + 1):
        for rep in (0, 1):
            for can in (0, 1):
                out[code, rep, can] = getattr(rule(code, bool(rep), bool(can)), field)
    return out


def lookup(field: str, code: np.ndarray, replicated: np.ndarray,
           canary: np.ndarray) -> np.ndarray:
    out: np.ndarray = table(field)[code, replicated.astype(int), canary.astype(int)]
    return out
