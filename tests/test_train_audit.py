"""Training checks by segment audit: a checker replays a few segments of the claimed
checkpoint chain from their starting checkpoints instead of re-running the job."""

from __future__ import annotations

import hashlib
import json

import pytest

from deai.core import checkpoints, specs
from deai.core.kinds import train as kind_train
from deai.workloads import train as wl
from tests.test_workload_train import BASE, KIND, Recorder, shard_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")


def test_audit_segments_are_few_always_include_the_last_and_follow_the_seed() -> None:
    chain = [checkpoints.Link(i * 10, i * 10 + 10, "0" * 64, 1, "0" * 64) for i in range(100)]
    picks = kind_train.audit_segments(chain, b"seed")
    assert len(picks) == 5 and 99 in picks and picks == sorted(set(picks))
    assert picks == kind_train.audit_segments(chain, b"seed")
    assert picks != kind_train.audit_segments(chain, b"other")
    assert kind_train.audit_segments(chain[:3], b"x") == [0, 1, 2]  # at least three
    assert len(kind_train.audit_segments(chain[:10], b"x")) == kind_train.AUDIT_MIN


def test_an_honest_run_passes_its_audit_and_a_forged_checkpoint_fails() -> None:
    spec = specs.parse_spec(BASE)
    shard = shard_for()
    rec = Recorder()
    claimed, _ = wl.WORKLOAD.run("mlp-digits", shard, rec.ctx())
    rec.blobs[hashlib.sha256(shard).hexdigest()] = shard
    request = KIND.check_payload(spec, shard, claimed)
    assert request is not None and b"digest" not in request  # the checker is not told
    audit, units = wl.WORKLOAD.run("mlp-digits", request, rec.ctx())
    assert KIND.meter_check(spec, request, audit) == units > 0
    assert KIND.check(spec, shard, claimed, audit).match
    assert KIND.compare_checks(spec, request, audit, audit).match

    # A provider that skipped steps claims a checkpoint the replay does not reach.
    forged = json.loads(claimed)
    last = forged["chain"][-1]
    last["digest"] = hashlib.sha256(b"skipped the last segment").hexdigest()
    bad = json.dumps(forged).encode()
    request = KIND.check_payload(spec, shard, bad)
    assert request is not None
    audit, _ = wl.WORKLOAD.run("mlp-digits", request, rec.ctx())
    verdict = KIND.check(spec, shard, bad, audit)
    assert not verdict.match and "replay" in verdict.detail
