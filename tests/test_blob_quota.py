"""Per-account blob quotas and the expiry of uploads nothing uses.

A coordinator with a 1,000-byte quota and a 3-second upload TTL: an unfunded
key fills its quota and is refused (413 naming the field), nothing stored; a
blob it already holds costs nothing more; once the TTL passes the leader's
retention loop deletes the unused upload (from the database and the disk) and
the quota is free again, while a blob a job uses stays, readable by its owner.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import blob_quota
from deai.coordinator.service import Coordinator
from deai.core import batch
from deai.store.models import ApiFile
from tests.helpers import MODEL, SPEC, HandProvider, blob_on_disk, funded, lines, put_blob
from tests.netutil import Network
from tests.races import ENGINES, coordinator, gate, race

QUOTA = 1000
TTL = 3.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(tmp_path_factory.mktemp(f"blobq-{request.param}"), url,
                heartbeat_timeout=120.0, verify=False,
                extra=("--blob-quota-bytes", str(QUOTA), "--blob-ttl", str(TTL)))
    n.start_coordinator()
    yield n
    n.close()


def get(net: Network, me: Identity, digest: str) -> httpx.Response:
    path = f"/api/blobs/{digest}"
    headers = me.headers("GET", path, b"", network=net.network_id)
    return httpx.get(f"{net.url}{path}", headers=headers, timeout=30)


def test_an_unfunded_key_is_held_to_its_quota_until_uploads_expire(net: Network) -> None:
    owner = funded(net)  # a job's input: kept past the TTL because the job uses it
    HandProvider(net)
    kept = lines(2)
    kept_digest = owner.upload(kept).digest
    job = owner.submit_job(SPEC, kept_digest)

    me = Identity.generate()  # never funded
    a, b = b"a" * 600, b"b" * 600
    first = put_blob(net, me, a)
    assert first.status_code == 201, first.text
    again = put_blob(net, me, a)  # already held: not counted twice
    assert again.status_code == 201, again.text
    over = put_blob(net, me, b)
    assert over.status_code == 413, over.text
    err = over.json()["error"]
    assert err["code"] == "blob_quota_exceeded" and err["field"] == "body"
    assert err["details"]["quota"] == QUOTA and err["details"]["used"] == 600
    digest_b = hashlib.sha256(b).hexdigest()
    assert not blob_on_disk(net, digest_b)  # refused before anything was stored

    digest_a = first.json()["digest"]
    end = time.time() + 120
    while blob_on_disk(net, digest_a):  # the retention loop deletes the unused upload
        assert time.time() < end, net.logs()
        time.sleep(0.3)
    assert get(net, me, digest_a).status_code == 404
    assert put_blob(net, me, b).status_code == 201  # the quota is free again

    # The job's input outlived its upload record: still there, still its owner's to read.
    assert blob_on_disk(net, kept_digest)
    assert owner.download(kept_digest) == kept
    assert owner.job(job.id).status in ("pending", "running")


def test_a_command_jobs_files_outlive_their_uploads_and_are_its_owners_alone(
        net: Network) -> None:
    """A command job names a file by digest, uploaded before it. Past the upload's TTL
    the file stays (the job uses it: ``job_blobs``) and its owner may still read it.
    Before, nothing but the upload's record named it: the sweep deleted it under a job
    that may run for seven days, and its owner lost the right to read it. A job naming
    a file its owner may not read is refused at submission, naming the field, with no
    money moved; before, it was admitted and failed on the provider."""
    from deai.core.errors import NotFound

    owner, mallory = funded(net), funded(net)
    HandProvider(net, price=100, offer=("command", "bwrap-sandbox"))  # the job can be placed
    data = b"rows the command reads\n"
    digest = owner.upload(data).digest
    spec = {"kind": "command", "model": "bwrap-sandbox", "max_price": 500, "deadline": 600,
            "cpu_seconds": 1}
    cmd = {"custom_id": "c", "script": "wc -l in.txt", "files": {"in.txt": {"digest": digest}}}
    inp = json.dumps(cmd).encode() + b"\n"
    job = owner.submit_job(spec, owner.upload(inp).digest)

    before, head = mallory.balance(), mallory.journal(limit=1).head_seq
    with pytest.raises(NotFound) as info:
        mallory.submit_job(spec, mallory.upload(inp).digest)
    assert info.value.field == "input.files"
    assert mallory.balance() == before and mallory.journal(limit=1).head_seq == head

    probe = owner.upload(b"uploaded after the file, used by nothing").digest
    end = time.time() + 120
    while blob_on_disk(net, probe):  # a sweep past both uploads' time has run
        assert time.time() < end, net.logs()
        time.sleep(0.3)
    assert blob_on_disk(net, digest) and owner.download(digest) == data
    assert owner.job(job.id).status in ("pending", "running")


def test_v1_files_count_and_a_deleted_file_frees_its_bytes(net: Network) -> None:
    owner = funded(net)
    key = owner.create_api_key("quota").key
    assert key is not None
    line = batch.dumps({"custom_id": "r0", "method": "POST", "url": "/v1/embeddings",
                        "body": {"model": MODEL, "input": "x" * 500}})
    with httpx.Client(base_url=net.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as h:
        def upload(data: bytes) -> httpx.Response:
            return h.post("/v1/files", files={"file": ("in.jsonl", data)},
                          data={"purpose": "batch"})

        ok = upload(line)
        assert ok.status_code == 200, ok.text
        other = line.replace(b'"r0"', b'"r1"')
        over = upload(other)
        assert over.status_code == 413, over.text
        assert over.json()["error"]["param"] == "file"
        assert over.json()["error"]["code"] == "blob_quota_exceeded"
        digest = hashlib.sha256(line).hexdigest()
        assert blob_on_disk(net, digest)
        assert h.delete(f"/v1/files/{ok.json()['id']}").status_code == 200
        end = time.time() + 120
        while blob_on_disk(net, digest):  # gone with its file once its upload record expires
            assert time.time() < end, net.logs()
            time.sleep(0.3)
        assert upload(other).status_code == 200


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def test_a_blob_uploaded_again_while_it_is_discarded_keeps_its_bytes(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retention loop finds a blob nothing uses and deletes it; at that moment its
    account uploads the same bytes again (the upload route: recorded, then stored,
    which finds the file there and writes nothing). The upload keeps its bytes: before,
    the delete that followed the loop's check took them from under its record."""
    data = b"the same bytes, uploaded twice"
    digest = c.blobs.put(data)
    me = "ab" * 32
    checked, uploaded, in_use = gate(), gate(), blob_quota.in_use

    def check_then_wait(*args: Any) -> set[str]:
        got = in_use(*args)
        checked()  # the upload starts after this check...
        uploaded()  # ...and is done before the delete
        return got

    monkeypatch.setattr(blob_quota, "in_use", check_then_wait)

    def upload() -> None:
        checked()
        blob_quota.admit(c, me, digest, len(data))
        assert c.blobs.put(data) == digest
        uploaded()

    assert race(lambda: blob_quota.discard_if_unused(c, [digest]), upload) == []
    assert c.blobs.get(digest) == data


