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
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

MB = 1024 * 1024
TMPFS = ("tmp", "dev/shm")


def _let_owner_in(path: str) -> bool:
    """Give the owner rwx on the folder ``path`` (not on what a link there points to)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def measure(root: Path, stop_at: int) -> tuple[int, int]:
    """(bytes, names) under ``root``: blocks of each inode once, every name counted,
    links not followed; counting stops once the names pass ``stop_at``."""
    seen: set[tuple[int, int]] = set()
    used = names = 0
    todo = [os.fspath(root)]
    while todo:
        d = todo.pop()
        try:
            it = os.scandir(d)
        except PermissionError:
            if not _let_owner_in(d):
                continue
            try:
                it = os.scandir(d)
            except OSError:
                continue
        except OSError:
            continue  # removed meanwhile
        with it:
            for e in it:
                names += 1
                if names > stop_at:
                    return used, names
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    used += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    todo.append(e.path)
    return used, names


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
        used, names = measure(self.workdir, self.base_names + self.max_files - tmp_files)
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
