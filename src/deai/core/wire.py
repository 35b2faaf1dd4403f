"""Every request and response body of the native API (/api), in one place.

Compatibility rules: inputs forbid unknown fields so typos fail loudly; a new
field is added with a default so older peers keep working; a field is never
renamed or re-typed in place.

Every input is bounded: numbers are finite and within the database's range,
money is a strict integer (``"10"``, ``true`` and ``1e3`` are refused), lists
and free-form objects have a size and depth limit (``bounded``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from deai.core import batch

INT32 = 2**31 - 1
INT64 = 2**63 - 1
MAX_MONEY = 10**15


def bounded(max_bytes: int, max_depth: int) -> AfterValidator:
    """A free-form JSON value at most ``max_bytes`` long (as compact JSON) and
    ``max_depth`` levels deep, with finite numbers only."""
    def check(value: Any) -> Any:
        if batch.depth(value) > max_depth:
            raise ValueError(f"nested more than {max_depth} levels")
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise ValueError("numbers must be finite") from None
        if len(text) > max_bytes:
            raise ValueError(f"over {max_bytes} bytes as JSON")
        return value
    return AfterValidator(check)


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """A text field holds no NUL character: PostgreSQL's text columns refuse one (a
        500 after the request was accepted); refused here, naming the field."""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- network --------------------------------------------------------------------------

class NetworkInfo(Out):
    version: str
    network_id: str  # what every signed request signs (``core.auth.message``)
    devnet: bool
    min_stake: int
    min_bond: int = 1  # the least one bond takes (a coordinator from before: any)
    fee_bps: int
    challenge_window: float
    heartbeat_timeout: float
    lease_ttl: float
    max_upload_bytes: int


class FaucetIn(In):
    amount: StrictInt = Field(gt=0, le=MAX_MONEY)


class BalanceOut(Out):
    account: str
    available: int
    pending: int
    stake: int


class BlobOut(Out):
    digest: str
    size: int


# --- providers ------------------------------------------------------------------------

MIN_GBPS = 0.1
"""The least nonzero bandwidth (and fp32 rate) a claim may state: a challenge's time
allowances divide by it (``core.hwcheck.size_part``)."""


def _rate(value: float) -> float:
    if 0 < value < MIN_GBPS:
        raise ValueError(f"0 (not measured) or at least {MIN_GBPS}")
    return value


class Gpu(In):
    """One GPU of a registration, as ``provider.hardware.gpus`` probes it. Every figure
    is bounded: the coordinator sizes and checks challenges from them
    (``core.hwcheck.devices``)."""
    index: int | None = Field(default=None, ge=0, le=63)
    name: str = Field(default="", max_length=200)
    memory_mb: int = Field(default=0, ge=0, le=2**26)
    mem_gbps: Annotated[float, AfterValidator(_rate)] = Field(default=0.0, ge=0, le=1e7)
    uuid: str = Field(default="", max_length=200)
    capability: str = Field(default="", max_length=16)


def _gpus(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each entry checked as a ``Gpu``; kept as the fields it gave (what is stored, and
    fingerprinted, is what the agent sent)."""
    return [Gpu.model_validate(g).model_dump(exclude_unset=True) for g in value]


class Hardware(In):
    cpu_model: str = Field(max_length=200)
    cores: int = Field(ge=1, le=4096)
    memory_mb: int = Field(ge=1, le=2**26, description="at most 64 TiB")
    gpus: Annotated[list[dict[str, Any]], bounded(16_384, 3), AfterValidator(_gpus)] = Field(
        default_factory=list, max_length=64, description="entries as ``Gpu``")
    platform: str = Field(default="", max_length=200)
    machine_id: str = Field(default="", pattern=r"^([0-9a-f]{64})?$",
                            description="SHA-256 of /etc/machine-id (never the id itself)")


