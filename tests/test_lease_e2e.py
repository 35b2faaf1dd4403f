"""Leases end to end: a real coordinator and provider agents on loopback, real bubblewrap.

A lease is created, ``deai lease exec`` runs commands (exit status, stdin, stderr),
``deai lease cp`` copies both ways, ``deai lease shell`` is driven through a
pseudo-terminal (prompt, Ctrl-C, resize, exit status), ``deai lease forward``
reaches an HTTP server started inside the lease; another account's key is
refused everywhere; an escrow that runs out warns, then ends the lease; a
provider killed with SIGKILL loses its lease (``provider lost``), the owner is
refunded pro rata, the provider's stake shrinks, and the ledger audits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deai.client.audit import client_audit
from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.core import leases as core
from deai.core.errors import Conflict, DeAIError, Forbidden, NotFound
from tests.netutil import Network

pytestmark = pytest.mark.slow
DEAI = str(Path(sys.executable).parent / "deai")
PRICES = "cpu=360000,memory_gb=36000"  # 1 CPU + 1 GiB: 396,000 µ/h = 110 µ/s
# A spot lease's notice must outlast the notice's trip to the host, its SIGTERM and the
# test's read of what the lease wrote: 8 s was once too short under CI's load.
LEASE_ENV = {"DEAI_LEASE_GRACE": "3", "DEAI_LEASE_WARN": "4", "DEAI_LEASE_SETTLE": "1",
             "DEAI_LEASE_TICK": "0.25", "DEAI_LEASE_NOTICE": "15"}


def start_host(net: Network, name: str, prices: str = PRICES) -> None:
    # five times the minimum stake: a slow-hardware slash on this busy machine (another
    # check) must not take a host below the minimum in the middle of the module
    net.start_provider(name, 1000, "--models", "bwrap-sandbox", "--lease-prices", prices,
                       "--lease-memory-mb", "4096", "--stake", "50000000")


def wait_hosts(net: Network, n: int, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        hosts = httpx.get(f"{net.url}/api/market/leases", timeout=5).json()["hosts"]
        online = {p.id for p in net.client().providers() if p.online}
        if len([h for h in hosts if h["provider_id"] in online]) >= n:
            return
        time.sleep(0.3)
    raise TimeoutError(f"fewer than {n} lease hosts:\n{net.logs()}")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("leases"), heartbeat_timeout=4.0, verify=False)
    n.env.update(LEASE_ENV)
    n.start_coordinator()
    try:
        start_host(n, "host-a")
        wait_hosts(n, 1)
        yield n
    finally:
        n.close()


def funded_alice(net: Network) -> Client:
    """The key ``alice`` on ``net``'s coordinator, given 100 DEAI."""
    c = net.client("alice")
    c.faucet(100_000_000)
    return c


def end_live_leases(c: Client) -> None:
    """End every pending or active lease of ``c``'s."""
    leases = Leases(c)
    for x in leases.list():
        if x.status in ("pending", "active"):
            with contextlib.suppress(DeAIError):
                leases.end(x.id)


@pytest.fixture(scope="module")
def alice(net: Network) -> Client:
    return funded_alice(net)


@pytest.fixture(autouse=True)
def no_lease_left(alice: Client) -> Iterator[None]:
    """A test that fails half-way leaves its lease live and the host full: ended here, so
    that the tests after it fail only for their own reasons."""
    yield
    end_live_leases(alice)


