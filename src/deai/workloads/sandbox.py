"""Run an untrusted program under bubblewrap with resource limits; never without it.

    ok, why = sandbox.available()        # (False, "bwrap not found ...") on a bare host
    res = sandbox.run(["/bin/sh", "-c", "sort in.txt > out/s.txt"], workdir,
                      Limits(cpu_seconds=5, wall_seconds=10, memory_mb=256,
                             file_size_mb=16, max_processes=32),
                      stdout=logs / "stdout", stderr=logs / "stderr")
    res.exit_code, res.signal, res.cpu_ms, res.limit, res.error

What the program sees: a fresh read-only root with ``/usr`` (and the ``/bin``,
``/lib``, ``/lib64``, ``/sbin`` links or binds) and a few ``/etc`` files, a new
``/proc`` and a read-only ``/dev``; it can write only to ``workdir`` at ``/work``
(its current folder, and ``$HOME``) and to two empty size-limited tmpfs,
``/tmp`` (``Limits.tmp_mb``) and ``/dev/shm`` (``Limits.shm_mb``), both sized
from ``memory_mb`` because their pages are RAM. Nothing else of the host: not
``/root``, ``/home``, ``$DEAI_HOME`` or the provider's keys. Every namespace is
new (``--unshare-all``): no network but its own loopback, its own pids, no
further user namespaces. It dies with the provider (``--die-with-parent``) and
cannot reach the provider's terminal (``--new-session``).

Environment: ``bwrap`` itself, which stays in the sandbox as its pid 1 (its
``/proc/1/environ`` is readable there), starts with ``BWRAP_ENV`` only, never
the provider's; the program gets ``--clearenv`` plus ``PATH``, ``HOME``,
``TMPDIR``, ``LANG`` and the ``env`` it was given.

Identity: when the provider runs as root, the sandbox runs as an unprivileged
uid of its own from a pool (``UID_BASE + n``), so RLIMIT_NPROC counts only its
processes (root is exempt from RLIMIT_NPROC); ``workdir`` is handed to that
uid. Otherwise it runs as the provider's uid in a user namespace, and its process
limit is shared: the kernel counts RLIMIT_NPROC over all the threads of a uid, so the
limit is set to ``max_processes`` plus the threads the uid has when the sandbox starts
(the agent's own, other sandboxes'). Threads the agent or another sandbox of that uid
starts *later* still count against it: a job may then fail with ``limit: processes``
before it has ``max_processes``. Only separate uids (a root provider) keep sandboxes'
counts apart.

Limits, set with ``setrlimit`` just before ``bwrap`` starts and inherited by
everything inside: RLIMIT_CPU (per process; SIGXCPU, then SIGKILL a second
later), RLIMIT_AS (address space per process), RLIMIT_FSIZE (per file
written, stdout and stderr included), RLIMIT_NPROC, RLIMIT_NOFILE and
RLIMIT_CORE = 0. A watcher samples the sandbox's processes every
``POLL_SECONDS``: it kills the whole sandbox when their CPU time *together*
passes the CPU limit or the wall clock passes its limit, and records the
peak process count. Killing the outer ``bwrap`` takes its pid-1 with it
(``--die-with-parent``), and the kernel then kills every process of that pid
namespace; ``run`` returns only once none is left. To count and reap those
processes itself, the calling process makes itself a child subreaper
(``PR_SET_CHILD_SUBREAPER``, once, process-wide): a sandbox's orphans are
re-parented to it, and the watcher reaps the ones in the sandbox's namespace.

Disk (``deai.workloads.quota``): every ``DISK_POLL_SECONDS`` (up to
``DISK_POLL_MAX`` when a walk is slow), and sooner when one ``statvfs`` a poll
shows the filesystem growing past what the quota has left, the watcher
measures what was added to ``workdir`` (bytes, and names however deep, links
not followed, hard links' bytes once, deleted files still held open included)
and the inodes used in ``/tmp`` and ``/dev/shm``; past ``Limits.work_mb`` or
``Limits.max_files`` it kills the sandbox, and a last check after the program
ended catches a run faster than one sample.

Not covered (no cgroups here): memory summed over processes, and a disk
overshoot between two samples (see ``quota``).

Which limit stopped a program is read from what the kernel and the program
say: SIGXCPU/SIGXFSZ (also as exit status 128+N, as shells report a killed
child), the watcher's own kills, the peak process count, and the usual
messages of failed allocations, forks and writes to a full tmpfs ("No space
left on device": the "disk" limit) on stderr. A program that exits 0
is fine unless the watcher killed it or one of its forks was refused (then
part of it never ran: a "processes" error).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deai.workloads.pidns import Watch, become_subreaper
from deai.workloads.quota import MB, Quota

POLL_SECONDS = 0.05
DISK_POLL_SECONDS = 0.2
DISK_POLL_COST = 10  # wait 10x as long as a walk took: walks use <= ~10% of a core,
DISK_POLL_MAX = 1.0  # but never longer than this between two disk checks
MAX_FILES = 10_000
DISK_FLOOR_MB = 64
UID_BASE = 1_900_000
UID_POOL = 64  # uids a process may use at once; each process gets its own block
OPEN_FILES = 256
REAP_SECONDS = 10.0
TAIL = 4096
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
BWRAP_ENV = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": "/work"}
ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
             "/etc/localtime")

_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|out of memory|bad_alloc|"
                     r"memory exhausted|failed to allocate", re.IGNORECASE)
_FORK = re.compile(r"Cannot fork|can't fork|fork: retry|fork failed|"
                   r"Resource temporarily unavailable", re.IGNORECASE)
_FSIZE = re.compile(r"File too large|File size limit exceeded", re.IGNORECASE)
_NOSPACE = re.compile(r"No space left on device|Disk quota exceeded", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    wall_seconds: int
    memory_mb: int
    file_size_mb: int
    max_processes: int
    open_files: int = OPEN_FILES
    disk_mb: int | None = None
    """MB the program may add to ``workdir``; None: ``4 * file_size_mb``, at least 64."""
    max_files: int = MAX_FILES
    """Files and folders it may create in ``/work``, ``/tmp`` and ``/dev/shm`` together."""

    @property
    def work_mb(self) -> int:
        return self.disk_mb if self.disk_mb is not None else max(DISK_FLOOR_MB,
                                                                 4 * self.file_size_mb)

    @property
    def tmp_mb(self) -> int:
        """Size of the ``/tmp`` tmpfs: half of ``memory_mb``."""
        return max(1, self.memory_mb // 2)

    @property
    def shm_mb(self) -> int:
        """Size of the ``/dev/shm`` tmpfs: a quarter of ``memory_mb``."""
        return max(1, self.memory_mb // 4)


@dataclass(frozen=True)
class Result:
    exit_code: int | None
    """The program's exit status; None when it was killed by a signal."""
    signal: str | None
    cpu_ms: int
    wall_ms: int
    peak_processes: int
    limit: str | None
    """cpu, wall, memory, file_size, processes or disk: the limit that stopped it, if any."""
    error: str | None
    """None when the program exited 0; else what went wrong, naming the limit."""


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot build a sandbox here; the command is not run."""


# --- availability ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """Whether this host can run sandboxed commands, and why not (or which bwrap)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bwrap not found on PATH (install it: apt-get install -y bubblewrap)"
    usage = subprocess.run([exe, "--help"], capture_output=True, text=True, env=BWRAP_ENV,
                           check=False).stdout
    if "--size" not in usage:
        return False, f"{exe} has no --size option for size-limited tmpfs (upgrade bubblewrap)"
    home = Path(os.environ.get("DEAI_HOME", ".deai")).resolve()
    if home.is_relative_to("/usr") or home.is_relative_to("/etc"):
        return False, f"DEAI_HOME {home} lies in a folder the sandbox exposes"
    with tempfile.TemporaryDirectory(prefix="deai-sbx-probe-") as tmp:
        work, logs = Path(tmp, "work"), Path(tmp)
        os.chmod(tmp, 0o711)  # the sandbox's uid must reach work/, not list tmp
        work.mkdir()
        try:
            res = run(["/bin/sh", "-c", "echo ok > probe"], work,
                      Limits(cpu_seconds=5, wall_seconds=20, memory_mb=256, file_size_mb=1,
                             max_processes=8), stdout=logs / "o", stderr=logs / "e")
        except OSError as exc:
            return False, f"bwrap cannot start: {exc}"
        if res.exit_code != 0 or not (work / "probe").is_file():
            why = (logs / "e").read_text(errors="replace").strip()[-300:]
            return False, f"bwrap cannot build a sandbox here: {why or res.error}"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return True, version or exe


