"""Request and response bodies of the cluster API (``/api/clusters``).

Same compatibility rules as ``core.wire``: inputs forbid unknown fields, new fields
come with defaults. A cluster is a gang of leases (``core.wire_leases``); its money
is theirs, so amounts here are sums over the members' leases.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from deai.core.wire import In, Out
from deai.core.wire_leases import MAX_HOURS, LeaseOut

MAX_NODES = 64


class ClusterIn(In):
    nodes: int = Field(ge=1, le=MAX_NODES)
    cpus: int = Field(ge=1, le=1024)  # per node
    memory_mb: int = Field(ge=64, le=64 * 1024 * 1024)  # per node
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_model: str | None = Field(default=None, max_length=100)
    hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    deposit: int | None = Field(default=None, gt=0, le=10**15)  # per node
    max_price_hour: int = Field(ge=0, le=10**12)  # per node
    form_timeout: float | None = Field(default=None, gt=0, le=3600)

    @model_validator(mode="after")
    def _term_or_deposit(self) -> ClusterIn:
        if self.hours is None and self.deposit is None:
            raise ValueError("give hours (a term) or deposit (an escrow per node), or both")
        return self


class RayIn(In):
    """What the owner's CLI reports once Ray runs: where the head listens and the pid of
    each member's Ray launcher (so ``down`` stops only these). Never the token."""

    head_address: str = Field(min_length=3, max_length=200)
    dashboard_port: int = Field(ge=1, le=65535)
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=MAX_NODES)


class ClusterOut(Out):
    id: str
    owner: str
    status: str
    end_reason: str | None = None
    detail: str | None = None
    nodes: int
    head_lease: str | None = None
    leases: list[str] = Field(default_factory=list)
    lost: list[str] = Field(default_factory=list)
    ray: dict[str, Any] | None = None
    price_hour: int = 0
    escrow: int = 0
    charged: int = 0
    refunded: int = 0
    created_at: float
    form_by: float
    ready_at: float | None = None
    ended_at: float | None = None
    members: list[LeaseOut] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
