"""Griefing costs for lease hoarding: a provider that takes work and lets it lapse.

A lease whose deadline passes after it was handed over (delivered) while its
provider is still heartbeating (it took the task and sat on it; an agent
working on a task extends its lease with each heartbeat) costs the provider, in the transaction that
expires the lease (``jobs.expire_leases``):

- its reputation for the workload: one more (decayed) fail, so ranking and
  replication treat it as less reliable;
- that task: matching never offers the task to it again (``matching``, with
  the providers whose result was rejected or who failed it);
- after ``REPEATED`` such lapses within ``WINDOW`` seconds: probation (full
  replication, halved score, as after a caught fault) and, for this lapse and
  each one after, ``SLASH_BPS`` of its stake, a journal ``slash`` entry with
  ``reason: lease_hoarding`` (the stake penalises downtime).

A provider that stops heartbeating loses its leases too, but is offline and
takes no new work until it is back; that lapse is not charged here, nor is
a lease that lapsed before its provider ever received it (a busy agent).
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deai.coordinator import reputation as rep
from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core.lifecycle import AssignmentStatus
from deai.store.models import Assignment

LAPSE = "lease held past its deadline"  # the expiry reason ``jobs.expire_leases`` records
WINDOW = 3600.0
REPEATED = 3
SLASH_BPS = 100  # 1 % of the stake per lapse, from the REPEATED-th on
REASON = "lease_hoarding"


def recent_lapses(c: Coordinator, s: Session, pid: str) -> int:
    """Deadline lapses of ``pid`` already recorded within the window."""
    return int(s.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.provider_id == pid, Assignment.status == AssignmentStatus.EXPIRED,
        Assignment.error == LAPSE, Assignment.lease_deadline >= c.now() - WINDOW)) or 0)


def on_lapse(c: Coordinator, s: Session, a: Assignment, workload: str) -> int:
    """Charge ``a``'s provider for letting ``a`` lapse (before ``a`` is marked expired,
    and before any journal entry of the transaction: reputation and provider rows come
    first in the lock order); returns the stake slashed."""
    pid, now, vp = a.provider_id, c.now(), c.settings.verify
    lapses = recent_lapses(c, s, pid) + 1
    repeated = lapses >= REPEATED
    # Locked: a rating committed since this transaction began (a result of the same
    # provider accepted meanwhile) is counted, not overwritten.
    r = rep.get(s, pid, workload, lock=True).decayed(now, vp)
    r = replace(r, fails=r.fails + 1.0)
    if repeated:
        r = replace(r, cv=0, probation=max(r.probation, vp.probation_tasks))
    rep.put(s, pid, workload, r)
    s.flush()
    if not repeated:
        return 0
    amount = c.settlement.balance(s, ledger.stake(pid)) * SLASH_BPS // 10_000
    if amount > 0:
        amount = c.settlement.slash(s, pid, amount, None, 0, {
            "reason": REASON, "task": a.task_id, "lapses": lapses})
    if amount > 0:
        c.emit(s, "slash", pid, amount=amount, reason=REASON, lapses=lapses)
    return amount