def cli(net: Network, *args: str, key: str = "alice", stdin: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {**net.env, "DEAI_COORDINATOR": net.url, "DEAI_KEY": key}
    return subprocess.run([DEAI, *args], input=stdin, capture_output=True, env=env,
                          timeout=timeout, check=False)


def new_lease(c: Client, **kw: object) -> str:
    leases = Leases(c)
    fields: dict[str, object] = {"cpus": 1, "memory_mb": 1024, "hours": 1,
                                 "max_price_hour": 1_000_000, **kw}
    lease = leases.create(**fields)
    return leases.wait_active(lease.id).id


def audit_ok(c: Client) -> None:
    result = client_audit(c)
    assert result.ok, result.report.problems


def check_stdin_and_upload(net: Network, leases: Leases, lid: str, tmp_path: Path) -> bytes:
    """``deai lease exec`` feeds the command its stdin; ``deai lease cp`` copies 300 kB of
    random bytes into the lease as ``in/up.bin``, their sha256 there checked: the bytes."""
    r = cli(net, "lease", "exec", lid, "--", "sort", stdin=b"b\nc\na\n")
    assert (r.returncode, r.stdout) == (0, b"a\nb\nc\n"), r

    data = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(data)
    r = cli(net, "lease", "cp", str(tmp_path / "up.bin"), f"{lid}:in/up.bin")
    assert r.returncode == 0, r
    out = io.BytesIO()
    assert leases.exec(lid, ["sha256sum", "in/up.bin"], stdout=out) == 0
    assert out.getvalue().split()[0].decode() == hashlib.sha256(data).hexdigest()
    return data


class Terminal:
    """A pseudo-terminal with a process on its slave side, read until a marker appears."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.resize(30, 100, slave)
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.buf = b""

    def resize(self, rows: int, cols: int, fd: int | None = None) -> None:
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ,
                    struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, marker: bytes, timeout: float = 30.0) -> bytes:
        end = time.monotonic() + timeout
        while marker not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{marker!r} not seen; got {self.buf[-500:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.buf += os.read(self.master, 4096)
                except OSError:  # the process closed the terminal
                    raise AssertionError(f"{marker!r} not seen before the end; "
                                         f"got {self.buf[-500:]!r}") from None
        seen, _, self.buf = self.buf.partition(marker)
        return seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def test_exec_cp_shell_and_forward(net: Network, alice: Client, tmp_path: Path) -> None:
    lid = new_lease(alice)
    leases = Leases(alice)

    r = cli(net, "lease", "exec", lid, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"hi\n", b"oops\n"), r
    data = check_stdin_and_upload(net, leases, lid, tmp_path)
    assert leases.exec(lid, ["sh", "-c", "cp in/up.bin out.bin && echo made > made.txt"]) == 0
    r = cli(net, "lease", "cp", f"{lid}:out.bin", str(tmp_path / "down.bin"))
    assert r.returncode == 0, r
    assert (tmp_path / "down.bin").read_bytes() == data
    assert leases.get(lid, "made.txt") == b"made\n"  # the home persists across sessions

    term = Terminal([DEAI, "lease", "shell", lid],
                    {**net.env, "DEAI_COORDINATOR": net.url, "DEAI_KEY": "alice"})
    try:
        term.expect(b"$ ", timeout=60)
        term.write(b"stty size; echo $((6*7)) $HOME\n")
        assert b"30 100" in term.expect(b"42 /work")
        term.write(b"sleep 60; echo not-$((2*3))\n")
        time.sleep(0.5)
        term.write(b"\x03")  # Ctrl-C reaches the remote terminal as SIGINT
        term.write(b"echo back-$((1+1))\n")
        assert b"not-6" not in term.expect(b"back-2")
        term.resize(40, 120)  # SIGWINCH to the CLI, which sends the new size
        time.sleep(0.5)
        term.write(b"stty size\n")
        term.expect(b"40 120")
        term.write(b"exit 7\n")
        assert term.proc.wait(30) == 7
    finally:
        term.close()

    assert leases.exec(lid, ["sh", "-c", "echo '<p>inside</p>' > index.html; setsid python3 "
                             "-m http.server 8000 --bind 127.0.0.1 >http.log 2>&1 </dev/null &"
                             " for i in $(seq 50); do sleep 0.1; python3 -c 'import socket; "
                             "socket.create_connection((\"127.0.0.1\", 8000))' 2>/dev/null "
                             "&& exit 0; done; exit 1"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    log = tmp_path / "forward.log"
    with open(log, "wb") as out:
        fwd = subprocess.Popen([DEAI, "lease", "forward", lid, f"{local}:8000"],
                               env={**net.env, "DEAI_COORDINATOR": net.url, "DEAI_KEY": "alice"},
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 60
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{local}/index.html", timeout=10)
                break
            except httpx.TransportError:
                assert time.time() < end and fwd.poll() is None, log.read_text()
                time.sleep(0.3)
        assert page.status_code == 200 and page.text == "<p>inside</p>\n"
    finally:
        fwd.terminate()
        fwd.wait(20)

    ended = leases.end(lid)
    assert ended.end_reason == "owner ended"
    assert ended.charged + ended.refunded == ended.escrow and ended.charged > 0
    audit_ok(alice)


def test_background_programs_outlive_their_exec_a_hang_up_kills_a_running_one(
        net: Network, alice: Client) -> None:
    """What an exec leaves running in the background runs on once the exec has ended (as
    over ssh), even if it never left the exec's process group; a client that hangs up
    while its program still runs takes that program down. Before, the end of every exec
    killed its process group: a background job survived only if it had already left the
    group by the time the client hung up, a race the loaded CI lost."""
    lid = new_lease(alice)
    leases = Leases(alice)
    assert leases.exec(lid, ["sh", "-c", "(sleep 1; touch later) >/dev/null 2>&1 "
                                         "</dev/null &"]) == 0
    end = time.time() + 30
    while leases.exec(lid, ["test", "-e", "later"]) != 0:
        assert time.time() < end, "the background job died with its exec"
        time.sleep(0.3)

    hung = subprocess.Popen([DEAI, "lease", "exec", lid, "--", "sh", "-c",
                             "touch started; sleep 3; touch finished"],
                            env={**net.env, "DEAI_COORDINATOR": net.url, "DEAI_KEY": "alice"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 30
        while leases.exec(lid, ["test", "-e", "started"]) != 0:
            assert time.time() < end and hung.poll() is None, "the program never started"
            time.sleep(0.2)
    finally:
        hung.kill()
        hung.wait(10)
    time.sleep(5)
    assert leases.exec(lid, ["test", "-e", "finished"]) != 0, "a hang-up left it running"
    leases.end(lid)


def test_another_account_is_refused(net: Network, alice: Client) -> None:
    lid = new_lease(alice)
    mallory = net.client("mallory")
    theirs = Leases(mallory)
    with pytest.raises(Forbidden):
        theirs.exec(lid, ["id"])
    with pytest.raises(Forbidden):
        theirs.open(lid, {"op": "exec", "pty": True})
    with pytest.raises(Forbidden):
        theirs.put(lid, b"x", "planted")
    with pytest.raises(Forbidden):
        theirs.get(lid, "made.txt")
    with pytest.raises(Forbidden):
        theirs.open(lid, {"op": "connect", "port": 8000})
    with pytest.raises(Forbidden):
        theirs.show(lid)
    with pytest.raises(Forbidden):
        theirs.end(lid)
    r = cli(net, "lease", "exec", lid, "--", "id", key="mallory")
    assert r.returncode == 1 and b"only the lease's owner" in r.stderr, r
    with pytest.raises(NotFound):
        Leases(alice).exec("lease_0000000000000000", ["id"])
    assert Leases(alice).exec(lid, ["test", "!", "-e", "planted"]) == 0
    Leases(alice).end(lid)
    with pytest.raises(Conflict):
        Leases(alice).exec(lid, ["id"])


def test_escrow_runs_out_after_a_warning(net: Network, alice: Client) -> None:
    leases = Leases(alice)
    lid = new_lease(alice, hours=None, deposit=1_100)  # 10 s at 110 µ/s
    lease = leases.wait_ended(lid, timeout=60)
    assert lease.end_reason == "escrow exhausted", lease
    assert (lease.charged, lease.refunded) == (1_100, 0)
    kinds = [e["kind"] for e in leases.show(lid).events]
    assert "lease_warning" in kinds
    assert kinds.index("lease_warning") < kinds.index("lease_ended")
    assert lease.warned_at is not None and lease.ended_at is not None
    assert lease.warned_at < lease.ended_at
    with pytest.raises(Conflict):
        leases.exec(lid, ["id"])
    audit_ok(alice)


def test_spot_lease_gets_its_notice_and_is_preempted(net: Network, alice: Client) -> None:
    """A notice reaches the lease (a file, SIGTERM); one withdrawn (its preemptor ended
    first) is taken back from the lease, and a later one is delivered again. Before, the
    agent delivered a lease's notice once: the withdrawn notice's file stayed, and the
    real notice that followed never reached the programs inside."""
    leases = Leases(alice)
    spot = new_lease(alice, spot=True)

    def preempt_file() -> dict[str, Any] | None:
        if leases.exec(spot, ["test", "-e", ".deai/preempt"]) != 0:
            return None
        out: dict[str, Any] = json.loads(leases.get(spot, ".deai/preempt"))
        return out

    def wait_for(check: Callable[[], bool], timeout: float) -> bool:
        end = time.time() + timeout
        while not check():
            if time.time() > end:
                return False
            time.sleep(0.3)
        return True

    first = leases.create(cpus=1, memory_mb=1024, hours=1, max_price_hour=1_000_000)
    at = leases.show(spot).preempt_at
    assert at is not None
    assert wait_for(lambda: (preempt_file() or {}).get("at") == at, 30), "no notice"
    leases.end(first.id)  # before the notice runs out: withdrawn
    assert leases.show(spot).preempt_at is None
    assert wait_for(lambda: preempt_file() is None, 30), "the withdrawal did not reach it"
    assert leases.show(spot).status == "active"

    # its trap set before the notice can come (a SIGTERM before it would just kill it)
    assert leases.exec(spot, ["sh", "-c", "sh -c 'trap \"echo got-term > term.txt; exit 0\" "
                              "TERM; touch trapped; while true; do sleep 0.1; done' "
                              ">/dev/null 2>&1 </dev/null &"]) == 0
    assert wait_for(lambda: leases.exec(spot, ["test", "-e", "trapped"]) == 0, 30), \
        "the program with a SIGTERM trap never started in the lease"
    full = leases.create(cpus=1, memory_mb=1024, hours=1, max_price_hour=1_000_000)
    assert full.provider_id == leases.show(spot).provider_id  # the only host: it preempts
    end = time.time() + 30
    while True:
        try:
            assert leases.get(spot, "term.txt") == b"got-term\n"
            break
        except AssertionError:
            raise
        except Exception:
            assert time.time() < end, "no SIGTERM reached the lease"
            time.sleep(0.3)
    notice = json.loads(leases.get(spot, ".deai/preempt"))
    assert notice["at"] == leases.show(spot).preempt_at
    gone = leases.wait_ended(spot, timeout=60)
    assert gone.end_reason == "preempted" and gone.penalty == 0
    assert gone.refunded == gone.escrow - gone.charged > 0
    kinds = [e["kind"] for e in leases.show(spot).events]
    assert kinds.index("lease_preempt_notice") < kinds.index("lease_ended")
    assert leases.wait_active(full.id).status == "active"
    leases.end(full.id)
    audit_ok(alice)


def test_provider_sigkill_ends_the_lease_as_provider_lost(net: Network, alice: Client) -> None:
    start_host(net, "victim", "cpu=100000,memory_gb=10000")  # cheaper: it gets the lease
    wait_hosts(net, 2)
    victim = net.providers["victim"]
    leases = Leases(alice)
    lid = new_lease(alice)
    lease = leases.show(lid)
    provider = lease.provider_id
    assert lease.price_hour == 110_000
    time.sleep(2.0)
    victim.kill()
    lease = leases.wait_ended(lid, timeout=60)
    assert lease.end_reason == "provider lost", lease
    assert lease.started_at is not None and lease.last_heartbeat is not None
    billed = int(lease.last_heartbeat - lease.started_at)
    assert lease.charged == core.cost_of(110_000, billed)
    assert lease.refunded == lease.escrow - lease.charged > 0
    stake_account, stake = f"stake:{provider}", 0  # replayed up to the penalty
    for e in client_audit(alice).entries:
        if e.kind == "lease_penalty" and e.body["lease"] == lid:
            assert e.body["amount"] == lease.penalty == stake * 100 // 10_000 > 0
            assert dict(e.postings)[stake_account] == -lease.penalty
            break
        stake += dict(e.postings).get(stake_account, 0)
    else:
        raise AssertionError("no lease_penalty entry in the journal")
    audit_ok(alice)
    r = cli(net, "ledger", "audit", "--last", "0")
    assert r.returncode == 0, r
    r = cli(net, "lease", "show", lid)
    assert r.returncode == 0 and b"provider lost" in r.stdout, r
