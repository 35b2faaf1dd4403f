"""Volumes on the coordinator: create, list, remove; mount on a lease; record snapshots.

The rules are ``core.volumes``'s; this module keeps the tables
(``store.models_volumes``) and is called by ``coordinator.leases`` in the
lease's own transactions:

- ``attach`` (in ``leases.create``): the owner's volume, mounted live by no other
  lease (a 409 naming ``volume``); one saving is no bar, the new lease waits;
- ``on_lease_end`` (in ``leases.finish``): the mount goes ``saving`` when the
  provider is still there to pack the home, else ``done``;
- ``specs`` (in ``leases.work_for``): what each starting lease restores; a lease
  whose volume is still being saved by an earlier mount is held back until that
  snapshot lands or ``save_timeout()`` passes (the last snapshot then stands).

Snapshots arrive from the provider (``record``) as the body of a signed upload:
stored in the blob store under their sha256, never counted against the
provider's upload quota (the volume's size is the cap), kept ``KEEP_SNAPSHOTS``
deep. Only the owner and the provider of a live mount may read one
(``may_read``, used by ``access``). Volumes cost nothing for now.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deai.coordinator import blob_quota
from deai.coordinator.service import Coordinator, new_id
from deai.core import volumes as core
from deai.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from deai.core.volumes import MountState, SnapshotKind
from deai.core.wire_volumes import SnapshotOut, VolumeIn, VolumeOut, VolumeSpec
from deai.store.models import Lease
from deai.store.models_volumes import Volume, VolumeMount, VolumeSnapshot

LIVE = MountState.LIVE.value
SAVING = MountState.SAVING.value
DONE = MountState.DONE.value
GZIP_MAGIC = b"\x1f\x8b"

log = logging.getLogger("deai.coordinator.volumes")


def save_timeout() -> float:
    """How long a new lease waits for the previous lease's final snapshot."""
    return float(os.environ.get("DEAI_VOLUME_SAVE_TIMEOUT", "60"))


# --- the owner ----------------------------------------------------------------------------

def create(c: Coordinator, owner: str, body: VolumeIn) -> VolumeOut:
    """A new volume; 409 naming ``name`` if the owner has one by that name or holds
    ``MAX_VOLUMES`` already. One owner's creations run one at a time (PostgreSQL: an
    advisory lock on the owner; SQLite: its write lock), or concurrent ones would each
    pass both checks: the name's unique constraint then raised a 500 and the cap was
    overrun."""
    name = core.check_name(body.name)
    size = core.size_bytes(body.size_gb)
    with c.db.write() as s:
        if not c.db.is_sqlite:
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                      {"k": f"volumes:{owner}"})
        mine = s.scalars(select(Volume).where(Volume.owner == owner)).all()
        if any(v.name == name for v in mine):
            raise Conflict(f"name: you already have a volume {name!r}", field="name")
        if len(mine) >= core.MAX_VOLUMES:
            raise Conflict(f"volumes: an account holds at most {core.MAX_VOLUMES}",
                           field="name")
        v = Volume(id=new_id("vol"), owner=owner, name=name, size_bytes=size,
                   created_at=c.now(), updated_at=c.now())
        s.add(v)
        try:
            s.flush()
        except IntegrityError as e:  # a writer that took no lock (none does today)
            if "uq_volumes_owner_name" not in str(e) and "volumes.owner" not in str(e):
                raise
            raise Conflict(f"name: you already have a volume {name!r}",
                           field="name") from e
        c.emit(s, "volume_created", v.id, owner=owner, name=name, size_bytes=size)
        return _out(s, v, c.now())


def find(s: Session, owner: str, ref: str, *, lock: bool = False) -> Volume:
    """The owner's volume by id, else by name; someone else's is the same 404 as none.
    The id first: a volume may be named like another's id, and ``id OR name`` took
    whichever came first (a removal could hit the other)."""
    v = None
    for match in (Volume.id == ref, Volume.name == ref):
        q = select(Volume).where(Volume.owner == owner, match)
        v = s.scalars(q.with_for_update() if lock else q).first()
        if v is not None:
            break
    if v is None:
        raise NotFound(f"volume: you have no volume {ref!r}", field="volume")
    return v


def listing(c: Coordinator, owner: str) -> list[VolumeOut]:
    with c.db.read() as s:
        rows = s.scalars(select(Volume).where(Volume.owner == owner)
                         .order_by(Volume.created_at)).all()
        return [_out(s, v, c.now(), history=False) for v in rows]


def show(c: Coordinator, owner: str, ref: str) -> VolumeOut:
    with c.db.read() as s:
        return _out(s, find(s, owner, ref), c.now())


