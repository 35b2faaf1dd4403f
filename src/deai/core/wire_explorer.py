"""Response bodies of the explorer's read endpoints (``/api/explorer/*``, ``/api/events``).

The same compatibility rules as ``wire``: a new field comes with a default, a
field is never renamed or re-typed in place. Times are epoch seconds, money is
integer micro-units, prices are micro-units per 1,000 units.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from deai.core.wire import AuditOut, BalanceOut, JobOut, Out, ProviderOut

VERIFICATION_KINDS = ("check_passed", "check_failed", "verdict", "slash")
"""Event kinds the verification stream and its counters are made of."""


class EventOut(Out):
    id: int
    ts: float
    kind: str
    subject: str
    body: dict[str, Any]


class EventsOut(Out):
    events: list[EventOut]
    last_id: int = Field(description="the newest event id in the store (resume from here)")


# --- overview -------------------------------------------------------------------------

class PricePoint(Out):
    t: float = Field(description="start of the time bucket")
    avg: float
    min: int
    max: int
    n: int


class PriceSeries(Out):
    workload: str
    points: list[PricePoint]


class ThroughputPoint(Out):
    t: float
    tasks: int


class ProviderPrice(Out):
    provider: str
    name: str
    online: bool
    workload: str
    model: str
    price: int
    compute_units: float
    price_per_cu: float | None


class VerificationCounts(Out):
    checks_passed: int = 0
    checks_failed: int = 0
    verdicts: int = 0
    slashes: int = 0
    overhead: float = Field(0.0, description="verification assignments per primary one")


class OverviewOut(Out):
    now: float
    providers_online: int
    providers_total: int
    cpus: int
    gpus: int
    compute_units: float
    jobs: dict[str, int] = Field(description="job count by status")
    jobs_running: int
    jobs_finished: int
    tasks: dict[str, int] = Field(description="task count by status")
    tasks_per_second: float = Field(description="tasks accepted per second, last minute")
    throughput: list[ThroughputPoint] = Field(description="tasks accepted per bucket")
    bucket_seconds: float
    prices: list[PriceSeries] = Field(description="assignment prices over time, by workload")
    provider_prices: list[ProviderPrice]
    verification: VerificationCounts
    journal_seq: int
    supply: int
    last_event_id: int


# --- providers and jobs ---------------------------------------------------------------

class AssignmentRow(Out):
    id: str
    task_id: str
    job_id: str
    provider_id: str
    role: str
    status: str
    price: int
    leased_at: float
    submitted_at: float | None = None
    seconds: float | None = None
    units: int | None = None
    output_digest: str | None = None
    error: str | None = None


class ProviderDetailOut(Out):
    provider: ProviderOut
    balance: BalanceOut
    pending_earnings: int
    released_earnings: int
    assignments: dict[str, int] = Field(description="assignment count by status")
    recent: list[AssignmentRow]
    checks: list[EventOut]
    lease_host: LeaseHostRow | None = Field(
        default=None, description="its offer to host leases: prices per hour, capacity, use")
    leases: list[LeaseRow] = Field(default_factory=list,
                                   description="the latest leases it hosted (public facts)")


class ShardOut(Out):
    idx: int
    task_id: str
    status: str = Field(description="the task's own status")
    state: str = Field(description="queued | running | verifying | accepted | failed")
    attempts: int
    redone: bool = Field(description="run more than once: placed again, or its first "
                         "result was overturned by a verdict and another result stands")
    corrected: bool = Field(default=False, description="its accepted result was replaced "
                            "after an audit or a look-back (public once the window closed)")
    items: int
    units: int
    providers: list[str]
    error: str | None = None


class JobProviderOut(Out):
    id: str
    name: str
    accepted: int
    assignments: int
    paid: int


class JobDetailOut(Out):
    job: JobOut
    shards: list[ShardOut]
    states: dict[str, int]
    cost_so_far: int
    providers: list[JobProviderOut]
    assignments: list[AssignmentRow]
    redone: int = Field(default=0, description="shards run more than once")
    corrected: int = Field(default=0, description="shards whose result was replaced")


# --- ledger ---------------------------------------------------------------------------

class JournalRow(Out):
    seq: int
    ts_ms: int
    kind: str
    hash: str
    prev_hash: str
    body: dict[str, Any]
    postings: list[list[Any]]


class AuditRun(Out):
    at: float
    seconds: float
    result: AuditOut


class LedgerOut(Out):
    head_seq: int
    head_hash: str
    supply: int
    entries: list[JournalRow]
    last_audit: AuditRun | None = None


class AccountHistoryRow(Out):
    seq: int
    ts_ms: int
    kind: str
    hash: str
    delta: int
    postings: list[list[Any]]


class AccountOut(Out):
    account: str
    ledger_accounts: dict[str, int] = Field(description="balance of each ledger account")
    balance: BalanceOut | None = None
    history: list[AccountHistoryRow] = Field(
        description="the entries that moved these accounts, newest first, among those "
                    "below ``before`` searched by this answer")
    searched_from: int = Field(
        description="the lowest journal seq this answer searched: ask again with "
                    "``before`` set to it for older history (0 when the search reached "
                    "the journal's start)")


class LeaseRow(Out):
    """A lease as the public sees it: who hosts it, what it rents, its price and fate;
    never its owner or its escrow."""

    id: str
    provider: str
    provider_name: str
    status: str
    end_reason: str | None
    cpus: int
    memory_mb: int
    gpus: int
    spot: bool
    price_hour: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    cluster: str | None = None


class LeaseHostRow(Out):
    """A provider that hosts leases: its per-hour prices by resource class (µ per core,
    per GiB of memory, per GPU, per GPU of a model), its capacity and what live leases
    use of it now."""

    provider: str
    provider_name: str
    online: bool
    prices: dict[str, int]
    cpus: int
    cpus_used: int
    memory_mb: int
    memory_used_mb: int
    gpus: int
    gpus_used: int
    gpu_model: str | None = None


class ClusterRow(Out):
    """A cluster as the public sees it: its nodes (the head first) and its fate."""

    id: str
    status: str
    end_reason: str | None
    nodes: int
    providers: list[str]
    lost: int
    created_at: float
    ready_at: float | None
    ended_at: float | None


class LeasesOut(Out):
    leases: dict[str, int]  # status -> count
    lease_end_reasons: dict[str, int]
    clusters: dict[str, int]  # status -> count
    cluster_end_reasons: dict[str, int]
    nodes_running: int
    recent_leases: list[LeaseRow]
    recent_clusters: list[ClusterRow]
    hosts: list[LeaseHostRow] = []
    """Every lease host, busiest first (at most ``limit``)."""
    utilisation: float = 0.0
    """Share of the hosts' CPU cores that live leases hold now."""
