"""Disk a free key cannot take: quotas follow money, kept bytes stay counted, the store
has a budget.

Keys are free. Before, every key got the whole per-account quota (20 fresh keys
stored 1 MiB each under a 1 MiB quota), and bytes a dataset or a /v1 file kept
stopped counting once their upload's record ran out (one account kept 5 datasets
of 1 MiB under a 1 MiB quota, for ever). Now an account's quota is its share of the
full one by the money it holds (balance, pending, stake), never under a small
floor; a dataset's bytes count against its owner for as long as the dataset
exists, a /v1 file's for as long as the file does; one owner publishes a bounded
number of datasets; and all uploads together stop at a disk budget (507).

In-process coordinators on SQLite and PostgreSQL, and a real one over loopback.
The disk is a stateful fake where it must fill: a disk of a fixed size whose used
bytes are the blob store's own files, walked.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from deai.client.keys import Identity
from deai.coordinator import admission, blob_quota, datasets, jobs, leases
from deai.coordinator.openai import batches, files
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core import wire_datasets as W
from deai.core.clock import ManualClock
from deai.core.datasets import Terms
from deai.core.errors import DeAIError
from deai.core.wire_leases import HostIn, LeaseIn
from deai.store import migrate
from deai.store.models import BlobRef, Provider, Task
from deai.store.models_datasets import Dataset, DatasetUse
from tests.helpers import admit_one, blob_on_disk, funded, put_blob
from tests.netutil import Network
from tests.races import ENGINES

KiB, MiB = 1024, 1024 * 1024
DEAI = 1_000_000


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    st_ = replace(Settings(data_dir=tmp_path, database_url=url).for_devnet(),
                  blob_quota_bytes=MiB, blob_quota_free_bytes=64 * KiB,
                  blob_quota_funds=10 * DEAI, max_datasets_per_owner=2,
                  blob_disk_budget=0, verifiers=frozenset({"ab" * 32}))
    coord = Coordinator(st_, clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    try:
        yield coord
    finally:
        coord.db.dispose()


def key() -> str:
    return Identity.generate().id


def upload(c: Coordinator, account: str, data: bytes) -> str:
    """``PUT /api/blobs`` as the route runs it: admitted, then stored."""
    digest = hashlib.sha256(data).hexdigest()
    blob_quota.admit(c, account, digest, len(data))
    return c.blobs.put(data)


def publish(c: Coordinator, owner: str, ds: str, digest: str) -> None:
    datasets.publish(c, owner, W.DatasetIn(
        id=ds, name="rows", blob_digest=digest, size=100, owner_key="a2V5",
        terms=Terms(price_per_use=1, allow=("embeddings",))))


def expire(c: Coordinator) -> None:
    """Every upload record past its TTL; then the leader's sweep."""
    c.db.run(lambda s: s.execute(update(BlobRef).values(
        created_at=c.now() - c.settings.blob_ttl - 1)))
    blob_quota.sweep(c)


def used(c: Coordinator, account: str) -> int:
    with c.db.read() as s:
        return blob_quota.used(s, account)


def test_a_key_without_money_gets_a_floor_not_the_quota(c: Coordinator) -> None:
    """20 fresh keys, 100 KiB each under a 1 MiB quota: each refused (the floor is
    64 KiB), nothing recorded or stored. Before, each stored its upload."""
    for _ in range(20):
        me, data = key(), os.urandom(100 * KiB)
        with pytest.raises(blob_quota.QuotaExceeded) as refused:
            upload(c, me, data)
        assert refused.value.field == "body" and refused.value.details["quota"] == 64 * KiB
        assert used(c, me) == 0 and not c.blobs.exists(hashlib.sha256(data).hexdigest())
    small = key()
    upload(c, small, os.urandom(60 * KiB))  # a small job's input: still taken

    half = key()  # 5 DEAI of the 10 the full quota takes: half of it
    c.faucet(half, 5 * DEAI)
    upload(c, half, os.urandom(500 * KiB))
    with pytest.raises(blob_quota.QuotaExceeded) as refused:
        upload(c, half, os.urandom(100 * KiB))
    assert refused.value.details["quota"] == MiB // 2

    rich = key()
    c.faucet(rich, 10 * DEAI)
    upload(c, rich, os.urandom(900 * KiB))
    verifier = "ab" * 32  # a network verifier holds no money and uploads its checks
    upload(c, verifier, os.urandom(900 * KiB))


