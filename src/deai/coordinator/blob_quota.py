"""Per-account blob quotas, a disk budget for uploads, and expiry of uploads nothing uses.

Every upload (``PUT /api/blobs``, ``POST /v1/files``) is recorded against its
account (``blob_refs``: digest, account, size, time) *before* its bytes are
stored, and only while what the account holds stays within its quota
(``quota_for``); past it the upload is refused with 413 ``blob_quota_exceeded``
naming the field, and nothing is stored. Uploading a blob the account already
holds costs nothing more. On PostgreSQL an advisory lock per account serialises
the check, so concurrent uploads cannot pass it.

What an account holds (``used``), each digest once: its uploads of the last
``Settings.blob_ttl`` (24 h), the /v1 files it uploaded (kept until it deletes
them; not those the coordinator wrote for it, a batch's output and error files:
``WRITTEN``), and the content of its datasets, whose upload record never runs out
while an undeleted dataset of the account names it (a dataset keeps its bytes until
its owner deletes it: ``keep`` with ``account``, ``sweep``). Keys are free, so the quota
follows money: an account holding ``Settings.blob_quota_funds`` (its balance,
pending earnings, stake, and the escrow of its open jobs and leases together) or
more, or a network verifier, gets ``blob_quota_bytes``;
one holding less gets that share of it, and never less than
``blob_quota_free_bytes`` (64 KiB: a small job's input, not disk worth a key).
Many keys hold no more than the money behind them.

All uploads together may take ``Settings.blob_disk_budget`` bytes of the disk
under the blob store (0: 80 % of what was free there when the coordinator first
took an upload), measured as the fall in its free space since (``check_disk``).
Past it, new bytes are refused with 507 ``insufficient_storage`` before anything
is recorded or stored; bytes the uploading account already holds are still taken
(not bytes only another account holds: that would tell who has stored what).

An upload counts for ``Settings.blob_ttl``. Then the leader's retention loop
(``sweep``) drops its record (unless a dataset of its account names it); a blob
that no record uses any more (no other account's upload, job, task, assignment,
checkpoint, /v1 file or volume snapshot) is deleted from the store. A blob a job
uses stays, readable by its owner through that record (``access``).

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
import shutil
import threading
import weakref
from typing import Any

from sqlalchemy import ColumnElement, String, delete, func, literal, select, text, union_all, update
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core.errors import DeAIError, InvalidInput, PayloadTooLarge
from deai.core.leases import LeaseStatus
from deai.core.lifecycle.states import JOB_ACTIVE
from deai.store import db, journal
from deai.store.blobs import digest_of
from deai.store.models import (
    ApiFile,
    Assignment,
    Balance,
    BlobRef,
    Canary,
    Checkpoint,
    Job,
    JobBlob,
    Lease,
    Task,
)
from deai.store.models_datasets import Dataset
from deai.store.models_volumes import VolumeSnapshot

log = logging.getLogger("deai.blobs")

SWEEP_BATCH = 500


class QuotaExceeded(PayloadTooLarge):
    status = 413
    code = "blob_quota_exceeded"


class StorageFull(DeAIError):
    status = 507
    code = "insufficient_storage"


def quota_of(full: int, free: int, funds_for_full: int, funds: int) -> int:
    """The bytes an account holding ``funds`` µ may keep: ``full`` from ``funds_for_full``
    up (``funds_for_full`` 0: everyone), that share of it below, never under ``free``
    (nor over ``full``)."""
    if funds_for_full <= 0:
        return full
    share = full * min(max(funds, 0), funds_for_full) // funds_for_full
    return min(full, max(free, share))


ESCROW_READ = 500  # open jobs, and open leases, whose escrow one quota check reads


def escrowed(s: Session, account: str) -> int:
    """What ``account`` holds in escrow for its open jobs and leases (a cluster's is its
    leases'): the balances of their ``escrow:<id>`` accounts, of at most ``ESCROW_READ``
    of each, so that a check never reads the account's whole history. Money that is
    still the account's until the job or lease spends it: escrowing it for a job takes
    none of the quota the job's input needs."""
    prefix = literal(ledger.escrow(""), String)
    jobs = select(prefix + Job.id).where(Job.owner == account,
                                         Job.status.in_(sorted(JOB_ACTIVE))) \
        .limit(ESCROW_READ)
    leases = select(prefix + Lease.id).where(Lease.owner == account,
                                             Lease.status != LeaseStatus.ENDED) \
        .limit(ESCROW_READ)
    held = 0
    for ids in (jobs, leases):
        held += int(s.scalar(select(func.coalesce(func.sum(Balance.amount), 0))
                             .where(Balance.account.in_(ids.scalar_subquery()))) or 0)
    return held


def quota_for(c: Coordinator, s: Session, account: str) -> int:
    """``account``'s quota: by its balance, pending earnings, stake and open escrow
    (``quota_of``, ``escrowed``); a network verifier's (it holds no stake, and uploads
    the checks it runs) is full."""
    st = c.settings
    if account in st.verifiers or st.blob_quota_funds <= 0:
        return st.blob_quota_bytes
    held = c.settlement.balances(s, [ledger.acct(account), ledger.pending(account),
                                     ledger.stake(account)])
    return quota_of(st.blob_quota_bytes, st.blob_quota_free_bytes, st.blob_quota_funds,
                    sum(held.values()) + escrowed(s, account))


WRITTEN = ("batch_output",)  # the purposes of the /v1 files the coordinator writes for an
# account (``openai.batches._store``: a batch's output and error files), without a quota
# check: they count against no quota, or a large batch output would refuse its owner's
# next small upload until it deleted the file.


def _counted_file() -> ColumnElement[bool]:
    """A /v1 file its account uploaded: one that counts against its quota."""
    return ApiFile.purpose.not_in(WRITTEN)


def used(s: Session, account: str) -> int:
    """The bytes ``account`` holds, each digest once: its upload records (those of the
    TTL, and those its datasets keep) and the /v1 files it uploaded."""
    both = union_all(
        select(BlobRef.digest, BlobRef.size).where(BlobRef.account == account),
        select(ApiFile.digest, ApiFile.size).where(ApiFile.account == account,
                                                   _counted_file())).subquery()
    each = select(both.c.digest, func.max(both.c.size).label("size")) \
        .group_by(both.c.digest).subquery()
    return int(s.scalar(select(func.coalesce(func.sum(each.c.size), 0))) or 0)


def lock_account(c: Coordinator, s: Session, account: str) -> None:
    """One account's quota checks, one at a time (PostgreSQL; SQLite: always). Taken
    before any blob's hold (``_lock_digests``), in every transaction that takes both."""
    if not c.db.is_sqlite:
        s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                  {"k": f"blob-quota:{account}"})


