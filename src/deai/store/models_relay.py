"""The shared rendezvous of lease sessions (``coordinator.relay_leases``). Kept apart from
``models.py``; it shares its ``Base``.

A row is a session an owner opened on one replica, waiting for its provider: the poll
on any replica hands it over (``taken``), and the replica that gets the agent's socket
claims it (deletes it) and dials ``endpoint`` (the owner's replica's internal relay),
proving itself with ``secret``. Neither column leaves the coordinators.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from deai.store.models import Base


class LeaseSession(Base):
    __tablename__ = "lease_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(64))
    lease_id: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the owner's first message
    endpoint: Mapped[str] = mapped_column(String(300))  # host:port of the owner's replica
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, index=True)
    taken: Mapped[bool] = mapped_column(Boolean, default=False)  # handed to a poll

    __table_args__ = (Index("ix_lease_sessions_provider", "provider_id", "taken"),)
