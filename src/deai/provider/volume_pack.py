"""A lease's home as a snapshot: a deterministic, size-capped tar.gz, and its restore.

``pack(home, cap, limit)`` walks the home with directory descriptors of its own, never
``os.fwalk``: that one tells folders by ``is_dir()`` (a link followed) and opens them
without ``O_NOFOLLOW`` or ``O_NONBLOCK``, so a link to a folder swapped for a link to a
host file or a pipe at the right moment made the root agent open that file, and a pipe
held the snapshot's thread for good. Here what an entry is comes from ``lstat``; a
folder is entered ``O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK`` relative to its parent's
descriptor, a file opened ``O_NOFOLLOW | O_NONBLOCK`` and read only if ``fstat`` says
it is a regular file; anything else is never opened. Entries are sorted; owners are
dropped (uid/gid 0, no names), modes keep only the permission bits, mtimes are whole
seconds, the gzip header has no time and no name: the same tree gives the same bytes,
hence the same content address. Regular files, folders and symlinks (as links) are
kept; sockets, pipes and devices are skipped.

The tar is streamed through gzip into a temporary file, never held uncompressed
in memory: the lease's own program decides what the home holds (a sparse file of
a terabyte takes no disk, a thousand hard links to one file take one file's
blocks), and the agent's memory must not pay for it. The result is that file, for the
upload to stream: at most ``min(cap, limit)`` bytes of disk, none of memory. File content
counts at its apparent size, once per name, a hard link again (a restore writes each as
its own file): more than ``cap`` bytes of it raises ``VolumeFull`` before the file that
passes it is read, and so do compressed bytes past ``cap`` or ``limit``, as soon as they
are written.

``unpack(data, home, cap)`` restores by hand, member by member, and never
through ``tarfile``'s extraction: its ``data`` filter trusts
``os.path.realpath``, which on Python 3.11.7 stops resolving links once a path
passes PATH_MAX (CVE-2025-4517), so a crafted snapshot wrote through a link
out of the home. Here a snapshot comes from another provider and is judged as
hostile:

- headers are read one at a time and none is kept; more than ``MAX_MEMBERS``
  raises ``VolumeFull``, a header record (pax, GNU long name) over
  ``MAX_HEADER`` bytes or a name over ``MAX_PATH`` bytes ``BadSnapshot``;
- a name is relative, without ``..``;
- a member's folder is reached one component at a time from the home's
  descriptor, each opened ``O_DIRECTORY | O_NOFOLLOW``: a component that is a
  link (made by an earlier member or anything else) refuses the snapshot, and
  no path is ever resolved by name;
- a file is created ``O_CREAT | O_EXCL | O_NOFOLLOW`` in that folder: never
  through a link, never over an entry already there;
- symlinks are made with their target as it was (``/work/x``, ``../usr``):
  only the sandbox reads a target, in its own mount namespace, where the lease's
  program could make the same link at any time; nothing here follows one;
- hard links, devices, pipes and sparse members refuse the snapshot (``pack``
  makes none); permission bits are kept, setuid, setgid and sticky dropped;
- content counts as it is restored: past ``cap`` raises ``VolumeFull``.

A snapshot refused part-way leaves the home empty again (as far as it can).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from deai.core.errors import InvalidInput, PayloadTooLarge

MAX_MEMBERS = 1_000_000
MAX_HEADER = 64 * 1024  # a pax or GNU long-name record: a path is at most MAX_PATH
MAX_PATH = 4096  # bytes of a member's name: PATH_MAX, what programs in the lease can open
MAX_WALK = 4_000_000  # folder components a restore may open in all: members alternating
# between two folders 2,000 deep made each member cost 2,000 opens (a 16 MB snapshot, six
# hours of the host's lease starts); a snapshot ``pack`` made enters each folder once
MAX_FOLDER_NAMES = 64 * 1024 * 1024  # bytes of folder names kept to set their times last
CHUNK = 1024 * 1024

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# a folder of a running lease may be swapped for a link, a pipe or a device between its
# listing and its open: O_DIRECTORY | O_NOFOLLOW refuse all of them, O_NONBLOCK keeps a
# pipe from holding the open (before, a pipe swapped in hung the snapshot for good)
_WALK_DIR = _DIR | os.O_NONBLOCK
_WALK_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RECORDS = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class VolumeFull(PayloadTooLarge):
    code = "volume_full"


class BadSnapshot(InvalidInput):
    code = "bad_snapshot"


# --- pack -----------------------------------------------------------------------------------

def pack(home: Path, cap: int, limit: int | None = None) -> IO[bytes]:
    """The home as a tar.gz in a temporary file, at its start; the caller closes it.

    ``cap`` is the volume's size: content past it raises ``VolumeFull``, and so does a
    packed result past it or past ``limit`` (the coordinator's upload limit,
    ``NetworkInfo.max_upload_bytes``: a bigger snapshot would be refused anyway), as soon
    as the compressed bytes pass it. The result is a file so that its bytes are streamed
    to the upload and never held here: a 1 GiB volume of random bytes held 1 GiB of the
    agent's memory before (``tests/test_volume_pack_hostile.py``).
    """
    packed = cap if limit is None else min(cap, limit)
    why = (f"volume: the packed home is over the volume's {cap} bytes" if packed == cap else
           f"volume: the packed home is over the coordinator's upload limit of {packed} bytes")
    spool = tempfile.TemporaryFile(prefix="deai-snapshot-")  # noqa: SIM115 - returned
    try:
        with gzip.GzipFile(fileobj=_Capped(spool, packed, why), mode="wb", mtime=0,
                           filename="", compresslevel=1) as gz, \
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _walk(tar, home, cap)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


MAX_DEPTH = 256  # folders nested in a home, at most: one descriptor held open per level


def _walk(tar: tarfile.TarFile, home: Path, cap: int) -> None:
    """Each folder's entries, sorted, then its folders one by one, depth first; the
    folders held open are a stack of descriptors, one per level, never a path, and at
    most ``MAX_DEPTH`` of them: a tenant's folders nested 3,000 deep held 3,000 of the
    agent's descriptors until every other thread of it met EMFILE."""
    total = 0
    top = os.open(home, _WALK_DIR)
    stack: list[tuple[int, str, Iterator[str]]] = [(top, "", iter(()))]
    try:
        folders, total = _folder(tar, top, "", total, cap)
        stack[-1] = (top, "", iter(folders))
        while stack:
            fd, rel, todo = stack[-1]
            name = next(todo, None)
            if name is None:
                stack.pop()
                os.close(fd)
                continue
            if len(stack) >= MAX_DEPTH:
                raise BadSnapshot(f"volume: the home's folders nest deeper than {MAX_DEPTH} "
                                  f"levels ({rel}/{name[:40]}…); it is not saved",
                                  field="volume")
            try:  # a folder when listed: now maybe a link, a pipe, a device, or gone
                sub = os.open(name, _WALK_DIR, dir_fd=fd)
            except OSError:
                continue  # a link or no folder: its entry was already written as it was
            path = f"{rel}/{name}" if rel else name
            stack.append((sub, path, iter(())))
            folders, total = _folder(tar, sub, path, total, cap)
            stack[-1] = (sub, path, iter(folders))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _folder(tar: tarfile.TarFile, fd: int, rel: str, total: int, cap: int
            ) -> tuple[list[str], int]:
    """Write the entries of the folder open at ``fd``; returns its folders' names and the
    content counted so far. What an entry is comes from ``lstat``, never from a followed
    link; only regular files are opened, and only folders entered."""
    with os.scandir(fd) as it:
        names = sorted(e.name for e in it)
    folders: list[str] = []
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since the listing (the lease may be running)
        info = tarfile.TarInfo(f"{rel}/{name}" if rel else name)
        info.mode, info.mtime = stat.S_IMODE(st.st_mode) & 0o777, int(st.st_mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            folders.append(name)
        elif stat.S_ISLNK(st.st_mode):
            try:
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=fd)
            except OSError:
                continue  # no longer a link
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            total = _add_file(tar, info, name, fd, total, cap)
        # sockets, pipes and devices: skipped, never opened
    return folders, total


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, dirfd: int,
              total: int, cap: int) -> int:
    try:  # a regular file when listed; swapped for a pipe, O_NONBLOCK opens it at once
        fd = os.open(name, _WALK_FILE, dir_fd=dirfd)
    except OSError:
        return total  # swapped for a link or something else since the listing: skipped
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return total
        total += st.st_size  # apparent size: what the tar holds, sparse or not
        if total > cap:
            raise VolumeFull(f"volume: the home holds more than the volume's {cap} bytes",
                             field="volume", cap=cap)
        info.size = st.st_size
        tar.addfile(info, _Exactly(f, st.st_size))
    return total