class Benchmark(In):
    gflops: Annotated[float, AfterValidator(_rate)] = Field(
        ge=0, le=1e9, description="finite; 0 or from 0.1 to an exaflop")
    mem_gbps: Annotated[float, AfterValidator(_rate)] = Field(ge=0, le=1e7)
    seconds: float = Field(default=0.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _bandwidth_with_rate(self) -> Benchmark:
        if self.gflops > 0 and self.mem_gbps == 0:
            raise ValueError("mem_gbps: a claimed fp32 rate needs a claimed bandwidth")
        return self


class OfferIn(In):
    workload: str = Field(min_length=1, max_length=32)
    model: str = Field(min_length=1, max_length=200)
    price: StrictInt = Field(ge=0, le=10**12, description="micro-units per 1,000 units")


class RegisterIn(In):
    name: str = Field(default="", max_length=100)
    hardware: Hardware
    benchmark: Benchmark
    threads: int = Field(ge=1, le=4096)
    slots: int = Field(default=1, ge=1, le=256)
    offers: list[OfferIn] = Field(min_length=1, max_length=64)
    capabilities: Annotated[dict[str, Any], bounded(4096, 3)] = Field(default_factory=dict,
                                                                       max_length=32)
    """What this machine can and cannot do, e.g. ``{"sandbox": false, "sandbox_reason":
    "bwrap not found on PATH"}``: a provider without a sandbox offers no command model."""
    operator: str = Field(default="", pattern=r"^([0-9a-f]{64})?$",
                          description="the operator's public key; empty: its own operator")
    operator_signature: str = Field(default="", pattern=r"^([0-9a-f]{128})?$",
                                    description="the operator's signature over "
                                                "core.auth.operator_message")


class BondIn(In):
    amount: StrictInt = Field(gt=0, le=MAX_MONEY)


class OfferOut(Out):
    workload: str
    model: str
    price: int
    price_per_cu: float | None = None


class ProviderOut(Out):
    id: str
    name: str
    status: str
    online: bool
    hardware: dict[str, Any]
    benchmark: dict[str, Any]
    compute_units: float
    threads: int
    slots: int
    stake: int
    reputation: float
    last_seen: float
    offers: list[OfferOut]
    tasks_done: int = 0
    earned: int = 0
    capabilities: dict[str, Any] = Field(default_factory=dict)
    standing: str = Field(default="online", description=(
        "slashed | probation | below_stake | offline | online: the worst that holds "
        "(core.standing)"))
    slashes: int = Field(default=0, description="how many times its stake was slashed")
    probation: bool = Field(default=False,
                            description="on probation for some workload (full replication)")


class ProvidersOut(Out):
    """``GET /api/providers``: a page of providers by id, each with a summary of its
    hardware (``/api/providers/{id}`` has all of it)."""
    providers: list[ProviderOut]
    next: str | None = Field(default=None, description=(
        "pass as ``after`` for the next page; null after the last"))


class HeartbeatIn(In):
    running: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list,
                                                                 max_length=1024)


class HeartbeatOut(Out):
    drop: list[str]
    """Assignments the provider should abandon (cancelled job, expired lease)."""


MAX_RELAYED_BEATS = 500


class SignedBeat(In):
    """One provider's heartbeat exactly as it would send it alone to
    ``POST /api/providers/heartbeat``: its signature headers' values and the body's bytes.
    A relay forwards it as it is; it can delay or drop it, not alter or replay it."""
    key: str = Field(min_length=64, max_length=64)
    timestamp: str = Field(min_length=1, max_length=32)
    nonce: str = Field(min_length=8, max_length=64)
    signature: str = Field(min_length=128, max_length=128)
    body: str = Field(max_length=72_000)  # HeartbeatIn's JSON: up to 1,024 running ids


class HeartbeatsIn(In):
    beats: list[SignedBeat] = Field(min_length=1, max_length=MAX_RELAYED_BEATS)


class BeatOut(Out):
    key: str
    drop: list[str] = Field(default_factory=list)
    error: str | None = None
    """Why this beat was refused (the batch's other beats count all the same)."""


class HeartbeatsOut(Out):
    results: list[BeatOut]


