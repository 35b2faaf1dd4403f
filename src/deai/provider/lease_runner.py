"""The agent's side of leases: a sandbox per lease, heartbeats, and relayed sessions.

    runner = LeaseRunner(client, identity, HostOffer(cpus=2, memory_mb=4096,
                         prices={"cpu": 100_000, "memory_gb": 20_000}))
    runner.run(stop)     # blocks: publishes the offer, then polls and heartbeats

The environment of a lease (``LeaseSandbox``) is ``deai.workloads.sandbox``'s
bubblewrap sandbox, built with that module's ``bwrap_args`` and rlimits so it
gets the same sealing as command jobs, plus:

- a home folder that lives as long as the lease (``/work``, ``$HOME``), kept
  across every exec and shell of the lease and removed at its end;
- the provider's Python packages (its virtualenv, torch and the models that
  ship inside packages) read-only, on ``PYTHONPATH`` for ``/usr/bin/python3``;
- the limits asked: CPUs by affinity (N of the agent's cores, put back every
  ``PIN_SECONDS`` on every thread of the lease, since any program may widen its
  own), memory as RLIMIT_AS per process, processes, open files, file size;
- no network but its own loopback, unless the lease asked for it and the
  provider allows it (``HostOffer.network``: then the host's network is shared);
- a long-lived ``lease_init.py`` inside that serves sessions over a Unix socket
  the agent bound on the host, in a folder the sandbox cannot see, and handed
  in as an inherited descriptor.

Loops: ``_poll_loop`` long-polls ``/api/provider/leases/poll`` for leases to
start or stop and for sessions to open; ``_beat_loop`` names the running
leases every ``heartbeat_interval`` seconds (and at once after a start), which
makes a new lease active and keeps running ones from being declared lost. A
session dials ``WS /api/provider/leases/sessions/{sid}`` and pipes WebSocket
messages to and from the lease's socket (``lease_init``'s frames, one to one).
Each loop catches and logs what one answer or one lease raises and goes on, and
``LeaseSandbox.stop`` never raises: one tenant cannot stop the others' leases.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from websockets.exceptions import ConnectionClosed

from deai.client import leases as lease_sdk
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import wire_leases as wl
from deai.core.errors import DeAIError
from deai.provider import lease_init, volume_pack
from deai.workloads import quota, sandbox

log = logging.getLogger("deai.provider.leases")

INIT_PYTHON = "/usr/bin/python3"  # under /usr, so it exists inside every sandbox
START_TIMEOUT = 20.0
PIN_SECONDS = 1.0  # how often the leases' threads are put back on their CPUs
PYTHON_MOUNT = "/opt/deai/python"  # the provider's packages, read-only, on PYTHONPATH
HEADER = lease_init.HEADER


T = TypeVar("T")


@dataclass(frozen=True)
class HostOffer:
    cpus: int
    memory_mb: int
    prices: dict[str, int]
    gpus: int = 0
    gpu_model: str | None = None
    network: bool = False
    max_processes: int = 512
    file_size_mb: int = 4096
    netns: str | None = None  # sandboxes join this network namespace (`ip netns`) if set


CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling *thread* into the network namespace ``name`` (/run/netns/NAME):
    children it forks are born there. Only the sandbox spawner thread calls this, so the
    agent's own connections stay on the host's network."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def available() -> tuple[bool, str]:
    """Whether this machine can host leases (bubblewrap and a Python under /usr)."""
    ok, why = sandbox.available()
    if not ok:
        return False, why
    if not os.access(INIT_PYTHON, os.X_OK):
        return False, f"{INIT_PYTHON} is missing (the lease's init runs on it)"
    return True, why


def _python_paths() -> list[str]:
    """Folders of the provider's Python packages to show read-only inside a lease."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if Path(p).is_dir() and not p.startswith("/usr/"))