class _Capped(io.RawIOBase):
    """The compressed stream on its way to the spool file, stopped past ``cap`` bytes:
    a home of compressible content may hold ``cap`` of files and still pack to more."""

    def __init__(self, f: IO[bytes], cap: int, why: str) -> None:
        self.f, self.cap, self.why, self.written = f, cap, why, 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.written += len(b)
        if self.written > self.cap:
            raise VolumeFull(self.why, field="volume", cap=self.cap)
        return self.f.write(b)


class _Exactly(io.RawIOBase):
    """``size`` bytes of ``f``: a file still growing is cut, one that shrank is padded."""

    def __init__(self, f: io.BufferedReader, size: int) -> None:
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n < 0 else min(n, self.left)
        data = self.f.read(want) or b""
        if len(data) < want:
            data += b"\0" * (want - len(data))
        self.left -= len(data)
        return data


# --- unpack ---------------------------------------------------------------------------------

class _Header(tarfile.TarInfo):
    """A header that refuses oversized extension records before ``tarfile`` reads them
    whole into memory (a pax record of a gigabyte is a few kilobytes of gzip)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.XGLTYPE:  # read in a loop that returns no member: uncounted
            raise BadSnapshot("volume: a global pax header (pack writes none)", field="volume")
        if self.type in _RECORDS and self.size > MAX_HEADER:
            raise BadSnapshot(f"volume: a header record of {self.size} bytes (at most "
                              f"{MAX_HEADER})", field="volume")
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


def unpack(data: bytes, home: Path, cap: int) -> int:
    """Restore a snapshot into ``home`` (an empty folder); returns the bytes of content."""
    try:  # read through the gzip stream, never all of it at once (a small bomb stays small)
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz",  # noqa: SIM115 - closed below
                           tarinfo=_Header)
    except (OSError, EOFError, RecursionError, tarfile.TarError) as exc:
        raise BadSnapshot(f"volume: the snapshot is not a tar.gz: {exc}",
                          field="volume") from None
    restore = _Restore(home, cap)
    try:
        with tar:
            restore.all(tar)
    except (OSError, EOFError, ValueError, OverflowError, RecursionError,
            tarfile.TarError) as exc:
        restore.undo()
        raise BadSnapshot(f"volume: cannot restore the snapshot: {exc}",
                          field="volume") from None
    except BaseException:
        restore.undo()
        raise
    return restore.total


def _parts(name: str) -> tuple[str, ...]:
    """The components of a member's name, refused when it could leave the home."""
    if len(os.fsencode(name)) > MAX_PATH:
        raise BadSnapshot(f"volume: a name of more than {MAX_PATH} bytes", field="volume")
    if name.startswith("/") or "\0" in name:
        raise BadSnapshot(f"volume: {name[:200]!r} is not a relative name", field="volume")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise BadSnapshot(f"volume: {name[:200]!r} climbs out with '..'", field="volume")
    return parts


