"""A training check replays segments the claimant can neither know nor steer, at least
three of them; a claim naming a start no checker can replay fails its check; the
coordinator records checkpoints on the grid only.

Before: the segments were drawn from the claim's own hash (re-serialising the claim's
metrics ground the draw for free) and a chain of 20 segments or fewer had only its
last one replayed, so untrained weights labelled as the earlier checkpoints passed
every check, sealed jobs' included; a start that could not be fetched made every
checker fail with no verdict; and a checkpoint recorded off the grid became every
later attempt's resume point, whose honest chains then could not end on the grid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import checkpoints, kinds, specs
from deai.core.errors import DeAIError
from deai.core.kinds import train as kind_train
from deai.workloads import train as wl
from tests.netutil import Network
from tests.test_checkpoints import SPEC, Hand
from tests.test_workload_train import BASE, KIND, Recorder, shard_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def fabricated_claim(shard: bytes) -> tuple[bytes, dict[str, bytes]]:
    """Untrained weights labelled as every checkpoint but the last, and only the last
    segment trained (10 of 90 steps): a claim that meters as the whole run."""
    p = kind_train.parse_payload(shard)
    genesis = checkpoints.genesis(sha(shard))
    blobs: dict[str, bytes] = {}
    chain: list[checkpoints.Link] = []
    blob = b""
    with wl.deterministic():
        tr = wl.Trainer(p)
        ends = p.checkpoint_steps()[:-1]
        for end in ends:
            done = [e for e in ends if e <= end]
            hist = wl.History(step=end, chain=list(chain), loss=[[e, 2.3] for e in done],
                              acc=[[e, 0.1] for e in done])
            blob = tr.save(hist)
            blobs[sha(blob)] = blob
            chain.append(checkpoints.extend(chain, genesis, sha(blob), end, p.seed))
    final = wl.replay(shard, blob, ends[-1], p.steps - ends[-1])
    blobs[sha(final)] = final
    chain.append(checkpoints.extend(chain, genesis, sha(final), p.steps, p.seed))
    claim = json.dumps({
        "format": "deai.train.v1", "model": p.model, "steps": p.steps,
        "units": p.steps * p.step_units, "model_digest": chain[-1].digest,
        "chain": [ln.to_dict() for ln in chain],
        "metrics": {"loss": [[p.steps, 0.05]], "test_accuracy": [[p.steps, 0.99]],
                    "final_test_accuracy": 0.99, "final_test_loss": 0.05}}).encode()
    return claim, blobs


@pytest.mark.parametrize("nonce", [b"", b"\x01" * 16, b"\x02" * 16])
def test_a_chain_of_untrained_checkpoints_fails_the_audit(nonce: bytes) -> None:
    spec = specs.parse_spec(BASE)  # 90 steps: checkpoints at 20, 40, 60, 80, 90
    shard = shard_for()
    claim, blobs = fabricated_claim(shard)
    assert KIND.meter(spec, shard, claim) > 0  # structurally a whole run
    request = KIND.check_payload(spec, shard, claim, nonce)
    assert request is not None and len(json.loads(request)["segments"]) == 3
    rec = Recorder()
    rec.blobs.update({**blobs, sha(shard): shard})
    audit, _ = wl.WORKLOAD.run("mlp-digits", request, rec.ctx())
    assert not KIND.check(spec, shard, claim, audit).match


def test_the_draw_follows_the_coordinators_nonce_not_only_the_claim() -> None:
    ends = list(range(10, 1010, 10))  # 100 segments: 5 drawn
    chain = [checkpoints.Link(e - 10, e, "0" * 64, 1, "0" * 64) for e in ends]
    seed = hashlib.sha256(b'{"x":1}').digest()
    draws = {tuple(kind_train.audit_segments(chain, hashlib.sha256(seed + bytes([i])).digest()))
             for i in range(20)}
    assert len(draws) > 10  # a claim's bytes alone no longer decide the picks
    assert all(len(d) == 5 and d[-1] == 99 for d in draws)
    short = chain[:2]
    assert kind_train.audit_segments(short, seed) == [0, 1]  # all of a short chain


def honest_run() -> tuple[Any, bytes, Recorder, bytes]:
    """(spec, shard, its recorder with every checkpoint and the shard, the honest claim)."""
    spec = specs.parse_spec(BASE)
    shard = shard_for()
    rec = Recorder()
    claim, _ = wl.WORKLOAD.run("mlp-digits", shard, rec.ctx())
    rec.blobs[sha(shard)] = shard
    return spec, shard, rec, claim


def test_checks_of_two_draws_agree_on_the_segments_both_replayed() -> None:
    spec, shard, rec, claim = honest_run()
    outs = []
    for nonce in (b"a", b"b"):
        request = KIND.check_payload(spec, shard, claim, nonce)
        assert request is not None
        outs.append(wl.WORKLOAD.run("mlp-digits", request, rec.ctx())[0])
        assert KIND.check(spec, shard, claim, outs[-1]).match
    assert KIND.compare_checks(spec, b"", outs[0], outs[1]).match
    forged = json.loads(outs[1])
    forged["segments"][-1]["digest"] = "0" * 64  # the final model, in every draw
    assert not KIND.compare_checks(spec, b"", outs[0], json.dumps(forged).encode()).match


def test_a_start_no_checker_can_replay_is_a_mismatch_not_a_failure() -> None:
    spec, shard, rec, claim = honest_run()
    request = json.loads(KIND.check_payload(spec, shard, claim, b"n") or b"{}")
    request["segments"][-1]["from"] = "f" * 64  # never recorded, never uploaded
    audit, _ = wl.WORKLOAD.run("mlp-digits", json.dumps(request).encode(), rec.ctx())
    assert json.loads(audit)["segments"][-1]["digest"].startswith("unreplayable")
    assert not KIND.check(spec, shard, claim, audit).match


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(Path(tmp_path_factory.mktemp("train-grid")), "", heartbeat_timeout=2.0,
                lease_ttl=30.0, verify=False)
    n.start_coordinator()
    yield n
    n.close()


def test_checkpoints_are_recorded_on_the_grid_only(net: Network) -> None:
    griefer = Hand(net, 500)
    client = Client(net.url, Identity.generate())
    client.faucet(100_000_000)
    shard = kinds.get("train").split(specs.parse_spec(SPEC), b"")[0].payload
    p = kind_train.parse_payload(shard)
    every = p.checkpoint_every
    client.submit_job(SPEC, client.upload(b'{"dataset": "digits"}').digest)
    a = griefer.take()
    g = checkpoints.genesis(a.input_digest)
    off = every + every // 2
    with pytest.raises(DeAIError) as refused:
        griefer.post(a, off, b"junk", checkpoints.link(sha(b"junk"), g, 0, off, p.seed))
    assert getattr(refused.value, "field", None) == "step" or "step" in str(refused.value)
    on = checkpoints.link(sha(b"on grid"), g, 0, every, p.seed)
    griefer.post(a, every, b"on grid", on)  # on the grid: recorded as before


def test_every_check_of_one_result_draws_alike_and_only_the_coordinator_knows(
        tmp_path: Path) -> None:
    """The nonce is keyed by the result checked, with a secret made with the database:
    a replica's and a referee's audits replay the same segments (drawn apart, a referee
    that missed the replica's bad segment agreed with both and the cheat stood), and
    another deployment (or anyone without the secret) draws otherwise."""
    from tests.lifecycle_worlds import DbWorld

    a, b = DbWorld(tmp_path / "a").c, DbWorld(tmp_path / "b").c
    assert a.check_nonce("asg_1") == a.check_nonce("asg_1") != a.check_nonce("asg_2")
    assert a.check_nonce("asg_1") != b.check_nonce("asg_1")
    assert len(a.check_nonce("asg_1")) == 16
