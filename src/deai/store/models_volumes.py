"""Tables of volumes for leases (``coordinator.volumes``): a volume, its snapshots, and the
mounts of leases on it. Kept apart from ``models.py``; it shares its ``Base``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from deai.store.models import Base


class Volume(Base):
    __tablename__ = "volumes"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(63))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[str | None] = mapped_column(String(64), nullable=True)
    head_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)  # the head last saved (or confirmed)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # the last failed save
    error_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (UniqueConstraint("owner", "name", name="uq_volumes_owner_name"),)


class VolumeSnapshot(Base):
    """One saved home: the history of a volume, newest last."""

    __tablename__ = "volume_snapshots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    volume_id: Mapped[str] = mapped_column(String(40), index=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    lease_id: Mapped[str] = mapped_column(String(40))
    provider_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))

    __table_args__ = (CheckConstraint("kind IN ('asked', 'end')", name="ck_volume_snap_kind"),)


class VolumeMount(Base):
    """A lease that named the volume: ``live → saving → done`` (``core.volumes``)."""

    __tablename__ = "volume_mounts"
    lease_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    volume_id: Mapped[str] = mapped_column(String(40), index=True)
    provider_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(8), index=True)
    asked_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # a snapshot asked
    created_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (CheckConstraint("state IN ('live', 'saving', 'done')",
                                      name="ck_volume_mounts_state"),)