class LeaseSandbox:
    """One lease's long-lived sandbox."""

    def __init__(self, spec: wl.LeaseSpec, offer: HostOffer, cpus: list[int]) -> None:
        self.spec, self.offer, self.cpus = spec, offer, cpus
        self.dir = Path(tempfile.mkdtemp(prefix=f"deai-{spec.id}-"))
        os.chmod(self.dir, 0o711)  # the sandbox's uid must reach home/, not list the rest
        self.home = self.dir / "home"
        self.ctl = self.dir / "ctl"  # root's: the sandbox never sees it
        self.proc: subprocess.Popen[bytes] | None = None
        self.uid: int | None = None
        self._listener: socket.socket | None = None
        self._ns: str | None = None  # its pid namespace, once it runs

    def start(self, restore: Callable[[Path], None] | None = None) -> None:
        """Build the sandbox; ``restore`` first fills the home (a volume's snapshot)."""
        self.home.mkdir(mode=0o700)
        self.ctl.mkdir(mode=0o700)
        if restore is not None:
            restore(self.home)
        init = self.dir / "init.py"
        shutil.copyfile(lease_init.__file__, init)
        os.chmod(init, 0o644)
        if os.getuid() == 0:
            self.uid = sandbox._UIDS.take()
            os.chown(self.home, self.uid, self.uid)
            for dirpath, dirnames, filenames in os.walk(self.home):  # a restored home
                for name in dirnames + filenames:
                    os.lchown(os.path.join(dirpath, name), self.uid, self.uid)
        lst = self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(str(self.ctl / "ctl.sock"))
        lst.listen(64)
        env = {"DEAI_CTL_FD": str(lst.fileno()), "DEAI_LEASE": self.spec.id,
               "PYTHONPATH": ":".join(f"{PYTHON_MOUNT}/{i}"
                                      for i in range(len(_python_paths())))}
        limits = sandbox.Limits(cpu_seconds=10**9, wall_seconds=10**9,
                                memory_mb=self.spec.memory_mb,
                                file_size_mb=self.offer.file_size_mb,
                                max_processes=self.offer.max_processes, open_files=1024)
        argv = bwrap_command(self.home, env, [INIT_PYTHON, "-I", "/run/deai/init.py"], limits,
                             init=init, network=self.spec.network and self.offer.network)
        nproc = limits.max_processes + 2 + (0 if self.uid is not None
                                            else sandbox._own_threads())
        cpus = set(self.cpus)

        def pre_exec() -> None:
            sandbox._set_limits(limits, nproc)
            if cpus:
                os.sched_setaffinity(0, cpus)

        log_file = open(self.dir / "sandbox.log", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=log_file, pass_fds=(lst.fileno(),),
                                         start_new_session=True, user=self.uid,
                                         env=getattr(sandbox, "BWRAP_ENV", None),
                                         group=self.uid, preexec_fn=pre_exec,
                                         extra_groups=None if self.uid is None else [])
        finally:
            log_file.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc is None or self.proc.poll() is not None:
                break
            try:
                with self.connect() as s:
                    ch = lease_init.Channel(s)
                    ch.text(op="ping")
                    if ch.recv() is not None:
                        self._ns = lease_ns(self.proc.pid)
                        return
            except OSError:
                pass
            time.sleep(0.02)
        why = (self.dir / "sandbox.log").read_text(errors="replace")[-500:].strip()
        self.stop()
        raise DeAIError(f"the lease's sandbox did not start: {why or 'no reason given'}")

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A session with the lease's init; ``timeout`` bounds the connect too (its backlog
        full, a stopped init never accepts) and every later send and receive."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(str(self.ctl / "ctl.sock"))
        except OSError:
            s.close()
            raise
        return s

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Kill everything in the sandbox and remove the lease's home. Never raises: what
        cannot be removed is logged (the tenant chose what its home holds, however deep)."""
        try:
            self.kill()
        except Exception:  # the folder goes all the same
            log.exception("lease %s: the sandbox could not be killed", self.spec.id)
        if self._listener is not None:
            self._listener.close()
        if self.uid is not None:
            sandbox._UIDS.give(self.uid)
            self.uid = None
        left = quota.remove_tree(self.dir)
        if left is not None:
            log.error("lease %s: %s", self.spec.id, left)

    def pin(self) -> int:
        """Put every thread of the lease back on its CPUs (a program may widen its own
        affinity); how many threads had left them."""
        if not self.cpus or self._ns is None or not self.alive():
            return 0
        want, moved = set(self.cpus), 0
        for tid in ns_threads(self._ns):
            try:
                if os.sched_getaffinity(tid) != want:
                    os.sched_setaffinity(tid, want)
                    moved += 1
            except OSError:
                continue  # ended meanwhile
        return moved

    def kill(self) -> None:
        """Kill everything in the sandbox; the home stays (to be saved)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # --die-with-parent takes the rest
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self._ns is not None:
            reap(self._ns)


