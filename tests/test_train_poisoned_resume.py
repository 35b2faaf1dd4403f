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
from typing import Any

import pytest

from deai.client import keys
from deai.coordinator import admission, effects, verify
from deai.core import kinds, specs
from deai.core.kinds import train as kind_train
from deai.core.lifecycle import AssignmentStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from deai.core.lifecycle import effects as E
from deai.store.models import Assignment, Checkpoint, Task
from deai.workloads import train as wl
from tests.helpers import check_books, journal, stake_lost
from tests.lifecycle_worlds import DbWorld, MachineWorld, Seat, World, _party
from tests.netutil import Network
from tests.test_checkpoints import Hand
from tests.test_cluster_service import audit
from tests.test_train_audit_draw import fabricated_claim, sha
from tests.test_workload_train import Recorder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")
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


@pytest.mark.slow
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
    assert kind.wrong_checkpoints(claim, honest) == [(20, chain[0]["hash"])]
    assert kind.wrong_checkpoints(honest, honest) == []
    true = {ln["end"]: ln["digest"] for ln in json.loads(honest)["chain"]}
    # (20, 40] replayed from the junk at 20 by an honest checker, (80, 90] as claimed
    audit = json.dumps({"audit": kind_train.AUDIT_FORMAT, "segments": [
        {"start": 20, "end": 40, "digest": true[40]},
        {"start": 80, "end": 90, "digest": chain[-1]["digest"]}]}).encode()
    assert kind.wrong_checkpoints(claim, audit) == [(40, chain[1]["hash"])]
    assert kind.wrong_checkpoints(b"not json", audit) == []


def _audit_after_a_poisoned_resume(w: World) -> tuple[Seat, Seat]:
    """A recorder's lease lapses, a resumer's result is accepted, a verifier's audit finds
    it wrong where the recorder's checkpoints were: the recorder is slashed, the resumer
    only gives its earnings back."""
    recorder = w.seat(Role.PRIMARY)
    w.apply(D.on_placed(w.ctx(), Role.PRIMARY))
    w.apply(D.on_expired(w.ctx(), _party(recorder), "lease lapsed"))
    resumer = w.seat(Role.PRIMARY)
    w.apply(D.on_placed(w.ctx(), Role.PRIMARY))
    w.apply(D.on_primary(w.ctx(), _party(resumer), replicate=False, rho=0.0, audit=True))
    auditor = w.seat(Role.AUDIT)
    w.apply(D.on_placed(w.ctx(), Role.AUDIT))
    w.apply(D.on_audit(w.ctx(), _party(auditor), [], match=False, evidence={},
                       released=[_party(resumer)], recorders=[_party(recorder)]))
    return recorder, resumer


def test_an_audit_slashes_the_recorder_and_the_resumer_only_gives_its_earnings_back(
        tmp_path: Path) -> None:
    """The coordinator's applier and core's machine agree on every status and amount."""
    machine, db = MachineWorld(), DbWorld(tmp_path)
    for w in (machine, db):
        _audit_after_a_poisoned_resume(w)
    assert db.snapshot() == machine.snapshot()
    money = machine.snapshot()["money"]
    assert money["stake:p0"] < 0  # the recorder: slashed
    assert "stake:p1" not in money and "pending:p1" not in money  # the resumer: even
    assert db.snapshot()["seats"][:2] == ["expired", "rejected"]
    audit(db.c)


def test_a_segment_audit_vouches_for_the_segments_it_replayed_only() -> None:
    kind = kinds.get("train")
    audit = json.dumps({"audit": kind_train.AUDIT_FORMAT, "segments": [
        {"start": 20, "end": 40, "digest": "ab" * 32},
        {"start": 80, "end": 90, "digest": "cd" * 32}]}).encode()
    assert kind.vouched(audit) == {40, 90}
    assert kind.vouched(b"{}") == set() == kinds.get("embeddings").vouched(audit)


