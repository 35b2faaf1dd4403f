"""Volumes end to end: a real coordinator and two lease hosts on loopback, real bubblewrap.

A volume is written in one lease (``deai lease exec``), saved on demand (``deai lease
snapshot``) and again when the owner ends the lease, then read in a later lease on the
*other* provider (the second lease asks for more memory than the first host offers).
Another account can neither read the snapshot nor mount or remove the volume; a second
live lease on the same volume is refused; a home over the volume's size is not saved (the
owner is told why); the ledger audits (volumes move no money).
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator

import pytest

from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.client.volumes import Volumes
from deai.core.errors import Conflict, NotFound
from tests.netutil import Network
from tests.test_lease_e2e import LEASE_ENV, audit_ok, cli, wait_hosts

pytestmark = pytest.mark.slow
SMALL, BIG = "cpu=360000,memory_gb=36000", "cpu=720000,memory_gb=72000"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("volumes"), heartbeat_timeout=4.0, verify=False)
    n.env.update(LEASE_ENV)
    n.env["DEAI_VOLUME_SAVE_TIMEOUT"] = "60"
    n.start_coordinator()
    try:
        # the cheap host has 2 GiB for leases, the dear one 4 GiB: a 3 GiB lease must go
        # to the dear one, whatever the first lease chose
        for name, prices, mem in (("host-a", SMALL, "2048"), ("host-b", BIG, "4096")):
            n.start_provider(name, 1000, "--models", "bwrap-sandbox", "--lease-prices",
                             prices, "--lease-memory-mb", mem, "--stake", "50000000")
        wait_hosts(n, 2)
        yield n
    finally:
        n.close()


def run(leases: Leases, lid: str, script: str) -> bytes:
    out, err = io.BytesIO(), io.BytesIO()
    code = leases.exec(lid, ["sh", "-c", script], stdout=out, stderr=err)
    assert code == 0, (code, out.getvalue(), err.getvalue())
    return out.getvalue()


def wait_saved(vols: Volumes, ref: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if vols.show(ref).mounted_by is None:
            return
        time.sleep(0.3)
    raise AssertionError(f"volume {ref} still held: {vols.show(ref)}")


def test_a_volume_moves_to_another_provider(net: Network) -> None:
    alice, bob = net.client("alice"), net.client("bob")
    alice.faucet(100_000_000)
    bob.faucet(100_000_000)
    leases, vols = Leases(alice), Volumes(alice)
    r = cli(net, "volume", "create", "work", "--size-gb", "0.01")
    assert r.returncode == 0, r
    vol = vols.show("work")
    assert vol.head is None and vol.size_bytes == int(0.01 * 1024**3)

    first = leases.create(cpus=1, memory_mb=1024, hours=1, max_price_hour=10**7,
                          volume="work")
    first = leases.wait_active(first.id, timeout=120)
    run(leases, first.id, "mkdir -p /work/d && echo hello > /work/d/a.txt")
    r = cli(net, "lease", "snapshot", first.id, timeout=180)
    assert r.returncode == 0, r
    asked = vols.show("work")
    assert asked.head is not None and [x.kind for x in asked.snapshots] == ["asked"]
    assert b"d/a.txt" in names(alice, asked.head)

    # nobody else reads the snapshot, mounts or removes the volume
    _refused(bob, asked.head, vol.id)
    with pytest.raises(Conflict) as busy:  # one live lease per volume
        leases.create(cpus=1, memory_mb=512, hours=1, max_price_hour=10**7, volume=vol.id)
    assert busy.value.field == "volume"

    run(leases, first.id, "echo more > /work/b.txt")  # after the asked snapshot
    r = cli(net, "lease", "end", first.id)
    assert r.returncode == 0, r

    second = leases.create(cpus=1, memory_mb=3072, hours=1, max_price_hour=10**7,
                           volume="work")
    assert second.provider_id != first.provider_id
    second = leases.wait_active(second.id, timeout=180)  # after the final save
    assert run(leases, second.id, "cat /work/d/a.txt /work/b.txt") == b"hello\nmore\n"
    saved = vols.show("work")
    assert [x.kind for x in saved.snapshots] == ["end", "asked"]
    assert saved.snapshots[0].provider_id == first.provider_id
    assert saved.mounted_by == second.id
    _refused(bob, saved.head or "", vol.id)

    # a home over the volume's size is not saved, and the owner hears why
    run(leases, second.id, "head -c 12000000 /dev/urandom > /work/big.bin")
    r = cli(net, "lease", "snapshot", second.id, timeout=180)
    assert r.returncode != 0 and b"not saved" in r.stdout + r.stderr, r
    assert vols.show("work").head == saved.head
    run(leases, second.id, "rm /work/big.bin; echo third > /work/c.txt")
    leases.end(second.id)
    wait_saved(vols, "work")
    last = vols.show("work")
    assert last.snapshots[0].provider_id == second.provider_id
    assert b"c.txt" in names(alice, last.head or "")
    r = cli(net, "volume", "rm", "work")
    assert r.returncode == 0, r
    assert vols.list() == []
    audit_ok(alice)


def names(c: Client, digest: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(c.download(digest)), mode="r:*") as tar:
        return b"\n".join(m.name.encode() for m in tar.getmembers())


def _refused(bob: Client, digest: str, vid: str) -> None:
    with pytest.raises(NotFound):
        bob.download(digest)
    with pytest.raises(NotFound):
        Leases(bob).create(cpus=1, memory_mb=512, hours=1, max_price_hour=10**7, volume=vid)
    with pytest.raises(NotFound):
        Volumes(bob).remove(vid)
    with pytest.raises(NotFound):
        Volumes(bob).show(vid)