def test_an_output_file_written_while_its_bytes_are_discarded_keeps_them(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race for a row the coordinator writes itself that names stored bytes (a
    batch's output file, a volume's snapshot), later: the discard has checked again,
    holding the bytes, and is about to delete them when the file is written. Held
    (``blob_quota.hold``), the write waits, then stores the bytes again; stored first
    and named without the hold, they were deleted under the new row."""
    data = b"an output that happens to equal bytes being discarded"
    digest = c.blobs.put(data)
    checked, written, path, first = gate(), gate(), c.blobs.path, [True]

    def about_to_delete(d: str) -> Any:
        if first.pop() if first else False:  # the discard's call, before it deletes
            checked()  # the discard has checked again and holds the bytes...
            written()  # ...and deletes once the file is written (or 2 s have passed)
        return path(d)

    monkeypatch.setattr(c.blobs, "path", about_to_delete)

    def write_file(s: Any) -> None:
        s.add(ApiFile(id="file-held", account="ab" * 32, purpose="batch_output",
                      filename="out.jsonl", size=len(data),
                      digest=blob_quota.hold(c, s, data), created_at=c.now()))

    def output() -> None:
        checked()
        c.db.run(write_file)
        written()

    assert race(lambda: blob_quota.discard_if_unused(c, [digest]), output) == []
    monkeypatch.undo()
    assert c.blobs.get(digest) == data


def _file(c: Coordinator, data: bytes, fid: str) -> str:
    """A /v1 file of ``data``, as a batch's output is written; returns its digest."""
    def body(s: Any) -> str:
        digest = blob_quota.hold(c, s, data)
        s.add(ApiFile(id=fid, account="ab" * 32, purpose="batch_output", filename="o.jsonl",
                      size=len(data), digest=digest, created_at=c.now()))
        return digest

    return c.db.run(body)


def _graves(c: Coordinator) -> set[str]:
    from sqlalchemy import select

    from deai.store.models import BlobRef
    with c.db.read() as s:
        return set(s.scalars(select(BlobRef.digest).where(BlobRef.account == blob_quota.GRAVE)))


def test_a_deletion_that_fails_after_the_commit_is_retried_by_the_next_sweep(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is deleted and the deletion of its bytes then fails (or the process dies
    before it runs): the request still succeeds, and the bytes are not left on disk for
    good: their grave, written with the file's removal, has the next sweep delete them.
    Before, nothing named them any more and nothing would look at them again."""
    from deai.coordinator.openai import files
    data = b"bytes whose deletion fails the first time"
    digest = _file(c, data, "file-failing")
    real = blob_quota._discard

    def fails(*args: Any, **kw: Any) -> int:
        raise OSError("EIO: the disk said no")

    monkeypatch.setattr(blob_quota, "_discard", fails)
    assert files.delete(c, "ab" * 32, "file-failing").deleted  # no 500 for the client
    assert c.blobs.exists(digest) and _graves(c) == {digest}
    monkeypatch.setattr(blob_quota, "_discard", real)
    assert blob_quota.sweep(c) == 1
    assert not c.blobs.exists(digest) and _graves(c) == set()


def test_a_grave_of_bytes_still_in_use_keeps_them_and_goes(c: Coordinator) -> None:
    """Bytes buried by one row and still named by another (two files of the same
    output) stay; the grave goes, and the last file's removal buries them again."""
    from deai.coordinator.openai import files
    data = b"the same output, twice"
    digest = _file(c, data, "file-a")
    assert _file(c, data, "file-b") == digest
    files.delete(c, "ab" * 32, "file-a")
    assert c.blobs.exists(digest) and _graves(c) == set()
    c.db.run(lambda s: blob_quota.bury(s, [digest]))  # as a crash before the discard left it
    assert blob_quota.sweep(c) == 0
    assert c.blobs.exists(digest) and _graves(c) == set()
    files.delete(c, "ab" * 32, "file-b")
    assert not c.blobs.exists(digest) and _graves(c) == set()


def test_one_blob_that_cannot_be_deleted_stops_no_other(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graves are swept a page at a time, a failing page logged and skipped: the other
    pages' bytes are deleted in the same sweep, the failing one's in a later sweep."""
    bad = c.blobs.put(b"this one fails")
    good = [c.blobs.put(f"this one goes {i}".encode()) for i in range(3)]
    c.db.run(lambda s: blob_quota.bury(s, [bad, *good]))
    monkeypatch.setattr(blob_quota, "SWEEP_BATCH", 1)
    real = blob_quota._discard

    def fails_on_bad(c: Coordinator, s: Any, *, unused: list[str],
                     burials: dict[str, int]) -> int:
        if bad in burials:
            raise RuntimeError("a page that fails as a whole")
        return real(c, s, unused=unused, burials=burials)

    monkeypatch.setattr(blob_quota, "_discard", fails_on_bad)
    assert blob_quota.sweep(c) == 3
    assert c.blobs.exists(bad) and not any(map(c.blobs.exists, good))
    assert _graves(c) == {bad}
    monkeypatch.setattr(blob_quota, "_discard", real)
    assert blob_quota.sweep(c) == 1
    assert not c.blobs.exists(bad) and _graves(c) == set()


def test_a_file_that_cannot_be_deleted_keeps_its_grave_and_stops_no_other(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one page, a file the disk refuses to delete keeps its grave; the others
    are deleted with theirs. Before, its error rolled the whole page back."""
    stuck = c.blobs.put(b"the disk will not let this one go")
    rest = [c.blobs.put(f"these go {i}".encode()) for i in range(3)]
    c.db.run(lambda s: blob_quota.bury(s, [stuck, *rest]))
    path = c.blobs.path

    class Stuck(type(path(stuck))):  # type: ignore[misc]
        def unlink(self, missing_ok: bool = False) -> None:
            raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(c.blobs, "path", lambda d: Stuck(path(d)) if d == stuck else path(d))
    assert blob_quota.sweep(c) == 3
    assert c.blobs.exists(stuck) and not any(map(c.blobs.exists, rest))
    assert _graves(c) == {stuck}


def test_bytes_buried_again_while_a_discard_found_them_in_use_keep_their_grave(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A discard reads, on its snapshot, that a file still names the bytes. Before it
    removes their grave, the file is deleted and the bytes buried again, and that
    process dies before its own discard. The grave stays (it was buried again since
    the snapshot), and the next sweep deletes the bytes. Before, the discard removed
    it, and nothing named the bytes any more."""
    data = b"named by two files, then by none"
    digest = _file(c, data, "file-1")
    _file(c, data, "file-2")
    real = blob_quota._burials

    def then_the_other_file_goes(s: Any, digests: list[str]) -> dict[str, int]:
        got = real(s, digests)

        def drop(t: Any) -> None:
            t.delete(t.get(ApiFile, "file-2"))
            blob_quota.bury(t, [digest])  # ...and its process dies before discarding
        c.db.run(drop)
        return got

    from deai.coordinator.openai import files
    monkeypatch.setattr(blob_quota, "_burials", then_the_other_file_goes)
    files.delete(c, "ab" * 32, "file-1")  # its discard finds file-2 on its snapshot
    monkeypatch.undo()
    assert c.blobs.exists(digest) and _graves(c) == {digest}
    assert blob_quota.sweep(c) == 1
    assert not c.blobs.exists(digest) and _graves(c) == set()


def test_a_dataset_keeps_its_bytes_after_its_upload_record_runs_out(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset names its ciphertext, uploaded by its owner. When the upload's record
    runs out, the sweep leaves the bytes: the dataset uses them. Before, nothing but the
    record did, and the sweep deleted the dataset's content. A dataset whose bytes a
    discard took between the owner's check and its row is refused, naming the field."""
    from sqlalchemy import update

    from deai.coordinator import access, datasets
    from deai.core import wire_datasets as W
    from deai.core.datasets import Terms
    from deai.core.errors import InvalidInput
    from deai.store.models import BlobRef

    owner = "cd" * 32

    def upload(data: bytes) -> str:
        digest = c.blobs.put(data)
        blob_quota.admit(c, owner, digest, len(data))
        return digest

    def publish(ds: str, digest: str) -> None:
        datasets.publish(c, owner, W.DatasetIn(
            id=ds, name="rows", blob_digest=digest, size=100, owner_key="a2V5",
            terms=Terms(price_per_use=1, allow=("embeddings",))))

    def expire() -> None:
        c.db.run(lambda s: s.execute(update(BlobRef).values(
            created_at=c.now() - c.settings.blob_ttl - 1)))

    kept = upload(b"a dataset's ciphertext")
    publish("ds_" + "1" * 24, kept)
    expire()
    blob_quota.sweep(c)
    assert c.blobs.exists(kept) and datasets.content(c, owner, "ds_" + "1" * 24)
    late = upload(b"another ciphertext")
    checked = access.require_own_blobs

    def then_its_record_runs_out(*args: Any) -> None:
        checked(*args)  # the owner uploaded it...
        expire()
        blob_quota.sweep(c)  # ...and then the sweep deletes it: nothing else uses it

    monkeypatch.setattr(access, "require_own_blobs", then_its_record_runs_out)
    with pytest.raises(InvalidInput, match="blob_digest"):
        publish("ds_" + "2" * 24, late)
    assert not c.blobs.exists(late)


def test_an_upload_made_again_starts_its_time_again(c: Coordinator) -> None:
    """Uploading bytes the account already holds renews its record: the sweep that runs
    out the first upload's time leaves the bytes of the second."""
    from sqlalchemy import update

    from deai.store.models import BlobRef

    me, data = "ef" * 32, b"uploaded twice, a day apart"
    digest = c.blobs.put(data)
    blob_quota.admit(c, me, digest, len(data))
    c.db.run(lambda s: s.execute(update(BlobRef).values(
        created_at=c.now() - c.settings.blob_ttl - 1)))
    blob_quota.admit(c, me, digest, len(data))
    assert blob_quota.sweep(c) == 0 and c.blobs.exists(digest)


def test_a_job_names_a_bounded_number_of_files(c: Coordinator) -> None:
    """Distinct files named by digest are bounded per job: past the bound the job is
    refused, naming the field, before anything is read for each of them."""
    from deai.coordinator import jobs
    from deai.core import wire
    from deai.core.errors import InvalidInput

    many = [{"custom_id": f"m{n}", "script": "true",
             "files": {f"f{i}": {"digest": f"{n:02x}{i:062x}"} for i in range(600)}}
            for n in range(2)]
    assert jobs.MAX_NAMED_BLOBS < 2 * 600
    data = b"".join(json.dumps(m).encode() + b"\n" for m in many)
    spec = {"kind": "command", "model": "bwrap-sandbox", "max_price": 500, "deadline": 600,
            "cpu_seconds": 1}
    with pytest.raises(InvalidInput) as bad:
        jobs.submit(c, "ab" * 32, wire.JobIn(spec=spec, input_digest=c.blobs.put(data)))
    assert bad.value.field == "input.files"


@pytest.mark.parametrize("column", ["output_digest", "input_digest"])
def test_bytes_an_assignment_names_are_checked_again_under_the_hold(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch, column: str) -> None:
    """A result sent inline and a check's payload are stored by the coordinator in the
    transaction that writes the assignment naming them, under the bytes' hold. A discard
    that read before that row existed (here: its snapshot found nothing using the bytes)
    checks again under the hold and finds the assignment, so it keeps them; before,
    ``HELD_BY`` left the assignments out and the only copy of an accepted result went."""
    from sqlalchemy import text

    data = f"a result equal to bytes being discarded ({column})".encode()
    digest = c.blobs.put(data)

    def rows(s: Any) -> None:
        s.execute(text(
            "INSERT INTO providers (id, name, hardware, benchmark, compute_units, threads, "
            "slots, status, registered_at, last_seen, reputation, tasks_done, capabilities, "
            "operator, origin, fingerprint) VALUES ('p1', 'p', '{}', '{}', 1.0, 1, 1, "
            "'active', 0, 0, 0.5, 0, '{}', 'p1', '', '')"))
        s.execute(text(
            "INSERT INTO jobs (id, owner, status, kind, model, spec, input_digest, items, "
            "units, max_price, escrow, cost, refunded, created_at, deadline_at) VALUES "
            "('j1', 'o', 'running', 'embeddings', 'm', '{}', 'd', 1, 1, 1, 0, 0, 0, 0, 1)"))
        s.execute(text(
            "INSERT INTO tasks (id, job_id, idx, status, input_digest, items, units, "
            "attempts, updated_at) VALUES ('t1', 'j1', 0, 'assigned', 'd', 1, 1, 1, 0)"))
        digest_of_held = blob_quota.hold(c, s, data)
        s.execute(text(
            f"INSERT INTO assignments (id, task_id, job_id, provider_id, role, status, price, "
            f"leased_at, lease_deadline, delivered, {column}) VALUES ('a1', 't1', 'j1', "
            f"'p1', 'primary', 'submitted', 1, 0, 1, true, :d)"), {"d": digest_of_held})

    c.db.run(rows)
    monkeypatch.setattr(blob_quota, "in_use", lambda s, digests: set())  # read before it
    assert blob_quota.discard_if_unused(c, [digest]) == 0
    assert c.blobs.get(digest) == data


def test_a_result_refused_leaves_no_bytes_behind(net: Network) -> None:
    """An inline result is stored only for a lease that is the caller's and live: before,
    any key could post one for a made-up assignment and leave up to 64 KiB on disk each
    time, recorded nowhere, so neither the quota nor the sweep ever saw them."""
    import base64
    import hashlib

    from deai.core import auth, wire
    from deai.core.errors import DeAIError

    me = Identity.generate()
    c = Client(net.url, me)
    for n in range(3):
        out = f"bytes nobody asked for {n}".encode() * 100
        digest = hashlib.sha256(out).hexdigest()
        sig = me.sign(auth.result_message("asg_nope", digest, 1))
        with pytest.raises(DeAIError) as refused:
            c.submit_result("asg_nope", wire.ResultIn(
                output_digest=digest, units=1, signature=sig,
                output_b64=base64.b64encode(out).decode()))
        assert refused.value.status == 404
        assert not blob_on_disk(net, digest)
