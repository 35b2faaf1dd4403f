"""A lease host's GPUs count only as far as its hardware shows them: no more than its
registration lists (refused when the host is set), no more than its challenges verified
while its claim is verified, none while it is flagged, only of the class it names; and
a host whose claim is flagged for a wrong answer gets no lease at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deai.client.keys import Identity
from deai.coordinator import hardware, leases
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import leases as core
from deai.core import wire
from deai.core.errors import InvalidInput, NoCapacity
from deai.core.wire_leases import HostIn, LeaseIn
from deai.store import migrate
from deai.store.models import HwClaim
from tests.helpers import MODEL

CFG = leases.LeaseConfig()
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81_559}
PRICES = {"cpu": 1, "memory_gb": 1, "gpu:H100": 3_000_000}


@pytest.fixture
def c(tmp_path: Path) -> Coordinator:
    c = Coordinator(Settings(data_dir=tmp_path, database_url="", devnet=True))
    migrate.upgrade(c.db.engine)
    return c


def host(c: Coordinator, gpus: list[dict[str, Any]], k: int = 1) -> str:
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096,
                               gpus=[{**g, "index": i} for i, g in enumerate(gpus)]),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=500)]),
        address=f"10.1.{k}.1")
    c.bond(pid, c.settings.min_stake)
    return pid


def offer(c: Coordinator, pid: str, gpus: int, model: str | None = "H100") -> None:
    leases.set_host(c, CFG, pid, HostIn(cpus=64, memory_mb=1024 * 1024, gpus=gpus,
                                        gpu_model=model, prices=PRICES))


def judged(c: Coordinator, pid: str, status: str, *, wrong: bool = False,
           passed: int = 0, gflops: float = 50_000.0) -> None:
    """The claim as its challenges would have left it: ``passed`` of its GPUs verified,
    each at ``gflops``."""
    hardware.poll(c, pid)

    def body(s: Any) -> None:
        row = s.get(HwClaim, pid)
        row.status, row.wrong = status, wrong
        row.verified = {"memory_mb": 4096, "units": 1.0, "devices": [
            {"device": f"cuda:{i}", "model": H100["name"], "memory_mb": H100["memory_mb"],
             "gflops": gflops} for i in range(passed)]}
    c.db.run(body)


def as_host(c: Coordinator, pid: str) -> core.Host:
    with c.db.read() as s:
        (h,) = leases.hosts(c, s, pid)
    return h


def lease(c: Coordinator, gpus: int, cpus: int = 1) -> str:
    owner = Identity.generate().id
    c.faucet(owner, 10**9)
    return leases.create(c, owner, LeaseIn(cpus=cpus, memory_mb=1024, gpus=gpus,
                                           gpu_model="H100" if gpus else None, hours=1,
                                           max_price_hour=10**8)).provider_id


def test_a_host_offers_no_gpu_its_registration_lacks(c: Coordinator) -> None:
    cpu_box, a100_box = host(c, []), host(c, [{"name": "A100-SXM4-40GB"}], 2)
    for pid, gpus in ((cpu_box, 8), (a100_box, 1)):  # none at all; not of that class
        with pytest.raises(InvalidInput) as err:
            offer(c, pid, gpus)
        assert err.value.field == "gpus"
    offer(c, a100_box, 1, "A100")  # as registered: accepted


def test_a_host_flagged_wrong_gets_no_lease(c: Coordinator) -> None:
    pid = host(c, [H100] * 8)
    offer(c, pid, 8)
    judged(c, pid, "flagged", wrong=True)
    for gpus in (8, 0):  # neither its GPUs nor its CPUs
        with pytest.raises(NoCapacity):
            lease(c, gpus)
    h = as_host(c, pid)
    assert h.hardware_wrong and h.free_gpus == 0


def test_a_host_leases_only_the_gpus_its_claim_shows(c: Coordinator) -> None:
    pid = host(c, [H100] * 8)
    offer(c, pid, 8)
    assert as_host(c, pid).free_gpus == 0  # never asked for a challenge: none
    hardware.poll(c, pid)
    assert as_host(c, pid).free_gpus == 0  # being challenged: nothing proven yet
    with pytest.raises(NoCapacity):
        lease(c, 1)
    judged(c, pid, "verified", passed=2)
    with pytest.raises(NoCapacity):
        lease(c, 8)
    assert as_host(c, pid).free_gpus == 2  # verified: as proven
    assert lease(c, 2) == pid
    judged(c, pid, "flagged")  # too slow: its GPUs are not shown
    assert as_host(c, pid).free_gpus <= 0
    assert lease(c, 0) == pid  # its CPUs still are


def test_a_gpu_proven_below_its_class_floor_is_no_gpu(c: Coordinator) -> None:
    """A claim of 0.1 GFLOP/s per "H100" got a challenge any CPU answers in time: a
    2-core box without a GPU was verified, and leased, as eight H100s. A GPU counts
    only once it proved its class's floor rate (a quarter of its spec sheet's fp32)."""
    pid = host(c, [H100] * 8)
    offer(c, pid, 8)
    judged(c, pid, "verified", passed=8, gflops=0.1)
    assert as_host(c, pid).free_gpus <= 0
    with pytest.raises(NoCapacity):
        lease(c, 1)
    judged(c, pid, "verified", passed=8, gflops=hardware.hc.gpu_floor_gflops(H100["name"]))
    assert as_host(c, pid).free_gpus == 8


def test_gpus_offerable_counts_the_class_named() -> None:
    shown = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA A10"]
    assert core.gpus_offerable(8, "H100", shown) == 1
    assert core.gpus_offerable(8, "A10", shown) == 1  # not the A100
    assert core.gpus_offerable(8, None, shown) == 3
    assert core.gpus_offerable(2, None, shown) == 2
    assert core.gpus_offerable(1, "MI300", shown) == 0
    assert core.gpus_offerable(1, "MI300", ["AMD MI300X"]) == 1


@pytest.mark.parametrize(("name", "cls"), [
    ("NVIDIA H100 80GB HBM3", "gpu:H100"), ("H100-SXM5-80GB", "gpu:H100"),
    ("NVIDIA A10G", "gpu:A10"), ("Tesla V100S-PCIE-32GB", "gpu:V100"),
    ("NVIDIA L40S", "gpu:L40S"), ("NVIDIA L4", "gpu:L4"), ("Tesla T4", "gpu:T4"),
    # substrings of a class's name are not that class (each was held to its floor, and
    # an honest one counted as no GPU), nor is a MIG slice of one
    ("NVIDIA T400", "gpu:other"), ("NVIDIA RTX A1000", "gpu:other"),
    ("NVIDIA L40", "gpu:other"), ("NVIDIA GH200 480GB", "gpu:other"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "gpu:other")])
def test_a_gpus_class_is_a_word_of_its_name(name: str, cls: str) -> None:
    assert hardware.hc.gpu_class(name) == cls