def _stat(pid: str) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command name: state, ppid, ..."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def lease_ns(outer: int) -> str | None:
    """The pid namespace of the sandbox whose outer ``bwrap`` is ``outer`` (its child
    there is that namespace's pid 1); None once it is gone."""
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(_stat(d)[1]) == outer:
                return os.readlink(f"/proc/{d}/ns/pid")
        except (OSError, ValueError, IndexError):
            continue
    return None


def ns_pids(ns: str) -> list[str]:
    """The processes of the pid namespace ``ns`` (zombies included), as host pids."""
    found = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.readlink(f"/proc/{d}/ns/pid") == ns:
                found.append(d)
        except OSError:
            continue
    return found


def ns_threads(ns: str) -> list[int]:
    """Every thread of every process of the pid namespace ``ns``."""
    tids: list[int] = []
    for d in ns_pids(ns):
        with contextlib.suppress(OSError):
            tids += [int(t) for t in os.listdir(f"/proc/{d}/task")]
    return tids


def reap(ns: str, timeout: float = 10.0) -> None:
    """Reap the processes of ``ns`` re-parented to this process once their pid 1 died (it
    is a child subreaper when it runs command jobs too: ``pidns.become_subreaper``), so
    an ended lease leaves no zombie; waits up to ``timeout`` for them to die."""
    end = time.monotonic() + timeout
    while (left := ns_pids(ns)) and time.monotonic() < end:
        for d in left:
            with contextlib.suppress(OSError, ValueError, IndexError, ChildProcessError):
                st = _stat(d)
                if st[0] == b"Z" and int(st[1]) == os.getpid():
                    os.waitpid(int(d), os.WNOHANG)
        time.sleep(0.02)


def bwrap_command(home: Path, env: dict[str, str], argv: list[str], limits: sandbox.Limits,
                  *, init: Path, network: bool) -> list[str]:
    """``sandbox.bwrap_args`` with the lease's mounts added before the sandbox seals its
    root (its first ``--remount-ro``), or before ``--clearenv``/``--`` in older versions."""
    if "limits" in inspect.signature(sandbox.bwrap_args).parameters:
        args = sandbox.bwrap_args(home, env, argv, limits)
    else:  # the signature before the sandbox took its limits
        args = sandbox.bwrap_args(home, env, argv)  # type: ignore[call-arg]
    cut = next(args.index(op) for op in ("--remount-ro", "--clearenv", "--") if op in args)
    extra = ["--ro-bind", str(init), "/run/deai/init.py"]
    for i, p in enumerate(_python_paths()):
        extra += ["--ro-bind", p, f"{PYTHON_MOUNT}/{i}"]
    if network:
        extra += ["--share-net", "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf",
                  "--ro-bind-try", "/etc/hosts", "/etc/hosts", "--ro-bind-try", "/etc/ssl",
                  "/etc/ssl"]
    return [*args[:cut], *extra, *args[cut:]]


@dataclass
class _State:
    boxes: dict[str, LeaseSandbox] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    noticed: dict[str, float] = field(default_factory=dict)  # notices delivered: lease -> at
    saving: set[str] = field(default_factory=set)  # snapshots being packed or uploaded


