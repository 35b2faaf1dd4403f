"""Sealed training, unit level: a provider in the set trains a sealed shard and writes only
sealed checkpoints whose chain links from the manifest's genesis; a resumed run opens the
last one and ends bitwise equal; a checker's segment audit, replayed from the decrypted
checkpoints, agrees with an honest claim and catches a forged one or a checkpoint that was
never recorded; nobody outside the set opens a checkpoint."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from deai.client import sealed as crypto
from deai.client.keys import Identity
from deai.core import checkpoints, sealed, specs, wire
from deai.provider import sealed as unseal
from deai.workloads import train as wl
from deai.workloads.base import TaskContext
from tests.test_workload_train import BASE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")


class Store:
    """The coordinator's blob store and checkpoint records, as a provider sees them."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.recorded: list[dict[str, Any]] = []

    def put(self, data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        self.blobs[d] = data
        return d

    def ctx(self, resume: dict[str, Any] | None = None) -> TaskContext:
        def checkpoint(step: int, data: bytes, chain_hash: str, meta: dict[str, Any]) -> None:
            self.recorded.append({"step": step, "digest": self.put(data),
                                  "chain_hash": chain_hash, "meta": meta})

        return TaskContext(resume=resume, checkpoint=checkpoint, fetch=self.blobs.__getitem__)


def lease(units: int) -> wire.AssignmentOut:
    return wire.AssignmentOut(id="asg_1", task_id="job_x.t00000", job_id="job_x",
                              workload="train", model="mlp-digits", input_digest="0" * 64,
                              units=units, price=1000, lease_deadline=0.0)


def run(who: Identity, blob: bytes, ctx: TaskContext, units: int) -> bytes:
    out, _ = unseal.run(who, lease(units), blob, ctx,
                        lambda b: wl.WORKLOAD.run("mlp-digits", b, ctx))
    return out


def test_sealed_training_checkpoints_resume_and_segment_audits() -> None:
    owner, primary, replica, outsider = (Identity.generate(f"p{i}") for i in range(4))
    spec = specs.parse_spec({**BASE, "sealed": True, "replicate": True,
                             "sealed_for": [primary.id, replica.id]})
    si = crypto.seal_input(spec, b"", owner.id)
    m = si.manifest()
    genesis = m.shards[0].genesis
    assert genesis is not None
    units = m.shards[0].units
    store = Store()
    shard = store.put(si.shards[0][0])

    claimed = store.put(run(primary, store.blobs[shard], store.ctx(), units))
    cps = list(store.recorded)
    assert [c["step"] for c in cps] == [20, 40, 60, 80, 90]
    prev, at = genesis, 0
    for cp in cps:  # sealed blobs; the chain links the stated plaintext digests
        blob = store.blobs[cp["digest"]]
        assert sealed.is_envelope(blob) and b"deai.train" not in blob and b"model." not in blob
        assert set(cp["meta"]) == {"start", "seed", "plain"}
        prev = checkpoints.link(cp["meta"]["plain"], prev, at, cp["step"], spec.seed)
        assert cp["chain_hash"] == prev
        at = cp["step"]
    key = crypto.open_key(si.keys, owner)
    out = json.loads(crypto.open_output(key, sealed.parse_envelope(store.blobs[claimed]),
                                        m.seal, 0))
    assert [ln["digest"] for ln in out["chain"]] == [c["meta"]["plain"] for c in cps]
    with pytest.raises(crypto.SealError):
        crypto.open_key(si.keys, outsider)

    # Another provider resumes from the sealed checkpoint at step 40: bitwise the same end.
    at40 = cps[1]
    again = run(replica, store.blobs[shard], store.ctx(resume={**at40}), units)
    assert crypto.open_output(key, sealed.parse_envelope(again), m.seal, 0) == \
        crypto.open_output(key, sealed.parse_envelope(store.blobs[claimed]), m.seal, 0)

    recorded = {c["meta"]["plain"]: c["digest"] for c in cps}

    def check(claim: str, known: dict[str, str] | None = None) -> sealed.Verdict:
        payload = sealed.CheckPayload(shard=shard, claimed=claim, claimed_units=units,
                                      spec=spec.model_dump(mode="json"),
                                      checkpoints=recorded if known is None else known)
        verdict = sealed.parse_envelope(run(replica, payload.to_bytes(), store.ctx(),
                                            units)).verdict
        assert verdict is not None
        return verdict

    v = check(claimed)
    assert v.subject and "replay bitwise" in v.detail
    forged = dict(out)
    forged["chain"] = [dict(ln) for ln in out["chain"]]
    forged["chain"][-1]["digest"] = hashlib.sha256(b"skipped").hexdigest()
    bad = store.put(crypto.seal_output(key, m.seal, 0, json.dumps(forged).encode(), units))
    assert not check(bad).subject
    v = check(claimed, known={})
    assert not v.subject and "not recorded" in v.detail
