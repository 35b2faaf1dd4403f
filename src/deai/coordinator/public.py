"""What the public surfaces show: an allow-list per event kind, and a job's public face.

The explorer, ``/api/events`` and the event stream are read by anyone, so they
carry public facts only: counts, prices, amounts, verdicts, stakes and who ran
what. Event rows in the database keep their whole body (operators and audits
use it); ``event_body`` keeps only the fields listed for the row's kind, so
output digests, check payloads, API key ids, names and caps, and error texts
(which can quote a job's data) never leave. A kind missing from the list is
shown with an empty body: a new event kind is private until someone lists it.

A job's public face (``public_job``) keeps its id, owner, status, counts and
money, and of its spec only the kind, model and price limit.
"""

from __future__ import annotations

from typing import Any

from deai.core import wire
from deai.core import wire_explorer as wx
from deai.core.lifecycle import JobStatus, TaskStatus

_CHECK = ("job", "role", "provider", "subject", "checker", "referee", "statistic", "detail",
          "fault", "canary")

PUBLIC_FIELDS: dict[str, tuple[str, ...]] = {
    "coordinator_started": (),
    "treasury_granted": ("amount",),
    "faucet": ("amount",),
    "bond": ("amount",),
    "provider_registered": ("name", "compute_units", "offers"),
    "earnings_released": ("amount",),
    "job_submitted": ("owner", "tasks", "escrow", "model", "units", "via"),
    "job_completed": ("refunded", "cost"),
    "job_failed": ("refunded", "cost"),
    "job_cancelled": ("refunded", "cost"),
    "task_assigned": ("job", "provider", "price", "role"),
    "task_accepted": ("job", "provider", "cost", "role"),
    "result_rejected": ("provider", "role"),
    "task_failed": ("provider", "role"),
    "lease_refused": ("provider", "role"),
    "lease_expired": ("provider", "reason", "role"),
    "check_started": ("job", "provider", "role", "rho"),
    "check_passed": _CHECK,
    "check_failed": _CHECK,
    "check_abandoned": ("role",),
    "check_unpaid": ("provider", "owed"),
    "unverified": ("job", "provider"),
    "verdict": _CHECK,
    "slash": (*_CHECK, "amount", "bounty", "bounty_to", "forfeited"),
    "canary_planted": ("provider", "model"),
    "checkpoint": ("provider", "step", "role"),
    "api_key_created": (),
    "api_key_revoked": (),
    "result_corrected": ("task", "idx"),
    "audit_passed": ("job", "auditor", "subject", "checker"),
    "audit_dropped": ("job", "reason"),
    "check_waiting": ("role",),
    "forced_error_noticed": ("job", "checker"),
    "look_back": ("tasks",),
    "withdrawal": ("amount", "address"),  # the journal's withdrawal entry says as much
    "hardware_challenge": ("challenge", "reason"),
    "hardware_verdict": ("challenge", "outcome", "status", "verified_units"),
    "hardware_flagged": ("challenge", "outcome"),
    "hardware_identity_changed": (),
    "lease_host": ("cpus", "memory_mb", "gpus", "prices"),
    "lease_host_withdrawn": (),
    "lease_created": ("owner", "provider", "price_hour", "escrow", "cpus", "memory_mb"),
    "lease_extended": ("owner", "amount", "hours"),
    "lease_started": ("owner", "provider"),
    "lease_ended": ("owner", "provider", "reason", "charged", "refunded", "penalty"),
    "lease_preempt_notice": ("owner", "provider", "at"),
    "lease_warning": ("owner", "ends_at", "reason"),
}

PUBLIC_SPEC = ("kind", "model", "max_price")


# --- blind work: what waits for the challenge window ------------------------------------------
# Events that tell whether a lease was a primary, a replica, a referee, an audit or a
# canary, or that a result is being checked: a provider reading them before the window
# closes could cheat only where it expects no check. They are served publicly once
# their challenge window has closed (``disclosed``); until then they do not exist for
# the public. The same holds for the role of a recent assignment, and for what a job
# pays (a canary is paid by the network).
SEALED = frozenset({
    "task_assigned", "task_accepted", "result_rejected", "task_failed", "lease_expired",
    "lease_refused",
    "check_started", "check_passed", "check_failed", "check_abandoned", "check_waiting",
    "unverified", "verdict", "canary_planted", "checkpoint", "look_back",
    "result_corrected", "audit_passed", "forced_error_noticed", "checkpoints_voided",
    "forfeit", "answer_streamed", "audit_dropped",
})
SEALED_FIELDS = frozenset({"role", "canary", "subject", "checker", "referee", "rho",
                           "statistic", "detail", "fault", "job", "owner", "escrow"})
