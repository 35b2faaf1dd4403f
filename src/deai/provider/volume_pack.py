"""A lease's home as a snapshot: a deterministic, size-capped tar.gz, and its restore.

``pack(home, cap)`` walks the home with directory descriptors (``os.fwalk``, no
symlink followed, every file opened ``O_NOFOLLOW`` relative to its folder), so a
program in a running lease that swaps a folder or file for a link cannot make
the agent pack a host file. Entries are sorted; owners are dropped (uid/gid 0,
no names), modes keep only the permission bits, mtimes are whole seconds, the
gzip header has no time and no name: the same tree gives the same bytes, hence
the same content address. Regular files, folders and symlinks (as links) are
kept; sockets, pipes and devices are skipped. More than ``cap`` bytes of file
content raises ``VolumeFull``.

``unpack(data, home, cap)`` checks the sum of the members' sizes against the cap
first, then extracts with ``tarfile``'s ``data`` filter (no absolute paths, no
``..``, nothing written through a link out of the home, no devices, no setuid
bits); symlinks keep their targets, which mean something only inside the lease.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

from deai.core.errors import InvalidInput, PayloadTooLarge

MAX_MEMBERS = 1_000_000


class VolumeFull(PayloadTooLarge):
    code = "volume_full"


class BadSnapshot(InvalidInput):
    code = "bad_snapshot"


def pack(home: Path, cap: int) -> bytes:
    raw = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames, dirfd in os.fwalk(home, follow_symlinks=False):
            dirnames.sort()
            rel = os.path.relpath(dirpath, home)
            for name in sorted(dirnames + filenames):
                path = name if rel == "." else f"{rel}/{name}"
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                info = tarfile.TarInfo(path)
                info.mode, info.mtime = stat.S_IMODE(st.st_mode) & 0o777, int(st.st_mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dirfd)
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    total = _add_file(tar, info, name, dirfd, total, cap)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=1) as gz:
        gz.write(raw.getvalue())
    data = out.getvalue()
    if len(data) > cap:
        raise VolumeFull(f"volume: the packed home is {len(data)} bytes, over the volume's "
                         f"{cap}", field="volume", cap=cap)
    return data


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, dirfd: int,
              total: int, cap: int) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    except OSError:
        return total  # swapped for a link or something else since the listing: skipped
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return total
        total += st.st_size
        if total > cap:
            raise VolumeFull(f"volume: the home holds more than the volume's {cap} bytes",
                             field="volume", cap=cap)
        info.size = st.st_size
        tar.addfile(info, _Exactly(f, st.st_size))
    return total


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


def unpack(data: bytes, home: Path, cap: int) -> int:
    """Restore a snapshot into ``home`` (an empty folder); returns the bytes of content."""
    try:  # read through the gzip stream, never all of it at once (a small bomb stays small)
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed below
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise BadSnapshot(f"volume: the snapshot is not a tar: {exc}", field="volume") from None
    with tar:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise VolumeFull(f"volume: more than {MAX_MEMBERS} entries", field="volume")
        total = sum(m.size for m in members if m.isreg())
        if total > cap:
            raise VolumeFull(f"volume: the snapshot holds {total} bytes, over the volume's "
                             f"{cap}", field="volume", cap=cap)
        try:
            tar.extractall(home, filter=_links_as_they_were)
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise BadSnapshot(f"volume: cannot restore the snapshot: {exc}",
                              field="volume") from None
    return total


def _links_as_they_were(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """The ``data`` filter, except that a symlink keeps its target (``/work/x``, or
    ``../usr``: it points inside the lease's own namespace). Nothing is written through
    one: the filter resolves each later member's path on disk, links included, and
    refuses any that lands outside the home."""
    if not member.issym():
        return tarfile.data_filter(member, dest)
    checked = tarfile.data_filter(member.replace(linkname=".", deep=False), dest)
    return checked.replace(linkname=member.linkname, deep=False)
