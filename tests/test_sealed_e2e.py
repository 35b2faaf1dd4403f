"""Sealed jobs against real processes: a coordinator, provider agents, the network's
verifier, and one provider left out of the sealed set.

A sealed embeddings job completes and verifies (every task replicated, so every
result is compared by a second party in the set); its results decrypt to the same
vectors the model gives; nothing outside the set was leased any of its tasks; and
reading the coordinator's database and blob store byte by byte finds neither the
input's texts nor the output's vectors. Then a cheater inside the set is caught:
its checker in the set reports the disagreement, the verifier referees, and the
cheater (only it) is slashed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deai.client import keys
from deai.client import sealed as sealing
from deai.client.sdk import Client
from tests.helpers import (
    audit_ok,
    check_books,
    honest_vectors,
    journal,
    sample,
    stake_lost,
    start_cheater,
)
from tests.netutil import Network

pytestmark = pytest.mark.slow
MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 900,
        "shard_size": 4, "replicate": True}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("sealed"), heartbeat_timeout=4.0,
                challenge_window=60.0, extra=("--verify-timeout", "60"), verifiers=1)
    n.start_coordinator()
    try:
        for i, price in enumerate((900, 950), start=1):
            n.start_provider(f"honest-{i}", price)
        n.start_provider("outsider", 100)  # the cheapest: any unsealed matcher would pick it
        n.start_verifier("verifier-1")
        n.wait_providers(3, timeout=900)  # patient: the test machine is shared
        yield n
    finally:
        n.close()


def scan(root: Path, needles: list[bytes], patterns: list[re.Pattern[bytes]]) -> list[str]:
    """Every file under ``root`` (the SQLite database and its WAL, loose blobs, packs) read
    as raw bytes: which needles and patterns appear, and where."""
    found = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        data = f.read_bytes()
        found += [f"{f.name}: {n[:40]!r}" for n in needles if n in data]
        found += [f"{f.name}: /{p.pattern!r}/" for p in patterns if p.search(data)]
    return found


def leased_to(net: Network, job_id: str) -> set[str]:
    db = net.root / "coordinator" / "deai.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute(
            "SELECT provider_id FROM assignments WHERE job_id = ?", (job_id,))}


def test_a_sealed_job_completes_verifies_and_the_coordinator_holds_no_plaintext(
        net: Network) -> None:
    c = net.client("sealed-client")
    c.faucet(1_000_000_000)
    outsider = keys.load("outsider").id
    verifier = keys.load("verifier-1").id
    honest = [keys.load(f"honest-{i}").id for i in (1, 2)]
    assert c.verifiers() == [verifier]
    data = sample(10)
    # By default the set is the quote's best providers plus the verifiers; this client
    # leaves the cheapest out on purpose, to see that nothing reaches it.
    assert set(sealing.parties(c, SPEC, data)) == {outsider, *honest, verifier}
    parties = [*honest, verifier]

    job = sealing.submit(c, SPEC, data, sealed_for=parties)
    assert job.spec["sealed"] is True and job.items == 10 and job.units == 10
    assert net.wait_job(c, job.id, timeout=600) == "completed", net.logs()

    # Verified: every task accepted with its replica's signed agreement, in the set only.
    done = c.job(job.id)
    assert done.tasks == {"done": 3}, done
    assert leased_to(net, job.id) <= set(parties) and outsider not in leased_to(net, job.id)
    agreed = [e for e in journal(c) if e.kind == "payout" and e.body["job"] == job.id]
    assert len({e.body["task"] for e in agreed}) == 3

    # The owner reads the results, decrypted, as from an unsealed job.
    results = sealing.results(c, job.id)
    want = honest_vectors(data)
    got_lines = [json.loads(x) for x in results.splitlines()]
    assert [x["custom_id"] for x in got_lines] == list(want)
    for line in got_lines:
        got = np.array(line["response"]["body"]["data"][0]["embedding"])
        assert float(got @ want[line["custom_id"]]) > 0.999
    raw = c.results(job.id)
    assert b"embedding" not in raw and b"custom_id" not in raw

    # Nothing the coordinator stores holds the input's texts or the output's numbers.
    texts = [json.loads(x)["body"]["input"].encode() for x in data.splitlines()]
    numbers = [repr(float(v)).encode() for vec in list(want.values())[:3] for v in vec[:4]]
    numbers = [n for n in numbers if len(n) >= 12]  # long enough to be no coincidence
    patterns = [re.compile(rb'"embeddings"\s*:\s*\[\['), re.compile(rb'"prompt_tokens"'),
                re.compile(rb'"custom_id"\s*:\s*"s-00')]
    root = net.root / "coordinator"
    assert texts and numbers
    assert scan(root, texts + numbers, patterns) == []
    # The scan does read what is there: a plaintext upload is found at once.
    marker = b"control plaintext that the scan must find 7f3a"
    c.upload(marker)
    assert scan(root, [marker], []) != []
    check_books(c, job.id)


def test_a_provider_outside_the_set_cannot_open_a_sealed_shard(net: Network) -> None:
    c = net.client("sealed-client")
    parties = [keys.load("honest-1").id, keys.load("verifier-1").id]
    si = sealing.seal_input(sealing.specs.parse_spec(
        {**SPEC, "sealed": True, "sealed_for": parties}), sample(4), c._me())
    from deai.core import sealed

    env = sealed.parse_envelope(si.shards[0][0], "input")
    with pytest.raises(sealing.SealError):
        sealing.open_key(env.keys, keys.load("outsider"))
    key = sealing.open_key(env.keys, keys.load("honest-1"))
    assert b"custom_id" in sealing.open_shard(key, env, 0)


def test_a_cheater_in_the_sealed_set_is_caught(net: Network) -> None:
    proc = start_cheater(net, "sealed-cheater", "wrong", MODEL)
    cheater = keys.load("sealed-cheater").id
    honest = [keys.load(f"honest-{i}").id for i in (1, 2)]
    c = net.client("sealed-client")
    stake_before = {p.id: p.stake for p in c.providers()}
    parties = [cheater, *honest, keys.load("verifier-1").id]
    data = sample(8)
    want = honest_vectors(data)
    jobs = []
    for _ in range(3):  # the cheater is the cheapest in the set: it takes the primaries
        job = sealing.submit(c, SPEC, data, sealed_for=parties)
        assert net.wait_job(c, job.id, timeout=600) == "completed", net.logs()
        jobs.append(job.id)
        for line in map(json.loads, sealing.results(c, job.id).splitlines()):
            got = np.array(line["response"]["body"]["data"][0]["embedding"])
            assert float(got @ want[line["custom_id"]]) > 0.999, line["custom_id"]
        if any(e.kind == "slash" and e.body["provider"] == cheater for e in journal(c)):
            break
    proc.stop()
    entries = journal(c)
    slashed = {e.body["provider"] for e in entries if e.kind == "slash"}
    assert slashed == {cheater}, net.logs()
    verdicts = [e for e in entries if e.kind == "verdict" and cheater in
                (e.body["subject"], e.body["checker"])]
    assert verdicts and all(e.body["fault"] != "none" and e.body.get("sealed")
                            for e in verdicts)
    after = {p.id: p for p in Client(net.url).providers()}
    assert stake_lost(entries, cheater) > 0
    for pid in honest:
        assert after[pid].stake == stake_before[pid]
    for job_id in jobs:
        check_books(c, job_id)
    audit_ok(c)