class LeaseRunner:
    def __init__(self, client: Client, identity: Identity, offer: HostOffer, *,
                 poll_wait: float = 20.0) -> None:
        self.client, self.identity, self.offer = client, identity, offer
        self.api = lease_sdk.Leases(client)
        self.poll_wait = poll_wait
        self.state = _State()
        self._lock = threading.Lock()
        self._beat_now = threading.Event()
        self._interval = 5.0
        self._stop = threading.Event()
        try:
            cores = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = list(range(os.cpu_count() or 1))
        self._cores = cores
        self._next_core = 0
        self._starts: queue.Queue[wl.LeaseSpec] = queue.Queue()
        # notices and their withdrawals, told to the leases in the order they came (a
        # thread each could let a withdrawal overtake the notice it takes back)
        self._notices_q: queue.Queue[tuple[LeaseSandbox, float | None]] = queue.Queue()

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        host = self._retry(lambda: self.api.set_host(wl.HostIn(
            cpus=self.offer.cpus, memory_mb=self.offer.memory_mb, gpus=self.offer.gpus,
            gpu_model=self.offer.gpu_model, network=self.offer.network,
            prices=self.offer.prices)))
        if host is None:
            return
        self._interval = host.heartbeat_interval
        log.info("hosting leases: %d CPUs, %d MiB, prices %s", host.cpus, host.memory_mb,
                 host.prices)
        beat = threading.Thread(target=self._beat_loop, name="deai-lease-beat", daemon=True)
        beat.start()
        # bwrap's --die-with-parent follows the *thread* that started it: sandboxes are
        # started from this one thread, which lives as long as the runner
        threading.Thread(target=self._spawner, name="deai-lease-spawner", daemon=True).start()
        threading.Thread(target=self._notifier, name="deai-lease-notices", daemon=True).start()
        threading.Thread(target=self._pin_loop, name="deai-lease-pin", daemon=True).start()
        try:
            self._poll_loop()
        finally:
            with self._lock:
                boxes = list(self.state.boxes.values())
                self.state.boxes.clear()
            for box in boxes:
                box.stop()  # never raises: each lease is stopped

    def _retry(self, fn: Callable[[], T]) -> T | None:
        """``fn()``, retried until it answers; None once the agent is stopping."""
        while not self._stop.is_set():
            try:
                return fn()
            except (httpx.TransportError, DeAIError) as exc:
                log.warning("lease call failed (%s); retrying", exc)
                self._stop.wait(2.0)
        return None

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception:  # one lease's trouble must not stop every lease on the host
                log.exception("lease poll: an answer could not be handled; polling on")
                self._stop.wait(2.0)

    def _poll_once(self) -> None:
        with self._lock:
            known = sorted(set(self.state.boxes) | self.state.starting)
            noticed = sorted(self.state.noticed.keys() & set(known))
            saving = sorted(self.state.saving)
        try:
            work = self.api.poll(self.poll_wait, known, noticed, saving)
        except (httpx.TransportError, DeAIError) as exc:
            log.warning("lease poll failed (%s); retrying", exc)
            self._stop.wait(2.0)
            return
        for spec in work.start:
            with self._lock:
                if spec.id in self.state.boxes or spec.id in self.state.starting:
                    continue
                self.state.starting.add(spec.id)
            self._starts.put(spec)
        for lid in work.stop:
            self._end(lid, save=True)
        for lid in work.snapshots:
            self._snapshot(lid)
        for told in self._notices(set(known) - set(work.stop), work.notices):
            self._notices_q.put(told)
        for sess in work.sessions:
            threading.Thread(target=self._session, args=(sess,), daemon=True,
                             name=f"deai-session-{sess.id[:8]}").start()

    def _notifier(self) -> None:
        while not self._stop.is_set():
            try:
                box, at = self._notices_q.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                deliver_notice(box, at)
            except Exception:  # a malformed answer, say: the next lease is still told
                log.exception("lease %s: the notice could not be delivered", box.spec.id)

    def _notices(self, asked: set[str], notices: list[wl.Notice]
                 ) -> list[tuple[LeaseSandbox, float | None]]:
        """What to tell the leases after a poll that asked about ``asked``: each new notice
        (or one whose time changed) and, as ``None``, each delivered notice the poll no
        longer lists (withdrawn: the lease that caused it ended first). A lease whose
        notice was withdrawn and comes again is told again."""
        now = {n.id: n.at for n in notices}
        out: list[tuple[LeaseSandbox, float | None]] = []
        with self._lock:
            for lid in [x for x in self.state.noticed if x in asked and x not in now]:
                del self.state.noticed[lid]
                if (box := self.state.boxes.get(lid)) is not None:
                    out.append((box, None))
            for lid in [x for x in self.state.noticed if x not in self.state.boxes]:
                del self.state.noticed[lid]  # an ended lease's
            for lid, at in now.items():
                box = self.state.boxes.get(lid)
                if box is not None and self.state.noticed.get(lid) != at:
                    self.state.noticed[lid] = at
                    out.append((box, at))
        return out

    def _cpus_for(self, n: int) -> list[int]:
        with self._lock:
            picked = [self._cores[(self._next_core + i) % len(self._cores)]
                      for i in range(min(n, len(self._cores)))]
            self._next_core = (self._next_core + n) % len(self._cores)
        return picked

    def _spawner(self) -> None:
        broken = None
        if self.offer.netns:
            try:
                enter_netns(self.offer.netns)
            except OSError as exc:  # never start a lease on the host's network instead
                log.error("leases cannot start: %s", exc)
                broken = str(exc)
        while not self._stop.is_set():
            try:
                spec = self._starts.get(timeout=0.5)
            except queue.Empty:
                continue
            if broken is not None:
                with self._lock:
                    self.state.starting.discard(spec.id)
                    self.state.failed[spec.id] = broken
                self._beat_now.set()
                continue
            try:
                self._start(spec)
            except Exception as exc:  # its folder could not be made, say: the next one starts
                log.exception("lease %s: not started", spec.id)
                with self._lock:
                    self.state.starting.discard(spec.id)
                    self.state.failed[spec.id] = f"{type(exc).__name__}: {exc}"
                self._beat_now.set()

    def _start(self, spec: wl.LeaseSpec) -> None:
        box = LeaseSandbox(spec, self.offer, self._cpus_for(spec.cpus))
        vol = spec.volume
        try:
            box.start(None if vol is None or vol.digest is None
                      else lambda home: self._restore(spec.id, home, vol))
        except Exception as exc:
            log.exception("lease %s: sandbox failed", spec.id)
            with self._lock:
                self.state.starting.discard(spec.id)
                self.state.failed[spec.id] = f"{type(exc).__name__}: {exc}"
        else:
            log.info("lease %s: sandbox up (%d CPU, %d MiB)", spec.id, spec.cpus,
                     spec.memory_mb)
            with self._lock:
                self.state.starting.discard(spec.id)
                self.state.boxes[spec.id] = box
        self._beat_now.set()

    def _end(self, lid: str, save: bool = False) -> None:
        """Stop a lease; with ``save`` (the coordinator ended it) and a volume, its home is
        packed and uploaded first, in a thread of its own. Never raises: the loops that
        call it serve every other lease too."""
        with self._lock:
            box = self.state.boxes.pop(lid, None)
        if box is None:
            return
        try:
            if save and box.spec.volume is not None:
                threading.Thread(target=self._final_save, args=(box,), daemon=True,
                                 name=f"deai-save-{lid}").start()
                return
            box.stop()
            log.info("lease %s: stopped", lid)
        except Exception:
            log.exception("lease %s: could not be stopped cleanly", lid)

    def _final_save(self, box: LeaseSandbox) -> None:
        try:
            box.kill()  # nothing writes while the home is packed
            self._upload(box)
        finally:
            box.stop()
            log.info("lease %s: stopped", box.spec.id)

    def _snapshot(self, lid: str) -> None:
        """The owner asked for a snapshot of a running lease."""
        with self._lock:
            if lid in self.state.saving or (lid not in self.state.boxes
                                            and lid not in self.state.starting):
                return
            self.state.saving.add(lid)

        def save() -> None:
            end = time.monotonic() + START_TIMEOUT + 60
            waited = False
            try:
                while not self._stop.is_set() and time.monotonic() < end:
                    with self._lock:  # a lease still starting is saved once it runs
                        box = self.state.boxes.get(lid)
                        starting = lid in self.state.starting
                    if box is not None or not starting:
                        break
                    waited = True
                    self._stop.wait(0.2)
                if box is not None and box.spec.volume is not None:
                    if waited:  # its first beat says it started, before the snapshot
                        # does: the coordinator takes none of a lease it never saw start
                        self._beat_once()
                    self._upload(box)
            finally:
                with self._lock:
                    self.state.saving.discard(lid)

        threading.Thread(target=save, daemon=True, name=f"deai-snapshot-{lid}").start()

    def _upload(self, box: LeaseSandbox) -> None:
        """Pack the home and stream it to the coordinator; a failure (a home over the
        volume's size or the coordinator's upload limit, which ``GET /api/network``
        tells) is logged and reported to the owner. The packed home stays in a spool
        file: a home of random bytes packs to its own size, up to the volume's (1 TiB),
        and the agent's memory held all of it before."""
        vol = box.spec.volume
        assert vol is not None
        try:
            limit = self.client.network().max_upload_bytes
            with volume_pack.pack(box.home, vol.size_bytes, limit) as packed:
                out = self.api.save_snapshot(box.spec.id, packed)
        except (OSError, httpx.TransportError, DeAIError) as exc:
            log.warning("lease %s: volume %s not saved: %s", box.spec.id, vol.id, exc)
            with contextlib.suppress(httpx.TransportError, DeAIError):  # the owner hears why
                self.api.snapshot_failed(box.spec.id, str(exc) or type(exc).__name__)
            return
        log.info("lease %s: volume %s saved (%s, %d bytes)", box.spec.id, vol.id,
                 (out.head or "")[:12], out.head_size or 0)

    def _restore(self, lid: str, home: Path, vol: wl.VolumeSpec) -> None:
        assert vol.digest is not None
        data = self.client.download(vol.digest)
        if hashlib.sha256(data).hexdigest() != vol.digest:
            raise DeAIError(f"volume {vol.id}: the snapshot does not match its digest")
        size = volume_pack.unpack(data, home, vol.size_bytes)
        log.info("lease %s: volume %s restored (%d bytes of files)", lid, vol.id, size)

    def _beat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat_once()
            except Exception:  # the next beat still names every running lease
                log.exception("lease heartbeat: an answer could not be handled")
            self._beat_now.wait(self._interval)
            self._beat_now.clear()

    def _beat_once(self) -> None:
        with self._lock:
            running = sorted(k for k, b in self.state.boxes.items() if b.alive())
            dead = {k: "the sandbox exited" for k, b in self.state.boxes.items()
                    if not b.alive()}
            failed = {**self.state.failed, **dead}
        try:
            out = self.api.heartbeat(running, failed)
        except (httpx.TransportError, DeAIError) as exc:
            log.debug("lease heartbeat failed: %s", exc)
            return
        with self._lock:
            for k in failed:
                self.state.failed.pop(k, None)
        for lid in set(out.stop) - set(dead):
            self._end(lid, save=True)
        for lid in dead:
            self._end(lid)

    def _pin_loop(self) -> None:
        """Every ``PIN_SECONDS``, put each lease's threads back on its CPUs: a lease's
        CPUs are an affinity, which any program in it may widen (no cgroup here)."""
        while not self._stop.wait(PIN_SECONDS):
            with self._lock:
                boxes = list(self.state.boxes.values())
            for box in boxes:
                try:
                    if moved := box.pin():
                        log.debug("lease %s: %d thread(s) put back on CPUs %s", box.spec.id,
                                 moved, box.cpus)
                except Exception:
                    log.exception("lease %s: its CPUs could not be enforced", box.spec.id)

    def _session(self, sess: wl.SessionOpen) -> None:
        with self._lock:
            box = self.state.boxes.get(sess.lease_id)
        path = f"/api/provider/leases/sessions/{sess.id}"
        try:
            ws = lease_sdk.dial(self.client.base_url, path,
                                self.client.signed_headers("GET", path, b""))
        except Exception as exc:
            log.warning("session %s: cannot reach the relay: %s", sess.id[:8], exc)
            return
        with ws:
            if box is None or not box.alive():
                ws.send('{"type": "error", "status": 409, "code": "conflict", '
                        '"message": "the lease is not running on this provider"}')
                return
            try:
                sock = box.connect()
            except OSError as exc:
                ws.send(f'{{"type": "error", "status": 409, "code": "conflict", '
                        f'"message": "the lease does not answer: {exc.strerror}"}}')
                return
            with sock:
                relay(ws, sock, sess.params)


