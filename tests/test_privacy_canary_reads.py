"""What a canary's lease may read: its shard, its check payload, its task's checkpoints, and
the files the client job its shard came from named and owned; never another account's blob
that the shard's (client-written) text happens to name.

A canary is an old client shard re-run as a job the network owns (``canaries.plant_jobs``),
so its text is whatever that client wrote: a victim's digest typed into an input line
must give whoever later holds the canary nothing. Rows as the coordinator writes them, on
a real SQLite database with an injected clock; ``access.may_read_blob`` decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deai.coordinator import access, admission
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store import migrate
from deai.store.models import Assignment, Canary, Checkpoint, JobBlob, Provider

SPEC = {"kind": "command", "model": "", "max_price": 1000}
AUTHOR, VICTIM = "a" * 64, "b" * 64
RUNNER, CHECKER = "1" * 64, "2" * 64


@dataclass
class World:
    c: Coordinator
    secret: str  # the victim's upload
    file: str  # the author's upload, named as a file by the author's job
    shard: str  # the author's shard: names both
    checkpoint: str  # recorded by the canary's runner
    payload: str  # the check payload of the canary's replica: names the checkpoint and secret


def put(c: Coordinator, owner: str, data: bytes) -> str:
    digest = c.blobs.put(data)
    access.record_upload(c, owner, digest, len(data))
    return digest


def build(root: Path) -> World:
    c = Coordinator(Settings(data_dir=root, devnet=True), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    now = c.now()
    secret = put(c, VICTIM, b"the victim's private weights\n")
    file = put(c, AUTHOR, b"the author's own data\n")
    shard = put(c, AUTHOR, json.dumps({"files": {"in.csv": {"digest": file}},
                                       "argv": ["cat", f"note {secret}"]}).encode() + b"\n")
    checkpoint = put(c, RUNNER, b"step 10\n")
    payload = c.blobs.put(json.dumps({"shard": shard, "from": checkpoint,
                                      "also": secret}).encode())
    with c.db.write() as s:
        for pid in (RUNNER, CHECKER):
            s.add(Provider(id=pid, name=pid[:4], hardware={}, benchmark={}, registered_at=now,
                           last_seen=now))
        # The author's job, verified: its shard joins the pool, its named file with it.
        source, (task,) = admission.create(
            c, s, owner=AUTHOR, kind="command", model="", spec=SPEC, input_digest=shard,
            max_price=1000, shards=[admission.ShardIn(shard, 1, 10)], escrow=0,
            deadline=3600.0)
        s.add(JobBlob(job_id=source.id, digest=file))
        s.add(Canary(kind="command", model="", spec=SPEC, input_digest=shard,
                     output_digest=file, items=1, units=10, source_task=task.id,
                     created_at=now))
        canary, (ctask,) = admission.create(
            c, s, owner=admission.NETWORK, kind="command", model="", spec=SPEC,
            input_digest=shard, max_price=1000,
            shards=[admission.ShardIn(shard, 1, 10, reference=file)], escrow=0,
            deadline=3600.0)
        for aid, pid, role, digest in (("asg_run", RUNNER, Role.CANARY, None),
                                       ("asg_check", CHECKER, Role.REPLICA, payload)):
            s.add(Assignment(id=aid, task_id=ctask.id, job_id=canary.id, provider_id=pid,
                             role=role, status=AssignmentStatus.LEASED, price=900,
                             leased_at=now, lease_deadline=now + 600, delivered=True,
                             input_digest=digest))
        s.flush()
        s.add(Checkpoint(task_id=ctask.id, step=10, digest=checkpoint, chain_hash="0" * 64,
                         meta={}, assignment_id="asg_run", provider_id=RUNNER,
                         created_at=now))
    return World(c, secret, file, shard, checkpoint, payload)


def test_a_canary_lease_reads_its_shard_and_the_files_its_author_named(
        tmp_path: Path) -> None:
    w = build(tmp_path)
    assert access.may_read_blob(w.c, RUNNER, w.shard)
    assert access.may_read_blob(w.c, RUNNER, w.file)


def test_a_canary_lease_cannot_read_a_foreign_blob_its_shard_names(tmp_path: Path) -> None:
    w = build(tmp_path)
    assert not access.may_read_blob(w.c, RUNNER, w.secret)
    assert access.may_read_blob(w.c, VICTIM, w.secret)  # still its owner's


def test_a_canary_check_reads_its_payload_and_checkpoints_not_what_else_it_names(
        tmp_path: Path) -> None:
    w = build(tmp_path)
    for digest in (w.payload, w.shard, w.checkpoint):
        assert access.may_read_blob(w.c, CHECKER, digest), digest
    assert not access.may_read_blob(w.c, CHECKER, w.secret)


def test_a_canary_lease_reads_nothing_once_it_ended(tmp_path: Path) -> None:
    w = build(tmp_path)
    with w.c.db.write() as s:
        for aid in ("asg_run", "asg_check"):
            a = s.get(Assignment, aid)
            assert a is not None
            a.status = AssignmentStatus.SUBMITTED
    for pid in (RUNNER, CHECKER):
        for digest in (w.shard, w.file, w.secret):
            assert not access.may_read_blob(w.c, pid, digest), (pid[:4], digest)
