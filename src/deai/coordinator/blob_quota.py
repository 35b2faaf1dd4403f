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

Bytes are deleted after the commit that drops the last row naming them (an
upload's record, a /v1 file, a volume snapshot), so that no write lock is held
while the tables are scanned. That transaction also writes a grave for them
(``bury``). The grave goes with the bytes. If the deletion fails, or the
process dies first, the next sweep finds the grave and deletes the bytes then,
so they are never left on disk with nothing pointing at them.
"""

from __future__ import annotations

import functools
import logging

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator
from deai.core.errors import InvalidInput, PayloadTooLarge
from deai.store import db, journal
from deai.store.blobs import digest_of
from deai.store.models import (
    ApiFile,
    Assignment,
    BlobRef,
    Canary,
    Checkpoint,
    Job,
    JobBlob,
    Task,
)
from deai.store.models_datasets import Dataset
from deai.store.models_volumes import VolumeSnapshot

log = logging.getLogger("deai.blobs")

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
        # Already held: counted once, and its time starts again. An update, not a read:
        # a sweep deleting the record at this moment (``sweep``: only a record still past
        # its time) either waits for it and keeps the record, or is waited for, and the
        # upload is recorded anew below.
        if db.changed(s.execute(update(BlobRef).where(
                BlobRef.digest == digest, BlobRef.account == account).values(created_at=c.now()))):
            return
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
            Assignment.output_digest, Checkpoint.digest, ApiFile.digest, VolumeSnapshot.digest,
            Dataset.blob_digest, Canary.input_digest, Canary.output_digest, JobBlob.digest)
    out: set[str] = set()
    for col in cols:
        q = select(col).where(col.in_(digests)).distinct()
        if col is BlobRef.digest:
            q = q.where(BlobRef.account != GRAVE)
        out.update(d for d in s.scalars(q) if d)
    return out


GRAVE = "~unused"  # the account of a grave: a blob_refs row marking bytes to delete once
# nothing uses them. Not an account anyone holds (ids are hex), so it grants no access
# and counts against no quota.


def bury(s: Session, digests: list[str]) -> None:
    """Mark ``digests`` for deletion, in the transaction that drops the last row naming
    them (an upload's record past its TTL, a file, a snapshot). The deletion after the
    commit (``discard_if_unused``) removes the grave with the bytes; one that failed, or
    never ran because the process died after the commit, is retried by the next sweep
    (``sweep``) instead of leaving the bytes on disk for good."""
    for d in sorted(set(digests)):
        # A grave's ``size`` counts its burials: a discard that found the bytes in use
        # removes the grave only if nobody buried them again since it looked (``_discard``)
        s.execute(journal.dialect_insert(s, BlobRef)
                  .values(digest=d, account=GRAVE, size=0, created_at=0.0)
                  .on_conflict_do_update(index_elements=["digest", "account"],
                                         set_={"size": BlobRef.__table__.c.size + 1}))


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


def keep(c: Coordinator, s: Session, digests: str | list[str], field: str) -> None:
    """Hold stored bytes that rows this transaction is about to write will name (a
    dataset's ciphertext, a job's input files), as ``hold`` does for bytes it stores;
    refused, naming ``field``, if a discard deleted them first (their upload's record
    ran out)."""
    digests = [digests] if isinstance(digests, str) else digests
    _lock_digests(c, s, digests)
    for d in digests:
        if not c.blobs.exists(d):
            raise InvalidInput(f"{field}: no stored blob {d} (its upload expired); upload "
                               "it again", field=field)


DISCARD_BATCH = 100  # blobs checked again and deleted in one write transaction


def discard_if_unused(c: Coordinator, digests: list[str]) -> int:
    """Delete the loose blobs among ``digests`` that nothing uses, with their graves
    (``bury``); returns how many blobs were deleted.

    What uses them is read on a snapshot (``in_use``: several tables scanned, no lock
    held). The candidates are then deleted in short write transactions that hold them
    (``_lock_digests``) and first check again for a row written since the read under
    the same hold (an upload's record, a snapshot, an output file): an upload of the
    same bytes in between found the file still there, wrote nothing, and lost its
    bytes to the delete that followed."""
    if not digests:
        return 0
    digests = sorted(set(digests))
    with c.db.read() as s:
        used_now = in_use(s, digests)
        burials = _burials(s, digests)  # on the same snapshot
    n = 0
    for i in range(0, len(digests), DISCARD_BATCH):
        part = digests[i:i + DISCARD_BATCH]
        n += c.db.run(functools.partial(
            _discard, c, unused=[d for d in part if d not in used_now],
            burials={d: burials[d] for d in part if d in burials}))
    return n


def _burials(s: Session, digests: list[str]) -> dict[str, int]:
    """The graves among ``digests``, with how many times each was buried."""
    return dict(s.execute(select(BlobRef.digest, BlobRef.size).where(
        BlobRef.account == GRAVE, BlobRef.digest.in_(digests))).all())


def discard_quietly(c: Coordinator, digests: list[str]) -> int:
    """``discard_if_unused``, a failure logged rather than raised: after a request's own
    commit (it did what it was asked) or in a sweep (the other pages go on). The graves
    (``bury``) keep the bytes' deletion for the next sweep. Returns how many were deleted."""
    try:
        return discard_if_unused(c, digests)
    except Exception:
        log.exception("deleting %d unused blob(s) failed; the next sweep retries",
                      len(digests))
        return 0


HELD_BY = (BlobRef.digest, ApiFile.digest, VolumeSnapshot.digest, Dataset.blob_digest,
           Job.output_digest, JobBlob.digest, Assignment.output_digest,
           Assignment.input_digest)  # the rows written under a digest's hold (``admit``,
# ``hold``, ``keep``: an upload, a file, a snapshot, a dataset, a job's assembled output
# and its named files, a result sent inline, a check's payload): what a discard checks
# again, holding it. Each column is indexed.


def _discard(c: Coordinator, s: Session, *, unused: list[str], burials: dict[str, int]
             ) -> int:
    """Delete the blobs ``unused`` (nothing used them on the snapshot) unless a row
    written since names them, and remove graves: those of the bytes deleted, and those
    of bytes in use that nobody buried again since the snapshot (``burials``: each grave's
    count as the snapshot read it). A grave buried again meanwhile stays: the row that
    used the bytes may be gone now, and the next discard or sweep looks again. A file
    that cannot be deleted keeps its grave and stops no other."""
    _lock_digests(c, s, [*unused, *burials])
    kept: set[str] = set()
    if unused:
        for col in HELD_BY:
            q = select(col).where(col.in_(unused)).distinct()
            if col is BlobRef.digest:
                q = q.where(BlobRef.account != GRAVE)
            kept.update(s.scalars(q))
    n = 0
    gone: list[str] = []
    for d in unused:
        if d in kept:
            continue
        path = c.blobs.path(d)
        try:
            if path.exists():  # a pack (a job's shards) is always in use: only loose files
                path.unlink(missing_ok=True)
                n += 1
        except OSError as exc:
            log.warning("blob %s: cannot delete it (%s); its grave stays", d[:12], exc)
            continue
        gone.append(d)
    if gone:
        s.execute(delete(BlobRef).where(BlobRef.account == GRAVE, BlobRef.digest.in_(gone)))
    for d, times in sorted(burials.items()):
        if d not in unused or d in kept:
            s.execute(delete(BlobRef).where(BlobRef.account == GRAVE, BlobRef.digest == d,
                                            BlobRef.size == times))
    return n


def sweep(c: Coordinator) -> int:
    """Delete the blobs of graves a deletion left (it failed, or never ran); then drop
    upload records past the TTL, burying their blobs, and delete those nothing uses.
    Returns how many blobs were deleted. A page that fails is logged and left for the
    next sweep, and the rest go on: one blob that cannot be deleted stops nothing."""
    total, after = 0, ""
    while True:  # by digest, after the last page: a grave that stays is not read again
        with c.db.read() as s:
            page = list(s.scalars(select(BlobRef.digest)
                                  .where(BlobRef.account == GRAVE, BlobRef.digest > after)
                                  .order_by(BlobRef.digest).limit(SWEEP_BATCH)))
        if not page:
            break
        total += discard_quietly(c, page)
        after = page[-1]
    cutoff = c.now() - c.settings.blob_ttl
    while True:
        def body(s: Session) -> tuple[list[str], list[str]]:
            rows = s.execute(select(BlobRef.digest, BlobRef.account)
                             .where(BlobRef.created_at < cutoff, BlobRef.account != GRAVE)
                             .order_by(BlobRef.created_at).limit(SWEEP_BATCH)).all()
            expired: set[str] = set()
            for d, a in rows:  # still past its time: an upload of it again renewed it
                if db.changed(s.execute(delete(BlobRef).where(
                        BlobRef.digest == d, BlobRef.account == a, BlobRef.created_at < cutoff))):
                    expired.add(d)
            bury(s, sorted(expired))
            return sorted({d for d, _ in rows}), sorted(expired)

        seen, expired = c.db.run(body)
        total += discard_quietly(c, expired)
        if len(seen) < SWEEP_BATCH:
            return total
