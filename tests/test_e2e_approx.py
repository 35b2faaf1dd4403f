"""A cheap approximator against real processes: a provider that computes embeddings
with the model cast to bf16 (0.75x the honest time on CPU, cosine distance ~1e-5
from honest, inside the old 1e-3 tolerance) among three honest providers and the
network's trusted verifier. The calibrated tolerance makes the replica disagree,
the verifier referees, the cheater is slashed; no honest provider is; the books
audit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest

from deai.client import keys
from tests.helpers import audit_ok, check_books, journal, sample, stake_lost
from tests.netutil import Network
from tests.test_e2e_verify import honest_vectors

pytestmark = pytest.mark.slow
MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 900,
        "shard_size": 5}


class PatientNetwork(Network):
    """The coordinator may take more than a minute to import on a loaded 2-core box."""

    def wait_ready(self, timeout: float = 300.0) -> None:
        super().wait_ready(timeout)


@pytest.fixture(scope="module")
def approx_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = PatientNetwork(tmp_path_factory.mktemp("approx"), heartbeat_timeout=4.0,
                challenge_window=60.0, extra=("--verify-timeout", "30"), verifiers=1)
    n.start_coordinator()
    try:
        for i, price in enumerate((900, 950, 1000), start=1):
            n.start_provider(f"approx-honest-{i}", price, "--models", MODEL)
        n.start_verifier("verifier-1", "--models", MODEL)
        n.wait_providers(3, timeout=900)
        yield n
    finally:
        n.close()


@pytest.mark.timeout(2400)  # four model loads and a verdict on a loaded 2-core box
def test_bf16_embeddings_cheater_is_caught_and_slashed(approx_net: Network) -> None:
    net = approx_net
    proc = net.start_provider("approx-bf16", 500, "--models", MODEL,
                              env={"DEAI_PROVIDER_CHEAT": "bf16"})
    pid = keys.load("approx-bf16").id
    end = time.time() + 900
    while not any(p.id == pid and p.online and p.stake > 0 for p in net.client().providers()):
        assert proc.alive() and time.time() < end, proc.tail()
        time.sleep(0.5)
    cheater = keys.load("approx-bf16").id
    honest = {keys.load(f"approx-honest-{i}").id for i in (1, 2, 3)}
    c = net.client("approx-client")
    c.faucet(1_000_000_000)
    stake_before = {p.id: p.stake for p in c.providers()}
    data = sample(30)
    want = honest_vectors(data)
    jobs = []
    deadline = time.time() + 900
    while not any(e.kind == "slash" and e.body["provider"] == cheater for e in journal(c)):
        assert len(jobs) < 4 and time.time() < deadline, net.logs()
        job = c.submit_job(SPEC, c.upload(data).digest)
        assert net.wait_job(c, job.id, timeout=300) == "completed", net.logs()
        jobs.append(job.id)
        for line in map(json.loads, c.results(job.id).splitlines()):
            got = np.array(line["response"]["body"]["data"][0]["embedding"])
            assert float(got @ want[line["custom_id"]]) > 0.999, line["custom_id"]
    proc.stop()

    entries = journal(c)
    slashed = {e.body["provider"] for e in entries if e.kind == "slash"}
    assert cheater in slashed, net.logs()
    assert not slashed & honest, net.logs()
    verdicts = [e for e in entries if e.kind == "verdict" and cheater in
                (e.body["subject"], e.body["checker"])]
    assert verdicts and all(e.body["fault"] != "none" for e in verdicts)
    after = {p.id: p for p in c.providers()}
    assert stake_lost(entries, cheater) > 0
    for pid in honest:
        assert after[pid].stake == stake_before[pid]
    for job_id in jobs:
        check_books(c, job_id)
    audit_ok(c)
