"""Real processes on loopback for end-to-end tests: a coordinator and provider agents.

Each is a subprocess started with Popen and stopped by its own pid; logs go to
files under the test's temp dir so a failure can show them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deai.client import keys
from deai.client.sdk import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.args, self.log_path = args, log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)
        self._log.close()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._log.close()
        return self.p.returncode

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Network:
    """A coordinator (restartable on the same port and database) plus providers."""

    def __init__(self, root: Path, database_url: str = "", *, heartbeat_timeout: float = 4.0,
                 lease_ttl: float = 60.0, challenge_window: float = 2.0,
                 max_upload_bytes: int | None = None, verify: bool = True,
                 extra: tuple[str, ...] = (), verifiers: int = 0) -> None:
        self.root = root
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DEAI_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1",
                    "PYTHONUNBUFFERED": "1"}
        os.environ["DEAI_HOME"] = self.env["DEAI_HOME"]
        self.flags = ["--heartbeat-timeout", str(heartbeat_timeout), "--lease-ttl",
                      str(lease_ttl), "--challenge-window", str(challenge_window)]
        if max_upload_bytes is not None:
            self.flags += ["--max-upload-bytes", str(max_upload_bytes)]
        if not verify:
            self.flags.append("--no-verify")
        self.flags += list(extra)
        # The network's trusted verifiers (only they referee and audit): their keys are
        # listed to the coordinator; ``start_verifier`` runs their processes.
        self.verifier_names = [f"verifier-{i}" for i in range(1, verifiers + 1)]
        for name in self.verifier_names:
            self.flags += ["--verifier-key", self.key(name).id]
        self.coordinator: Proc | None = None
        self.providers: dict[str, Proc] = {}

    @property
    def network_id(self) -> str:
        """The coordinator's network id, which a request signed by hand signs."""
        nid: str = httpx.get(f"{self.url}/api/network", timeout=30).json()["network_id"]
        return nid

    def key(self, name: str) -> keys.Identity:
        """The key ``name`` in this network's home, created if new. A module may hold more
        than one network, so the process-wide ``DEAI_HOME`` is pointed here first."""
        os.environ["DEAI_HOME"] = self.env["DEAI_HOME"]
        return keys.create(name, exist_ok=True)

    def start_coordinator(self) -> None:
        args = [sys.executable, "-m", "deai.coordinator", "--port", str(self.port),
                "--data-dir", str(self.root / "coordinator"), "--devnet", *self.flags]
        if self.database_url:
            args += ["--database-url", self.database_url]
        self.coordinator = Proc(args, self.root / "coordinator.log", self.env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180.0) -> None:  # imports take a minute under load
        end = time.time() + timeout
        while time.time() < end:
            assert self.coordinator is not None
            if not self.coordinator.alive():
                raise RuntimeError(f"coordinator exited:\n{self.coordinator.tail()}")
            try:
                if httpx.get(f"{self.url}/api/network", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("coordinator did not come up")

    def start_provider(self, name: str, price: int = 1000, *extra: str,
                       env: dict[str, str] | None = None) -> Proc:
        self.key(name)
        if "--models" not in extra:  # embeddings only unless a test asks for more
            extra = ("--models", "all-MiniLM-L6-v2", *extra)
        # Each agent its own loopback address and machine, as on separate machines, so the
        # coordinator's diversity rule (core.diversity) sees separate parties; a test that
        # wants sybils passes its own --source-address / --machine-id (the last flag wins).
        n = list(self.providers).index(name) if name in self.providers else len(self.providers)
        args = [sys.executable, "-m", "deai.provider", "--coordinator", self.url, "--key", name,
                "--threads", "1", "--price", str(price),
                "--source-address", f"127.0.{100 + n // 250}.{1 + n % 250}",
                "--machine-id", f"test-{name}", *extra]
        proc = Proc(args, self.root / f"{name}.log", {**self.env, **(env or {})})
        self.providers[name] = proc
        return proc

    def start_verifier(self, name: str, *extra: str) -> Proc:
        """A verifier process (``deai verifier start``): the agent in verifier mode."""
        return self.start_provider(name, 0, "--verifier", *extra)

    def wait_providers(self, n: int, timeout: float = 120.0) -> None:
        c = self.client()
        end = time.time() + timeout
        while time.time() < end:
            online = [p for p in c.providers() if p.online and p.stake > 0]
            if len(online) >= n:
                return
            dead = [k for k, p in self.providers.items() if not p.alive()]
            if dead:
                raise RuntimeError(f"provider {dead[0]} exited:\n"
                                   f"{self.providers[dead[0]].tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {n} providers came online")

    def client(self, name: str | None = None) -> Client:
        ident = self.key(name) if name else None
        return Client(self.url, ident)

    def wait_job(self, client: Client, job_id: str, timeout: float = 240.0) -> str:
        end = time.time() + timeout
        while time.time() < end:
            try:
                st = client.job(job_id).status
            except httpx.TransportError:
                st = "unreachable"
            if st in ("completed", "failed", "cancelled"):
                return st
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} did not finish:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        if self.coordinator:
            parts.append("== coordinator\n" + self.coordinator.tail())
        for k, p in self.providers.items():
            parts.append(f"== {k}\n" + p.tail(20))
        return "\n".join(parts)

    def close(self) -> None:
        for p in self.providers.values():
            p.stop(10)
        if self.coordinator:
            self.coordinator.stop(10)
