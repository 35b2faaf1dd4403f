"""What a running sandbox has written, measured from outside while it runs.

    q = Quota(workdir, max_bytes=64 << 20, max_files=10_000)  # baseline: the inputs
    why = q.check(root_pid, pids)   # None, or "work-folder quota exceeded (...)"

The sandbox can write to three places: ``workdir`` (bound at ``/work``, on the
host's disk) and the size-limited tmpfs ``/tmp`` and ``/dev/shm`` (their bytes
are capped by the kernel; their inodes are not, since bubblewrap cannot set
``nr_inodes``). ``check`` measures what was added since the baseline:

- **bytes** in ``workdir``: ``st_blocks`` of every inode under it, each inode
  once (hard links add no bytes), symbolic links never followed, plus regular
  files the sandbox's processes hold open after deleting them (their blocks
  stay allocated; found through ``/proc/PID/fd``);
- **files**: every name under ``workdir`` (files, folders, links, fifos: a hard
  link is one more name) plus the inodes in use in the sandbox's ``/tmp`` and
  ``/dev/shm`` (``statvfs`` through ``/proc/ROOT_PID/root``, once the sandbox's
  root is in place: its ``/work`` is ``workdir``).

A walk stops counting as soon as the file quota is passed, so one check costs
at most ``max_files`` (plus the inputs) stat calls. Between walks, ``due`` is
one ``statvfs`` of the host filesystem under ``workdir`` (and of the two
tmpfs): when that filesystem's used bytes or inodes grew by more than what is
left of the quota since the last walk, a walk is due now rather than at its
time. It is still a sample, not a kernel quota: a job can overshoot by what it
writes between two polls and during a walk (each file is still capped by
RLIMIT_FSIZE), and a job that renames folders while a walk passes may hide
them from that one walk. A walk that a swapped-in symlink leads astray only
counts more, against the job itself.

A provider that is not root shares its uid with the sandbox, so a folder the
job made unreadable (``chmod 000``) would hide its contents: the walk gives the
owner rwx back on such a folder (through an ``O_PATH`` descriptor, never
through a link). A root provider reads everything as it is.

Walks go by folder descriptors (``openat`` with ``O_NOFOLLOW``), never by path
strings and never by recursion, because a job can nest folders past
``PATH_MAX`` (a path walk fails there with ENAMETOOLONG and sees nothing
below) and past Python's recursion limit. ``measure`` holds one descriptor
per level and gives up past ``MAX_DEPTH`` levels (``Unmeasurable``): what it
cannot walk counts as over the quota, never as empty. ``remove_tree`` (the
provider's cleanup of a job's or a lease's folder, once nothing writes there)
holds one descriptor at a time, however deep, and reports instead of raising.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

MB = 1024 * 1024
TMPFS = ("tmp", "dev/shm")
MAX_DEPTH = 256
"""Folder levels ``measure`` walks (a descriptor each); inputs nest at most ~128."""
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)  # removed, or swapped for a file or link


class Unmeasurable(Exception):
    """A folder tree ``measure`` cannot walk to the end: too deep, or unreadable."""


def _let_owner_in(name: str, dir_fd: int | None = None) -> bool:
    """Give the owner rwx on the folder ``name`` (r on a regular file), never on what a
    link there points to; ``name`` is relative to ``dir_fd`` when given."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        add = (stat.S_IRWXU if stat.S_ISDIR(st.st_mode)
               else stat.S_IRUSR if stat.S_ISREG(st.st_mode) else 0)
        if not add or st.st_uid != os.getuid():
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | add)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def open_as_owner(name: str, dir_fd: int | None, flags: int = DIR_FLAGS) -> int:
    """``os.open(name, flags | O_NOFOLLOW, dir_fd=dir_fd)``; a folder or file its owner
    (this process's uid) locked is opened for it first. Raises ``OSError``."""
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        if not _let_owner_in(name, dir_fd):
            raise
        return os.open(name, flags, dir_fd=dir_fd)


def _enter(parent: int, name: str) -> int | None:
    """A descriptor of the folder ``name`` in ``parent``; None if it is gone or no
    longer a folder (a running job may have removed or swapped it)."""
    try:
        return open_as_owner(name, parent)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise


def measure(root: Path, stop_at: int) -> tuple[int, int]:
    """(bytes, names) under ``root``: blocks of each inode once, every name counted,
    links not followed; counting stops once the names pass ``stop_at``.

    Raises ``Unmeasurable`` past ``MAX_DEPTH`` levels or on a folder it cannot read."""
    seen: set[tuple[int, int]] = set()
    used = names = 0
    fds: list[int] = []  # one per level, root first
    todo: list[list[str]] = []  # per level: the subfolders still to walk
    try:
        fd: int | None = os.open(os.fspath(root), DIR_FLAGS)
        while True:
            if fd is not None:
                fds.append(fd)
                if len(fds) > MAX_DEPTH:
                    raise Unmeasurable(f"folders nested deeper than {MAX_DEPTH} levels")
                subs: list[str] = []
                with os.scandir(fd) as it:
                    for e in it:
                        names += 1
                        if names > stop_at:
                            return used, names
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue  # removed meanwhile
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            used += st.st_blocks * 512
                        if stat.S_ISDIR(st.st_mode):
                            subs.append(e.name)
                todo.append(subs)
            while todo and not todo[-1]:
                todo.pop()
                os.close(fds.pop())
            if not todo:
                return used, names
            fd = _enter(fds[-1], todo[-1].pop())
    except OSError as exc:
        raise Unmeasurable(f"a folder cannot be read: {exc.strerror or exc}") from None
    finally:
        for fd_ in fds:
            os.close(fd_)


