"""Idempotency keys: a create request's ``Idempotency-Key`` and what it created.

One row per (account, key): the route it was used on, a fingerprint of the
request, the id of what the request created, and when the key expires. The
primary key is what makes a retry race-safe: two concurrent requests with one
key both try to insert the row in the transaction that creates (and escrows);
one commits, the other fails on the key and its whole transaction rolls back
(``coordinator.idempotency``).
"""

from __future__ import annotations

from sqlalchemy import Float, String
from sqlalchemy.orm import Mapped, mapped_column

from deai.store.models import Base

MAX_KEY = 255


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY), primary_key=True)
    scope: Mapped[str] = mapped_column(String(40))  # the route, e.g. "POST /api/jobs"
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the request
    resource: Mapped[str] = mapped_column(String(80))  # the job, batch or file created
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