def test_a_verifiers_audit_blames_the_recorder_and_spares_honest_samples(
        tmp_path: Path) -> None:
    """The coordinator's judgement of an audit that overturned a resumed training result:
    the recorder of the first wrong checkpoint is slashed, the resumer and a replica
    that replayed other segments released (earnings back, looked at again, no slash),
    and a replica that vouched for the wrong checkpoint itself slashed."""
    world = DbWorld(tmp_path)
    c = world.c
    spec = specs.parse_spec(SPEC)
    shard = kinds.get("train").split(spec, b"")[0].payload
    junk, blobs = fabricated_claim(shard)
    first = json.loads(junk)["chain"][0]  # untrained weights labelled step 20
    rec = Recorder()
    rec.blobs.update(blobs)
    claim, _ = wl.train(shard, rec.ctx({"step": 20, "digest": first["digest"],
                                        "chain_hash": first["hash"], "meta": {}}))
    truth, _ = wl.train(shard)
    links = {ln["end"]: ln for ln in json.loads(claim)["chain"]}

    def vouch(*ends: int) -> bytes:
        return json.dumps({"audit": kind_train.AUDIT_FORMAT, "segments": [
            {"start": links[e]["start"], "end": e, "digest": links[e]["digest"]}
            for e in ends]}).encode()

    p = world.providers
    with c.db.write() as s:
        job, (task,) = admission.create(
            c, s, owner=world.client, kind="train", model="mlp-digits",
            spec=spec.model_dump(), input_digest=c.blobs.put(b'{"dataset": "digits"}'),
            max_price=5000, shards=[admission.ShardIn(c.blobs.put(shard), 1, 1000)],
            escrow=10_000, deadline=3600.0)
        task.status, task.output_digest = TaskStatus.DONE, c.blobs.put(claim)

        def seat(aid: str, who: str, role: Role, status: AssignmentStatus, out: bytes,
                 **kw: Any) -> Assignment:
            a = Assignment(id=aid, task_id=task.id, job_id=job.id, provider_id=who, role=role,
                           status=status, price=1000, leased_at=0.0, lease_deadline=10**9,
                           delivered=True, units=1000, output_digest=c.blobs.put(out), **kw)
            s.add(a)
            return a

        seat("asg_rec", p[0], Role.PRIMARY, AssignmentStatus.EXPIRED, b"")
        s.add(Checkpoint(task_id=task.id, step=20, digest=first["digest"],
                         chain_hash=first["hash"], meta={}, assignment_id="asg_rec",
                         provider_id=p[0], created_at=0.0))
        seat("asg_res", p[1], Role.PRIMARY, AssignmentStatus.ACCEPTED, claim)
        payload = c.blobs.put(b"check payload")
        seat("asg_fair", p[2], Role.REPLICA, AssignmentStatus.ACCEPTED, vouch(80, 90),
             check_of="asg_res", input_digest=payload)
        seat("asg_stamp", p[3], Role.REPLICA, AssignmentStatus.ACCEPTED, vouch(20, 90),
             check_of="asg_res", input_digest=payload)
        auditor = seat("asg_aud", p[4], Role.AUDIT, AssignmentStatus.LEASED, truth,
                       check_of="asg_res")
        s.flush()
        todo = verify.on_result(c, s, auditor, task, job)
        effects.apply(c, s, job, task, todo)
    slashed = {e.provider for e in todo if isinstance(e, E.Slash)}
    assert slashed == {p[0], p[3]}, todo
    assert sorted(e.provider for e in todo if isinstance(e, E.Forfeit)) == sorted(p[1:3])
    verdict = next(e.evidence for e in todo if isinstance(e, E.RecordVerdict))
    assert sorted(verdict["released"]) == sorted(p[1:3]) and verdict["recorders"] == [p[0]]
    assert {e.provider for e in todo if isinstance(e, E.LookBack)} == {p[0], p[1], p[2], p[3]}
    with c.db.read() as s:
        assert s.get(Task, task.id).output_digest == sha(truth)  # the verifier's stands
    audit(c)
