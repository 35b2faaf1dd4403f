"""The processes of one sandbox's pid namespace, watched from outside.

    become_subreaper()                 # once: a sandbox's orphans come back here
    w = Watch(bwrap_pid, info_fd)      # read end of bwrap's --info-fd
    left = w.sample()                  # processes left; w.cpu_ms, w.peak, w.pids

``Watch`` finds the namespace from the pid bwrap reports on ``--info-fd`` and
sums CPU time over its processes; the sandbox's watcher (``sandbox._watch``)
samples it every poll and decides on the limits.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading

PR_SET_CHILD_SUBREAPER = 36


class Watch:
    """The processes of one sandbox's pid namespace: count and CPU time together.

    CPU time is utime+stime+cutime+cstime summed over the namespace's processes
    (zombies included, so a child's time is counted until its parent has
    reaped it and it shows in the parent's cutime), plus the rusage of the
    ones this process reaped itself as their subreaper.
    """

    def __init__(self, outer: int, info: int) -> None:
        self.outer = outer
        self._info = info  # read end of bwrap's --info-fd: {"child-pid": N}
        self._buf = b""
        self.ns: str | None = None
        self.inner: int | None = None
        self.cpu_ms = 0
        self.peak = 0
        self.pids: list[int] = []
        """The namespace's processes at the last sample."""
        self._reaped_ms = 0
        self._tick = os.sysconf("SC_CLK_TCK")
        self._me = os.getpid()

    def _find_ns(self) -> None:
        try:
            while chunk := os.read(self._info, 4096):
                self._buf += chunk
        except BlockingIOError:
            return  # bwrap has not written it yet
        info = json.loads(self._buf or b"{}")
        if "child-pid" in info:
            self.inner = int(info["child-pid"])
            try:
                self.ns = os.readlink(f"/proc/{self.inner}/ns/pid")
            except OSError:
                self.ns = ""  # the sandbox has ended already
        else:
            self.ns = ""  # bwrap exited before starting the sandbox

    def in_sandbox(self, pid: int) -> bool:
        try:
            return self.ns is not None and os.readlink(f"/proc/{pid}/ns/pid") == self.ns
        except OSError:
            return False

    def sample(self) -> int:
        """Refresh ``cpu_ms`` and ``peak``, reap zombies re-parented here; return how many
        processes (zombies included) are left."""
        if self.ns is None:
            self._find_ns()
            if self.ns is None:
                return 0
        n, ticks, pids = 0, 0, []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{d}/ns/pid") != self.ns:
                    continue
                with open(f"/proc/{d}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # after "comm)": state, ppid, ... ; utime..cstime are fields 14-17 of proc(5)
            fields = stat[stat.rfind(b")") + 2:].split()
            if fields[0] == b"Z" and int(fields[1]) == self._me and self._reap(int(d)):
                continue
            ticks += sum(int(x) for x in fields[11:15])
            pids.append(int(d))
            n += 1
        self.pids = pids
        self.cpu_ms = max(self.cpu_ms, ticks * 1000 // self._tick + self._reaped_ms)
        self.peak = max(self.peak, n)  # zombies count: RLIMIT_NPROC counts them too
        return n

    def _reap(self, pid: int) -> bool:
        try:
            done, _, ru = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if done:
            self._reaped_ms += int((ru.ru_utime + ru.ru_stime) * 1000)
        return bool(done)


_SUBREAPER = threading.Lock()
_subreaper_set = False


def become_subreaper() -> None:
    """Orphans of a sandbox (its pid 1 killed, bwrap gone) are re-parented here, so
    their CPU time is counted and they are reaped now rather than by init.
    Linux-only, process-wide and idempotent."""
    global _subreaper_set
    with _SUBREAPER:
        if not _subreaper_set:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            _subreaper_set = True