def remove(c: Coordinator, owner: str, ref: str) -> VolumeOut:
    with c.db.write() as s:
        v = find(s, owner, ref, lock=True)
        holder = _holder(s, v.id, c.now())
        if holder is not None:
            raise Conflict(f"volume: lease {holder.lease_id} holds it ({holder.state}); end "
                           "the lease first", field="volume", lease=holder.lease_id)
        out = _out(s, v, c.now())
        digests = sorted({x.digest for x in out.snapshots})
        s.execute(delete(VolumeSnapshot).where(VolumeSnapshot.volume_id == v.id))
        s.execute(delete(VolumeMount).where(VolumeMount.volume_id == v.id))
        s.delete(v)
        blob_quota.bury(s, digests)
        c.emit(s, "volume_removed", v.id, owner=owner, name=v.name)
    blob_quota.discard_quietly(c, digests)
    return out


def ask_snapshot(c: Coordinator, owner: str, lid: str) -> tuple[VolumeOut, str]:
    """``deai lease snapshot``: the provider saves the lease's home at its next poll.
    Returns the volume as it is now, and the provider to wake."""
    with c.db.write() as s:
        lease = s.get(Lease, lid)
        if lease is None or lease.owner != owner:
            raise NotFound(f"no lease {lid}", field="lease")
        m = s.get(VolumeMount, lid, with_for_update=True)
        if m is None:
            raise Conflict(f"lease: {lid} mounts no volume", field="lease")
        if m.state != LIVE:
            raise Conflict(f"lease: {lid} has ended; its volume is {m.state}", field="lease")
        m.asked_at = c.now()
        c.emit(s, "volume_snapshot_asked", m.volume_id, owner=owner, lease=lid)
        v = s.get(Volume, m.volume_id)
        assert v is not None
        return _out(s, v, c.now()), m.provider_id


# --- with the lease's own transactions ----------------------------------------------------

def attach(c: Coordinator, s: Session, owner: str, ref: str, lid: str, pid: str) -> str:
    """Mount the owner's volume on a new lease; 409 while any other lease mounts it live
    (running, pending, or waiting for an earlier mount's save), read under the volume's
    lock. Checking only the first blocking mount let a second and a third lease in while
    an earlier one was saving: each then held the other back and neither ever started."""
    v = find(s, owner, ref, lock=True)
    live = s.scalars(select(VolumeMount).where(VolumeMount.volume_id == v.id,
                                               VolumeMount.state == LIVE)
                     .order_by(VolumeMount.created_at, VolumeMount.lease_id)).first()
    if live is not None:
        raise Conflict(f"volume: {v.name} is mounted by lease {live.lease_id}; one live "
                       "lease per volume", field="volume", lease=live.lease_id)
    s.add(VolumeMount(lease_id=lid, volume_id=v.id, provider_id=pid, state=LIVE,
                      created_at=c.now()))
    return v.id


def on_lease_end(c: Coordinator, s: Session, lease: Lease, provider_reachable: bool) -> None:
    m = s.get(VolumeMount, lease.id, with_for_update=True)
    if m is None or m.state != LIVE:
        return
    new = core.end_state(provider_reachable, lease.started_at is not None)
    core.check_move(m.state, new)
    m.state, m.ended_at, m.asked_at = new.value, c.now(), None
    c.emit(s, "volume_released" if new is MountState.DONE else "volume_saving", m.volume_id,
           owner=lease.owner, lease=lease.id)


def specs(s: Session, ids: list[str], now: float) -> tuple[dict[str, VolumeSpec], set[str]]:
    """For starting leases: their volume's spec, and those held back (another mount of
    their volume is still saving, or is live and older: of two live mounts, which
    ``attach`` no longer lets in, the older is offered, never neither)."""
    if not ids:
        return {}, set()
    mounts = s.scalars(select(VolumeMount).where(VolumeMount.lease_id.in_(ids))
                       .order_by(VolumeMount.lease_id)).all()
    out: dict[str, VolumeSpec] = {}
    held: set[str] = set()
    for m in mounts:
        holder = _holder(s, m.volume_id, now, besides=m.lease_id, before=m)
        v = s.get(Volume, m.volume_id)
        if v is None:
            continue
        if holder is not None:
            held.add(m.lease_id)
            continue
        out[m.lease_id] = VolumeSpec(id=v.id, digest=v.head, size_bytes=v.size_bytes)
    return out, held


def of_lease(s: Session, lid: str) -> str | None:
    m = s.get(VolumeMount, lid)
    return m.volume_id if m is not None else None


# --- the provider -------------------------------------------------------------------------

