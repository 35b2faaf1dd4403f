"""The least one bond takes. Each bond is a vault call the settlement key pays gas for
(``chain.books.mirror_ops``): bonds of 1 µ, a million of them for 1 DEAI, made the key
pay for a million calls. A bond below ``Settings.min_bond`` (0.01 DEAI; a devnet's,
1 µ), unless it brings the stake up to the minimum, is refused naming the field and
moves nothing; the network's answer says the minimum, and a provider agent tops its
stake up by at least that where its balance allows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client.keys import Identity
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import wire
from deai.core.errors import InvalidInput
from deai.store import journal
from tests.helpers import MODEL
from tests.races import ENGINES, coordinator


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def test_a_bond_below_the_minimum_is_refused_and_moves_nothing(c: Coordinator) -> None:
    assert c.settings.min_bond == 10_000 and c.network().min_bond == 10_000
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=500)]),
        address="10.9.0.1")
    with c.db.read() as s:
        seq = journal.head(s).seq
    for small in (1, 9_999):
        with pytest.raises(InvalidInput) as out:
            c.bond(pid, small)
        assert out.value.field == "amount" and out.value.details["minimum"] == 10_000
    with c.db.read() as s:
        assert journal.head(s).seq == seq  # no entry
    assert (c.balance(pid).available, c.balance(pid).stake) == (50_000_000, 0)
    assert c.bond(pid, 10_000).stake == 10_000
    # Below it only what brings the stake up to the minimum (a top-up after a penalty),
    # once: a stake at the minimum takes no more bonds of 1 µ.
    floor = c.settings.min_stake
    assert c.bond(pid, floor - 10_000 - 50).stake == floor - 50
    with pytest.raises(InvalidInput):
        c.bond(pid, 49)
    assert c.bond(pid, 50).stake == floor
    with pytest.raises(InvalidInput):
        c.bond(pid, 1)


def test_a_devnet_takes_bonds_of_any_size() -> None:
    assert Settings().for_devnet().min_bond == 1


def test_an_agent_tops_up_by_what_the_coordinator_takes() -> None:
    from deai.provider.agent import _top_up
    net = wire.NetworkInfo(version="x", network_id="n", devnet=False, min_stake=1_000_000,
                           min_bond=10_000, fee_bps=0, challenge_window=1.0,
                           heartbeat_timeout=1.0, lease_ttl=1.0, max_upload_bytes=1)
    assert _top_up(50, 999_950, 20_000, net) == 10_000  # at least min_bond, when it can
    assert _top_up(50, 999_950, 9_000, net) == 50  # else what reaches the minimum
    assert _top_up(50, 1_000_000, 9_000, net) == 0  # at the minimum: nothing it takes
    assert _top_up(0, 1_000_000, 9_000, net) == 0
    assert _top_up(500_000, 0, 100, net) == 500_000  # unfunded: refused, and said so
