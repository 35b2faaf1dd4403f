"""Rings of cheaters against real processes: colluding operators and sybil keys.

Two cheater processes fabricate the same wrong answer for the same request
(``--cheat collude``), so whenever one is asked to check the other they agree.
Colluders are distinct operators and may be drawn to check each other; sybils
share one operator and never are (diversity). Either way honest checkers drawn at
random, canaries and the verifier's audits catch them: both are slashed, no honest
provider is, every result they got accepted is audited again and corrected, and
the ledger audits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest

from deai.client import keys
from tests.helpers import honest_vectors, journal, sample
from tests.netutil import Network, Proc

pytestmark = pytest.mark.slow
MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 900,
        "shard_size": 5}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("rings"), heartbeat_timeout=6.0,
                challenge_window=600.0, extra=("--verify-timeout", "30"), verifiers=1)
    n.start_coordinator()
    try:
        for i, price in enumerate((900, 950, 1000), start=1):
            n.start_provider(f"honest-{i}", price)
        n.start_verifier("verifier-1")
        n.wait_providers(3, timeout=400)  # four agents load models at once
        yield n
    finally:
        n.close()


def start_ring(net: Network, tag: str, operator: str | None) -> list[Proc]:
    procs = []
    for i in (1, 2):
        extra = ("--operator", operator) if operator else ()
        procs.append(net.start_provider(f"{tag}-{i}", 500, *extra,
                                        env={"DEAI_PROVIDER_CHEAT": "collude"}))
    ids = {keys.load(f"{tag}-{i}").id for i in (1, 2)}
    end = time.time() + 240
    while len({p.id for p in net.client().providers() if p.id in ids and p.online
               and p.stake > 0}) < 2:
        assert all(p.alive() for p in procs) and time.time() < end, procs[0].tail()
        time.sleep(0.5)
    return procs


@pytest.mark.parametrize("tag,operator", [("colluder", None), ("sybil", "ring-operator")])
def test_a_ring_is_caught_and_its_accepted_results_corrected(
        net: Network, tag: str, operator: str | None) -> None:
    if operator:
        net.key(operator)
    procs = start_ring(net, tag, operator)
    ring = {keys.load(f"{tag}-{i}").id for i in (1, 2)}
    honest = {keys.load(f"honest-{i}").id for i in (1, 2, 3)}
    c = net.client(f"client-{tag}")
    c.faucet(1_000_000_000)
    before = {p.id: p.stake for p in c.providers()}
    data = sample(40)
    want = honest_vectors(data)
    jobs = []
    for _ in range(6):  # jobs until both members of the ring have been slashed
        job = c.submit_job(SPEC, c.upload(data).digest)
        assert net.wait_job(c, job.id, timeout=400) == "completed", net.logs()
        jobs.append(job.id)
        slashed = {e.body["provider"] for e in journal(c) if e.kind == "slash"}
        if ring <= slashed:
            break
    for p in procs:
        p.stop()
    slashed = {e.body["provider"] for e in journal(c) if e.kind == "slash"}
    assert ring <= slashed, net.logs()
    after = {p.id: p for p in c.providers()}
    for pid in honest:
        assert after[pid].stake == before[pid], "no honest provider is slashed"
    # Every result the ring got accepted is audited again; wait until no audit is pending.
    end = time.time() + 400
    while any(c.job(j).final_at is None for j in jobs):
        assert time.time() < end, net.logs()
        time.sleep(1.0)
    for job_id in jobs:
        for line in map(json.loads, c.results(job_id).splitlines()):
            got = np.array(line["response"]["body"]["data"][0]["embedding"])
            assert float(got @ want[line["custom_id"]]) > 0.999, (tag, job_id, line["custom_id"])
    if operator:  # sybils of one operator were never drawn to check each other
        def parties(v: object) -> set[str]:  # an audit's verdict names lists of parties
            return set(v) if isinstance(v, list) else {v} if isinstance(v, str) else set()

        for v in (e.body for e in journal(c) if e.kind == "verdict"):
            subject, checker = parties(v.get("subject")) & ring, parties(v.get("checker")) & ring
            assert not (subject and checker and subject != checker), v