def _count(c: Coordinator, s: Session, account: str, digest: str, size: int,
           field: str) -> None:
    """Record ``digest`` against ``account`` (its locks held): renewed if it holds it,
    else counted, and refused past its quota, naming ``field``."""
    # Already held: counted once, and its time starts again. An update, not a read: a
    # sweep deleting the record at this moment (``sweep``: only a record still past its
    # time) either waits for it and keeps the record, or is waited for, and the upload is
    # recorded anew below.
    if db.changed(s.execute(update(BlobRef).where(
            BlobRef.digest == digest, BlobRef.account == account).values(created_at=c.now()))):
        return
    have, quota = used(s, account), quota_for(c, s, account)
    filed = s.scalar(select(ApiFile.id).where(ApiFile.account == account,
                                              ApiFile.digest == digest, _counted_file())
                     .limit(1))
    if filed is None and have + size > quota:
        short = (f"; an account holding less than {c.settings.blob_quota_funds} µ (balance, "
                 f"pending, stake and open escrow) gets that share of "
                 f"{c.settings.blob_quota_bytes}"
                 if quota < c.settings.blob_quota_bytes else "")
        raise QuotaExceeded(
            f"{field}: this account holds {have} bytes (uploads of the last "
            f"{c.settings.blob_ttl:.0f} s, /v1 files, datasets); {size} more would pass its "
            f"quota of {quota} bytes{short}", field=field, quota=quota, used=have, size=size)
    s.add(BlobRef(digest=digest, account=account, size=size, created_at=c.now()))


def admit(c: Coordinator, account: str, digest: str, size: int, field: str = "body") -> None:
    """Record ``account``'s upload of ``digest``, or refuse it: over its quota, or new
    bytes past the disk budget."""
    try:
        check_disk(c, size, field)
    except StorageFull:
        # Bytes the store holds take no more disk, but only an account that holds them
        # already passes a spent budget: for any other, passing would tell that someone
        # stored these bytes (a guessed content confirmed; ``docs/security.md``).
        if not _holds(c, account, digest) or not c.blobs.exists(digest):
            raise

    def body(s: Session) -> None:
        lock_account(c, s, account)
        _lock_digests(c, s, [digest])  # not while a discard of these bytes checks
        _count(c, s, account, digest, size, field)

    c.db.run(body)


def _holds(c: Coordinator, account: str, digest: str) -> bool:
    """``account`` holds ``digest``: its upload record, or a /v1 file it uploaded."""
    with c.db.read() as s:
        return (s.get(BlobRef, (digest, account)) is not None
                or s.scalar(select(ApiFile.id).where(ApiFile.account == account,
                                                     ApiFile.digest == digest).limit(1))
                is not None)


# --- the disk budget -------------------------------------------------------------------------

DISK_SHARE = 0.8  # of the free disk at the first upload: the default budget
_disk: weakref.WeakKeyDictionary[Coordinator, tuple[int, int]] = weakref.WeakKeyDictionary()
_disk_lock = threading.Lock()


def _free(c: Coordinator) -> int:
    return shutil.disk_usage(c.blobs.root).free


