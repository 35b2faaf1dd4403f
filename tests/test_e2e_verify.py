"""Cheaters against real processes: a devnet of honest providers plus one with a
faulty executor, and the network's verifier. Every cheat is caught by a replica
or a canary, confirmed by the verifier as referee and slashed; clients get
correct results; honest providers are never slashed; the ledger audits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest

from deai.client import keys
from deai.client.sdk import Client
from tests.helpers import (  # noqa: F401
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
BOTH = "all-MiniLM-L6-v2,SmolLM2-135M-Instruct,mlp-digits"
CHAT = {"kind": "chat", "model": "SmolLM2-135M-Instruct", "max_price": 5000, "deadline": 900,
        "shard_size": 1}
SPEC = {"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 2000, "deadline": 900,
        "shard_size": 5}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """Three honest providers shared by every case; each case brings its own cheater."""
    n = Network(tmp_path_factory.mktemp("verify"), heartbeat_timeout=4.0,
                challenge_window=60.0, extra=("--verify-timeout", "30"), verifiers=1)
    n.start_coordinator()
    try:
        for i, price in enumerate((900, 950, 1000), start=1):
            n.start_provider(f"honest-{i}", price, "--models", BOTH)
        n.start_verifier("verifier-1", "--models", BOTH)
        n.wait_providers(3)
        yield n
    finally:
        n.close()


@pytest.mark.parametrize("mode", ["wrong", "lazy", "sloppy", "truncate", "sometimes:0.5",
                                  "turncoat:2"])
def test_cheater_is_caught_and_slashed_and_clients_get_correct_results(
        net: Network, mode: str) -> None:
    name = "cheater-" + mode.replace(":", "-").replace(".", "")
    proc = start_cheater(net, name, mode, "all-MiniLM-L6-v2")
    cheater = keys.load(name).id
    honest = {keys.load(f"honest-{i}").id for i in (1, 2, 3)}
    c = net.client("client")
    c.faucet(1_000_000_000)
    stake_before = {p.id: p.stake for p in c.providers()}
    data = sample(40)
    want = honest_vectors(data)
    jobs = []
    # A stream of jobs until the cheater is caught: cheats that strike only sometimes
    # (or only after a few honest tasks) may need more than one job to show.
    for _ in range(4):
        job = c.submit_job(SPEC, c.upload(data).digest)
        assert net.wait_job(c, job.id, timeout=300) == "completed", net.logs()
        jobs.append(job.id)
        for line in map(json.loads, c.results(job.id).splitlines()):
            got = np.array(line["response"]["body"]["data"][0]["embedding"])
            assert float(got @ want[line["custom_id"]]) > 0.999, (mode, line["custom_id"])
        if any(e.kind == "slash" and e.body["provider"] == cheater for e in journal(c)):
            break
    proc.stop()

    entries = journal(c)
    slashes = [e for e in entries if e.kind == "slash"]
    verdicts = [e for e in entries if e.kind == "verdict" and cheater in
                (e.body["subject"], e.body["checker"])]
    assert {e.body["provider"] for e in slashes} <= {
        keys.load(k).id for k in net.providers if k.startswith("cheater")}, net.logs()
    assert cheater in {e.body["provider"] for e in slashes}, net.logs()
    assert verdicts and all(e.body["fault"] != "none" for e in verdicts)
    for e in verdicts:  # evidence: who, what each returned, whom the referee sided with
        assert {"subject", "checker", "referee", "subject_output", "referee_output",
                "fault"} <= set(e.body)
    after = {p.id: p for p in c.providers()}
    assert stake_lost(entries, cheater) > 0
    for pid in honest:
        assert after[pid].stake == stake_before[pid]
    rep = Client(net.url).provider(cheater).reputation
    assert rep < min(after[pid].reputation for pid in honest)
    for job_id in jobs:
        check_books(c, job_id)
    audit_ok(c)


@pytest.mark.parametrize("mode", ["wrong", "truncate"])
def test_chat_cheater_is_caught_by_one_pass_rescoring(net: Network, mode: str) -> None:
    """Claimed tokens that are not the model's greedy choice fail the teacher-forced
    check, a referee confirms, the cheater is slashed; the client gets greedy text."""
    name = f"chat-cheater-{mode}"
    proc = start_cheater(net, name, mode, "SmolLM2-135M-Instruct")
    cheater = keys.load(name).id
    c = net.client("client")
    c.faucet(1_000_000_000)
    prompts = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."]
    data = b"".join(json.dumps({
        "custom_id": f"q{i}", "url": "/v1/chat/completions",
        "body": {"model": "SmolLM2-135M-Instruct", "max_tokens": 8, "temperature": 0,
                 "messages": [{"role": "user", "content": p}]}}).encode() + b"\n"
        for i, p in enumerate(prompts))
    job = c.submit_job(CHAT, c.upload(data).digest)
    assert net.wait_job(c, job.id, timeout=300) == "completed", net.logs()
    proc.stop()
    from deai.workloads import chat

    shard = b"".join(json.dumps({"custom_id": f"q{i}", "messages": [
        {"role": "user", "content": p}], "max_tokens": 8, "temperature": 0.0, "top_p": 1.0,
        "seed": 0}).encode() + b"\n" for i, p in enumerate(prompts))
    want = {o["custom_id"]: o["text"] for o in map(
        json.loads, chat.complete("SmolLM2-135M-Instruct", shard)[0].splitlines())}
    for line in map(json.loads, c.results(job.id).splitlines()):
        got = line["response"]["body"]["choices"][0]["message"]["content"]
        assert got == want[line["custom_id"]], (mode, line["custom_id"])
    slashed = {e.body["provider"] for e in journal(c) if e.kind == "slash"}
    assert cheater in slashed, net.logs()
    assert not slashed & {keys.load(f"honest-{i}").id for i in (1, 2, 3)}
    check_books(c, job.id)


def test_training_is_checked_by_replaying_audited_segments(net: Network) -> None:
    """A new provider's training run is audited: another provider replays a few of its
    checkpoint segments (not the whole job) and the result is accepted and paid."""
    c = net.client("client")
    c.faucet(1_000_000_000)
    spec = {"kind": "train", "model": "mlp-digits", "max_price": 5000, "deadline": 600,
            "epochs": 2, "batch_size": 32, "checkpoint_every": 10, "seed": 3}
    job = c.submit_job(spec, c.upload(b'{"dataset": "digits"}').digest)
    assert net.wait_job(c, job.id, timeout=300) == "completed", net.logs()
    # Checks are public once the task's challenge window has closed (blind work).
    end = time.time() + 180
    while True:
        events = c.request("GET", "/api/events", params={
            "kind": ["check_passed", "check_failed"], "limit": 500}).json()["events"]
        mine = [e for e in events if e["subject"].startswith(job.id)]
        if mine or time.time() > end:
            break
        time.sleep(2.0)
    assert [e["kind"] for e in mine] == ["check_passed"], mine
    detail = mine[0]["body"]["detail"]
    assert "audited segment" in detail and "replay bitwise" in detail
    check_books(c, job.id)