NOTICE_TIMEOUT_S = 10.0


def deliver_notice(box: LeaseSandbox, at: float | None) -> None:
    """Tell a spot lease it will be preempted at ``at``: ``lease_init`` writes
    ``~/.deai/preempt`` and sends SIGTERM to every process in the sandbox but itself.
    ``None``: the notice was withdrawn, and ``~/.deai/preempt`` is removed (what the
    SIGTERM ended stays ended: the owner restarts it, the lease runs on)."""
    what = "preemption notice" if at is not None else "notice's withdrawal"
    try:
        # bounded: a lease whose init does not answer (its owner can stop it) must not hold
        # up the notices of every other lease, told one after another
        with box.connect(NOTICE_TIMEOUT_S) as sock:
            ch = lease_init.Channel(sock)
            if at is None:
                ch.text(op="withdraw")
            else:
                ch.text(op="notice", at=at, seconds=max(0.0, at - time.time()))
            ch.recv()
        log.info("lease %s: %s delivered", box.spec.id, what)
    except OSError as exc:
        log.warning("lease %s: %s not delivered: %s", box.spec.id, what, exc)


def relay(ws, sock: socket.socket, params: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    """Pipe a session: WebSocket messages <-> ``lease_init`` frames on ``sock``."""
    ch = lease_init.Channel(sock)
    ch.text(**params)

    def inbound() -> None:
        try:
            while True:
                msg = ws.recv()
                if isinstance(msg, bytes):
                    ch.send(b"B", msg)
                else:
                    ch.send(b"T", msg.encode())
        except (ConnectionClosed, OSError):
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    t = threading.Thread(target=inbound, daemon=True)
    t.start()
    try:
        while (frame := ch.recv()) is not None:
            kind, body = frame
            ws.send(body if kind == b"B" else body.decode())
    except (ConnectionClosed, OSError, ValueError):
        pass
    ws.close()
    t.join(5.0)