@given(full=st.integers(0, 2**40), free=st.integers(0, 2**30),
       needed=st.integers(0, 10**12), funds=st.lists(st.integers(0, 10**12), max_size=8))
def test_many_keys_hold_no_more_than_the_money_behind_them(
        full: int, free: int, needed: int, funds: list[int]) -> None:
    """However money is split among keys, they hold no more than its price in bytes
    (``full`` for ``needed`` µ) beyond each key's floor; a quota never falls with more
    money, nor passes the full one."""
    quota = blob_quota.quota_of
    apart = sum(quota(full, free, needed, f) for f in funds)
    floors = len(funds) * min(free, full)
    assert needed == 0 or (apart - floors) * needed <= full * sum(funds)
    for f in funds:
        assert quota(full, free, needed, f) <= quota(full, free, needed, f + 1) <= full


def test_a_datasets_bytes_count_for_as_long_as_it_exists(c: Coordinator) -> None:
    """Published, its upload's record outlives the TTL and keeps counting: another
    600 KiB under a 1 MiB quota is refused, revoked or not. Before, the sweep dropped
    the record and the quota was free again while the dataset kept the bytes."""
    owner = key()
    c.faucet(owner, 10 * DEAI)
    digest = upload(c, owner, os.urandom(600 * KiB))
    publish(c, owner, "ds_" + "1" * 24, digest)
    expire(c)
    assert c.blobs.exists(digest) and used(c, owner) == 600 * KiB
    with pytest.raises(blob_quota.QuotaExceeded):
        upload(c, owner, os.urandom(600 * KiB))
    datasets.revoke(c, owner, "ds_" + "1" * 24)
    expire(c)
    with pytest.raises(blob_quota.QuotaExceeded):
        upload(c, owner, os.urandom(600 * KiB))
    assert c.blobs.exists(digest)


def test_a_v1_files_bytes_count_until_it_is_deleted(c: Coordinator) -> None:
    """A /v1 file keeps its bytes past its upload's TTL, so they keep counting; a
    dataset of the same bytes counts them once, and goes on after the file is
    deleted. Before, the file's bytes stopped counting with the upload's record."""
    owner = key()
    c.faucet(owner, 10 * DEAI)
    data = os.urandom(600 * KiB)
    f = batches.upload(c, owner, "in.jsonl", "batch", data)
    expire(c)
    assert used(c, owner) == 600 * KiB
    with pytest.raises(blob_quota.QuotaExceeded):
        upload(c, owner, os.urandom(600 * KiB))
    publish(c, owner, "ds_" + "2" * 24, hashlib.sha256(data).hexdigest())  # no more bytes
    files.delete(c, owner, f.id)
    expire(c)
    assert used(c, owner) == 600 * KiB and c.blobs.exists(hashlib.sha256(data).hexdigest())
    with pytest.raises(blob_quota.QuotaExceeded):
        upload(c, owner, os.urandom(600 * KiB))


def test_one_owner_publishes_a_bounded_number_of_datasets(c: Coordinator) -> None:
    """Past ``max_datasets_per_owner`` (2 here; revoked ones count: they keep their
    bytes) a dataset is refused with 409 naming ``id``, and nothing is written. Before,
    one owner published any number, each crowding the public listing."""
    owner = key()
    c.faucet(owner, 10 * DEAI)
    digest = upload(c, owner, b"a small ciphertext")
    publish(c, owner, "ds_" + "3" * 24, digest)
    publish(c, owner, "ds_" + "4" * 24, digest)
    datasets.revoke(c, owner, "ds_" + "4" * 24)
    with pytest.raises(datasets.TooManyDatasets) as refused:
        publish(c, owner, "ds_" + "5" * 24, digest)
    assert refused.value.status == 409 and refused.value.field == "id"
    assert refused.value.details["limit"] == 2
    with c.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 2