class _Restore:
    """One restore: the home's descriptor, the folder last entered (members of one
    folder come together), the folders whose mode and time are set last (a read-only
    folder must still take its files; adding files changes a folder's time)."""

    def __init__(self, home: Path, cap: int) -> None:
        self.home, self.cap, self.total, self.members = home, cap, 0, 0
        self.home_fd = os.open(home, _DIR)
        self.at: tuple[str, ...] = ()
        self.at_fd = os.dup(self.home_fd)
        # a folder's name, normalised, to its mode and time; a name listed twice is one
        self.folders: dict[str, tuple[int, int]] = {}
        self.folder_names = 0
        self.walked = 0  # folder components opened so far (``MAX_WALK``)

    def all(self, tar: tarfile.TarFile) -> None:
        try:
            while (m := tar.next()) is not None:
                # ``next`` keeps every header it reads (an attribute typeshed omits): none
                tar.members.clear()  # type: ignore[attr-defined]
                self.members += 1
                if self.members > MAX_MEMBERS:
                    raise VolumeFull(f"volume: more than {MAX_MEMBERS} entries",
                                     field="volume")
                self.one(tar, m)
            for folder, (mode, mtime) in reversed(self.folders.items()):  # children first
                fd = self._open(tuple(folder.split("/")))
                try:
                    os.utime(fd, (mtime, mtime))
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
        finally:
            self._close()

    def one(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _parts(m.name)
        if not parts:
            return  # the home itself ("./"): it exists
        folder, name = self._enter(parts[:-1], m.name), parts[-1]
        mode, mtime = m.mode & 0o777, int(m.mtime)
        if m.isdir():
            try:
                os.mkdir(name, 0o700, dir_fd=folder)
            except FileExistsError:  # listed twice, or implied by an earlier member
                if not stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                    raise BadSnapshot(f"volume: {m.name[:200]!r} is a folder and something "
                                      "else", field="volume") from None
            key = "/".join(parts)
            if key not in self.folders:
                self.folder_names += len(key)
                if self.folder_names > MAX_FOLDER_NAMES:
                    raise BadSnapshot("volume: too many folders", field="volume")
            self.folders[key] = (mode, mtime)
        elif m.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not m.issparse():
            if m.size < 0:  # base-256 sizes may be negative: it would lower the count
                raise BadSnapshot(f"volume: {m.name[:200]!r} has a negative size",
                                  field="volume")
            self.total += m.size
            if self.total > self.cap:
                raise VolumeFull(f"volume: the snapshot holds more than the volume's "
                                 f"{self.cap} bytes", field="volume", cap=self.cap)
            src = tar.extractfile(m)
            assert src is not None  # a regular member always has a reader
            with open(os.open(name, _NEW_FILE, 0o600, dir_fd=folder), "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fchmod(out.fileno(), mode)
                os.utime(out.fileno(), (mtime, mtime))
        elif m.issym():
            os.symlink(m.linkname, name, dir_fd=folder)
            os.utime(name, (mtime, mtime), dir_fd=folder, follow_symlinks=False)
        else:
            raise BadSnapshot(f"volume: {m.name[:200]!r} is a hard link, a device, a pipe "
                              "or sparse: a snapshot holds none", field="volume")

    def _enter(self, parts: tuple[str, ...], name: str) -> int:
        """The descriptor of the folder ``parts`` below the home, kept until another is
        entered; a component that is a link or no folder refuses the snapshot."""
        if parts != self.at:
            try:
                fd = self._open(parts, create=True)
            except OSError as exc:
                raise BadSnapshot(f"volume: {name[:200]!r}: a folder on its path is a link "
                                  f"or no folder ({exc.strerror})", field="volume") from None
            os.close(self.at_fd)
            self.at, self.at_fd = parts, fd
        return self.at_fd

    def _open(self, parts: tuple[str, ...], *, create: bool = False) -> int:
        """Open the folder ``parts`` component by component, none followed if a link;
        with ``create``, a missing one is made (a tar may name a file before, or without,
        its folder): ``mkdir`` never follows a link either."""
        self.walked += len(parts)
        if self.walked > MAX_WALK:
            raise BadSnapshot(f"volume: its entries walk more than {MAX_WALK} folders in all "
                              "(entries scattered across deep folders)", field="volume")
        fd = os.dup(self.home_fd)
        try:
            for p in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(p, 0o700, dir_fd=fd)
                inner = os.open(p, _DIR, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _close(self) -> None:
        for fd in (self.at_fd, self.home_fd):
            if fd >= 0:
                os.close(fd)
        self.at_fd = self.home_fd = -1

    def undo(self) -> None:
        """Empty the home again: a refused snapshot leaves nothing of itself. ``rmtree``
        never follows a link (it works through descriptors)."""
        self._close()
        for entry in os.scandir(self.home):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue
