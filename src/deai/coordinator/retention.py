"""What the coordinator forgets: expired idempotency keys, uploads past their TTL and
the blobs nothing uses any more (``blob_quota``), and the packs of shards no task
names (a refused submission's, ``PackStore.collect``); the leader's loop.

``sweep`` runs on the leader only, every ``period(settings)`` seconds.
"""

from __future__ import annotations

from deai.coordinator import blob_quota, idempotency
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings


def period(st: Settings) -> float:
    return max(st.tick, min(60.0, st.blob_ttl / 4, st.idempotency_ttl / 4))


PACK_GRACE_S = 3600.0  # a pack written or reused this recently may be a submission's in flight


def sweep(c: Coordinator) -> int:
    return idempotency.purge(c) + blob_quota.sweep(c) + collect_packs(c)


def collect_packs(c: Coordinator, older_than: float = PACK_GRACE_S) -> int:
    """Delete the packs no record uses (``blob_quota.in_use``: tasks, jobs, uploads...)."""

    def in_use(digests: list[str]) -> set[str]:
        out: set[str] = set()
        with c.db.read() as s:
            for i in range(0, len(digests), 500):
                out |= blob_quota.in_use(s, digests[i:i + 500])
        return out

    return len(c.blobs.packs.collect(in_use, older_than=older_than))
