"""Anonymous lists stay bounded whatever strangers register (registering is free).

Against a real coordinator process on loopback: providers registered with the most
hardware a registration may carry (50 GPUs of long names, ~16 KB each) are listed a
page at a time, each row with a summary of its hardware; a paging client (and the SDK)
sees every provider exactly once. A registration offering one model twice (by two of
its names) is a 422 naming the offer, not a 500. The database pool outnumbers the
threads that can ask for a connection, so no request waits 30 s and answers 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import wire
from deai.core.errors import InvalidInput
from deai.store.db import make_engine
from tests.helpers import running
from tests.netutil import Network

MODEL = "all-MiniLM-L6-v2"
ALIAS = "sentence-transformers/all-MiniLM-L6-v2"
SYBILS = 23
GPUS = [{"index": i, "name": "G" * 190, "uuid": f"{i:03d}" + "u" * 30, "memory_mb": 1024,
         "mem_gbps": 100.0} for i in range(50)]


def registration(offers: list[wire.OfferIn] | None = None) -> wire.RegisterIn:
    return wire.RegisterIn(
        name="s" * 100, hardware=wire.Hardware(cpu_model="c" * 200, cores=64,
                                               memory_mb=1 << 20, gpus=GPUS,
                                               platform="p" * 200),
        benchmark=wire.Benchmark(gflops=1000.0, mem_gbps=100.0), threads=4,
        offers=offers or [wire.OfferIn(workload="embeddings", model=MODEL, price=1)])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from running(Network(tmp_path_factory.mktemp("public-bounds"), verify=False))


@pytest.fixture(scope="module")
def sybils(net: Network) -> list[str]:
    ids = []
    for _ in range(SYBILS):
        c = Client(net.url, Identity.generate())
        ids.append(c.register(registration()).id)
    return ids


def pages(net: Network, path: str, key: str, limit: int) -> list[list[dict[str, Any]]]:
    """Every page of ``path``, following ``next``; each answer checked as it comes."""
    out: list[list[dict[str, Any]]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
        r = httpx.get(f"{net.url}{path}", params=params, timeout=30)
        assert r.status_code == 200, r.text
        d = r.json()
        assert len(d[key]) <= limit
        out.append(d[key])
        if d["next"] is None:
            return out
        assert len(out) <= SYBILS + 5, "the pages never end"
        after = d["next"]


def test_a_paging_client_sees_every_provider_once(net: Network, sybils: list[str]) -> None:
    got = pages(net, "/api/providers", "providers", 5)
    ids = [p["id"] for page in got for p in page]
    assert len(ids) == len(set(ids)) and set(sybils) <= set(ids)
    assert len(got) >= SYBILS // 5
    assert sorted(p.id for p in Client(net.url).providers()) == sorted(ids)  # the SDK pages


def test_list_rows_carry_a_summary_of_the_hardware(net: Network, sybils: list[str]) -> None:
    r = httpx.get(f"{net.url}/api/providers", params={"limit": 10}, timeout=30)
    rows = r.json()["providers"]
    assert len(rows) == 10
    mine = [p for p in rows if p["id"] in sybils]
    assert mine and all(p["hardware"]["gpu_count"] == 50 and "gpus" not in p["hardware"]
                        and p["hardware"]["cores"] == 64 for p in mine)
    assert len(r.content) < 10 * 4_000  # ~16 KB a row when every GPU was listed
    whole = httpx.get(f"{net.url}/api/providers/{sybils[0]}", timeout=30).json()
    assert len(whole["hardware"]["gpus"]) == 50  # one provider: all of it


def test_claims_are_paged_too(net: Network, sybils: list[str]) -> None:
    got = pages(net, "/api/hardware/claims", "claims", 4)
    ids = [c["provider"] for page in got for c in page]
    assert len(ids) == len(set(ids)) and set(sybils) <= set(ids)


@pytest.mark.parametrize("path", ["/api/providers", "/api/hardware/claims"])
@pytest.mark.parametrize("params", [{"limit": 501}, {"limit": 0}, {"after": "x" * 101}])
def test_a_page_is_at_most_500(net: Network, path: str, params: dict[str, Any]) -> None:
    r = httpx.get(f"{net.url}{path}", params=params, timeout=30)
    assert r.status_code == 422, r.text


def test_the_overview_counts_everyone_it_does_not_list(net: Network,
                                                        sybils: list[str]) -> None:
    o = httpx.get(f"{net.url}/api/explorer/overview", timeout=30).json()
    assert o["providers_total"] >= SYBILS
    prices = {p["provider"] for p in o["provider_prices"]}
    assert set(sybils) <= prices


@pytest.mark.parametrize("second", [MODEL, ALIAS])
def test_an_offer_made_twice_is_422_naming_it(net: Network, second: str) -> None:
    c = Client(net.url, Identity.generate())
    offers = [wire.OfferIn(workload="embeddings", model=MODEL, price=1),
              wire.OfferIn(workload="embeddings", model=second, price=2)]
    with pytest.raises(InvalidInput) as err:
        c.register(registration(offers))
    assert err.value.status == 422 and err.value.field == "offers[1]"
    assert httpx.get(f"{net.url}/api/providers/{c.identity.id}",
                     timeout=30).status_code == 404  # nothing half-registered


def test_the_database_pool_outnumbers_the_threads(tmp_path: Any) -> None:
    """Every database call runs on anyio's thread pool; with fewer connections than
    threads, the 16th concurrent reader waited 30 s and answered 500."""
    async def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    engine = make_engine(f"sqlite:///{tmp_path}/pool.db")
    try:
        pool: Any = engine.pool
        assert pool.size() + pool._max_overflow >= anyio.run(tokens)
    finally:
        engine.dispose()


def test_a_shared_aggregate_is_computed_once_and_holds_few_keys(tmp_path: Any) -> None:
    """Concurrent callers share one computation; a new event (the stamp) or the TTL
    makes a fresh one; callers varying the key hold at most ``keys`` values."""
    import threading

    from deai.coordinator.public_reads import Shared
    from deai.coordinator.service import Coordinator
    from deai.coordinator.settings import Settings

    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    shared: Shared[int] = Shared(ttl=60.0, keys=3)
    calls, stamp, gate = [0], [1], threading.Event()

    def compute() -> int:
        calls[0] += 1
        gate.wait(10)
        return calls[0]

    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(
        shared.get(c, "k", compute, lambda: stamp[0]))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert calls[0] == 1 and got == [1] * 8
    before = calls[0]
    assert shared.get(c, "k", compute, lambda: stamp[0]) == before  # fresh: kept
    stamp[0] = 2
    assert shared.get(c, "k", compute, lambda: stamp[0]) == before + 1  # an event: anew
    for k in range(10):
        shared.get(c, k, compute, lambda: stamp[0])
    assert len(shared._entries[c]) == 3
    c.db.dispose()
