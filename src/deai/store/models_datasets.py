"""The dataset tables (``coordinator.datasets``): datasets, their uses and released keys.

Kept apart from ``models.py`` (one owner); they share its ``Base``. Nothing here
holds a key or a byte of a dataset's plaintext: ``blob_digest`` names the
ciphertext, ``owner_key`` and ``DatasetKey.wrapped`` are the dataset key sealed
to one account's X25519 key each.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from deai.store.models import Base


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(100))
    blob_digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # plaintext bytes
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # public summary: n, features, ...
    owner_key: Mapped[str] = mapped_column(Text)  # the key wrapped to the owner
    price_per_use: Mapped[int] = mapped_column(BigInteger)
    allow: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    royalties: Mapped[int] = mapped_column(BigInteger, default=0)  # µ paid to the owner
    created_at: Mapped[float] = mapped_column(Float, index=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # deleted by its owner: the row stays (history), the bytes are no longer kept
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the providers the owner trusts with its rows: its jobs' leases that read them go to
    # these only (``matching``); None: any provider
    providers: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class DatasetUse(Base):
    """One job's use of a dataset, recorded (and paid for) as the job is submitted."""

    __tablename__ = "dataset_uses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(40), unique=True)
    job_owner: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    price: Mapped[int] = mapped_column(BigInteger)
    royalty_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class DatasetKey(Base):
    """The dataset key wrapped to one provider leased for one job (the owner's release)."""

    __tablename__ = "dataset_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    provider_id: Mapped[str] = mapped_column(String(64))
    wrapped: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("job_id", "provider_id", name="uq_dataset_keys_job"),)
