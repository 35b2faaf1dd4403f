"""Pack files: many blobs in one file, made durable by one fsync.

A job of 10,000 shards used to write 10,000 blob files, each fsynced (61 s on
this machine's disk). ``PackStore.write`` puts a batch of blobs in one file
instead and makes it durable with one fsync of the file and one of its
folder, whatever the batch's size.

A pack is self-describing, so the pack files are the only truth:

    b"DEAIPACK1\\n" | blob 0 | blob 1 | ... | index | trailer
    index:   one entry per blob: sha256 (32 bytes), offset, length (u64, little-endian)
    trailer: index offset (u64), entry count (u64), b"DEAIPKND"

It is written under a temporary name, fsynced, renamed to its final name (the
sha256 of its index) and the folder fsynced: after ``write`` returns, the pack
survives a crash of the process or of the machine, and a crash before that
leaves at most a temporary file, never a pack that reads wrong. Callers that
record the blobs' digests (a job's tasks) commit only after ``write`` returns.

Where each blob lies is kept in ``index.sqlite`` beside the packs: a cache of
the packs' own indexes, for lookups in constant memory. It is written without
an fsync of its own: ``sync`` re-indexes every pack file it has not recorded
(after a crash, or a pack written by another process sharing the folder), and
runs on opening and whenever a lookup misses while the folder has changed.

Packs are collected (``collect``, run by the coordinator leader's retention loop)
once none of their blobs is named by any record and nobody has written or
relied on them for a long while: what a refused submission leaves behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MAGIC = b"DEAIPACK1\n"
END = b"DEAIPKND"
_ENTRY = struct.Struct("<32sQQ")
_TRAILER = struct.Struct("<QQ8s")
_STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died
_SETTLED_NS = 2_000_000_000


class CorruptPack(ValueError):
    """A file in the packs folder that is not a whole pack."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_index(path: Path) -> list[tuple[str, int, int]]:
    """A pack's entries (digest, offset, length), checked against the file's size."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < len(MAGIC) + _TRAILER.size:
            raise CorruptPack(f"{path.name}: too short")
        f.seek(0)
        if f.read(len(MAGIC)) != MAGIC:
            raise CorruptPack(f"{path.name}: not a pack")
        f.seek(size - _TRAILER.size)
        at, count, end = _TRAILER.unpack(f.read(_TRAILER.size))
        if end != END or at + count * _ENTRY.size + _TRAILER.size != size:
            raise CorruptPack(f"{path.name}: bad trailer")
        f.seek(at)
        raw = f.read(count * _ENTRY.size)
    out = []
    for digest, offset, length in _ENTRY.iter_unpack(raw):
        if offset < len(MAGIC) or offset + length > at:
            raise CorruptPack(f"{path.name}: an entry points outside the data")
        out.append((digest.hex(), offset, length))
    return out


class PackStore:
    """Packs in ``root`` and their lookup index; safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            _fsync_dir(root.parent)  # the folder's own entry, once
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "index.sqlite", check_same_thread=False,
                                   timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a cache: sync() rebuilds it
        self._db.execute("CREATE TABLE IF NOT EXISTS packs (name TEXT PRIMARY KEY)")
        self._db.execute("CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, "
                         "pack TEXT NOT NULL, offset INTEGER NOT NULL, "
                         "length INTEGER NOT NULL)")
        self._seen_mtime = -1
        self._drop_stale_tmp()
        self.sync()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing ----------------------------------------------------------------------------

    def write(self, blobs: Sequence[tuple[str, bytes]]) -> str:
        """Store ``(digest, data)`` pairs durably in one new pack; its name."""
        index, offset = bytearray(), len(MAGIC)
        entries = []
        for digest, data in blobs:
            index += _ENTRY.pack(bytes.fromhex(digest), offset, len(data))
            entries.append((digest, offset, len(data)))
            offset += len(data)
        name = hashlib.sha256(index).hexdigest() + ".pack"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC)
                for _, data in blobs:
                    f.write(data)
                f.write(index)
                f.write(_TRAILER.pack(offset, len(entries), END))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)  # the rename itself must survive a machine crash
        self._record(name, entries)
        return name

    def _record(self, name: str, entries: list[tuple[str, int, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                                     [(d, name, o, n) for d, o, n in entries])
                self._db.execute("INSERT OR IGNORE INTO packs VALUES (?)", (name,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- reading ----------------------------------------------------------------------------

    def locate(self, digest: str) -> tuple[str, int, int] | None:
        """(pack, offset, length) of a blob, or None; re-indexes once if the folder changed."""
        hit = self._lookup(digest)
        if hit is None and self._changed():
            self.sync()
            hit = self._lookup(digest)
        return hit

    def _lookup(self, digest: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute("SELECT pack, offset, length FROM blobs WHERE digest = ?",
                                   (digest,)).fetchone()
        return (str(row[0]), int(row[1]), int(row[2])) if row else None

    def known(self, digests: Sequence[str]) -> set[str]:
        """Which of ``digests`` some pack holds (indexed lookups, a few hundred a query).
        Their packs count as used from now on: ``collect`` leaves them for a while."""
        if self._changed():
            self.sync()
        where: dict[str, list[str]] = {}
        with self._lock:
            for i in range(0, len(digests), 500):
                part = list(digests[i:i + 500])
                marks = ",".join("?" * len(part))
                for d, pack in self._db.execute(
                        f"SELECT digest, pack FROM blobs WHERE digest IN ({marks})",  # noqa: S608
                        part):
                    where.setdefault(pack, []).append(d)
        out: set[str] = set()
        for pack, found in where.items():
            # A caller relies on these blobs from now on (it will not write them again):
            # touching the pack keeps ``collect`` off it; one collected meanwhile is gone.
            try:
                os.utime(self.root / pack)
            except FileNotFoundError:
                continue
            out.update(found)
        return out

    def read(self, digest: str) -> bytes | None:
        hit = self.locate(digest)
        if hit is None:
            return None
        pack, offset, length = hit
        fd = os.open(self.root / pack, os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise CorruptPack(f"{pack}: blob {digest} is cut short")
        return data

    # --- collection -------------------------------------------------------------------------

    def collect(self, in_use: Callable[[list[str]], set[str]], *, older_than: float) -> list[str]:
        """Delete the packs none of whose blobs ``in_use`` names and that nobody wrote or
        relied on (``write``, ``known``) for ``older_than`` seconds; their names.

        A pack whose blobs nothing uses is what a refused submission leaves (its shards
        are written before the job's transaction decides). The age covers a submission
        in flight: its tasks commit long before the pack it wrote or reused gets old.
        The pack is first renamed out of reach, so a ``known`` that touches it after
        that finds it gone and writes its blobs again; one that touched it before is
        seen in its modification time, checked again after the rename (with the
        blobs' use), and the pack is put back."""
        for left in self.root.glob(".gc-*.pack"):  # a collection cut short: undecided
            with contextlib.suppress(OSError):
                os.replace(left, self.root / left.name.removeprefix(".gc-"))
        cutoff = time.time() - older_than
        with self._lock:
            names = [str(r[0]) for r in self._db.execute("SELECT name FROM packs")]
        gone: list[str] = []
        for name in names:
            path, hold = self.root / name, self.root / f".gc-{name}"
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
                digests = [d for d, _, _ in read_index(path)]  # the pack's own, complete
            except FileNotFoundError:
                self._forget(name)
                continue
            except CorruptPack:
                continue
            if in_use(digests):
                continue
            try:
                os.replace(path, hold)
            except FileNotFoundError:
                continue
            if hold.stat().st_mtime >= cutoff or in_use(digests):
                os.replace(hold, path)
                continue
            self._forget(name)
            hold.unlink()
            gone.append(name)
        if gone:
            _fsync_dir(self.root)
        return gone

    def _forget(self, name: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM blobs WHERE pack = ?", (name,))
                self._db.execute("DELETE FROM packs WHERE name = ?", (name,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- the index as a cache of the packs ------------------------------------------------

    def _changed(self) -> bool:
        try:
            return os.stat(self.root).st_mtime_ns != self._seen_mtime
        except FileNotFoundError:
            return False

    def sync(self) -> int:
        """Index every pack file the index does not know yet; how many were added."""
        mtime = os.stat(self.root).st_mtime_ns
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT name FROM packs")}
        added = 0
        for p in sorted(self.root.glob("*.pack")):
            if p.name in known:
                continue
            try:
                entries = read_index(p)
            except (CorruptPack, OSError):
                continue  # not ours to delete: a pack is renamed in only when whole
            self._record(p.name, entries)
            added += 1
        # A folder's mtime ticks coarsely: one changed in the last seconds may change
        # again without its mtime moving, so it is trusted only once it is old.
        self._seen_mtime = mtime if time.time_ns() - mtime > _SETTLED_NS else -1
        return added

    def _drop_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for p in self.root.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
