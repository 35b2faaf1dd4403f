"""Blob packs (``store.packs``): a batch of blobs in one file, one fsync.

Unit tests of the format and its index; the coordinator-level test (a
10,000-shard job read back after ``kill -9``) is in ``test_submit_durable``.
"""

from __future__ import annotations

import os
import sqlite3
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


def test_stored_blobs_and_duplicates_are_not_written_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    first = store.put(b"already loose")
    data = blobs(10)
    store.put_many(data)
    (first_pack,) = (tmp_path / "packs").glob("*.pack")
    again = store.put_many([*data, b"already loose", data[0], b"new one"])
    assert again[-3:] == [first, digest_of(data[0]), digest_of(b"new one")]
    # The second batch wrote only its one new blob, in a pack of its own.
    (second,) = set((tmp_path / "packs").glob("*.pack")) - {first_pack}
    assert [d for d, _, _ in read_index(second)] == [digest_of(b"new one")]
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
