"""The whole loop with real processes: a uvicorn coordinator and provider agents that
run the real embedding model, on loopback. Providers and the coordinator are killed
mid-job; every job still finishes, every task is paid once, and the ledger audits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deai.client.sdk import Client
from tests.helpers import check_books, journal, sample  # noqa: F401
from tests.netutil import Network

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SPEC = {"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 2000, "deadline": 900}


def check_results(c: Client, job_id: str, data: bytes) -> None:
    out = [json.loads(x) for x in c.results(job_id).splitlines()]
    ids = [json.loads(x)["custom_id"] for x in data.splitlines()]
    assert [o["custom_id"] for o in out] == ids
    vecs = np.array([o["response"]["body"]["data"][0]["embedding"] for o in out])
    assert vecs.shape == (len(ids), 384) and np.isfinite(vecs).all()
    assert np.linalg.norm(vecs, axis=1).min() > 0.1


@pytest.fixture(params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    # Fault tolerance, not verification, is under test here: see test_e2e_verify.py.
    n = Network(tmp_path, url, heartbeat_timeout=4.0, lease_ttl=60.0, challenge_window=1.0,
                verify=False)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def test_job_runs_on_three_providers_and_settles(net: Network) -> None:
    for i, price in enumerate((800, 900, 1000), start=1):
        net.start_provider(f"provider-{i}", price)
    net.wait_providers(3)
    c = net.client("client")
    c.faucet(1_000_000_000)
    data = sample(120)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(data).digest)
    assert net.wait_job(c, job.id) == "completed", net.logs()
    check_results(c, job.id, data)
    check_books(c, job.id)
    earned = {p.id: p.earned for p in c.providers()}
    assert sum(earned.values()) > 0 and len(c.job(job.id).providers) >= 2


def test_provider_killed_mid_job_loses_no_work(net: Network) -> None:
    victim = net.start_provider("victim", 500)  # cheapest: it gets work first
    net.start_provider("steady", 900)
    net.wait_providers(2)
    c = net.client("client")
    c.faucet(1_000_000_000)
    data = sample(200)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(data).digest)
    end = time.time() + 120
    while time.time() < end and c.job(job.id).tasks.get("done", 0) < 2:
        time.sleep(0.2)
    victim.kill()
    assert net.wait_job(c, job.id) == "completed", net.logs()
    check_results(c, job.id, data)
    check_books(c, job.id)


def test_coordinator_sigkill_mid_job_loses_nothing(net: Network) -> None:
    net.start_provider("p1", 800)
    net.start_provider("p2", 900)
    net.wait_providers(2)
    c = net.client("client")
    c.faucet(1_000_000_000)
    data = sample(200)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(data).digest)
    end = time.time() + 120
    while time.time() < end and c.job(job.id).tasks.get("done", 0) < 3:
        time.sleep(0.2)
    before = journal(c)
    assert net.coordinator is not None
    net.coordinator.kill()
    time.sleep(2.0)  # providers keep working and retry their submissions
    net.start_coordinator()
    after = journal(c)
    assert [e.hash for e in after[: len(before)]] == [e.hash for e in before]
    assert net.wait_job(c, job.id) == "completed", net.logs()
    check_results(c, job.id, data)
    check_books(c, job.id)