def asked(c: Coordinator, pid: str) -> list[str]:
    """Leases of ``pid`` whose owner asked for a snapshot not yet made."""
    with c.db.read() as s:
        return sorted(s.scalars(select(VolumeMount.lease_id).where(
            VolumeMount.provider_id == pid, VolumeMount.state == LIVE,
            VolumeMount.asked_at.is_not(None))))


def record(c: Coordinator, pid: str, lid: str, data: bytes) -> VolumeOut:
    """A provider's snapshot of a lease's home: accepted from the lease's provider, once
    the lease has started, while the mount is live and its owner asked for one, or saving
    (within the timeout), and within the disk budget; the volume's head moves to it."""
    now = c.now()
    with c.db.read() as s:
        m = s.get(VolumeMount, lid)
        if m is None or m.provider_id != pid:
            raise NotFound(f"lease: no lease {lid} with a volume on this provider",
                           field="lease")
        v = s.get(Volume, m.volume_id)
        cap = v.size_bytes if v is not None else 0
        if v is None or not _takes_snapshots(m, now):
            raise _gone(lid)  # before any byte is stored: nothing would name them
        _unasked(m, s.get(Lease, lid))
    if data[:2] != GZIP_MAGIC:
        raise InvalidInput("body: a snapshot is a gzip-compressed tar", field="body")
    if len(data) > cap:
        _refuse(c, lid, f"snapshot of {len(data)} bytes over the volume's {cap} bytes")
        raise PayloadTooLarge(f"body: a snapshot of {len(data)} bytes is over the volume's "
                              f"size of {cap} bytes", field="body", limit=cap)
    # Within the disk budget: snapshots were stored past a spent one. (Counted by no
    # account's quota: at most ``core.KEEP_SNAPSHOTS`` a volume, each asked by its owner
    # of a lease it pays for, or a lease's final save.)
    blob_quota.check_disk(c, len(data), "body")
    digest = c.blobs.put(data)  # before the row that names it, outside the lock

    def body(s: Session) -> tuple[VolumeOut, list[str]]:
        m, v = _locked_mount(s, lid)
        if m is None or v is None or not _takes_snapshots(m, now):
            raise _gone(lid)
        blob_quota.hold(c, s, data)  # kept from a discard of these bytes until the commit
        lease = s.get(Lease, lid)
        _unasked(m, lease)
        kind = SnapshotKind.END if m.state == SAVING else SnapshotKind.ASKED
        if v.head != digest:
            s.add(VolumeSnapshot(volume_id=v.id, digest=digest, size=len(data), created_at=now,
                                 lease_id=lid, provider_id=pid, kind=kind.value))
            v.head, v.head_size = digest, len(data)
        v.updated_at = now
        v.error = v.error_at = None
        m.asked_at = None
        if m.state == SAVING:
            core.check_move(m.state, MountState.DONE)
            m.state = DONE
        s.flush()
        pruned = _prune(s, v.id)
        c.emit(s, "volume_snapshot", v.id, owner=v.owner, lease=lid, provider=pid,
               digest=digest, size=len(data), kind=kind.value,
               lease_status=lease.status if lease is not None else None)
        return _out(s, v, now), pruned

    try:
        out, pruned = c.db.run(body)
    except BaseException:
        _forget(c, digest)
        raise
    blob_quota.discard_quietly(c, pruned)
    return out


def _unasked(m: VolumeMount, lease: Lease | None) -> None:
    """Refuse a snapshot nobody asked for: of a lease that never started (its host never
    ran the home it would replace), or of a live mount whose owner asked for none. A host
    uploaded eight unasked ones to a lease it never started and pushed the renter's whole
    history out (``_prune``), its blobs deleted."""
    if lease is None or lease.started_at is None:
        raise Conflict(f"lease: {m.lease_id} never started; it has no home to save",
                       field="lease")
    if m.state == LIVE and m.asked_at is None:
        raise Conflict(f"lease: the owner of {m.lease_id} asked for no snapshot",
                       field="lease")


def _takes_snapshots(m: VolumeMount, now: float) -> bool:
    """Whether the mount still takes its provider's snapshots: live, or saving within
    the timeout."""
    return core.saving_blocks(m.state, m.ended_at, now, save_timeout())


def _gone(lid: str) -> Conflict:
    return Conflict(f"lease: {lid} no longer holds its volume; the last snapshot stands",
                    field="lease")


def _forget(c: Coordinator, digest: str) -> None:
    """Bytes stored for a snapshot that was then refused (the mount ended between the
    check and the commit): buried and deleted unless something else names them, so that a
    provider uploading to a finished mount leaves nothing behind, counted by no quota and
    found by no sweep. A failure here is logged; the grave makes the next sweep retry."""
    try:
        c.db.run(lambda s: blob_quota.bury(s, [digest]))
    except Exception:
        log.exception("snapshot %s: cannot mark the refused upload for deletion", digest[:12])
        return
    blob_quota.discard_quietly(c, [digest])


