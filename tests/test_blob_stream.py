"""Blobs are sent from disk as they are read (``BlobStore.stream``), loose or packed, never
held whole: thirty slow readers of one 60 MB ``/v1`` file held 1.8 GB of the
coordinator's memory. A missing blob is refused before an answer starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deai.store.blobs import BlobStore


def test_a_blob_streams_in_pieces_from_a_loose_file_or_a_pack(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    loose = os.urandom(3 * 1000 + 17)
    packed = [os.urandom(2500), b"second", os.urandom(999)]
    d = store.put(loose)
    ds = store.put_many(packed)
    length, pieces = store.stream(d, chunk=1000)
    got = list(pieces)
    assert length == len(loose) and [len(p) for p in got] == [1000, 1000, 1000, 17]
    assert b"".join(got) == loose
    for digest, data in zip(ds, packed, strict=True):  # each at its own offset in the pack
        length, pieces = store.stream(digest, chunk=1000)
        assert length == len(data) and b"".join(pieces) == data


def test_a_missing_blob_is_refused_before_any_piece(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.stream("0" * 64)


def test_a_stream_holds_its_file_until_read_closed_or_dropped(tmp_path: Path) -> None:
    """The file is opened before the answer starts (a blob deleted after its headers went
    out is still read whole) and closed with the last piece, or when the reader stops
    early, or when the stream is dropped unread: no descriptor is left behind."""
    store = BlobStore(tmp_path)
    data = os.urandom(5000)
    d = store.put(data)
    fds = len(os.listdir("/proc/self/fd"))
    length, read = store.stream(d, chunk=1000)
    store.path(d).unlink()  # deleted after the headers: still read whole
    assert length == 5000 and b"".join(read) == data
    assert len(os.listdir("/proc/self/fd")) == fds
    d = store.put(data)
    streams = [store.stream(d, chunk=1000)[1] for _ in range(50)]
    assert len(os.listdir("/proc/self/fd")) == fds + 50
    for s in streams[:25]:
        next(s)
        s.close()  # the reader hung up
    del s
    assert len(os.listdir("/proc/self/fd")) == fds + 25
    streams.clear()  # dropped unread
    assert len(os.listdir("/proc/self/fd")) == fds
