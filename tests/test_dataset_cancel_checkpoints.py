"""A buyer that cancels its dataset job reads none of its checkpoints.

The job's use is given back when it ends uncompleted (``datasets.end_use`` deletes it),
and the owner's view of checkpoints decided "a dataset job" from that row: a buyer that
cancelled once the last checkpoint was recorded read every one of them, the trained
model included, and paid no royalty. It is now decided from the job's spec.
"""

from __future__ import annotations

from pathlib import Path

from deai.coordinator import access, admission, jobs
from deai.coordinator import checkpoints as cps
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store.models import Assignment, Checkpoint
from deai.store.models_datasets import Dataset, DatasetUse
from tests.lifecycle_worlds import DbWorld

DSID = "ds_" + "ab" * 12


def test_a_cancelled_dataset_job_shows_the_buyer_no_checkpoint(tmp_path: Path) -> None:
    w = DbWorld(tmp_path)
    c, buyer, owner, prov = w.c, w.client, w.providers[8], w.providers[0]
    spec = {"kind": "train", "model": "mlp-digits", "max_price": 5000, "dataset": "file",
            "batch_size": 16, "dataset_id": DSID}
    digests = [c.blobs.put(b"checkpoint %d weights" % i) for i in (4, 8, 12)]
    with c.db.write() as s:
        s.add(Dataset(id=DSID, owner=owner, name="rows", blob_digest=c.blobs.put(b"ct"),
                      size=2, info={}, owner_key="k", price_per_use=250_000, allow=["train"],
                      expires_at=None, max_uses=None, uses=1, royalties=0, created_at=0.0))
        job, (task,) = admission.create(
            c, s, owner=buyer, kind="train", model="mlp-digits", spec=spec,
            input_digest=c.blobs.put(b"{}"), max_price=5000,
            shards=[admission.ShardIn(c.blobs.put(b"shard"), 1, 1000)],
            escrow=500_000, deadline=3600.0)
        s.flush()
        s.add(DatasetUse(dataset_id=DSID, job_id=job.id, job_owner=buyer, kind="train",
                         price=250_000, royalty_seq=None, created_at=0.0))
        s.add(Assignment(id="asg_p", task_id=task.id, job_id=job.id, provider_id=prov,
                         role=Role.PRIMARY, status=AssignmentStatus.LEASED, price=1000,
                         leased_at=0.0, lease_deadline=10**9, delivered=True))
        s.flush()
        for step, d in zip((4, 8, 12), digests, strict=True):
            s.add(Checkpoint(task_id=task.id, step=step, digest=d, chain_hash="00" * 32,
                             meta={}, assignment_id="asg_p", provider_id=prov,
                             created_at=0.0))
        job_id = job.id

    def visible() -> list[bool]:
        with c.db.read() as s:
            return [access.owner_may_read(s, buyer, d) for d in digests]

    assert visible() == [False, False, False]  # running: hidden, as intended
    assert cps.listing(job_id, c, buyer)["checkpoints"] == []
    jobs.cancel(c, buyer, job_id)  # the buyer cancels: end_use deletes the DatasetUse
    listed = cps.listing(job_id, c, buyer)["checkpoints"]
    assert listed == [] and visible() == [False, False, False]
