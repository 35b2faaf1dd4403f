"""A snapshot the coordinator refuses leaves no bytes behind (SQLite and PostgreSQL): an
upload to a mount that is done stores nothing, and one refused at the commit (the mount
finished between the first check and the transaction) is deleted again, unless another
record names the same bytes. Stored and never named, they were counted by no quota and
found by no sweep: a provider could fill the coordinator's disk for free."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from deai.coordinator import blob_quota, leases, volumes
from deai.coordinator.service import Coordinator
from deai.core.errors import Conflict
from deai.core.wire_volumes import VolumeIn
from deai.store.blobs import digest_of
from deai.store.models import BlobRef
from tests.test_volume_service import HOST, OWNER, c, lease_on, start, tar_of  # noqa: F401


def junk() -> bytes:
    return b"\x1f\x8b" + os.urandom(64 * 1024)


def graves(c: Coordinator) -> list[str]:  # noqa: F811 - the fixture's name
    with c.db.read() as s:
        return list(s.scalars(select(BlobRef.digest).where(BlobRef.account == blob_quota.GRAVE)))


def saving_then_failed(c: Coordinator, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                       head: bytes) -> str:
    """A mount of the volume "v" whose snapshot ``head`` is the volume's head, its lease
    ended (saving now); from here the provider reports the save failed (``volumes.failed``:
    the mount is done) while an upload's bytes are being stored. The lease's id."""
    volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.01))
    lid = lease_on(c, "v")
    start(c, lid)
    volumes.ask_snapshot(c, OWNER, lid)
    volumes.record(c, HOST, lid, head)
    leases.end(c, OWNER, lid)
    put = c.blobs.put

    def put_then_fail(data: bytes, *, sync: bool = True) -> str:
        digest = put(data, sync=sync)
        volumes.failed(c, HOST, lid, "the disk is full")
        return digest

    monkeypatch.setattr(c.blobs, "put", put_then_fail)
    return lid


def test_uploads_to_a_finished_mount_store_nothing(c: Coordinator) -> None:  # noqa: F811
    volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.01))
    lid = lease_on(c, "v")
    start(c, lid)
    leases.end(c, OWNER, lid)
    volumes.record(c, HOST, lid, tar_of({"x": b"final"}))  # the final save: the mount is done
    refused = [junk() for _ in range(3)]
    for data in refused:
        with pytest.raises(Conflict):
            volumes.record(c, HOST, lid, data)
    assert [d for d in map(digest_of, refused) if c.blobs.exists(d)] == []


def test_an_upload_refused_at_the_commit_is_deleted(c: Coordinator,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount is saving when the upload is checked; the provider reports the save
    failed (``volumes.failed``: the mount is done) while the bytes are being stored."""
    lid = saving_then_failed(c, monkeypatch, tar_of({"x": b"asked"}))
    late = junk()
    with pytest.raises(Conflict):
        volumes.record(c, HOST, lid, late)
    assert not c.blobs.exists(digest_of(late)), "the refused bytes stayed"
    assert graves(c) == []


def test_refused_bytes_that_a_snapshot_names_stay(c: Coordinator,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    head = tar_of({"x": b"asked"})
    lid = saving_then_failed(c, monkeypatch, head)
    with pytest.raises(Conflict):  # the same bytes again, refused at the commit
        volumes.record(c, HOST, lid, head)
    digest = digest_of(head)
    assert c.blobs.exists(digest) and volumes.show(c, OWNER, "v").head == digest
    assert graves(c) == []
