"""A poisoned resume: a provider records untrained weights as its checkpoints and walks
away; the honest provider that takes the task over resumes from them, and its claim
fails its check.

Before, the check blamed the claimant: the honest resumer was slashed and the provider
that recorded the junk went free. Now whoever recorded a checkpoint the check shows
wrong is to blame (``verify._inherited``): it is slashed, the resumer is neither rated
nor slashed, the bad chain is dropped and the task runs again from the start, and the
client gets the model an uninterrupted honest run makes. A resumed result is always
checked (its inherited checkpoints were recorded unchecked).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client import keys
from deai.core import kinds, specs
from deai.core.kinds import train as kind_train
from deai.workloads import train as wl
from tests.helpers import check_books, journal, stake_lost
from tests.netutil import Network
from tests.test_checkpoints import Hand
from tests.test_train_audit_draw import fabricated_claim, sha

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")]
SPEC = {"kind": "train", "model": "mlp-digits", "max_price": 5000, "deadline": 900,
        "epochs": 2, "batch_size": 32, "checkpoint_every": 20, "seed": 5}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=3.0, lease_ttl=60.0, challenge_window=60.0,
                extra=("--verify-timeout", "30"), verifiers=1)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def test_the_provider_that_recorded_junk_is_blamed_not_the_honest_resumer(
        net: Network) -> None:
    client = net.client("client")
    client.faucet(1_000_000_000)
    shard = kinds.get("train").split(specs.parse_spec(SPEC), b"")[0].payload
    p = kind_train.parse_payload(shard)
    assert p.checkpoint_steps() == [20, 40, 60, 80, 90]
    # The poisoner, alone on the network, takes the task and records untrained weights
    # as every checkpoint but the last, each hash linked as the coordinator wants.
    claim, blobs = fabricated_claim(shard)
    poisoner = Hand(net, 500)
    job = client.submit_job(SPEC, client.upload(b'{"dataset": "digits"}').digest)
    a = poisoner.take()
    assert a.input_digest == sha(shard) and a.resume is None
    for link in json.loads(claim)["chain"][:-1]:
        poisoner.c.heartbeat([a.id])
        assert poisoner.post(a, link["end"], blobs[link["digest"]],
                             link["hash"]).status == "recorded"
    poisoner.c.report_failure(a.id, "walked away")
    poisoner.c.close()  # offline: it takes no part in what follows

    for i in (1, 2, 3):  # the resumer, its checker, and a fresh checker of the re-run
        net.start_provider(f"honest-{i}", 900 + 50 * i, "--models", "mlp-digits")
    net.start_verifier("verifier-1", "--models", "mlp-digits")
    assert net.wait_job(client, job.id, timeout=400) == "completed", net.logs()

    entries = journal(client)
    honest = {keys.load(f"honest-{i}").id for i in (1, 2, 3)}
    verdicts = [e.body for e in entries if e.kind == "verdict"]
    inherited = [v for v in verdicts if v.get("fault") == "inherited"]
    assert inherited, (verdicts, net.logs())
    assert inherited[0]["recorders"] == [poisoner.ident.id]
    assert inherited[0]["subject"] in honest  # the resumer was the one checked
    slashed = {e.body["provider"] for e in entries if e.kind == "slash"}
    assert poisoner.ident.id in slashed
    assert not slashed & honest, verdicts
    assert stake_lost(entries, poisoner.ident.id) > 0

    # The poisoned chain was dropped: the client's model is an honest uninterrupted run's.
    honest_out, _ = wl.train(shard)
    want = json.loads(honest_out)["model_digest"]
    got = json.loads(client.results(job.id))
    assert want in json.dumps(got), got
    listed = client.checkpoints(job.id)
    assert poisoner.ident.id not in {cp["provider_id"] for cp in listed}
    end = time.time() + 60
    while not any(e["kind"] == "checkpoints_voided" for e in client.request(
            "GET", "/api/events", params={"kind": ["checkpoints_voided"],
                                          "limit": 50}).json()["events"]):
        assert time.time() < end, "no checkpoints_voided event"
        time.sleep(1.0)
    check_books(client, job.id)


def test_wrong_checkpoints_name_the_claimed_links_a_check_shows_wrong() -> None:
    """The kind's side: an audit's differing segments, or where a re-run parts."""
    kind = kinds.get("train")
    spec = specs.parse_spec(SPEC)
    shard = kind.split(spec, b"")[0].payload
    claim, _ = fabricated_claim(shard)
    honest, _ = wl.train(shard)
    chain = json.loads(claim)["chain"]
    assert kind.wrong_checkpoints(claim, honest) == [(20, chain[0]["digest"])]
    assert kind.wrong_checkpoints(honest, honest) == []
    true = {ln["end"]: ln["digest"] for ln in json.loads(honest)["chain"]}
    # (20, 40] replayed from the junk at 20 by an honest checker, (80, 90] as claimed
    audit = json.dumps({"audit": kind_train.AUDIT_FORMAT, "segments": [
        {"start": 20, "end": 40, "digest": true[40]},
        {"start": 80, "end": 90, "digest": chain[-1]["digest"]}]}).encode()
    assert kind.wrong_checkpoints(claim, audit) == [(40, chain[1]["digest"])]
    assert kind.wrong_checkpoints(b"not json", audit) == []
