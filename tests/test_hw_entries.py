"""A registration's GPU entries and claimed rates are bounded, and rows stored before
they were (or written by hand) are read without raising.

One provider's malformed ``gpus`` entry used to 500 the public hardware views for
everyone and stop the matcher (``hwcheck.devices`` raised on every read); a claimed
bandwidth near zero bought a challenge an unbounded (or infinite) deadline, and an
infinite one, stored as ``Infinity``, stopped every provider's expiry on SQLite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fastapi.testclient import TestClient

from deai.client.keys import Identity
from deai.coordinator import admission, hardware, matching, provider_index
from deai.coordinator.app import create_app
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import hwcheck as hc
from deai.core import wire
from deai.core.clock import ManualClock
from deai.store import migrate
from deai.store.models import HwChallenge, Provider
from tests.helpers import MODEL

PRM = hc.Params()


def coordinator(tmp_path: Path) -> Coordinator:
    c = Coordinator(Settings(data_dir=tmp_path, database_url="", devnet=True,
                             heartbeat_timeout=1e9, verify_seed=3), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    return c


def register(c: Coordinator, k: int, gflops: float = 50.0, mem_gbps: float = 10.0) -> str:
    pid = Identity.generate().id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096 + k),
        benchmark=wire.Benchmark(gflops=gflops, mem_gbps=mem_gbps), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=500)]),
        address=f"10.9.{k}.1")
    c.bond(pid, 10_000_000)
    return pid


def store(c: Coordinator, pid: str, *, gpus: Any = None, benchmark: Any = None) -> None:
    """Write a provider's registered hardware as an older coordinator (whose wire took
    any ``gpus`` entry) could have stored it."""
    def body(s: Any) -> None:
        p = s.get(Provider, pid)
        if gpus is not None:
            p.hardware = {**p.hardware, "gpus": gpus}
        if benchmark is not None:
            p.benchmark = benchmark
    c.db.run(body)


MALFORMED = [{"name": "H100", "memory_mb": "lots"}, {"name": "H100", "index": "zero"},
             {"memory_mb": -(2**40)}, {"memory_mb": 2**62}, {"mem_gbps": "fast"},
             {"mem_gbps": 1e-300}, {"index": 10**6}, "not an entry", None]


@pytest.mark.parametrize("entry", MALFORMED[:7] + [{"name": "g" * 201}, {"uuid": "u" * 201},
                                                   {"driver": "x"}])
def test_the_wire_refuses_a_malformed_gpu_entry(entry: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        wire.Hardware(cpu_model="cpu", cores=1, memory_mb=1, gpus=[entry])
    assert err.value.errors()[0]["loc"][0] == "gpus"


def test_a_probed_gpu_entry_is_accepted_as_sent() -> None:
    entry = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mb": 81_559,
             "capability": "9.0"}
    hw = wire.Hardware(cpu_model="cpu", cores=1, memory_mb=1, gpus=[entry])
    assert hw.model_dump()["gpus"] == [entry]  # stored (and fingerprinted) unchanged


@pytest.mark.parametrize("bench", [{"gflops": 1e9, "mem_gbps": 5e-324},
                                   {"gflops": 1e9, "mem_gbps": 1e-9},
                                   {"gflops": 50.0, "mem_gbps": 0.0},
                                   {"gflops": 1e-9, "mem_gbps": 10.0}])
def test_the_wire_refuses_a_near_zero_rate(bench: dict[str, float]) -> None:
    with pytest.raises(pydantic.ValidationError):
        wire.Benchmark(**bench)


@pytest.mark.parametrize("entry", MALFORMED)
def test_devices_read_a_malformed_stored_entry_as_zero(entry: Any) -> None:
    devs = hc.devices({"cpu_model": "cpu", "memory_mb": 4096, "gpus": [entry]},
                      {"gflops": "x", "mem_gbps": math.inf})
    assert len(devs) == 1 and devs[0].gpu
    d = devs[0]
    assert 0 <= d.memory_mb <= 2**26 and d.gflops == 0.0 and math.isfinite(d.mem_gbps)
    assert d.name.startswith("cuda:") and 0 <= int(d.name[5:]) < 64
    hc.fingerprint({"gpus": [entry]}, {})
    spec = hc.make_spec(7, devs, PRM)  # sized, and its buffer opened, without raising
    assert all(p.mem_mb >= 0 for p in spec.parts)
    hc.openings(spec, 11, PRM)


def test_a_malformed_stored_entry_breaks_no_public_view_and_no_matching(
        tmp_path: Path) -> None:
    c = coordinator(tmp_path)
    honest, bad = register(c, 1), register(c, 2)
    hardware.poll(c, bad)  # its claim row exists: the provider index reads it
    store(c, bad, gpus=[{"name": "H100", "memory_mb": "lots", "index": "zero"}])
    client = TestClient(create_app(c.settings, c), raise_server_exceptions=False)
    with client:
        for path in ("/api/hardware/claims", f"/api/hardware/claims/{honest}",
                     f"/api/hardware/claims/{bad}", "/api/hardware/cloud-index"):
            got = client.get(path)
            assert got.status_code == 200, (path, got.text)
    hardware.poll(c, bad)  # its own poll: a new identity's challenge, not a 500

    digest = c.blobs.put(b"shard")
    spec = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600,
            "shard_size": 1}
    c.faucet("c" * 64, 1_000_000)
    c.db.run(lambda s: admission.create(
        c, s, owner="c" * 64, kind="embeddings", model=MODEL, spec=spec,
        input_digest=digest, max_price=2000,
        shards=[admission.ShardIn(digest, 1, 1)], escrow=0, deadline=600))
    provider_index.of(c).resync_s = math.inf
    assert matching.match_once(c), "one provider's stored entry stopped matching"


@pytest.mark.parametrize("gbps", [1e-9, 5e-324])
def test_a_near_zero_stored_bandwidth_buys_no_long_deadline(gbps: float) -> None:
    dev = hc.Device("cpu", "pi", 2048, 1e9, gbps)
    spec = hc.make_spec(7, [dev], PRM)
    assert all(p.allow_s <= PRM.max_allow_x * PRM.target_s for p in spec.parts)
    assert spec.deadline_s <= (PRM.max_allow_x * PRM.target_s + 1) * PRM.margin \
        + PRM.latency_s
    json.dumps(spec.to_dict(), allow_nan=False)  # finite throughout
    assert spec.deadline_s <= hc.max_deadline_s(PRM) < math.inf


def test_an_infinite_stored_deadline_stops_no_one_elses_expiry(tmp_path: Path) -> None:
    c = coordinator(tmp_path)
    honest, bad = register(c, 1), register(c, 2)
    assert hardware.poll(c, honest).challenge is not None  # and never answered
    bad_ch = hardware.poll(c, bad).challenge
    assert bad_ch is not None

    def infinite(s: Any) -> None:  # as stored before deadlines were capped
        ch = s.get(HwChallenge, bad_ch.id)
        ch.spec = {**ch.spec, "deadline_s": math.inf, "expected_s": math.inf}
    c.db.run(infinite)
    c.clock.advance(10_000)  # type: ignore[attr-defined]
    assert hardware.expire(c) == 2  # both: an unreadable deadline grants no time
    with c.db.read() as s:
        assert s.get(HwChallenge, bad_ch.id).status == "expired"
