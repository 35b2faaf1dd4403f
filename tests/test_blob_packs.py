"""Blob packs (``store.packs``): a batch of blobs in one file, one fsync.

Unit tests of the format and its index; the coordinator-level test (a
10,000-shard job read back after ``kill -9``) is in ``test_submit_durable``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from deai.store.blobs import BlobStore, digest_of
from deai.store.packs import CorruptPack, PackStore, read_index


def blobs(n: int, salt: str = "") -> list[bytes]:
    return [f'{{"custom_id": "{salt}{i}", "input": ["x" * {i % 7}]}}\n'.encode()
            for i in range(n)]


def test_a_batch_is_one_pack_and_reads_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blobs(500)
    digests = store.put_many(data)
    assert digests == [digest_of(b) for b in data]
    packs = list((tmp_path / "packs").glob("*.pack"))
    assert len(packs) == 1
    loose = [p for p in tmp_path.glob("??/*")]
    assert loose == []  # no file per blob
    for d, b in zip(digests, data, strict=True):
        assert store.exists(d) and store.get(d) == b and store.size(d) == len(b)
    assert not store.exists("0" * 64)
    with pytest.raises(FileNotFoundError):
        store.get("0" * 64)
    with pytest.raises(FileNotFoundError):
        store.size("0" * 64)


def test_packed_blobs_and_duplicates_are_not_written_again(tmp_path: Path) -> None:
    """A blob already in a pack is not written again; one stored only loose (an upload,
    which the retention loop may delete once nothing uses it) is packed too."""
    store = BlobStore(tmp_path)
    first = store.put(b"already loose")
    data = blobs(10)
    store.put_many(data)
    (first_pack,) = (tmp_path / "packs").glob("*.pack")
    again = store.put_many([*data, b"already loose", data[0], b"new one"])
    assert again[-3:] == [first, digest_of(data[0]), digest_of(b"new one")]
    # The second batch wrote only what no pack held, in a pack of its own.
    (second,) = set((tmp_path / "packs").glob("*.pack")) - {first_pack}
    assert [d for d, _, _ in read_index(second)] == [first, digest_of(b"new one")]
    store.path(first).unlink()  # the upload's loose copy deleted: the pack's remains
    assert store.get(first) == b"already loose"
    assert store.get(digest_of(b"new one")) == b"new one"
    assert store.put_many([]) == []


def test_the_index_is_rebuilt_from_the_packs(tmp_path: Path) -> None:
    """The index is a cache: lost, or written by another process, it is rebuilt."""
    store = BlobStore(tmp_path)
    data = blobs(50)
    digests = store.put_many(data)
    store.packs.close()
    for p in (tmp_path / "packs").glob("index.sqlite*"):
        p.unlink()
    reopened = BlobStore(tmp_path)
    assert [reopened.get(d) for d in digests] == data

    # A pack written by another store on the same folder is found on the next miss.
    other = BlobStore(tmp_path)
    more = blobs(20, salt="other")
    more_digests = other.put_many(more)
    assert [reopened.get(d) for d in more_digests] == more


def test_a_torn_or_foreign_pack_is_never_read(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digests = store.put_many(blobs(30))
    (pack,) = (tmp_path / "packs").glob("*.pack")
    entries = read_index(pack)
    assert [d for d, _, _ in entries] == digests
    torn = tmp_path / "packs" / ("f" * 64 + ".pack")
    torn.write_bytes(pack.read_bytes()[:-5])  # a crash cannot leave this, a person can
    (tmp_path / "packs" / ("e" * 64 + ".pack")).write_bytes(b"not a pack at all")
    with pytest.raises(CorruptPack):
        read_index(torn)
    fresh = PackStore(tmp_path / "packs")  # indexes the good pack, skips the bad ones
    names = {r[0] for r in sqlite3.connect(tmp_path / "packs" / "index.sqlite")
             .execute("SELECT name FROM packs")}
    assert names == {pack.name}
    assert fresh.read(digests[3]) is not None


def test_a_dead_writers_temporary_file_is_cleared(tmp_path: Path) -> None:
    (tmp_path / "packs").mkdir()
    tmp = tmp_path / "packs" / ".tmp-dead"
    tmp.write_bytes(b"half a pack")
    os.utime(tmp, (0, 0))
    BlobStore(tmp_path)
    assert not tmp.exists()


def age(pack: Path, seconds: float = 7200.0) -> None:
    old = time.time() - seconds
    os.utime(pack, (old, old))


def pack_of(root: Path, digest: str) -> Path:
    (hit,) = [p for p in (root / "packs").glob("*.pack")
              if digest in {d for d, _, _ in read_index(p)}]
    return hit


def test_collect_deletes_only_old_packs_nothing_uses(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    used_data, orphan_data, young_data = blobs(40, "used"), blobs(30, "orphan"), blobs(5, "y")
    used = store.put_many(used_data)
    orphan = store.put_many(orphan_data)  # a refused submission's shards
    young = store.put_many(young_data)
    mixed = store.put_many(blobs(3, "mixed"))  # one blob of it in use, two not
    for d in (used[0], orphan[0], mixed[0]):
        age(pack_of(tmp_path, d))
    names = {d: pack_of(tmp_path, d).name for d in (used[0], orphan[0], young[0], mixed[0])}
    # Records name one blob of `used` and one of `mixed`.
    in_use: list[list[str]] = []

    def uses(digests: list[str]) -> set[str]:
        in_use.append(digests)
        return set(digests) & {used[5], mixed[2]}

    gone = store.packs.collect(uses, older_than=3600)
    assert gone == [names[orphan[0]]]
    assert not (tmp_path / "packs" / names[orphan[0]]).exists()
    assert all(not store.exists(d) for d in orphan)
    assert store.packs.known(orphan) == set()
    assert [store.get(d) for d in used] == used_data  # in use: kept, old as it is
    assert [store.get(d) for d in young] == young_data  # nothing uses it, but it is new
    assert (tmp_path / "packs" / names[mixed[0]]).exists() and store.exists(mixed[0])
    assert set(orphan) in [set(ds) for ds in in_use]  # asked about the pack's own blobs
    # Written again after collection: a new pack, readable.
    assert store.put_many(orphan_data) == orphan
    assert [store.get(d) for d in orphan] == orphan_data


def test_a_pack_relied_on_meanwhile_is_not_collected(tmp_path: Path) -> None:
    """``known`` (a submission deciding not to write its shards again) touches the
    pack; a use that appears while the pack is being collected puts it back."""
    store = BlobStore(tmp_path)
    data = blobs(20, "relied")
    digests = store.put_many(data)
    pack = pack_of(tmp_path, digests[0])
    age(pack)
    assert store.packs.known(digests[:3]) == set(digests[:3])  # a new job reuses them
    assert store.packs.collect(lambda ds: set(), older_than=3600) == []
    assert pack.exists()

    age(pack)
    calls = 0

    def appears(ds: list[str]) -> set[str]:  # unused when first asked, used right after
        nonlocal calls
        calls += 1
        return set() if calls == 1 else {digests[0]}

    assert store.packs.collect(appears, older_than=3600) == [] and calls == 2
    assert pack.exists() and [store.get(d) for d in digests] == data
    assert not list((tmp_path / "packs").glob(".gc-*"))


def test_a_collection_cut_short_puts_the_pack_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blobs(10, "cut")
    digests = store.put_many(data)
    pack = pack_of(tmp_path, digests[0])
    held = pack.with_name(f".gc-{pack.name}")
    os.replace(pack, held)  # the collector died between its rename and its decision
    assert store.packs.collect(lambda ds: set(ds), older_than=3600) == []
    assert pack.exists() and not held.exists()
    assert [store.get(d) for d in digests] == data


def test_the_leaders_sweep_collects_a_refused_submissions_pack(tmp_path: Path) -> None:
    """Through the coordinator: the pack whose shards a job's tasks name stays, the
    pack nothing names (a submission refused after its shards were written) goes."""
    from deai.client.keys import Identity
    from deai.coordinator import admission, retention
    from deai.coordinator.service import Coordinator
    from deai.coordinator.settings import Settings
    from deai.core.clock import ManualClock
    from deai.store import migrate
    from tests.helpers import MODEL

    c = Coordinator(Settings(data_dir=tmp_path, devnet=True), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    try:
        owner = Identity.generate().id
        c.faucet(owner, 1_000_000)
        job_data, refused_data = blobs(6, "job"), blobs(4, "refused")
        job_shards = c.blobs.put_many(job_data)
        refused = c.blobs.put_many(refused_data)
        input_digest = c.blobs.put(b"the job's input")
        c.db.run(lambda s: admission.create(
            c, s, owner=owner, kind="embeddings", model=MODEL, spec={},
            input_digest=input_digest, max_price=1000,
            shards=[admission.ShardIn(d, 1, 10) for d in job_shards], escrow=1000,
            deadline=c.now() + 3600))
        root = tmp_path / "blobs"
        job_pack, refused_pack = pack_of(root, job_shards[0]), pack_of(root, refused[0])
        assert retention.collect_packs(c) == 0  # both young
        age(job_pack)
        age(refused_pack)
        assert retention.sweep(c) >= 1
        assert not refused_pack.exists() and not any(c.blobs.exists(d) for d in refused)
        assert job_pack.exists() and [c.blobs.get(d) for d in job_shards] == job_data
    finally:
        c.db.dispose()
