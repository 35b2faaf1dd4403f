"""The ``clusters`` table: a gang of leases that becomes a Ray cluster (``coordinator.clusters``).

Kept apart from ``models.py`` (one table, one owner); it shares its ``Base``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, CheckConstraint, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from deai.store.models import Base

STATUSES = ("forming", "running", "ended")
END_REASONS = ("owner ended", "not formed", "head lost", "members ended")


class Cluster(Base):
    """``forming → running → ended(reason)``; members are leases, the first is the head."""

    __tablename__ = "clusters"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    nodes: Mapped[int] = mapped_column(Integer)
    leases: Mapped[list[str]] = mapped_column(JSON, default=list)  # the head first
    lost: Mapped[list[str]] = mapped_column(JSON, default=list)  # workers whose lease ended
    ray: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    form_by: Mapped[float] = mapped_column(Float)
    ready_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        CheckConstraint("status IN ('forming', 'running', 'ended')", name="ck_clusters_status"),
        CheckConstraint("end_reason IS NULL OR end_reason IN ('owner ended', 'not formed', "
                        "'head lost', 'members ended')", name="ck_clusters_end_reason"),
        CheckConstraint("(status = 'ended') = (end_reason IS NOT NULL)",
                        name="ck_clusters_ended_reason"),
    )
