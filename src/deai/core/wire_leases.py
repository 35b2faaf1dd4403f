"""Request and response bodies of the lease API (``/api/leases``, ``/api/provider/leases``).

Same compatibility rules as ``core.wire``: inputs forbid unknown fields, new
fields come with defaults, nothing is renamed in place. Amounts are integer
micro-units; prices are µ per hour; times are seconds since the epoch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from deai.core.wire import In, Out
from deai.core.wire_volumes import VolumeSpec as VolumeSpec

MAX_HOURS = 24 * 366


class LeaseIn(In):
    cpus: int = Field(ge=1, le=1024)
    memory_mb: int = Field(ge=64, le=64 * 1024 * 1024)
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_model: str | None = Field(default=None, max_length=100)
    hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    deposit: int | None = Field(default=None, gt=0, le=10**15)
    max_price_hour: int = Field(ge=0, le=10**12)
    network: bool = False
    spot: bool = False
    volume: str | None = Field(default=None, min_length=1, max_length=63)  # id or name

    @model_validator(mode="after")
    def _term_or_deposit(self) -> LeaseIn:
        if self.hours is None and self.deposit is None:
            raise ValueError("give hours (a term) or deposit (an open-ended escrow), or both")
        return self


class ExtendIn(In):
    hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    amount: int | None = Field(default=None, gt=0, le=10**15)

    @model_validator(mode="after")
    def _one(self) -> ExtendIn:
        if (self.hours is None) == (self.amount is None):
            raise ValueError("give exactly one of hours or amount")
        return self


class LeaseOut(Out):
    id: str
    owner: str
    provider_id: str
    status: str
    end_reason: str | None = None
    cpus: int
    memory_mb: int
    gpus: int = 0
    gpu_model: str | None = None
    network: bool = False
    spot: bool = False
    price_hour: int
    escrow: int
    charged: int
    refunded: int
    penalty: int = 0
    created_at: float
    started_at: float | None = None
    last_heartbeat: float | None = None
    term_end: float | None = None
    ends_at: float | None = None
    ends_by: str | None = None  # the reason it will end by itself at ends_at
    warned_at: float | None = None
    preempt_at: float | None = None  # a spot lease's preemption notice: it ends then
    ended_at: float | None = None
    detail: str | None = None
    volume: str | None = None  # the volume mounted at its home (its id)
    events: list[dict[str, Any]] = Field(default_factory=list)


class HostIn(In):
    """A provider's offer to host leases."""

    cpus: int = Field(ge=1, le=4096)
    memory_mb: int = Field(ge=64, le=64 * 1024 * 1024)
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_model: str | None = Field(default=None, max_length=100)
    network: bool = False
    prices: dict[str, int] = Field(max_length=16)


class HostOut(Out):
    provider_id: str
    cpus: int
    memory_mb: int
    gpus: int
    gpu_model: str | None
    network: bool
    prices: dict[str, int]
    heartbeat_interval: float
    grace: float


class HostWithdrawOut(Out):
    """A host's offer taken back (``DELETE /api/provider/leases/host``): no new lease is
    placed on it; ``live`` are its leases still running, each to its end (``until``: the
    latest of their ends as they stand, None when one has no end yet known: a lease not
    started yet); ``saving`` are ended leases whose volume's last snapshot the agent
    still owes. The agent can stop once both are empty."""

    provider_id: str
    withdrawn: bool  # False: there was no offer to take back
    live: list[str]
    until: float | None
    saving: list[str] = []


class LeaseSpec(Out):
    """What an agent needs to build a lease's sandbox."""

    id: str
    cpus: int
    memory_mb: int
    gpus: int = 0
    network: bool = False
    term_end: float | None = None
    volume: VolumeSpec | None = None  # restore its head into the home before starting


class SessionOpen(Out):
    id: str
    lease_id: str
    params: dict[str, Any]


class LeasePollIn(In):
    wait: float = Field(default=20.0, ge=0, le=60)
    known: list[str] = Field(default_factory=list, max_length=1024)  # leases the agent has
    noticed: list[str] = Field(default_factory=list, max_length=1024)  # notices it delivered
    saving: list[str] = Field(default_factory=list, max_length=1024)  # snapshots under way


class Notice(Out):
    """A spot lease will be preempted at ``at``: tell the programs inside."""

    id: str
    at: float


class LeasePollOut(Out):
    start: list[LeaseSpec] = Field(default_factory=list)
    stop: list[str] = Field(default_factory=list)
    sessions: list[SessionOpen] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)
    snapshots: list[str] = Field(default_factory=list)  # leases whose home to save now


class LeaseBeatIn(In):
    running: list[str] = Field(default_factory=list, max_length=1024)
    failed: dict[str, str] = Field(default_factory=dict, max_length=1024)


class LeaseBeatOut(Out):
    stop: list[str] = Field(default_factory=list)


class SessionParams(In):
    """The first message of an interactive session: what to open inside the lease."""

    op: Literal["exec", "put", "get", "connect"]
    argv: list[str] | None = Field(default=None, max_length=256)
    pty: bool = False
    rows: int = Field(default=24, ge=1, le=1000)
    cols: int = Field(default=80, ge=1, le=1000)
    term: str = Field(default="xterm-256color", max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=64)
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    mode: int | None = Field(default=None, ge=0, le=0o777)
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _needs(self) -> SessionParams:
        if self.op in ("put", "get") and self.path is None:
            raise ValueError(f"{self.op} needs a path")
        if self.op == "connect" and self.port is None:
            raise ValueError("connect needs a port")
        if self.op == "exec" and not self.pty and not self.argv:
            raise ValueError("exec without a pty needs an argv")
        if self.argv and any(len(a) > 65536 for a in self.argv):
            raise ValueError("argv: each argument at most 65536 characters")
        return self
