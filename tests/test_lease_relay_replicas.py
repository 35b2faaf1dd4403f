"""Lease sessions and wake-ups across coordinator replicas on one PostgreSQL.

Two real ``python -m deai.coordinator`` processes (replicas A and B) share a fresh
database and data folder; a real lease agent with bubblewrap talks only to B, the
owner only to A. So the owner's attach lands on A, the agent's poll and its session
socket on B: the session is filed in ``lease_sessions``, B's poll hands it over
(woken by NOTIFY), and B pipes the agent's socket to A's internal relay endpoint.
Exec (output, stderr, exit status, stdin), cp both ways and a lease created on A
reaching a long-poll held on B well before the poll's old 5-second re-check are
checked.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deai.client.leases import Leases
from deai.client.sdk import Client
from tests.netutil import Network, Proc, free_port
from tests.test_lease_e2e import (
    LEASE_ENV,
    PRICES,
    check_stdin_and_upload,
    cli,
    end_live_leases,
    funded_alice,
    new_lease,
    wait_hosts,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class TwoReplicas(Network):
    """``Network``'s coordinator is replica A; ``start_b`` adds replica B on the same
    database and data folder."""

    def start_b(self) -> str:
        self.port_b = free_port()
        self.url_b = f"http://127.0.0.1:{self.port_b}"
        args = [sys.executable, "-m", "deai.coordinator", "--port", str(self.port_b),
                "--data-dir", str(self.root / "coordinator"), "--devnet", *self.flags,
                "--database-url", self.database_url]
        self.replica_b = Proc(args, self.root / "coordinator-b.log", self.env)
        end = time.time() + 180
        while time.time() < end:
            if not self.replica_b.alive():
                raise RuntimeError(f"replica B exited:\n{self.replica_b.tail()}")
            try:
                if httpx.get(f"{self.url_b}/api/network", timeout=2).status_code == 200:
                    return self.url_b
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError("replica B did not come up")

    def logs(self) -> str:
        return super().logs() + "\n== replica B\n" + self.replica_b.tail()

    def close(self) -> None:
        super().close()
        if getattr(self, "replica_b", None) is not None:
            self.replica_b.stop(10)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, module_pg_url: str) -> Iterator[TwoReplicas]:
    n = TwoReplicas(tmp_path_factory.mktemp("relay-replicas"), module_pg_url,
                    heartbeat_timeout=4.0, verify=False)
    n.env.update(LEASE_ENV)
    n.start_coordinator()
    try:
        url_b = n.start_b()
        # the agent knows only replica B (the last --coordinator wins)
        n.start_provider("host-b", 1000, "--models", "bwrap-sandbox", "--lease-prices", PRICES,
                         "--lease-memory-mb", "4096", "--stake", "50000000",
                         "--coordinator", url_b)
        wait_hosts(n, 1)
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def alice(net: TwoReplicas) -> Client:
    return funded_alice(net)  # on replica A


@pytest.fixture(autouse=True)
def no_lease_left(alice: Client) -> Iterator[None]:
    """A test that fails half-way does not leave the one-CPU host full for the next."""
    yield
    end_live_leases(alice)


def test_exec_and_cp_cross_replicas(net: TwoReplicas, alice: Client, tmp_path: Path) -> None:
    lid = new_lease(alice)
    leases = Leases(alice)
    t0 = time.time()
    r = cli(net, "lease", "exec", lid, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"hi\n", b"oops\n"), (r, net.logs())
    assert time.time() - t0 < 12, "the session waited for a poll's re-check"
    data = check_stdin_and_upload(net, leases, lid, tmp_path)
    r = cli(net, "lease", "cp", f"{lid}:in/up.bin", str(tmp_path / "down.bin"))
    assert r.returncode == 0, r
    assert (tmp_path / "down.bin").read_bytes() == data
    leases.end(lid)


def test_a_lease_made_on_a_wakes_a_poll_held_on_b(net: TwoReplicas, alice: Client) -> None:
    """The agent's long-poll on B returns when A places a lease, not at its next 5-second
    re-check: a poll held on B by the host's key, started 1 s before the create, must
    return within 3 s of it (the old code: 4 s after it at the earliest)."""
    host = Leases(Client(net.url_b, net.key("host-b")))
    live = [x.id for x in Leases(alice).list() if x.status in ("pending", "active")]
    res: dict[str, float] = {}

    def poll() -> None:
        t = time.time()
        out = host.poll(wait=20, known=live)
        res["returned"], res["took"] = time.time(), time.time() - t
        res["start"] = float(len(out.start))

    th = threading.Thread(target=poll)
    th.start()
    time.sleep(1.0)
    created = time.time()
    lease = Leases(alice).create(cpus=1, memory_mb=1024, hours=1, max_price_hour=1_000_000)
    th.join(30)
    try:
        assert res["returned"] - created < 3.0, res
        assert res["start"] == 1, res
    finally:
        Leases(alice).wait_active(lease.id)
        Leases(alice).end(lease.id)
