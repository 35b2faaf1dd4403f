"""Request and response bodies of the hardware-challenge API (/api/hardware), in one place.

Same compatibility rules as ``core.wire``: inputs forbid unknown fields, new
fields come with defaults, nothing is renamed in place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChallengeOut(Out):
    id: str
    spec: dict[str, Any]
    """``core.hwcheck.Spec.to_dict()``: seed, parts (device, n, k, mem_mb, scheme),
    expected_s, deadline_s."""


class PollOut(Out):
    challenge: ChallengeOut | None = None


class CommitIn(In):
    root: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    seconds: float = Field(default=0.0, ge=0, le=86_400)
    error: str | None = Field(default=None, max_length=500)
    """Set instead of ``root`` when a device could not run its part (e.g. out of memory)."""


class OpeningOut(Out):
    rows: list[list[int]]  # [part, product, row]
    positions: list[list[int]]  # [part, buffer word]


class VerdictOut(Out):
    challenge: str
    outcome: str  # passed | slow | wrong | error | expired
    reason: str = ""
    ratio: float = 0.0
    elapsed_s: float | None = None
    deadline_s: float = 0.0
    status: str = "unverified"
    verified_units: float = 0.0


class CommitOut(Out):
    opening: OpeningOut | None = None
    verdict: VerdictOut | None = None


class OpenIn(In):
    rows: list[str] = Field(max_length=256)  # base64 of little-endian float32
    proofs: list[list[str]] = Field(max_length=256)  # hex sibling hashes, leaf to root
    values: list[int] = Field(default_factory=list, max_length=4096)


class ClaimOut(Out):
    provider: str
    name: str = ""
    status: str
    current: bool = True
    """False when the provider's registered hardware no longer matches what was verified."""
    passes: int = 0
    fails: int = 0
    failures: int = 0
    claimed_units: float = 0.0
    verified_units: float = 0.0
    verified_memory_mb: int = 0
    devices: list[dict[str, Any]] = Field(default_factory=list)
    hardware_class: str = ""
    last_at: float | None = None
    last_outcome: str | None = None
    slashed: int = 0
    min_price: int | None = None
    price_per_verified_unit: float | None = None


class ClaimsOut(Out):
    claims: list[ClaimOut]


class CloudRow(Out):
    hardware_class: str
    provider: str
    instance: str
    gpus: int
    usd_per_hour: float
    units: float
    usd_per_unit_hour: float
    source: str
    date: str


class CloudIndexOut(Out):
    """Cloud list prices per compute-unit-hour beside DeAI's verified providers."""

    usd_per_deai: float
    cloud: list[CloudRow]
    network: list[dict[str, Any]]
    """Per hardware class on DeAI: verified units, providers, median µ per 1,000 units
    per verified unit and, where providers' measured throughput is known, USD per
    verified unit-hour and its ratio to the cheapest cloud row of the nearest class."""
