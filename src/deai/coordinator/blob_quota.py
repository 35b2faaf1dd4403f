"""Per-account blob quotas, and expiry of uploads nothing uses.

Every upload (``PUT /api/blobs``, ``POST /v1/files``) is recorded against its
account (``blob_refs``: digest, account, size, time) *before* its bytes are
stored, and only while the account's recorded uploads stay within
``Settings.blob_quota_bytes``; past it the upload is refused with 413
``blob_quota_exceeded`` naming the field, and nothing is stored. Uploading a
blob the account already holds costs nothing more. On PostgreSQL an advisory
lock per account serialises the check, so concurrent uploads cannot pass it.

An upload counts for ``Settings.blob_ttl`` (24 h). Then the leader's retention
loop (``sweep``) drops its record; a blob that no record uses any more (no
other account's upload, job, task, assignment, checkpoint, /v1 file or volume snapshot) is
deleted from the store. A blob a job or a file uses stays, readable by its
owner through that record (``access``). So an account, funded or not, holds
at most its quota in uploads that nothing uses, and never for long.
"""

from __future__ import annotations

import functools

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator
from deai.core.errors import PayloadTooLarge
from deai.store.blobs import digest_of
from deai.store.models import ApiFile, Assignment, BlobRef, Checkpoint, Job, Task
from deai.store.models_volumes import VolumeSnapshot

SWEEP_BATCH = 500


class QuotaExceeded(PayloadTooLarge):
    status = 413
    code = "blob_quota_exceeded"


def used(s: Session, account: str) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(BlobRef.size), 0))
                        .where(BlobRef.account == account)) or 0)


def admit(c: Coordinator, account: str, digest: str, size: int, field: str = "body") -> None:
    """Record ``account``'s upload of ``digest``, or refuse it over the quota."""
    quota = c.settings.blob_quota_bytes

    def body(s: Session) -> None:
        if not c.db.is_sqlite:  # one account's uploads, one at a time (SQLite: always)
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                      {"k": f"blob-quota:{account}"})
        _lock_digests(c, s, [digest])  # not while a discard of these bytes checks
        if s.get(BlobRef, (digest, account)) is not None:
            return  # already held: counted once
        have = used(s, account)
        if have + size > quota:
            raise QuotaExceeded(
                f"{field}: this account holds {have} bytes of uploads no job or file uses "
                f"yet; {size} more would pass its quota of {quota} bytes (uploads count for "
                f"{c.settings.blob_ttl:.0f} s)", field=field, quota=quota, used=have,
                size=size)
        s.add(BlobRef(digest=digest, account=account, size=size, created_at=c.now()))

    c.db.run(body)


def in_use(s: Session, digests: list[str]) -> set[str]:
    """Those of ``digests`` that some record still names (any account's)."""
    cols = (BlobRef.digest, Job.input_digest, Job.output_digest, Task.input_digest,
            Task.output_digest, Task.reference_digest, Assignment.input_digest,
            Assignment.output_digest, Checkpoint.digest, ApiFile.digest, VolumeSnapshot.digest)
    out: set[str] = set()
    for col in cols:
        out.update(d for d in s.scalars(select(col).where(col.in_(digests)).distinct()) if d)
    return out


def _lock_digests(c: Coordinator, s: Session, digests: list[str]) -> None:
    """Hold these blobs (PostgreSQL; SQLite's write lock holds everything) until the
    transaction ends: an upload records itself, and a discard checks and deletes, one at
    a time per blob. In ascending order: two discards never wait on each other in a
    cycle."""
    if not c.db.is_sqlite:
        s.execute(text("SELECT pg_advisory_xact_lock(hashtext(k)) "
                       "FROM unnest(CAST(:ks AS text[])) AS k ORDER BY k"),
                  {"ks": [f"blob:{d}" for d in sorted(set(digests))]})


def hold(c: Coordinator, s: Session, data: bytes) -> str:
    """Store ``data`` for a row this transaction is about to write that names it (a
    snapshot, an output file), holding its digest until the commit: a discard of the
    same bytes that checked before the row existed cannot delete them after this
    returns. Stored again, under the hold, if such a discard deleted them first."""
    digest = digest_of(data)
    _lock_digests(c, s, [digest])
    if not c.blobs.exists(digest):
        c.blobs.put(data)
    return digest


DISCARD_BATCH = 100  # blobs checked again and deleted in one write transaction


def discard_if_unused(c: Coordinator, digests: list[str]) -> int:
    """Delete the loose blobs among ``digests`` that nothing uses; returns how many.

    What uses them is read on a snapshot (``in_use``: several tables scanned, no lock
    held). The candidates are then deleted in short write transactions that hold them
    (``_lock_digests``) and first check again for a row written since the read under
    the same hold (an upload's record, a snapshot, an output file): an upload of the
    same bytes in between found the file still there, wrote nothing, and lost its
    bytes to the delete that followed."""
    if not digests:
        return 0
    with c.db.read() as s:
        gone = sorted(set(digests) - in_use(s, digests))
    n = 0
    for i in range(0, len(gone), DISCARD_BATCH):
        n += c.db.run(functools.partial(_discard, c, digests=gone[i:i + DISCARD_BATCH]))
    return n


HELD_BY = (BlobRef.digest, ApiFile.digest, VolumeSnapshot.digest)  # the rows written
# under a digest's hold (``admit``, ``hold``): what a discard checks again, holding it


def _discard(c: Coordinator, s: Session, *, digests: list[str]) -> int:
    _lock_digests(c, s, digests)
    kept: set[str] = set()
    for col in HELD_BY:
        kept.update(s.scalars(select(col).where(col.in_(digests)).distinct()))
    n = 0
    for d in digests:
        path = c.blobs.path(d)
        if d not in kept and path.exists():  # a pack (a job's shards) is always in use:
            path.unlink(missing_ok=True)  # only loose files
            n += 1
    return n


def sweep(c: Coordinator) -> int:
    """Drop upload records past the TTL; delete the blobs nobody uses any more."""
    cutoff = c.now() - c.settings.blob_ttl
    total = 0
    while True:
        def body(s: Session) -> list[str]:
            rows = s.execute(select(BlobRef.digest, BlobRef.account)
                             .where(BlobRef.created_at < cutoff)
                             .order_by(BlobRef.created_at).limit(SWEEP_BATCH)).all()
            for d, a in rows:
                s.execute(delete(BlobRef).where(BlobRef.digest == d, BlobRef.account == a))
            return sorted({d for d, _ in rows})

        expired = c.db.run(body)
        total += discard_if_unused(c, expired)
        if len(expired) < SWEEP_BATCH:
            return total