def _locked_mount(s: Session, lid: str) -> tuple[VolumeMount | None, Volume | None]:
    """A lease's mount and its volume, locked volume first (as ``remove``, which deletes
    a volume's mounts, locks them) and read again: locked mount first, a snapshot and a
    removal of its volume at once deadlocked on PostgreSQL."""
    seen = s.get(VolumeMount, lid)  # unlocked: which volume to lock
    if seen is None:
        return None, None
    v = s.get(Volume, seen.volume_id, with_for_update=True)
    m = s.get(VolumeMount, lid, with_for_update=True, populate_existing=True)
    if m is None or v is None or m.volume_id != v.id:
        return m, None
    return m, v


def failed(c: Coordinator, pid: str, lid: str, reason: str) -> None:
    """The lease's provider could not save its home: the ask is answered with the reason,
    a saving mount is done (the last snapshot stands)."""
    with c.db.read() as s:
        m = s.get(VolumeMount, lid)
        if m is None or m.provider_id != pid:
            raise NotFound(f"lease: no lease {lid} with a volume on this provider",
                           field="lease")
    _refuse(c, lid, reason)


def _refuse(c: Coordinator, lid: str, why: str) -> None:
    """A snapshot that cannot be kept: a saving mount is done (the last snapshot stands)."""
    def body(s: Session) -> None:
        m, v = _locked_mount(s, lid)
        if m is None or m.state == DONE:
            return
        if m.state == SAVING:
            m.state = DONE
        m.asked_at = None
        if v is not None:
            v.error, v.error_at = why[:500], c.now()
        c.emit(s, "volume_snapshot_failed", m.volume_id, lease=lid, reason=why[:500])

    c.db.run(body)


def _prune(s: Session, vid: str) -> list[str]:
    old = s.scalars(select(VolumeSnapshot).where(VolumeSnapshot.volume_id == vid)
                    .order_by(VolumeSnapshot.id.desc()).offset(core.KEEP_SNAPSHOTS)).all()
    digests = sorted({x.digest for x in old})
    for x in old:
        s.delete(x)
    blob_quota.bury(s, digests)
    return digests


def may_read(s: Session, account: str, digest: str) -> bool:
    """The volume's owner, or the provider of a live mount of the volume."""
    owner = (select(VolumeSnapshot.id).join(Volume, Volume.id == VolumeSnapshot.volume_id)
             .where(VolumeSnapshot.digest == digest, Volume.owner == account))
    if s.scalar(owner.limit(1)) is not None:
        return True
    host = (select(VolumeSnapshot.id)
            .join(VolumeMount, VolumeMount.volume_id == VolumeSnapshot.volume_id)
            .where(VolumeSnapshot.digest == digest, VolumeMount.provider_id == account,
                   VolumeMount.state == LIVE))
    return s.scalar(host.limit(1)) is not None


# --- views --------------------------------------------------------------------------------

def _holder(s: Session, vid: str, now: float, besides: str | None = None,
            before: VolumeMount | None = None) -> VolumeMount | None:
    """The oldest mount that holds the volume, other than ``besides``; with ``before``,
    a live mount holds only when it is older than that one (created earlier, ties by
    lease id), so two live mounts never hold each other back."""
    rows = s.scalars(select(VolumeMount).where(VolumeMount.volume_id == vid,
                                               VolumeMount.state.in_((LIVE, SAVING)))
                     .order_by(VolumeMount.created_at, VolumeMount.lease_id)).all()
    for m in rows:
        if m.lease_id == besides or not core.saving_blocks(m.state, m.ended_at, now,
                                                           save_timeout()):
            continue
        if (before is not None and m.state == LIVE
                and (m.created_at, m.lease_id) > (before.created_at, before.lease_id)):
            continue
        return m
    return None


def _out(s: Session, v: Volume, now: float, *, history: bool = True) -> VolumeOut:
    holder = _holder(s, v.id, now)
    snaps = s.scalars(select(VolumeSnapshot).where(VolumeSnapshot.volume_id == v.id)
                      .order_by(VolumeSnapshot.id.desc())).all() if history else []
    return VolumeOut(
        id=v.id, owner=v.owner, name=v.name, size_bytes=v.size_bytes, head=v.head,
        head_size=v.head_size, created_at=v.created_at, updated_at=v.updated_at,
        mounted_by=holder.lease_id if holder is not None else None,
        error=v.error, error_at=v.error_at,
        snapshots=[SnapshotOut(digest=x.digest, size=x.size, created_at=x.created_at,
                               lease_id=x.lease_id, provider_id=x.provider_id, kind=x.kind)
                   for x in snaps])