# ``owner`` and ``escrow``: every job, a canary too, is announced by ``job_submitted`` at
# once, and who pays for it (the network pays for a canary) waits for the window.
JOB_ENDS = frozenset({"job_completed", "job_failed", "job_cancelled"})
"""Their ``cost`` and ``refunded`` wait for the window too: a canary job costs and refunds
nothing (the treasury pays its check fees), so an end at 0 and 0 named it at once, as a
job's face would (``job`` shows its money only once the window has closed)."""


def disclosed(kind: str, ts: float, horizon: float) -> bool:
    """Whether an event of ``kind`` at ``ts`` may be shown publicly; ``horizon`` is now
    minus the challenge window."""
    return kind not in SEALED or ts <= horizon


def sealed_body(kind: str, body: dict[str, Any], ts: float, horizon: float) -> dict[str, Any]:
    """A disclosed event's public body; inside the window (a slash), without check details."""
    out = event_body(kind, body)
    if ts > horizon:
        money = ("cost", "refunded") if kind in JOB_ENDS else ()
        out = {k: v for k, v in out.items() if k not in SEALED_FIELDS and k not in money}
    return out


def role(value: str, leased_at: float, horizon: float) -> str:
    """An assignment's role, publicly: only once its window has closed."""
    return value if leased_at <= horizon else "sealed"


def event_body(kind: str, body: dict[str, Any] | None) -> dict[str, Any]:
    keep = PUBLIC_FIELDS.get(kind, ())
    return {k: v for k, v in (body or {}).items() if k in keep}


def event(e: wx.EventOut) -> wx.EventOut:
    return e.model_copy(update={"body": event_body(e.kind, e.body)})


JOB_SHOWN_AS = {JobStatus.VERIFYING.value: JobStatus.RUNNING.value}
TASK_SHOWN_AS = {TaskStatus.VERIFYING.value: TaskStatus.ASSIGNED.value}
"""Statuses that say a result waits for its check, and what ``job`` shows them as."""


def statuses(counts: dict[str, int], shown_as: dict[str, str]) -> dict[str, int]:
    """Counts by status as the public sees them (``JOB_SHOWN_AS``, ``TASK_SHOWN_AS``): a
    total of results waiting for their checks would move with a checker's own lease."""
    out: dict[str, int] = {}
    for status, n in counts.items():
        key = shown_as.get(status, status)
        out[key] = out.get(key, 0) + n
    return out


def job(j: wire.JobOut, horizon: float | None = None, window: float = 0.0) -> wire.JobOut:
    """A job's public face: no owner, no output, no private spec; what it pays only once
    it ended a window ago (before then, who pays would tell a canary apart).

    ``window``: the challenge window (``horizon`` is now minus it). Until the window
    after the job finished has closed, ``final_at`` reads as that window's end whatever
    the job waits for: a blank one, while an audit waits for its verifier, told the
    job's providers that one of their results was being audited."""
    update: dict[str, Any] = {"spec": {k: j.spec[k] for k in PUBLIC_SPEC if k in j.spec},
                              "owner": "", "output_digest": None, "error": error(j.error)}
    if horizon is not None and (j.finished_at is None or j.finished_at > horizon):
        update |= {"escrow": 0, "cost": 0, "refunded": 0, "corrected": 0}
        # A result waiting for its check, and who else ran the job, would tell a checker
        # that it is one (and whom it checks): shown only once the window has closed.
        update |= {"tasks": statuses(dict(j.tasks), TASK_SHOWN_AS), "providers": {},
                   "status": JOB_SHOWN_AS.get(j.status, j.status), "final": False,
                   "final_at": None if j.finished_at is None else j.finished_at + window}
    return j.model_copy(update=update)


def shard_status(status: str, sealed: bool) -> str:
    """A task's status on the public job page: inside the window (``sealed``) a result
    waiting for its check reads as running (``TASK_SHOWN_AS``), or a replica's
    leaseholder would read on its own shard that it is a check."""
    return TASK_SHOWN_AS.get(status, status) if sealed else status


def assignment(a: wx.AssignmentRow) -> wx.AssignmentRow:
    return a.model_copy(update={"output_digest": None, "error": error(a.error)})


def error(text: str | None) -> str | None:
    """Errors can quote a job's data (a command's stderr): publicly, only that there was one."""
    return None if text is None else "failed"
