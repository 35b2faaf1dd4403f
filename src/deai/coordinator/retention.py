"""What the coordinator forgets: expired idempotency keys, uploads past their TTL and
the blobs nothing uses any more (``blob_quota``); the leader's loop.

``sweep`` runs on the leader only, every ``period(settings)`` seconds.
"""

from __future__ import annotations

from deai.coordinator import blob_quota, idempotency
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings


def period(st: Settings) -> float:
    return max(st.tick, min(60.0, st.blob_ttl / 4, st.idempotency_ttl / 4))


def sweep(c: Coordinator) -> int:
    return idempotency.purge(c) + blob_quota.sweep(c)
