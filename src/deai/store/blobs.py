"""Content-addressed blob store: a file's name is the sha256 of its bytes.

Writes go to a temporary file that is fsynced and renamed into place, so a
crash leaves either the whole blob or nothing; writing a blob twice is a no-op.
``put(data, sync=False)`` skips the fsync, for blobs whose loss in a machine
crash costs only a retry (an interactive /v1 request's few hundred bytes): the
rename still makes the blob whole or absent after a process crash.

``put_many(blobs)`` stores a batch (a job's shards) in one pack file
(``store.packs``) with one fsync for the whole batch; ``get``, ``exists`` and
``size`` look in the loose files first, then in the packs.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from deai.store.packs import CorruptPack, PackStore

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Pieces:
    """A blob's bytes read from an open file as they are asked for (``BlobStore.stream``)."""

    def __init__(self, fd: int, offset: int, length: int, chunk: int, digest: str) -> None:
        self._fd: int | None = fd
        self._at, self._end, self._chunk, self._digest = offset, offset + length, chunk, digest

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._fd is None or self._at >= self._end:
            self.close()
            raise StopIteration
        data = os.pread(self._fd, min(self._chunk, self._end - self._at), self._at)
        if not data:
            self.close()
            raise CorruptPack(f"blob {self._digest} is cut short")
        self._at += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.packs = PackStore(root / "packs")

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        if _DIGEST.match(digest) is None:
            return False
        return self.path(digest).exists() or self.packs.locate(digest) is not None

    def put(self, data: bytes, *, sync: bool = True) -> str:
        digest = digest_of(data)
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store a batch durably (one fsync for all of it); their digests, in order.

        Blobs already in a pack are not written again. One stored only as a loose file
        is: a loose file is an upload's, which the retention loop deletes once nothing
        uses it, and the rows naming this batch are not written yet (a discard that read
        before them would take the only copy).
        """
        digests = [digest_of(b) for b in blobs]
        packed = self.packs.known(digests)
        new: dict[str, bytes] = {}
        for d, b in zip(digests, blobs, strict=True):
            if d not in new and d not in packed:
                new[d] = b
        if new:  # a pack even for one: its rename is fsynced too, not only its bytes
            self.packs.write(list(new.items()))
        return digests

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            data = self.packs.read(digest)
            if data is None:
                raise
            return data

    def stream(self, digest: str, chunk: int = 1 << 20) -> tuple[int, Pieces]:
        """The blob's length, and its bytes in pieces of ``chunk`` read as they are asked
        for: an answer sent from disk, not held whole in memory (thirty slow readers of
        one 60 MB file held 1.8 GB). The file is opened here, so a missing blob raises
        before any answer starts and one deleted meanwhile is still read whole (a pack
        is renamed, then unlinked); it is closed with the last piece, ``close``, or
        when the pieces are dropped."""
        try:
            fd = os.open(self.path(digest), os.O_RDONLY)
            offset, length = 0, os.fstat(fd).st_size
        except FileNotFoundError:
            hit = self.packs.locate(digest)
            if hit is None:
                raise
            pack, offset, length = hit
            fd = os.open(self.packs.root / pack, os.O_RDONLY)
        return length, Pieces(fd, offset, length, chunk, digest)

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            hit = self.packs.locate(digest)
            if hit is None:
                raise
            return hit[2]