def test_a_deleted_datasets_bytes_and_place_are_given_back(c: Coordinator) -> None:
    """Deleted by its owner, a dataset stops keeping its bytes: past the TTL they stop
    counting (another 600 KiB fits the 1 MiB quota again) and are deleted, and it no
    longer counts toward ``max_datasets_per_owner``. Its row stays."""
    owner = key()
    c.faucet(owner, 10 * DEAI)
    digest = upload(c, owner, os.urandom(600 * KiB))
    publish(c, owner, "ds_" + "6" * 24, digest)
    publish(c, owner, "ds_" + "7" * 24, digest)
    expire(c)
    assert used(c, owner) == 600 * KiB
    datasets.delete(c, owner, "ds_" + "6" * 24)
    expire(c)
    assert used(c, owner) == 600 * KiB  # the other dataset still keeps the same bytes
    publish(c, owner, "ds_" + "8" * 24, digest)  # the deleted one's place is free
    for ds in ("ds_" + "7" * 24, "ds_" + "8" * 24):
        datasets.delete(c, owner, ds)
    expire(c)
    assert used(c, owner) == 0 and not c.blobs.exists(digest)
    upload(c, owner, os.urandom(600 * KiB))
    with c.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)
                        .where(Dataset.deleted_at.is_not(None))) == 3


def test_files_the_coordinator_writes_count_against_no_quota(c: Coordinator) -> None:
    """A batch's output and error files (1.1 MiB, written by the coordinator, kept until
    the owner deletes them) leave a funded account its whole 1 MiB quota for the next
    batch's input. Bytes it uploads itself still count, the same as an output's too.
    Before, the output alone filled the quota and a 600 KiB upload got 413."""
    owner = key_with_money(c)
    out, err = os.urandom(900 * KiB), os.urandom(200 * KiB)
    c.db.run(lambda s: batches._store(c, s, owner, "batch_1_output.jsonl", out))
    c.db.run(lambda s: batches._store(c, s, owner, "batch_1_error.jsonl", err))
    assert used(c, owner) == 0
    upload(c, owner, os.urandom(600 * KiB))
    assert used(c, owner) == 600 * KiB
    with pytest.raises(blob_quota.QuotaExceeded):  # stored already, but its upload counts
        upload(c, owner, out)
    assert used(c, owner) == 600 * KiB


