"""The coordinator's volume rules on a real database (SQLite and PostgreSQL), with the clock
driven by the test: create, list and remove; bad input that changes nothing; volumes that
are their owner's alone; one live lease per volume; snapshots recorded from the lease's
provider only, capped by the volume's size, readable by the owner and by the provider of
a live mount only; a lease ended with its provider reachable holds the volume until its
final snapshot lands (or the save timeout passes), a lost provider's does not."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from deai.coordinator import access, leases, volumes
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from deai.core.wire_leases import HostIn, LeaseIn
from deai.core.wire_volumes import VolumeIn
from deai.store import migrate
from deai.store.models import Provider
from deai.store.models_volumes import Volume, VolumeMount, VolumeSnapshot
from tests.helpers import db_audit as audit

OWNER, HOST, OTHER, HOST2 = "a" * 64, "b" * 64, "c" * 64, "d" * 64
STAKE = 10_000_000
CFG = leases.LeaseConfig(grace=30.0, warn=60.0, settle_every=60.0, start_timeout=120.0,
                         penalty_bps=100)


@pytest.fixture(params=["sqlite", "postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path,
      monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    monkeypatch.setenv("DEAI_VOLUME_SAVE_TIMEOUT", "30")
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 fee_bps=500, challenge_window=100.0), clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    with coord.db.write() as s:
        for pid in (HOST, HOST2):
            s.add(Provider(id=pid, name=pid[:4], hardware={}, benchmark={}, registered_at=0.0,
                           last_seen=coord.now(), capabilities={"sandbox": True}))
        s.flush()
        for pid in (HOST, HOST2):
            coord.settlement.post(s, ledger.faucet(pid, 2 * STAKE))  # a penalty leaves enough
            coord.settlement.post(s, ledger.bond(pid, 2 * STAKE))
        coord.settlement.post(s, ledger.faucet(OWNER, 10_000_000))
        coord.settlement.post(s, ledger.faucet(OTHER, 10_000_000))
    leases.set_host(coord, CFG, HOST, HostIn(cpus=2, memory_mb=4096,
                                             prices={"cpu": 360_000, "memory_gb": 36_000}))
    try:
        yield coord
    finally:
        coord.db.dispose()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tick(c: Coordinator, seconds: float, beat: list[str] | None = None) -> None:
    clock = c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)
    if beat is not None:
        leases.heartbeat(c, HOST, beat, {})
    leases.tick(c, CFG)


def lease_on(c: Coordinator, volume: str | None, owner: str = OWNER) -> str:
    body = LeaseIn(cpus=1, memory_mb=1024, hours=1, max_price_hour=10**6, volume=volume)
    return leases.create(c, owner, body).id


def start(c: Coordinator, lid: str) -> None:
    starting = [x.id for x in leases.work_for(c, HOST, set())[0]]
    assert lid in starting
    assert leases.heartbeat(c, HOST, [lid], {}) == []


def test_create_list_remove_and_bad_input(c: Coordinator) -> None:
    v = volumes.create(c, OWNER, VolumeIn(name="data", size_gb=0.5))
    assert (v.name, v.size_bytes, v.head, v.mounted_by) == ("data", 512 * 1024**2, None, None)
    with pytest.raises(Conflict) as dup:
        volumes.create(c, OWNER, VolumeIn(name="data"))
    assert dup.value.field == "name"
    for bad in ("Data", "-x", "a/b", "", "x" * 64, "a b"):
        with pytest.raises((InvalidInput, ValidationError)) as e:
            volumes.create(c, OWNER, VolumeIn(name=bad))
        if isinstance(e.value, InvalidInput):
            assert e.value.field == "name"
    for size in (0, -1, 1025, float("nan")):
        with pytest.raises(ValidationError):
            VolumeIn(name="x", size_gb=size)
    with pytest.raises(InvalidInput) as tiny:
        volumes.create(c, OWNER, VolumeIn(name="tiny", size_gb=1e-9))
    assert tiny.value.field == "size_gb"
    assert volumes.create(c, OTHER, VolumeIn(name="data")).owner == OTHER  # names are per owner
    assert [x.id for x in volumes.listing(c, OWNER)] == [v.id]
    assert volumes.show(c, OWNER, "data").id == v.id == volumes.show(c, OWNER, v.id).id
    for who in (OTHER,):  # someone else's volume is the same 404 as none
        with pytest.raises(NotFound) as nf:
            volumes.show(c, who, v.id)
        assert nf.value.field == "volume"
        with pytest.raises(NotFound):
            volumes.remove(c, who, v.id)
        with pytest.raises(NotFound):
            lease_on(c, v.id, owner=who)
    # A volume named like another's id: the id wins (``id OR name`` took whichever
    # came first, and a removal by id could remove the namesake).
    twin = volumes.create(c, OWNER, VolumeIn(name=v.id))
    assert volumes.show(c, OWNER, v.id).id == v.id != twin.id
    assert volumes.remove(c, OWNER, twin.id).id == twin.id
    assert volumes.remove(c, OWNER, "data").id == v.id
    assert volumes.listing(c, OWNER) == []
    audit(c)


def test_one_live_lease_per_volume_and_snapshots_by_its_provider(c: Coordinator) -> None:
    v = volumes.create(c, OWNER, VolumeIn(name="work", size_gb=0.001))  # about 1 MiB
    first = lease_on(c, "work")
    before = leases.show(c, OWNER, first)
    assert before.volume == v.id
    with pytest.raises(Conflict) as busy:
        lease_on(c, v.id)
    assert busy.value.field == "volume" and first in busy.value.message
    with pytest.raises(Conflict):
        volumes.remove(c, OWNER, v.id)
    start(c, first)
    assert first not in [x.id for x in leases.work_for(c, HOST, set())[0]]  # active now

    # the owner asks for a snapshot; only the lease's provider may deliver it
    volumes.ask_snapshot(c, OWNER, first)
    assert volumes.asked(c, HOST) == [first]
    with pytest.raises(NotFound):
        volumes.ask_snapshot(c, OTHER, first)
    snap = tar_of({"a.txt": b"one"})
    with pytest.raises(NotFound):
        volumes.record(c, HOST2, first, snap)
    with pytest.raises(PayloadTooLarge):
        volumes.record(c, HOST, first, b"\x1f\x8b" + b"x" * v.size_bytes)
    volumes.ask_snapshot(c, OWNER, first)  # a refused snapshot ends the ask: again
    for junk in (b"", b"not a tar"):
        with pytest.raises(InvalidInput) as bad:
            volumes.record(c, HOST, first, junk)
        assert bad.value.field == "body"
    saved = volumes.record(c, HOST, first, snap)
    assert saved.head is not None and saved.head_size == len(snap)
    assert [x.kind for x in saved.snapshots] == ["asked"]
    assert volumes.asked(c, HOST) == []
    digest = saved.head
    assert access.may_read_blob(c, OWNER, digest)
    assert access.may_read_blob(c, HOST, digest)  # the provider of the live mount
    assert not access.may_read_blob(c, OTHER, digest)
    assert not access.may_read_blob(c, HOST2, digest)

    # the owner ends it: the mount is saving until the final snapshot lands
    leases.end(c, OWNER, first)
    assert not access.may_read_blob(c, HOST, digest)  # no live mount any more
    second = lease_on(c, v.id)  # allowed: the first is no longer live ...
    assert second not in [x.id for x in leases.work_for(c, HOST, set())[0]]  # ... but held
    final = volumes.record(c, HOST, first, tar_of({"a.txt": b"two"}))
    assert [x.kind for x in final.snapshots] == ["end", "asked"]
    with pytest.raises(Conflict):  # done: nothing more from that lease
        volumes.record(c, HOST, first, tar_of({"a.txt": b"three"}))
    spec2 = next(x for x in leases.work_for(c, HOST, set())[0] if x.id == second)
    assert spec2.volume is not None and spec2.volume.digest == final.head
    assert spec2.volume.size_bytes == v.size_bytes
    start(c, second)
    assert access.may_read_blob(c, HOST, final.head or "")
    audit(c)


def test_lost_provider_keeps_the_last_snapshot_and_saves_time_out(c: Coordinator) -> None:
    volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.001))
    lid = lease_on(c, "v")
    start(c, lid)
    volumes.ask_snapshot(c, OWNER, lid)
    head = volumes.record(c, HOST, lid, tar_of({"x": b"1"})).head
    tick(c, 10, beat=[lid])
    tick(c, CFG.grace + 5)  # no heartbeat: provider lost
    assert leases.show(c, OWNER, lid).end_reason == "provider lost"
    with pytest.raises(Conflict):  # a late upload does not replace the last snapshot
        volumes.record(c, HOST, lid, tar_of({"x": b"2"}))
    assert volumes.show(c, OWNER, "v").head == head
    leases.heartbeat(c, HOST, [], {})  # the provider is back
    nxt = lease_on(c, "v")
    spec = next(x for x in leases.work_for(c, HOST, set())[0] if x.id == nxt)
    assert spec.volume is not None and spec.volume.digest == head
    start(c, nxt)

    # an end the provider never saves: the next lease waits out the save timeout only
    leases.end(c, OWNER, nxt)
    third = lease_on(c, "v")
    assert third not in [x.id for x in leases.work_for(c, HOST, set())[0]]
    tick(c, 31)
    assert third in [x.id for x in leases.work_for(c, HOST, set())[0]]
    with pytest.raises(Conflict):
        volumes.record(c, HOST, nxt, tar_of({"x": b"late"}))

    # a pending lease ended before it started has nothing to save
    leases.end(c, OWNER, third)
    assert volumes.show(c, OWNER, "v").mounted_by is None
    audit(c)


def test_history_is_bounded_and_removal_drops_unused_blobs(c: Coordinator) -> None:
    volumes.create(c, OWNER, VolumeIn(name="h", size_gb=0.001))
    lid = lease_on(c, "h")
    start(c, lid)
    heads = []
    for i in range(volumes.core.KEEP_SNAPSHOTS + 3):
        tick(c, 1, beat=[lid])
        volumes.ask_snapshot(c, OWNER, lid)
        heads.append(volumes.record(c, HOST, lid, tar_of({"n": str(i).encode()})).head)
    v = volumes.show(c, OWNER, "h")
    assert [x.digest for x in v.snapshots] == heads[::-1][:volumes.core.KEEP_SNAPSHOTS]
    assert not c.blobs.exists(heads[0] or "")  # dropped with its record
    assert c.blobs.exists(heads[-1] or "")
    leases.end(c, OWNER, lid)
    volumes.record(c, HOST, lid, tar_of({"n": b"end"}))
    volumes.remove(c, OWNER, "h")
    with c.db.read() as s:
        assert s.scalars(select(Volume)).all() == []
        assert s.scalars(select(VolumeSnapshot)).all() == []
    assert not c.blobs.exists(heads[-1] or "")
    audit(c)


def test_a_save_the_provider_could_not_make_is_reported(c: Coordinator) -> None:
    volumes.create(c, OWNER, VolumeIn(name="f", size_gb=0.001))
    lid = lease_on(c, "f")
    start(c, lid)
    asked, _ = volumes.ask_snapshot(c, OWNER, lid)
    with pytest.raises(NotFound):  # only the lease's provider
        volumes.failed(c, HOST2, lid, "no")
    volumes.failed(c, HOST, lid, "volume: the home holds more than the volume's 1 MiB")
    v = volumes.show(c, OWNER, "f")
    assert v.error is not None and "more than" in v.error and v.head is None
    assert v.updated_at == asked.updated_at and volumes.asked(c, HOST) == []
    leases.end(c, OWNER, lid)
    assert volumes.show(c, OWNER, "f").mounted_by == lid  # saving
    volumes.failed(c, HOST, lid, "still too big")
    after = volumes.show(c, OWNER, "f")
    assert after.mounted_by is None and after.head is None  # the last snapshot (none) stands
    with pytest.raises(Conflict):  # a save after that is refused: the mount is done
        volumes.record(c, HOST, lid, tar_of({"x": b"1"}))
    audit(c)


def test_a_volume_being_saved_takes_one_new_lease_at_a_time(c: Coordinator) -> None:
    """While a volume's last lease is saving, one new lease may wait for it; a second is
    refused (409 naming the first). Before, both were accepted, each held the other
    back, and both ended ``provider lost`` without ever being offered."""
    volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.001))
    first = lease_on(c, "v")
    start(c, first)
    leases.end(c, OWNER, first)  # saving
    second = lease_on(c, "v")
    with pytest.raises(Conflict) as busy:
        lease_on(c, "v")
    assert busy.value.field == "volume" and second in busy.value.message
    assert second not in [x.id for x in leases.work_for(c, HOST, set())[0]]  # held back
    volumes.record(c, HOST, first, tar_of({"x": b"1"}))
    start(c, second)
    audit(c)


def test_two_live_mounts_of_a_volume_offer_the_older_one(c: Coordinator) -> None:
    """Rows left by the old rule (two live mounts of one volume): ``specs`` offers the
    older lease and holds the other back, instead of holding both back forever."""
    v = volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.001))
    older = lease_on(c, "v")
    tick(c, 1)
    newer = lease_on(c, None)
    with c.db.write() as s:
        s.add(VolumeMount(lease_id=newer, volume_id=v.id, provider_id=HOST, state="live",
                          created_at=c.now()))
    for _ in range(3):
        assert [x.id for x in leases.work_for(c, HOST, set())[0] if x.volume] == [older]
    start(c, older)
    assert newer not in [x.id for x in leases.work_for(c, HOST, set())[0]]
    leases.end(c, OWNER, older)
    volumes.record(c, HOST, older, tar_of({"x": b"1"}))
    start(c, newer)
    audit(c)


def test_a_snapshot_nobody_asked_for_is_refused_and_an_asked_one_is_the_owners(
        c: Coordinator) -> None:
    """A host may not push a volume's history out with snapshots of its own: not of a
    lease that never started (eight of them deleted a renter's whole history, the lease
    then ended "never taken up" at no cost), nor of a live one whose owner asked for
    none."""
    volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.001))
    first = lease_on(c, "v")
    start(c, first)
    volumes.ask_snapshot(c, OWNER, first)
    kept = volumes.record(c, HOST, first, tar_of({"x": b"mine"})).head
    leases.end(c, OWNER, first)
    volumes.record(c, HOST, first, tar_of({"x": b"final"}))
    head = volumes.show(c, OWNER, "v").head

    pending = lease_on(c, "v")  # handed over, never started
    assert pending in [x.id for x in leases.work_for(c, HOST, set())[0]]
    with pytest.raises(Conflict, match="never started"):
        volumes.record(c, HOST, pending, tar_of({"x": b"theirs"}))
    start(c, pending)
    with pytest.raises(Conflict, match="asked for no snapshot"):
        volumes.record(c, HOST, pending, tar_of({"x": b"unasked"}))
    v = volumes.show(c, OWNER, "v")
    assert v.head == head and len(v.snapshots) == 2
    assert c.blobs.exists(kept or "")
    audit(c)