# --- the sandbox ----------------------------------------------------------------------------

def bwrap_args(workdir: Path, env: dict[str, str], argv: list[str], limits: Limits, *,
               exe: str = "bwrap") -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` with ``workdir`` at /work."""
    args = [exe, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/sbin", "/lib32", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    for etc in ETC_FILES:
        args += ["--ro-bind-try", etc, etc]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.tmp_mb * MB), "--tmpfs", "/tmp",
             "--size", str(limits.shm_mb * MB), "--tmpfs", "/dev/shm",
             "--bind", str(workdir), "/work", "--chdir", "/work",
             # after every mount: the root's and /dev's own tmpfs are not size-limited
             "--remount-ro", "/dev", "--remount-ro", "/", "--clearenv"]
    base = {"PATH": SANDBOX_PATH, "HOME": "/work", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    for k, v in {**base, **env}.items():
        args += ["--setenv", k, v]
    return [*args, "--", *argv]


class _UidPool:
    """Unprivileged uids for sandboxes of a root provider, one per running sandbox."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # providers sharing a host should not share RLIMIT_NPROC counts
        self.first = UID_BASE + (os.getpid() % 1024) * UID_POOL
        self._free = list(range(self.first + UID_POOL - 1, self.first - 1, -1))

    def take(self) -> int:
        with self._lock:
            if not self._free:
                raise SandboxUnavailable(f"more than {UID_POOL} sandboxes at once")
            return self._free.pop()

    def give(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


_UIDS = _UidPool()


def _own_threads() -> int:
    """The threads of every process of this uid: what the kernel counts against
    RLIMIT_NPROC (each thread is a task), not the processes. Counting processes left the
    agent's own threads (a lease session is one) to eat the job's budget: beside 40 idle
    threads, a job of ``max_processes=8`` stopped with ``limit: processes`` before its
    six children ran (``tests/test_sandbox_nproc.py``)."""
    uid, n = os.getuid(), 0
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and d.stat().st_uid == uid:
                n += len(os.listdir(d / "task"))
        except OSError:
            continue  # ended since the listing
    return n


def _set_limits(limits: Limits, nproc: int) -> None:
    """Runs in the child between fork and exec: no allocation-heavy work, no locks."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (limits.file_size_mb * mb, limits.file_size_mb * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(argv: list[str], workdir: Path, limits: Limits, *, env: dict[str, str] | None = None,
        stdout: Path, stderr: Path) -> Result:
    """Run ``argv`` in a sandbox over ``workdir``; stdout and stderr go to the given files.

    ``workdir``'s parent folders must be searchable (o+x) by the sandbox's uid.

    Raises ``SandboxUnavailable`` if ``bwrap`` is missing; a program that fails or
    breaks a limit is a ``Result`` with ``error`` set, not an exception.
    """
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxUnavailable("bwrap not found on PATH; refusing to run unsandboxed")
    root = os.getuid() == 0
    uid = _UIDS.take() if root else None
    try:
        if uid is not None:
            for d, _, files in os.walk(workdir):
                os.chown(d, uid, uid)
                for f in files:
                    os.chown(os.path.join(d, f), uid, uid, follow_symlinks=False)
        # the outer bwrap and the sandbox's pid 1 count against RLIMIT_NPROC too; a non-root
        # provider's own threads and other sandboxes share the count (see the docstring)
        nproc = limits.max_processes + 2 + (0 if root else _own_threads())
        quota = Quota(workdir, max_bytes=limits.work_mb * MB, max_files=limits.max_files)
        cmd = bwrap_args(workdir, env or {}, argv, limits, exe=exe)
        return _run(cmd, limits, stdout, stderr, uid, nproc, quota)
    finally:
        if uid is not None:
            _UIDS.give(uid)


def _run(cmd: list[str], limits: Limits, stdout: Path, stderr: Path, uid: int | None,
         nproc: int, quota: Quota) -> Result:
    become_subreaper()
    info_r, info_w = os.pipe()
    os.set_blocking(info_r, False)
    cmd = [cmd[0], "--info-fd", str(info_w), *cmd[1:]]
    t0 = time.monotonic()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        # bwrap stays inside as pid 1 with this environment: never the provider's
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=BWRAP_ENV, close_fds=True, start_new_session=True,
                                pass_fds=(info_w,), user=uid, group=uid,
                                extra_groups=None if uid is None else [],
                                preexec_fn=lambda: _set_limits(limits, nproc))
    os.close(info_w)
    try:
        return _watch(proc, Watch(proc.pid, info_r), quota, limits, t0, stderr)
    finally:
        os.close(info_r)


def _watch(proc: subprocess.Popen[bytes], watch: Watch, quota: Quota, limits: Limits,
           t0: float, stderr: Path) -> Result:
    killed: str | None = None
    disk: str | None = None
    status, usage = 0, None
    pause = POLL_SECONDS / 16  # short commands should not wait a whole poll
    next_disk = t0 + DISK_POLL_SECONDS
    soonest_disk = t0  # walks, however due, take at most 1/DISK_POLL_COST of the time
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        watch.sample()
        if killed is None:
            now = time.monotonic()
            if now - t0 > limits.wall_seconds:
                killed = "wall"
            elif watch.cpu_ms > limits.cpu_seconds * 1000:
                killed = "cpu"
            elif now >= next_disk or (now >= soonest_disk and quota.due(watch.inner)):
                disk = quota.check(watch.inner, watch.pids)
                killed = "disk" if disk else None
                took = time.monotonic() - now
                soonest_disk = now + DISK_POLL_COST * took
                next_disk = now + min(DISK_POLL_MAX, max(DISK_POLL_SECONDS, DISK_POLL_COST * took))
            if killed:
                _kill(watch.inner, proc.pid)
        time.sleep(pause)
        pause = min(POLL_SECONDS, pause * 2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall_ms = int((time.monotonic() - t0) * 1000)
    if watch.inner is not None and watch.in_sandbox(watch.inner):
        _kill(watch.inner)  # leftovers (daemonised children) go with their pid 1
    end = time.monotonic() + REAP_SECONDS  # until every process is gone and reaped
    while watch.sample() and time.monotonic() < end:
        time.sleep(POLL_SECONDS / 5)
    if killed is None:  # a run shorter than a sample is measured once it is over
        disk = quota.check()
        killed = "disk" if disk else None
    assert usage is not None
    cpu_ms = max(watch.cpu_ms, int((usage.ru_utime + usage.ru_stime) * 1000))
    return classify(proc.returncode, killed, cpu_ms, wall_ms, watch.peak, limits,
                    _tail(stderr), disk=disk)


def _kill(*pids: int | None) -> None:
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL))
        return f.read().decode("utf-8", errors="replace")


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def classify(returncode: int, killed: str | None, cpu_ms: int, wall_ms: int, peak: int,
             limits: Limits, stderr_tail: str, *, disk: str | None = None) -> Result:
    """Turn how the sandbox ended into an exit status, a signal and the limit it broke.

    ``killed`` is the watcher's reason ("cpu", "wall" or "disk", then ``disk`` says
    which quota), if it stopped the program or found it over its disk quota."""
    code: int | None = returncode
    sig: int | None = None
    if returncode < 0:  # the outer bwrap itself was killed (by the watcher)
        code, sig = None, -returncode
    elif returncode > 128 and returncode - 128 < signal.NSIG:
        sig = returncode - 128  # bwrap and shells report a child killed by N as 128+N
    name = _signal_name(sig) if sig is not None else None
    # A refused fork is an error even when the program exits 0: part of it never ran.
    # The peak (pid 1 is bwrap's) is sampled, so a fast fork bomb shows only on stderr.
    capped = peak - 1 >= limits.max_processes or bool(_FORK.search(stderr_tail))
    if returncode == 0 and killed is None and not capped:
        return Result(0, None, cpu_ms, wall_ms, peak, None, None)
    found: list[tuple[str, str]] = []
    if killed == "disk":
        found.append(("disk", disk or "disk quota exceeded"))
    if capped:
        found.append(("processes", f"process limit reached ({limits.max_processes} "
                                   "processes)"))
    if returncode != 0 and _MEMORY.search(stderr_tail):
        found.append(("memory", f"memory limit reached ({limits.memory_mb} MB of address "
                                "space per process)"))
    if sig == signal.SIGXFSZ or (returncode != 0 and _FSIZE.search(stderr_tail)):
        found.append(("file_size", f"file-size limit exceeded ({limits.file_size_mb} MB "
                                   "per file)"))
    if returncode != 0 and killed != "disk" and _NOSPACE.search(stderr_tail):
        found.append(("disk", f"no space left on a device (/tmp holds {limits.tmp_mb} MB "
                              f"and /dev/shm {limits.shm_mb} MB, from memory_mb)"))
    if killed == "cpu" or sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and cpu_ms >= limits.cpu_seconds * 1000):
        found.append(("cpu", f"CPU-time limit exceeded ({limits.cpu_seconds} s)"))
    if killed == "wall":
        found.append(("wall", f"wall-clock limit exceeded ({limits.wall_seconds} s)"
                              ))
    how = f"killed by {name}" if code is None or sig is not None else f"exited with {code}"
    error = "; ".join(m for _, m in found) + f" ({how})" if found else f"command {how}"
    return Result(code, name, cpu_ms, wall_ms, peak,
                  found[0][0] if found else None, error)
