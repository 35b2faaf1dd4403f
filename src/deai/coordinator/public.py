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
    "look_back": ("tasks",),
    "withdrawal": ("amount", "address"),  # the journal's withdrawal entry says as much
    "hardware_challenge": ("challenge", "reason"),
    "hardware_verdict": ("challenge", "outcome", "status", "verified_units"),
    "hardware_flagged": ("challenge", "outcome"),
    "hardware_identity_changed": (),
    "lease_host": ("cpus", "memory_mb", "gpus", "prices"),
    "lease_created": ("owner", "provider", "price_hour", "escrow", "cpus", "memory_mb"),
    "lease_extended": ("owner", "amount", "hours"),
    "lease_started": ("owner", "provider"),
    "lease_ended": ("owner", "provider", "reason", "charged", "refunded", "penalty"),
    "lease_preempt_notice": ("owner", "provider", "at"),
    "lease_warning": ("owner", "ends_at", "reason"),
}

PUBLIC_SPEC = ("kind", "model", "max_price")


def event_body(kind: str, body: dict[str, Any] | None) -> dict[str, Any]:
    keep = PUBLIC_FIELDS.get(kind, ())
    return {k: v for k, v in (body or {}).items() if k in keep}


def event(e: wx.EventOut) -> wx.EventOut:
    return e.model_copy(update={"body": event_body(e.kind, e.body)})


def job(j: wire.JobOut) -> wire.JobOut:
    return j.model_copy(update={"spec": {k: j.spec[k] for k in PUBLIC_SPEC if k in j.spec},
                                "output_digest": None, "error": error(j.error)})


def assignment(a: wx.AssignmentRow) -> wx.AssignmentRow:
    return a.model_copy(update={"output_digest": None, "error": error(a.error)})


def error(text: str | None) -> str | None:
    """Errors can quote a job's data (a command's stderr): publicly, only that there was one."""
    return None if text is None else "failed"