def disk_room(c: Coordinator) -> int:
    """Bytes uploads may still add to the blob store's disk: the budget less the fall in
    its free space since the first upload (whatever wrote: a disk full for any reason
    takes no upload), and never more than is free. Raises ``OSError``."""
    free = _free(c)
    with _disk_lock:
        if c not in _disk:
            budget = c.settings.blob_disk_budget or int(free * DISK_SHARE)
            _disk[c] = (budget, free)
        budget, first = _disk[c]
    return max(0, min(budget - max(0, first - free), free))


def check_disk(c: Coordinator, size: int, field: str) -> None:
    """Refuse ``size`` new bytes past the disk budget (``StorageFull``, 507), naming
    ``field``: before a byte is recorded or stored."""
    try:
        room = disk_room(c)
    except OSError as exc:
        log.error("blob store: cannot read the free disk (%s); uploads refused", exc)
        raise StorageFull(f"{field}: the coordinator cannot measure its free disk; "
                          "try again later", field=field) from None
    if size > room:
        log.warning("blob store: an upload of %d bytes refused, %d bytes of the disk "
                    "budget left", size, room)
        raise StorageFull(f"{field}: the coordinator's blob store is full (its disk "
                          "budget for uploads is spent); try again later", field=field)


def in_use(s: Session, digests: list[str]) -> set[str]:
    """Those of ``digests`` that some record still names (any account's)."""
    cols = (BlobRef.digest, Job.input_digest, Job.output_digest, Task.input_digest,
            Task.output_digest, Task.reference_digest, Assignment.input_digest,
            Assignment.output_digest, Checkpoint.digest, ApiFile.digest, VolumeSnapshot.digest,
            Dataset.blob_digest, Canary.input_digest, Canary.output_digest, JobBlob.digest)
    out: set[str] = set()
    for col in cols:
        out.update(d for d in s.scalars(_naming(col, digests)) if d)
    return out


def _naming(col: Any, digests: list[str]) -> Any:
    """The digests among ``digests`` that rows of ``col`` name and keep: not a grave's,
    nor a deleted dataset's (it no longer keeps its bytes)."""
    q = select(col).where(col.in_(digests)).distinct()
    if col is BlobRef.digest:
        q = q.where(BlobRef.account != GRAVE)
    elif col is Dataset.blob_digest:
        q = q.where(Dataset.deleted_at.is_(None))
    return q


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


def keep(c: Coordinator, s: Session, digests: str | list[str], field: str,
         account: str | None = None) -> None:
    """Hold stored bytes that rows this transaction is about to write will name (a
    dataset's ciphertext, a job's input files), as ``hold`` does for bytes it stores;
    refused, naming ``field``, if a discard deleted them first (their upload's record
    ran out). With ``account`` (a dataset's owner), the bytes count against its quota
    for as long as a dataset of its names them: its record is renewed, or written anew
    within its quota (``QuotaExceeded`` naming ``field`` past it), and ``sweep`` never
    drops it while such a dataset exists."""
    digests = [digests] if isinstance(digests, str) else digests
    if account is not None:
        lock_account(c, s, account)  # before the blobs' holds, as ``admit``
    _lock_digests(c, s, digests)
    for d in digests:
        if not c.blobs.exists(d):
            raise InvalidInput(f"{field}: no stored blob {d} (its upload expired); upload "
                               "it again", field=field)
    if account is not None:
        for d in sorted(set(digests)):
            _count(c, s, account, d, c.blobs.size(d), field)


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
            kept.update(s.scalars(_naming(col, unused)))
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


def _kept_by_dataset() -> ColumnElement[bool]:
    """An upload record whose account has a dataset naming its bytes: it counts against
    that account's quota for as long as the dataset keeps them (until it is deleted)."""
    return select(Dataset.id).where(Dataset.owner == BlobRef.account,
                                    Dataset.blob_digest == BlobRef.digest,
                                    Dataset.deleted_at.is_(None)).exists()


def sweep(c: Coordinator) -> int:
    """Delete the blobs of graves a deletion left (it failed, or never ran); then drop
    upload records past the TTL (not those a dataset of their account names), burying
    their blobs, and delete those nothing uses. Returns how many blobs were deleted. A
    page that fails is logged and left for the next sweep, and the rest go on: one blob
    that cannot be deleted stops nothing."""
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
                             .where(BlobRef.created_at < cutoff, BlobRef.account != GRAVE,
                                    ~_kept_by_dataset())
                             .order_by(BlobRef.created_at).limit(SWEEP_BATCH)).all()
            expired: set[str] = set()
            for d, a in rows:  # still past its time: an upload of it again renewed it
                if db.changed(s.execute(delete(BlobRef).where(
                        BlobRef.digest == d, BlobRef.account == a, BlobRef.created_at < cutoff,
                        ~_kept_by_dataset()))):
                    expired.add(d)
            bury(s, sorted(expired))
            return sorted({d for d, _ in rows}), sorted(expired)

        seen, expired = c.db.run(body)
        total += discard_quietly(c, expired)
        if len(seen) < SWEEP_BATCH:
            return total