def test_escrow_for_open_jobs_and_leases_counts_as_funds(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """10 DEAI, 9 of them escrowed for two open jobs, or 7.92 for a lease: still the full
    1 MiB quota, so the next job's input is taken. The escrow is read from at most
    ``ESCROW_READ`` open jobs. Before, escrowing cut the quota to the share of what was
    left (1 DEAI: 102 KiB), and a 100 KiB upload after a 600 KiB one got 413."""
    owner = key_with_money(c)
    first = upload(c, owner, os.urandom(600 * KiB))
    opened = [c.db.run(lambda s: admit_one(c, s, owner=owner, digest=first, price=1,
                                           escrow=45 * DEAI // 10, key=None))
              for _ in range(2)]
    upload(c, owner, os.urandom(100 * KiB))
    with c.db.read() as s:
        assert c.settlement.balances(s, [ledger.acct(owner)])[ledger.acct(owner)] == DEAI
        assert blob_quota.escrowed(s, owner) == 9 * DEAI
        assert blob_quota.quota_for(c, s, owner) == MiB
    monkeypatch.setattr(blob_quota, "ESCROW_READ", 1)
    with c.db.read() as s:
        assert blob_quota.quota_for(c, s, owner) == MiB * 55 // 100
    monkeypatch.undo()

    for jid in opened:  # ended: its escrow is back in the balance, counted there
        jobs.cancel(c, owner, jid)
    host = key()
    with c.db.write() as s:
        s.add(Provider(id=host, name="host", hardware={}, benchmark={}, registered_at=0.0,
                       last_seen=c.now(), capabilities={"sandbox": True}))
        s.flush()
        c.settlement.post(s, ledger.faucet(host, 10 * DEAI))
        c.settlement.post(s, ledger.bond(host, 10 * DEAI))
    leases.set_host(c, leases.LeaseConfig(), host, HostIn(
        cpus=2, memory_mb=4096, prices={"cpu": 360_000, "memory_gb": 36_000}))
    lease = leases.create(c, owner, LeaseIn(cpus=1, memory_mb=1024, hours=20,
                                            max_price_hour=DEAI))
    upload(c, owner, os.urandom(100 * KiB))
    with c.db.read() as s:
        assert blob_quota.escrowed(s, owner) == lease.escrow == 792 * DEAI // 100
        assert blob_quota.escrowed(s, host) == 0
    with pytest.raises(blob_quota.QuotaExceeded) as refused:
        upload(c, owner, os.urandom(300 * KiB))
    assert refused.value.details["quota"] == MiB


class FakeDisk:
    """A disk of ``size`` bytes holding the blob store's files (walked) and nothing else."""

    def __init__(self, size: int) -> None:
        self.size, self.broken = size, False

    def free(self, c: Coordinator) -> int:
        if self.broken:
            raise OSError(5, "Input/output error")
        held = sum(p.stat().st_size for p in c.blobs.root.rglob("*") if p.is_file())
        return self.size - held


def test_uploads_stop_at_the_disk_budget(c: Coordinator,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget (0: 80 % of the disk free at the first upload) refuses new bytes with
    507 naming the field, recording and storing nothing; bytes the account already holds
    are still taken (not bytes only another holds), and room comes back as the sweep
    deletes. A disk that cannot be read refuses too, never a 500. Before, uploads filled
    the disk."""
    disk = FakeDisk(1 * MiB)
    monkeypatch.setattr(blob_quota, "_free", disk.free)
    rich, other = key_with_money(c), key_with_money(c)
    first = os.urandom(500 * KiB)
    upload(c, rich, first)  # budget: 819 KiB
    late = os.urandom(400 * KiB)
    with pytest.raises(blob_quota.StorageFull) as refused:
        upload(c, other, late)
    assert refused.value.status == 507 and refused.value.field == "body"
    assert refused.value.code == "insufficient_storage"
    assert used(c, other) == 0 and not c.blobs.exists(hashlib.sha256(late).hexdigest())
    upload(c, rich, first)  # held already: no more disk
    with pytest.raises(blob_quota.StorageFull):  # stored, but only another account's: as
        upload(c, other, first)  # new bytes, or it would tell that someone stored them
    expire(c)  # its record runs out, the bytes go
    upload(c, other, late)
    disk.broken = True
    with pytest.raises(blob_quota.StorageFull):
        upload(c, rich, os.urandom(10))


def test_a_fixed_disk_budget(c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FakeDisk(100 * MiB)
    monkeypatch.setattr(blob_quota, "_free", disk.free)
    c.settings = replace(c.settings, blob_disk_budget=300 * KiB)
    rich = key_with_money(c)
    upload(c, rich, os.urandom(200 * KiB))
    with pytest.raises(blob_quota.StorageFull):
        upload(c, rich, os.urandom(200 * KiB))


def key_with_money(c: Coordinator) -> str:
    me = key()
    c.faucet(me, 10 * DEAI)
    return me


# --- a real coordinator, over loopback ---------------------------------------------------

TTL = 3.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("sybils"), heartbeat_timeout=120.0, verify=False,
                extra=("--blob-quota-bytes", str(MiB), "--blob-ttl", str(TTL)))
    n.env["DEAI_MAX_DATASETS_PER_OWNER"] = "3"
    n.start_coordinator()
    yield n
    n.close()


def dataset(ds: str, digest: str) -> dict[str, object]:
    return {"id": ds, "name": "junk", "blob_digest": digest, "size": 1,
            "owner_key": base64.b64encode(b"x" * 32).decode(),
            "terms": {"price_per_use": 0, "allow": ["embeddings"]}}


def test_sybils_and_dataset_churn_over_http(net: Network) -> None:
    """The reviewer's two attacks against a coordinator with a 1 MiB quota and a 3 s TTL:
    20 fresh keys each try 1 MiB (each refused, nothing on disk), and one funded account
    publishes an upload as a dataset, waits out the TTL and uploads again (refused: the
    dataset's bytes still count), then publishes past its cap of 3 (409, field ``id``)."""
    for _ in range(20):
        data = os.urandom(MiB - 100)
        r = put_blob(net, Identity.generate(), data)
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "blob_quota_exceeded" and err["field"] == "body"
        assert err["details"]["quota"] == 64 * KiB
        assert not blob_on_disk(net, hashlib.sha256(data).hexdigest())

    owner, control = funded(net), funded(net)
    digest = owner.upload(os.urandom(600 * KiB)).digest
    r = owner.request("POST", "/api/datasets", json_body=dataset("ds_" + "a" * 24, digest))
    assert r.status_code in (200, 201), r.text
    gone = control.upload(os.urandom(1000)).digest  # nothing keeps it: the sweep deletes it
    end = time.time() + 120
    while blob_on_disk(net, gone):  # the TTL passed and the sweep ran
        assert time.time() < end, net.logs()
        time.sleep(0.3)
    assert owner.identity is not None
    again = put_blob(net, owner.identity, os.urandom(600 * KiB))
    assert again.status_code == 413, again.text
    assert again.json()["error"]["details"]["used"] == 600 * KiB
    assert blob_on_disk(net, digest)

    for i in "bc":
        r = owner.request("POST", "/api/datasets",
                          json_body=dataset("ds_" + i * 24, digest))
        assert r.status_code in (200, 201), r.text
    with pytest.raises(DeAIError) as refused:
        owner.request("POST", "/api/datasets", json_body=dataset("ds_" + "d" * 24, digest))
    assert refused.value.status == 409 and refused.value.field == "id"
    assert refused.value.details == {"limit": 3}


def test_a_full_blob_store_answers_507_on_both_apis(tmp_path: Path) -> None:
    """With no disk budget left, new bytes are refused with 507 on ``PUT /api/blobs``
    and ``POST /v1/files`` (OpenAI's shape), and the coordinator goes on answering."""
    n = Network(tmp_path, heartbeat_timeout=120.0, verify=False)
    n.env["DEAI_BLOB_DISK_BUDGET"] = "1"
    n.start_coordinator()
    try:
        me = funded(n)
        assert me.identity is not None
        r = put_blob(n, me.identity, b"more than one byte")
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "insufficient_storage"
        assert r.json()["error"]["field"] == "body"
        api_key = me.create_api_key("full").key
        assert api_key is not None
        v1 = httpx.post(f"{n.url}/v1/files", files={"file": ("in.jsonl", b"{}\n")},
                        data={"purpose": "batch"},
                        headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        assert v1.status_code == 507, v1.text
        assert v1.json()["error"]["code"] == "insufficient_storage"
        assert httpx.get(f"{n.url}/health", timeout=10).status_code == 200
    finally:
        n.close()


def test_a_dataset_with_a_queued_audit_is_not_deleted(c: Coordinator) -> None:
    """A completed job on the dataset whose task waits for an audit (a look-back) keeps
    it: deleted, the audit's verifier could never read the rows, and the audit, asked
    again and again, held the job's earnings for ever. 409 ``in_use``, nothing changed;
    once the audit is done, the delete goes through."""
    owner, buyer = key(), key()
    c.faucet(owner, 10 * DEAI)
    c.faucet(buyer, 10 * DEAI)
    digest = upload(c, owner, b"a small ciphertext")
    publish(c, owner, "ds_" + "9" * 24, digest)

    def audited(s: Any) -> str:
        job, (task,) = admission.create(
            c, s, owner=buyer, kind="train", model="m", spec={}, input_digest="d" * 64,
            max_price=1, shards=[admission.ShardIn("e" * 64, 1, 1)], escrow=0, deadline=3600)
        job.status, task.status, task.pending_role = "completed", "done", "audit"
        s.add(DatasetUse(dataset_id="ds_" + "9" * 24, job_id=job.id, job_owner=buyer,
                         kind="train", price=1, royalty_seq=1, created_at=c.now()))
        return task.id

    task_id = c.db.run(audited)
    with pytest.raises(datasets.InUse) as busy:
        datasets.delete(c, owner, "ds_" + "9" * 24)
    assert (busy.value.status, busy.value.field, busy.value.details["audits"]) == (
        409, "dataset", 1)
    assert datasets.show(c, "ds_" + "9" * 24).deleted_at is None
    c.db.run(lambda s: s.execute(update(Task).where(Task.id == task_id)
                                 .values(pending_role=None)))
    assert datasets.delete(c, owner, "ds_" + "9" * 24).deleted_at is not None
