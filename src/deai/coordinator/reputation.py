"""Reputation rows: read a provider's record for a workload, and rate it after a check."""

from __future__ import annotations

from sqlalchemy.orm import Session

from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.store.models import Provider
from deai.store.models import Reputation as RepRow


def get(s: Session, pid: str, workload: str, *, lock: bool = False) -> Reputation:
    """The provider's rating for ``workload``; ``lock``: its row locked and read again
    (PostgreSQL), after the provider's row (``store.db``'s lock order), for a caller
    that writes it back and holds no lock on it yet."""
    if lock:
        s.get(Provider, pid, with_for_update={"key_share": True})
    row = s.get(RepRow, (pid, workload), with_for_update=lock, populate_existing=lock)
    if row is None:
        return Reputation()
    return Reputation(row.cv, row.passes, row.fails, row.probation, row.updated_at)


def put(s: Session, pid: str, workload: str, rep: Reputation) -> None:
    row = s.get(RepRow, (pid, workload))
    if row is None:
        row = RepRow(provider_id=pid, workload=workload)
        s.add(row)
    row.cv, row.passes, row.fails = rep.cv, rep.passes, rep.fails
    row.probation, row.updated_at = rep.probation, rep.updated_at
    prov = s.get(Provider, pid)
    if prov is not None:
        prov.reputation = round(rep.score(), 4)


def rate(s: Session, pid: str, workload: str, passed: bool, now: float,
         p: VerifyParams) -> None:
    rep = get(s, pid, workload)
    put(s, pid, workload, rep.passed(now, p) if passed else rep.failed(now, p))