def remove_tree(path: Path) -> str | None:
    """Remove ``path`` and everything under it; None, or why something was left.

    Never raises: a caller that cleans up after a job or a lease reports what is left
    and goes on. Never follows a link and never recurses: it holds one descriptor at
    a time, climbing back through ``..`` (checked against the folder it left), so no
    depth of folders stops it. Folders their owner locked are opened for it. For trees
    nothing writes to any more: a folder moved meanwhile stops it."""
    try:
        _remove_tree(os.path.abspath(path))
    except Exception as exc:  # noqa: BLE001 - reported, never raised: see above
        return f"{path} not removed: {type(exc).__name__}: {exc}"
    return None


def _remove_tree(path: str) -> None:
    parent, name = os.path.split(path)
    pfd = os.open(parent or "/", DIR_FLAGS)  # the caller's own folder: trusted
    try:
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            _empty(pfd, name)
            os.rmdir(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _writable(fd: int) -> None:
    """Let the owner (this uid) list and empty the folder ``fd`` whatever its mode."""
    st = os.fstat(fd)
    if st.st_uid == os.getuid() and st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def _clear_files(fd: int) -> list[str]:
    """Unlink everything in the folder ``fd`` but its subfolders; return their names."""
    subs = []
    with os.scandir(fd) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                subs.append(e.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.name, dir_fd=fd)
    return subs


def _empty(parent: int, name: str) -> None:
    """Empty the folder ``name`` in ``parent``, depth first, one descriptor held."""
    fd = open_as_owner(name, parent)
    # per folder above ``fd``: its identity, the name of the one below, its subfolders left
    above: list[tuple[tuple[int, int], str, list[str]]] = []
    try:
        _writable(fd)
        subs = _clear_files(fd)
        while True:
            if subs:
                sub = subs.pop()
                child = _enter(fd, sub)
                if child is None:
                    continue
                above.append((_ident(fd), sub, subs))
                os.close(fd)
                fd = child
                _writable(fd)
                subs = _clear_files(fd)
                continue
            if not above:
                return
            ident, sub, subs = above.pop()
            up = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if _ident(fd) != ident:
                raise OSError(errno.ESTALE, "a folder moved while it was being removed")
            os.rmdir(sub, dir_fd=fd)
    finally:
        os.close(fd)


class Quota:
    """Bytes and files a sandbox may add to what ``workdir`` holds when it is made."""

    def __init__(self, workdir: Path, *, max_bytes: int, max_files: int) -> None:
        self.workdir = workdir
        self.max_bytes = max_bytes
        self.max_files = max_files
        st = os.stat(workdir)
        self._id = (st.st_dev, st.st_ino)
        self._owner = st.st_uid
        self.base_bytes, self.base_names = measure(workdir, 1 << 62)
        self.bytes = 0
        """Bytes added at the last check (at most what the walk saw)."""
        self.files = 0
        """Files added at the last check (the walk stops a little past the quota)."""
        self._fs = self._host_fs()

    def _host_fs(self) -> tuple[int, int]:
        """(used bytes, used inodes) of the whole filesystem that holds ``workdir``."""
        fs = os.statvfs(self.workdir)
        return (fs.f_blocks - fs.f_bfree) * fs.f_frsize, fs.f_files - fs.f_ffree

    def due(self, root_pid: int | None = None) -> bool:
        """Whether a walk is due before its time: the host filesystem grew by more than
        the quota has left since the last walk, or the tmpfs hold too many files."""
        used, inodes = self._host_fs()
        if used - self._fs[0] > self.max_bytes - self.bytes:
            return True
        if inodes - self._fs[1] > self.max_files - self.files:
            return True
        tmp = self._tmpfs_inodes(root_pid) if root_pid is not None else 0
        return tmp > self.max_files

    def check(self, root_pid: int | None = None, pids: Iterable[int] = ()) -> str | None:
        """Measure now. ``root_pid``: a process inside the sandbox whose root shows its
        ``/tmp`` and ``/dev/shm``; ``pids``: its processes. A message naming the quota
        that is exceeded, or None."""
        self._fs = self._host_fs()
        tmp_files = self._tmpfs_inodes(root_pid) if root_pid is not None else 0
        try:
            used, names = measure(self.workdir,
                                  self.base_names + self.max_files - tmp_files)
        except Unmeasurable as exc:
            return f"work-folder quota exceeded (it cannot be measured: {exc})"
        used += self._deleted_but_open(pids)
        self.bytes = max(0, used - self.base_bytes)
        self.files = max(0, names - self.base_names) + tmp_files
        if self.files > self.max_files:
            return (f"file-count quota exceeded (more than {self.max_files} files and folders "
                    "created in /work, /tmp and /dev/shm)")
        if self.bytes > self.max_bytes:
            return (f"work-folder quota exceeded (more than {self.max_bytes // MB} MB written "
                    "to /work)")
        return None

    def _tmpfs_inodes(self, pid: int) -> int:
        root = f"/proc/{pid}/root"
        try:
            st = os.stat(f"{root}/work")
            if (st.st_dev, st.st_ino) != self._id:
                return 0  # the sandbox's root is not in place yet (or any more)
            n = 0
            for mount in TMPFS:
                fs = os.statvfs(f"{root}/{mount}")
                n += max(0, fs.f_files - fs.f_ffree - 1)  # its root folder is no file
            return n
        except OSError:
            return 0

    def _deleted_but_open(self, pids: Iterable[int]) -> int:
        seen: set[int] = set()
        used = 0
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if (stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == self._id[0]
                        and st.st_uid == self._owner and st.st_ino not in seen):
                    seen.add(st.st_ino)
                    used += st.st_blocks * 512
        return used
