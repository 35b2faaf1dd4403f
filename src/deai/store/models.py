"""The tables. Money columns are BigInteger micro-units; times are epoch seconds.

Balances are a materialised view of the journal kept in the same transaction
as each entry; ``deai ledger audit`` recomputes them from the postings.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from deai.core.lifecycle.states import CHECKS


def _checks(table: str) -> tuple[CheckConstraint, ...]:
    """The lifecycle's CHECK constraints for ``table`` (migrations 0004 and, on SQLite, 0018)."""
    return tuple(CheckConstraint(sql, name=name) for name, sql in CHECKS[table])


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class JournalEntry(Base):
    __tablename__ = "journal"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    postings: Mapped[list[Any]] = mapped_column(JSON)


class JournalHead(Base):
    """One row; locking it serialises appends so the chain never forks."""

    __tablename__ = "journal_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class Balance(Base):
    __tablename__ = "balances"
    account: Mapped[str] = mapped_column(String(100), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)


class NetworkMeta(Base):
    """Facts of this deployment that every replica shares: ``network_id``, made at
    random when its database was created, which every signed request signs
    (``core.auth.message``), so that a request signed for one coordinator is refused by
    every other, whoever carries it there."""

    __tablename__ = "network_meta"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class Nonce(Base):
    __tablename__ = "nonces"
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class Provider(Base):
    __tablename__ = "providers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)
    benchmark: Mapped[dict[str, Any]] = mapped_column(JSON)
    compute_units: Mapped[float] = mapped_column(Float, default=0.0)
    threads: Mapped[int] = mapped_column(Integer, default=1)
    slots: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="active")
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
    reputation: Mapped[float] = mapped_column(Float, default=0.5)
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Who is behind the key (core.diversity; migration 0009); NULL on rows from before.
    operator: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    origin: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Bumped by the database's triggers whenever a column matching builds a provider's
    # state from changes, in this row, its offers or its hardware claim (migration 0019):
    # what the matcher's re-read compares (``coordinator.provider_index.load``).
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = _checks("providers")


class Offer(Base):
    __tablename__ = "offers"
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), primary_key=True)
    workload: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    price: Mapped[int] = mapped_column(BigInteger)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_digest: Mapped[str] = mapped_column(String(64))
    items: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(BigInteger)
    max_price: Mapped[int] = mapped_column(BigInteger)
    escrow: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the escrow still holds for the checks its owner pays (``policy.owner_pays_check``),
    # set at submission; None: the treasury pays its checks.
    check_budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    deadline_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_digest: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    __table_args__ = _checks("jobs")


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    input_digest: Mapped[str] = mapped_column(String(64))
    items: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Verification: the check a verifying task waits for (replica, referee), if any:
    # an explicit part of the task's state in core.lifecycle, not a hidden flag.
    pending_role: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    # A canary task's known answer.
    reference_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = _checks("tasks")


class Assignment(Base):
    __tablename__ = "assignments"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))  # indexed first
    # in ix_assignments_provider_status
    role: Mapped[str] = mapped_column(String(16), default="primary")
    status: Mapped[str] = mapped_column(String(16), index=True)
    price: Mapped[int] = mapped_column(BigInteger)
    leased_at: Mapped[float] = mapped_column(Float)
    lease_deadline: Mapped[float] = mapped_column(Float)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    submitted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    units: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A checker's payload when it differs from the task's shard (e.g. tokens to re-score).
    input_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # For a replica or referee: the assignment whose result it checks.
    check_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # A forced error (core.kinds.base.Kind.forge): where the planted mistake is.
    forced: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A check's lease is extended by heartbeats no later than this (``matching.check_hold``):
    # a checker sitting on it would stall the verdict, and the checked result's pay, until
    # the job's deadline. None: no bound but the job's deadline (a primary's).
    hold_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the lease ended without its result standing (failed, expired, cancelled,
    # refused, rejected: ``effects``); None while live, submitted or accepted.
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    # The digests, for a blob discard's check under its hold (``blob_quota.HELD_BY``):
    # partial, so the matcher's inserts (neither digest set on a primary's lease) add none.
    __table_args__ = (Index("ix_assignments_provider_status", "provider_id", "status"),
                      Index("ix_assignments_output_digest", "output_digest",
                            sqlite_where=text("output_digest IS NOT NULL"),
                            postgresql_where=text("output_digest IS NOT NULL")),
                      Index("ix_assignments_input_digest", "input_digest",
                            sqlite_where=text("input_digest IS NOT NULL"),
                            postgresql_where=text("input_digest IS NOT NULL")),
                      *_checks("assignments"))


class Payout(Base):
    """Earnings held for the challenge window; an assignment is paid at most once."""

    __tablename__ = "payouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    assignment_id: Mapped[str] = mapped_column(String(40))
    task_id: Mapped[str] = mapped_column(String(60))
    provider_id: Mapped[str] = mapped_column(String(64), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    release_at: Mapped[float] = mapped_column(Float, index=True)
    released: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    journal_seq: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    forfeited: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (UniqueConstraint("assignment_id", name="uq_payouts_assignment"),)


# The events a lease, a cluster or a job is the subject of are found by ``of_subject``,
# through a partial index that leaves out the matcher's one event per placement: indexing
# those would cost its hottest insert, and no view reads them by subject.
_SUBJECT_INDEXED = "kind <> 'task_assigned'"


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str] = mapped_column(String(100), default="")
    body: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_events_subject", "subject",
                            sqlite_where=text(_SUBJECT_INDEXED),
                            postgresql_where=text(_SUBJECT_INDEXED)),)

    @staticmethod
    def of_subject(subject: str) -> Any:
        """The condition for ``subject``'s events, in the form the planner matches to the
        partial index ``ix_events_subject`` (a literal, not a bound parameter)."""
        return and_(Event.subject == subject,
                    Event.kind != literal_column("'task_assigned'"))


