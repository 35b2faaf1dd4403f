"""Coordinator settings: one frozen object, built from flags or ``DEAI_*`` variables."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from deai.core.market import DEFAULT_STRATEGY, Strategy
from deai.core.verify.lookback import DEFAULT_BATCH
from deai.core.verify.params import VerifyParams
from deai.store import db


def default_data_dir() -> Path:
    return Path(os.environ.get("DEAI_HOME", ".deai")).resolve() / "coordinator"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""  # empty: SQLite file under data_dir
    devnet: bool = False
    min_stake: int = 10_000_000  # 10 DEAI
    fee_bps: int = 500  # 5 %
    challenge_window: float = 3600.0
    heartbeat_timeout: float = 15.0
    lease_ttl: float = 120.0
    max_attempts: int = 5
    max_upload_bytes: int = 64 * 1024 * 1024
    faucet_max: int = 1_000_000_000_000
    tick: float = 0.5  # background loop period
    verify: VerifyParams = field(default_factory=VerifyParams)
    verify_timeout: float = 300.0  # a check nobody can place is given up after this
    look_back_batch: int = DEFAULT_BATCH  # re-checks a look-back queues at a time (lookback)
    treasury_grant: int = 1_000_000_000_000  # devnet: the treasury starts with 1,000,000 DEAI
    # The least one withdrawal to the chain takes: each address withdrawn to is a leaf of
    # every epoch's tree from then on, and 1 µ each made a million leaves for 1 DEAI.
    min_withdrawal: int = 10_000  # 0.01 DEAI (a devnet's: 1 µ, its earnings are tiny)
    # The least one bond takes: each is a vault call the settlement key pays gas for
    # (``chain.books.mirror_ops``), and a million bonds of 1 µ cost it a million calls.
    min_bond: int = 10_000  # 0.01 DEAI (a devnet's: 1 µ)
    # Policies, injected: how providers are ranked, and the seed of the verification
    # draws (None: the operating system's randomness, which providers cannot predict).
    strategy: Strategy = DEFAULT_STRATEGY
    verify_seed: int | None = None
    # Keys of the network's own verifier processes (``deai verifier start``): the only
    # providers trusted to decide a verdict (hex public keys).
    verifiers: frozenset[str] = frozenset()
    # Behind a reverse proxy: take a registering provider's address from the last hop of
    # X-Forwarded-For instead of the socket (core.diversity.client_address).
    trust_forwarded_for: bool = False
    # What no two parties on one task may share (core.diversity): their operator, their
    # network origin (/24, /48), their hardware fingerprint. A devnet runs every
    # provider on one machine and one address, so there only operators count.
    diversity: tuple[str, ...] = ("operator", "origin", "fingerprint")
    # Retention (``coordinator.retention``): how long an Idempotency-Key is remembered;
    # bytes an account may hold in uploads no job or file uses yet, and how long such an
    # upload is kept before it is deleted.
    idempotency_ttl: float = 86400.0
    blob_quota_bytes: int = 4 * 1024**3
    blob_ttl: float = 86400.0
    # The HTTP front's own bounds (``limits``, ``http_protocol``, ``server``;
    # docs/security.md), each also a ``DEAI_*`` variable: a JSON body's bytes (uploads
    # have max_upload_bytes), a request head's bytes and seconds, seconds a body may go
    # without a byte (then at least min_body_rate bytes a second), bodies over a MiB read
    # at once, connections served at once (uvicorn answers 503 past it), and seconds an
    # idle kept-alive one is kept.
    max_json_bytes: int = field(default_factory=lambda: _env("DEAI_MAX_JSON_BYTES", 4 << 20))
    max_head_bytes: int = field(default_factory=lambda: _env("DEAI_MAX_HEAD_BYTES", 32 << 10))
    head_timeout: float = field(default_factory=lambda: _env("DEAI_HEAD_TIMEOUT", 10.0))
    body_timeout: float = field(default_factory=lambda: _env("DEAI_BODY_TIMEOUT", 30.0))
    min_body_rate: int = field(default_factory=lambda: _env("DEAI_MIN_BODY_RATE", 16 << 10))
    max_large_bodies: int = field(default_factory=lambda: _env("DEAI_MAX_LARGE_BODIES", 8))
    max_connections: int = field(default_factory=lambda: _env("DEAI_MAX_CONNECTIONS",
                                                              10_000))
    keep_alive: int = field(default_factory=lambda: _env("DEAI_KEEP_ALIVE", 5))
    # Database connections this process may hold at once (``store.db``): by default more
    # than the threads that can ask; replicas sharing one PostgreSQL take fewer each so
    # that together they stay under its ``max_connections``.
    db_connections: int = field(default_factory=lambda: _env_connections(
        "DEAI_DB_CONNECTIONS"))
    # Disk (``coordinator.blob_quota``; keys are free, money is not): an account holding
    # less than ``blob_quota_funds`` µ (balance, pending and stake) gets that share of
    # ``blob_quota_bytes``, never under ``blob_quota_free_bytes``; the datasets one account
    # may publish (each keeps its bytes for ever); the bytes all uploads may take of the
    # blob store's disk (0: 80 % of what was free at the first upload). From ``DEAI_*``.
    blob_quota_funds: int = field(
        default_factory=lambda: _env_count("DEAI_BLOB_QUOTA_FUNDS", 10_000_000))
    blob_quota_free_bytes: int = field(
        default_factory=lambda: _env_count("DEAI_BLOB_QUOTA_FREE_BYTES", 64 * 1024))
    max_datasets_per_owner: int = field(
        default_factory=lambda: _env_count("DEAI_MAX_DATASETS_PER_OWNER", 100))
    blob_disk_budget: int = field(
        default_factory=lambda: _env_count("DEAI_BLOB_DISK_BUDGET", 0))

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'deai.sqlite3'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def for_devnet(self) -> Settings:
        """Short windows so a demo settles in seconds rather than an hour."""
        return replace(self, devnet=True, challenge_window=5.0, heartbeat_timeout=6.0,
                       lease_ttl=60.0, verify_timeout=30.0, diversity=("operator",),
                       blob_quota_bytes=1024**3, min_withdrawal=1, min_bond=1)


def _env_count(name: str, default: int) -> int:
    """A whole number ≥ 0 from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise SystemExit(f"{name} must be a whole number ≥ 0, not {raw!r}")
    return int(raw)


def _env_connections(name: str) -> int:
    n = _env_count(name, db.CONNECTIONS)
    if not db.MIN_CONNECTIONS <= n <= 10_000:
        raise SystemExit(f"{name} must be {db.MIN_CONNECTIONS}..10000, not {n}")
    return n


N = TypeVar("N", int, float)


def _env(name: str, default: N) -> N:
    """``$name`` as a number of the default's type, or the default; not a positive number
    of that type: ``SystemExit`` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = type(default)(raw)
    except ValueError:
        value = type(default)(-1)
    if not value > 0 or not math.isfinite(value):
        raise SystemExit(f"{name} must be a positive {type(default).__name__}, not {raw!r}")
    return value