class PollIn(In):
    wait: float = Field(default=20.0, ge=0, le=60)
    # Ids received from the previous poll. A list (even empty) asks for acknowledged
    # delivery: a lease not acknowledged is handed out again at the next poll.
    ack: list[Annotated[str, Field(max_length=40)]] | None = Field(default=None,
                                                                  max_length=1000)


class AssignmentOut(Out):
    id: str
    task_id: str
    job_id: str
    workload: str
    model: str
    input_digest: str
    units: int
    price: int
    lease_deadline: float
    resume: dict[str, Any] | None = None
    """The task's last accepted checkpoint, for a task that resumes elsewhere."""
    input_b64: str | None = None
    """The input blob itself (base64) when it is at most ``INLINE_MAX`` bytes."""


class CheckpointIn(In):
    step: int = Field(ge=0, le=INT64)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    chain_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    meta: Annotated[dict[str, Any], bounded(65_536, 8)] = Field(default_factory=dict)


class CheckpointOut(Out):
    status: str
    step: int


class PollOut(Out):
    assignments: list[AssignmentOut]


INLINE_MAX = 64 * 1024
"""Blobs up to this size travel inside a lease or a result instead of as separate
requests: a one-line task then costs one round trip each way, not three."""


class ResultIn(In):
    output_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    units: StrictInt = Field(ge=0, le=INT32)
    seconds: float = Field(default=0.0, ge=0, le=10**7)
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")
    output_b64: str | None = Field(default=None, max_length=(INLINE_MAX * 4) // 3 + 4)
    """The output itself (base64) when small; its sha256 must be ``output_digest``."""


class FailIn(In):
    error: str = Field(max_length=2000)


class ResultOut(Out):
    status: str
    paid: int = 0


# --- jobs -----------------------------------------------------------------------------

class JobIn(In):
    spec: Annotated[dict[str, Any], bounded(262_144, 16)]
    input_digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class JobOut(Out):
    id: str
    owner: str
    status: str
    spec: dict[str, Any]
    created_at: float
    deadline_at: float
    finished_at: float | None = None
    error: str | None = None
    items: int
    units: int
    tasks: dict[str, int]
    escrow: int
    cost: int
    refunded: int
    providers: dict[str, int]
    output_digest: str | None = None
    final: bool = False
    """Results are provisional until the challenge window closes and no audit is pending:
    until then an audit may still correct a shard (``result_corrected`` events)."""
    final_at: float | None = None
    """When the results become final (None while the job runs or an audit is pending)."""
    corrected: int = 0
    """Shards whose result an audit replaced with a verifier's."""


class QuoteIn(In):
    spec: Annotated[dict[str, Any], bounded(262_144, 16)]
    shard_units: list[Annotated[StrictInt, Field(ge=0, le=INT32)]] = Field(
        min_length=1, max_length=100_000)


class QuoteOut(Out):
    units: int
    best_price: int | None
    estimated_cost: int | None
    max_cost: int
    eligible: list[dict[str, Any]]  # the best first, at most 100
    ineligible: list[dict[str, Any]]  # at most 100
    eligible_count: int = 0  # how many there are in all
    ineligible_count: int = 0


# --- ledger ---------------------------------------------------------------------------

class JournalOut(Out):
    entries: list[dict[str, Any]]
    head_seq: int


class AuditOut(Out):
    ok: bool
    entries: int
    head: str
    supply: int
    accounts: int
    problems: list[str]


# --- API keys for the OpenAI-compatible API (/v1) -------------------------------------

class ApiKeyIn(In):
    name: str = Field(default="", max_length=100)
    spend_cap: StrictInt | None = Field(default=None, ge=0, le=MAX_MONEY,
                                  description="most µ this key may commit; None: no cap")


class ApiKeyOut(Out):
    id: str
    account: str
    name: str
    prefix: str
    spend_cap: int | None = None
    spent: int = 0
    """µ committed through this key: escrow of its running jobs plus the cost of ended ones."""
    created_at: float
    revoked_at: float | None = None
    key: str | None = None
    """The secret itself: returned once, by the call that creates the key."""