class Reputation(Base):
    """Per provider and workload: consecutive valid checks, decayed passes and fails."""

    __tablename__ = "reputation"
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workload: Mapped[str] = mapped_column(String(32), primary_key=True)
    cv: Mapped[int] = mapped_column(Integer, default=0)
    passes: Mapped[float] = mapped_column(Float, default=0.0)
    fails: Mapped[float] = mapped_column(Float, default=0.0)
    probation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class Canary(Base):
    """A shard whose answer the network knows: verified earlier work, reused as a test."""

    __tablename__ = "canaries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_digest: Mapped[str] = mapped_column(String(64))
    output_digest: Mapped[str] = mapped_column(String(64))
    items: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(Integer)
    source_task: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)


class JobBlob(Base):
    """A blob a job's shards name by digest (a command's input file): in use while the
    job is, and readable by its owner, after the upload's own record has run out."""

    __tablename__ = "job_blobs"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Checkpoint(Base):
    """A training checkpoint a provider recorded: its blob digest and its chain hash.

    A task's checkpoints form a hash chain (``core.checkpoints``) per role: a
    replica's chain is its own, never resumed from the primary's.
    """

    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(60), index=True)
    step: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    assignment_id: Mapped[str] = mapped_column(String(40), index=True)
    provider_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("assignment_id", "step", name="uq_checkpoints_step"),)


# --- the OpenAI-compatible API (/v1) ---------------------------------------------------------

class ApiKey(Base):
    """A bearer key for /v1, bound to an account. Only the key's sha256 is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(24))
    name: Mapped[str] = mapped_column(String(100), default="")
    spend_cap: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiKeyJob(Base):
    """A job started through an API key: what the key has committed is derived from these."""

    __tablename__ = "api_key_jobs"
    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), index=True)
    source: Mapped[str] = mapped_column(String(16))  # request | batch
    created_at: Mapped[float] = mapped_column(Float)


class ApiFile(Base):
    """An OpenAI file: an uploaded batch input, or a batch's output or error file."""

    __tablename__ = "api_files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class ApiBatch(Base):
    """An OpenAI batch: an input file run as one DeAI job."""

    __tablename__ = "api_batches"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    api_key_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    completion_window: Mapped[str] = mapped_column(String(16))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    cancelling_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


# --- hardening (issue 11) --------------------------------------------------------------------

class BlobRef(Base):
    """An account that uploaded a blob: one of the parties allowed to read it back."""

    __tablename__ = "blob_refs"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


# --- leases of machines by the hour (core.leases; migration 0008) ---------------------------

class LeaseHost(Base):
    """A provider's offer to host leases: capacity, per-hour prices per resource class."""

    __tablename__ = "lease_hosts"
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    prices: Mapped[dict[str, Any]] = mapped_column(JSON)  # resource class -> µ per hour
    updated_at: Mapped[float] = mapped_column(Float)
    agent_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # poll or beat


class Lease(Base):
    """A machine by the hour: ``pending → active → ended(reason)`` (``core.leases``)."""

    __tablename__ = "leases"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    provider_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    price_hour: Mapped[int] = mapped_column(BigInteger)
    max_price_hour: Mapped[int] = mapped_column(BigInteger)
    escrow: Mapped[int] = mapped_column(BigInteger)  # deposited in total
    charged: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    penalty: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    term_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    term_end: Mapped[float | None] = mapped_column(Float, nullable=True)
    settled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    preempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # spot: notice given
    preempt_by: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    offered_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # to its agent
    warned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'active', 'ended')", name="ck_leases_status"),
        CheckConstraint("end_reason IS NULL OR end_reason IN ('owner ended', 'time up', "
                        "'escrow exhausted', 'provider lost', 'preempted', 'policy')",
                        name="ck_leases_end_reason"),
        CheckConstraint("(status = 'ended') = (end_reason IS NOT NULL)",
                        name="ck_leases_ended_reason"),
    )


