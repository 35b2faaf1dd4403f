"""A whole network on loopback: one coordinator and N providers, each its own process.

    with Devnet(providers=3) as net:
        net.client.submit_job(...)        # the funded ``client`` key
        print(net.url, net.explorer_url)

On entry the devnet starts ``python -m deai.coordinator --devnet`` on a free
port (SQLite and blobs under ``$DEAI_HOME/devnet/coordinator``, wiped first so
each devnet starts from genesis), waits for ``GET /api/network``, creates keys
``provider-1..N`` and ``client`` (kept across runs), starts one ``python -m
deai.provider`` per key at slightly different prices (each agent tops itself up
from the devnet faucet to bond its stake), funds the client and waits until
every provider is online. Where bubblewrap is installed, the last honest provider
also hosts leases (``LEASE_PRICES``, 2 GiB).
On exit it sends SIGTERM to each child by its pid (providers first), waits, and
sends SIGKILL to any still alive after ``stop_timeout``. Child output goes to
``$DEAI_HOME/devnet/logs/<name>.log``.

The devnet also runs the network's own verifier (``verifiers``, default 1
when there are providers): key ``verifier-1``, listed by the coordinator with
``--verifier-key``, started as ``python -m deai.provider --verifier`` (every
model at price 0, no stake). On loopback every agent connects from its own
address (``--source-address 127.0.1.N``) and reports its own stand-in machine
id, so the coordinator's diversity rule (``core.diversity``) sees them as
separate parties, as they would be on separate machines.

A provider listed as a cheater is started with ``DEAI_PROVIDER_CHEAT=1`` in its
environment; the agent decides what cheating means (returning wrong vectors).

One devnet per ``DEAI_HOME``: ``start`` first takes ``$DEAI_HOME/devnet/devnet.lock``
(an exclusive ``flock``, which the kernel drops when its holder dies, with the
holder's pid and URL written inside) and only then wipes anything. A second
devnet in the same home is refused with ``DevnetRunning``, naming the pid and
URL of the one running, and touches none of its data, logs or keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from deai.client import keys
from deai.client.sdk import Client
from deai.core import wire
from deai.core.errors import DeAIError
from deai.core.money import MICRO

BASE_PRICE = 800
PRICE_STEP = 100
CLIENT_FUNDS = 1000 * MICRO
# the last honest provider also hosts leases (where bubblewrap is installed): µ per hour,
# so 1 CPU + 1 GiB costs 0.396 DEAI an hour
LEASE_PRICES = "cpu=360000,memory_gb=36000"


class DevnetError(DeAIError):
    """A devnet process would not start or come online."""


class DevnetRunning(DevnetError):
    """Another devnet already runs in this DEAI_HOME."""

    status = 409
    code = "devnet_running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """``$DEAI_HOME/devnet/devnet.lock``: held by one devnet at a time (see module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def holder(self) -> tuple[int, str] | None:
        """(pid, url) written by the devnet holding the lock, if one does and is alive."""
        try:
            pid_text, _, url = self.path.read_text().partition("\n")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return (pid, url.strip()) if _alive(pid) else None

    def acquire(self, url: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            held = self.holder()
            who = f" (pid {held[0]}, {held[1]})" if held else ""
            raise DevnetRunning(
                f"a devnet is already running in {self.path.parent.parent}{who}; stop it "
                "(Ctrl-C in its terminal) or use another DEAI_HOME", field="DEAI_HOME") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{url}\n".encode())
        self._fd = fd

    @property
    def fds(self) -> tuple[int, ...]:
        """The lock's descriptor, for children to inherit: the lock outlives a killed parent
        for as long as the processes whose data it guards are alive."""
        return (self._fd,) if self._fd is not None else ()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


def devnet_dir() -> Path:
    return keys.home() / "devnet"


class Child:
    """One child process, its log file, and how to stop it."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str],
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # A new session: Ctrl-C in the terminal reaches only us, and we stop
        # children in order instead of all of them racing at once.
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                     pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


class Devnet:
    def __init__(self, providers: int = 3, *, port: int = 0, cheaters: int = 0,
                 host: str = "127.0.0.1", threads: int = 1, fresh: bool = True,
                 start_timeout: float = 60.0, online_timeout: float = 300.0,
                 stop_timeout: float = 10.0, python: str = sys.executable,
                 log: Callable[[str], None] | None = None, verifiers: int | None = None) -> None:
        if providers < 0 or not 0 <= cheaters <= providers:
            raise DevnetError("need 0 <= cheaters <= providers", field="cheaters")
        self.n_providers = providers
        self.n_verifiers = (1 if providers else 0) if verifiers is None else max(0, verifiers)
        self.cheaters = cheaters
        self.host = host
        self.port = port or free_port(host)
        self.threads = threads
        self.fresh = fresh
        self.start_timeout = start_timeout
        self.online_timeout = online_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.log = log or (lambda _msg: None)
        self.dir = devnet_dir()
        self.coordinator: Child | None = None
        self.providers: list[Child] = []
        self.provider_keys: list[keys.Identity] = []
        self.verifiers: list[Child] = []
        self.verifier_keys: list[keys.Identity] = []
        self.client_key: keys.Identity | None = None
        self._client: Client | None = None
        self.lock = Lock(self.dir / "devnet.lock")

    # --- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def explorer_url(self) -> str:
        return f"{self.url}/explorer"

    def explorer_line(self) -> str:
        """The explorer's URL, or a note if this coordinator does not serve one (yet)."""
        try:
            ok = httpx.get(self.explorer_url, timeout=5).status_code < 400
        except httpx.HTTPError:
            ok = False
        return self.explorer_url if ok else f"none ({self.explorer_url} not served)"

    @property
    def client(self) -> Client:
        if self._client is None:
            raise DevnetError("the devnet is not running")
        return self._client

    @property
    def children(self) -> list[Child]:
        return [*self.providers, *self.verifiers,
                *([self.coordinator] if self.coordinator else [])]

    @property
    def lease_host(self) -> int | None:
        """The provider that hosts leases: the last honest one, if bubblewrap is here."""
        if self.n_providers <= self.cheaters or shutil.which("bwrap") is None:
            return None
        return self.n_providers - 1

    def _agent_flags(self, n: int, name: str) -> list[str]:
        """On loopback, agent ``n`` connects from its own address and reports its own
        machine: separate parties to the coordinator, as on separate machines."""
        address = f"127.0.{1 + n // 250}.{1 + n % 250}"
        if not self.host.startswith("127.") or not _can_bind(address):
            return []  # e.g. macOS routes only 127.0.0.1 to loopback
        return ["--source-address", address, "--machine-id", f"devnet-{name}"]

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Devnet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.lock.acquire(self.url)  # before anything is wiped: another devnet may own it
        data_dir = self.dir / "coordinator"
        logs = self.dir / "logs"
        if self.fresh and data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DEAI_HOME": str(keys.home()), "PYTHONUNBUFFERED": "1"}

        self.verifier_keys = [keys.create(f"verifier-{i}", exist_ok=True)
                              for i in range(1, self.n_verifiers + 1)]
        self.log(f"starting coordinator on {self.url}")
        self.coordinator = Child("coordinator", [
            self.python, "-m", "deai.coordinator",
            "--database-url", f"sqlite:///{data_dir / 'deai.sqlite3'}",
            "--host", self.host, "--port", str(self.port), "--data-dir", str(data_dir),
            "--devnet", *[f for k in self.verifier_keys for f in ("--verifier-key", k.id)],
        ], logs / "coordinator.log", env, self.lock.fds)
        self._client = Client(self.url, keys.create("client", exist_ok=True))
        self._wait_for_coordinator()

        self.provider_keys = [keys.create(f"provider-{i}", exist_ok=True)
                              for i in range(1, self.n_providers + 1)]
        for i, ident in enumerate(self.provider_keys):
            price = BASE_PRICE + PRICE_STEP * i
            child_env = dict(env)
            if i < self.cheaters:
                child_env["DEAI_PROVIDER_CHEAT"] = "1"
            hosts = self.lease_host == i
            self.log(f"starting {ident.name} at {price} µ per 1,000 inputs"
                     + (f", hosting leases at {LEASE_PRICES} µ/hour" if hosts else ""))
            self.providers.append(Child(ident.name, [
                self.python, "-m", "deai.provider", "--coordinator", self.url,
                "--key", ident.name, "--threads", str(self.threads), "--price", str(price),
                "--name", ident.name, *self._agent_flags(i, ident.name),
                *(["--lease-prices", LEASE_PRICES, "--lease-memory-mb", "2048"]
                  if hosts else []),
            ], logs / f"{ident.name}.log", child_env, self.lock.fds))
        for i, ident in enumerate(self.verifier_keys):
            self.log(f"starting {ident.name}, the network's verifier ({ident.id[:12]})")
            self.verifiers.append(Child(ident.name, [
                self.python, "-m", "deai.provider", "--coordinator", self.url,
                "--key", ident.name, "--threads", str(self.threads), "--verifier",
                "--name", ident.name, *self._agent_flags(self.n_providers + i, ident.name),
            ], logs / f"{ident.name}.log", env, self.lock.fds))
        self.client.faucet(CLIENT_FUNDS)
        self._wait_online()

    def stop(self) -> None:
        """Stop children by pid: providers first, so none is left polling a dead coordinator."""
        t0 = time.monotonic()
        stopped = []
        for group in ([*self.providers, *self.verifiers],
                      [self.coordinator] if self.coordinator else []):
            for child in group:
                child.terminate()
            deadline = time.monotonic() + self.stop_timeout
            for child in group:
                child.wait(deadline - time.monotonic())
                stopped.append(f"{child.name} ({child.proc.returncode})")
        if stopped:
            self.log(f"stopped in {time.monotonic() - t0:.1f} s, exit codes: "
                     + ", ".join(stopped))
        self.providers = []
        self.verifiers = []
        self.coordinator = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self.lock.release()

    # --- waiting --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise DevnetError(
                    f"{child.name} exited with code {child.proc.returncode}; "
                    f"log {child.log_path}:\n{child.log_tail()}")

    def _wait_for_coordinator(self) -> wire.NetworkInfo:
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._check_alive()
            try:
                return self.client.network()
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise DevnetError(f"coordinator did not answer on {self.url} within "
                                      f"{self.start_timeout:.0f} s") from None
                time.sleep(0.2)

    def online_ids(self) -> set[str]:
        return {p.id for p in self.client.providers() if p.online}

    def _wait_online(self) -> None:
        agents = [*self.provider_keys, *self.verifier_keys]
        want = {k.id for k in agents}
        deadline = time.monotonic() + self.online_timeout
        while not want <= self.online_ids():
            self._check_alive()
            if time.monotonic() > deadline:
                missing = sorted(k.name for k in agents if k.id not in self.online_ids())
                raise DevnetError(f"providers not online after {self.online_timeout:.0f} s: "
                                  f"{', '.join(missing)}")
            time.sleep(0.5)
        self.log(f"{len(self.provider_keys)} providers online"
                 + (f", and {len(self.verifier_keys)} verifier" if self.verifier_keys else ""))