class LeaseEarning(Base):
    """A lease charge's provider share, held in pending earnings for the challenge window."""

    __tablename__ = "lease_earnings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lease_id: Mapped[str] = mapped_column(String(40), index=True)
    provider_id: Mapped[str] = mapped_column(String(64), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    release_at: Mapped[float] = mapped_column(Float, index=True)
    released: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    journal_seq: Mapped[int] = mapped_column(BigInteger)


# --- settlement on an EVM chain (deai.chain; migration 0007) ---------------------------------

import sqlalchemy as _sa  # noqa: E402 - the chain tables' CHECK constraints


class ChainDeposit(Base):
    """A Deposit event credited to the journal: at most once per (tx hash, log index)."""

    __tablename__ = "chain_deposits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    block: Mapped[int] = mapped_column(BigInteger)
    account: Mapped[str] = mapped_column(String(64), index=True)
    sender: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(BigInteger)
    journal_seq: Mapped[int] = mapped_column(BigInteger)
    credited_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_chain_deposits_log"),)


class ChainEpoch(Base):
    """An epoch commitment: the journal head and the Merkle root of what each address may
    withdraw (cumulative), with the leaves so proofs can be served."""

    __tablename__ = "chain_epochs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    epoch: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    root: Mapped[str] = mapped_column(String(66))
    total: Mapped[int] = mapped_column(BigInteger)
    leaves: Mapped[dict[str, Any]] = mapped_column(JSON)
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    posted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # sends
    # that failed (reverted, or not mined); the reason of the last, and when to try again
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    retry_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    addresses: Mapped[int | None] = mapped_column(Integer, nullable=True)  # len(leaves)
    # When the rail saw the guardian revoke it on chain: it pays nothing, and its
    # proofs are no longer served (``rail.watch_revocation``).
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (_sa.CheckConstraint("status IN ('pending', 'posted')",
                                          name="ck_chain_epochs_status"),)


class ChainOutbox(Base):
    """A journal entry to mirror on chain (bond, unbond, slash), sent once by the rail."""

    __tablename__ = "chain_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    journal_seq: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("journal_seq", "op", "provider", name="uq_chain_outbox_entry"),
        _sa.CheckConstraint("op IN ('bond', 'unbond', 'slash')", name="ck_chain_outbox_op"),
        _sa.CheckConstraint("status IN ('pending', 'done', 'failed')",
                            name="ck_chain_outbox_status"),
    )


class ChainCursor(Base):
    """How far a chain loop has read: the last block scanned for deposits, the last
    journal entry scanned for the outbox."""

    __tablename__ = "chain_cursors"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


# --- hardware challenges and verified compute units (core.hwcheck; migration 0006) -----------

import sqlalchemy as _hw_sa  # noqa: E402 - only the hardware tables use it here


class HwClaim(Base):
    """A provider's hardware claim as the challenges judged it (``core.hwcheck.ClaimState``)."""

    __tablename__ = "hw_claims"
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # identity + claim challenged last
    status: Mapped[str] = mapped_column(String(16), default="unverified")
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive
    passes: Mapped[int] = mapped_column(Integer, default=0)
    fails: Mapped[int] = mapped_column(Integer, default=0)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    wrong: Mapped[bool] = mapped_column(Boolean, default=False)
    ratios: Mapped[list[Any]] = mapped_column(JSON)
    verified: Mapped[dict[str, Any]] = mapped_column(JSON)  # devices, units, memory_mb
    verified_units: Mapped[float] = mapped_column(Float, default=0.0)
    slashed: Mapped[int] = mapped_column(BigInteger, default=0)
    next_at: Mapped[float] = mapped_column(Float, index=True)
    last_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (_hw_sa.CheckConstraint(
        "status IN ('unverified', 'verified', 'flagged')", name="ck_hw_claims_status"),)


class HwChallenge(Base):
    """One challenge: issued → committed → passed | slow | wrong | error | expired."""

    __tablename__ = "hw_challenges"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))  # registration | identity | random | retry
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    issued_at: Mapped[float] = mapped_column(Float)
    committed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    root: Mapped[str | None] = mapped_column(String(64), nullable=True)
    open_seed: Mapped[str | None] = mapped_column(String(40), nullable=True)
    elapsed_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (_hw_sa.CheckConstraint(
        "status IN ('issued', 'committed', 'passed', 'slow', 'wrong', 'error', 'expired')",
        name="ck_hw_challenges_status"),)
