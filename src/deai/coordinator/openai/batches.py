"""OpenAI files and batches: a batch's input file runs as one DeAI job.

The input file is already DeAI's job input (OpenAI Batch JSONL); the batch's
endpoint picks the kind and its lines' ``body.model`` the model. The job is
priced at the highest price an online provider asks for the model (escrow),
and billed at the price of whoever runs each task. Once the job ends, its
output file is the job's assembled result (OpenAI batch output lines); for a
cancelled, failed or expired batch, the lines of the tasks that finished, with
an error file naming every request that did not.

A sealed batch (DeAI's extra field ``sealed``: the model and the parties): the
input file is the manifest of a sealed job (``core.sealed``), sealed and
uploaded by the client (``deai.client.sealed_batches``), and the batch runs as
that sealed job; the coordinator reads neither the requests nor the answers.
Its output file is the sealed job's result file, which the client decrypts;
the error file of a sealed batch that did not complete names the job's error
once, as no request's ``custom_id`` can be read.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from deai.coordinator import admission, blob_quota, idempotency, jobs
from deai.coordinator.openai import gateway, keys
from deai.coordinator.openai import schemas as S
from deai.coordinator.openai.errors import ApiError
from deai.coordinator.service import Coordinator
from deai.core import batch, catalog, kinds, sealed, wire
from deai.core.errors import InvalidInput, NotFound
from deai.core.lifecycle import JOB_ACTIVE, JobStatus, TaskStatus
from deai.store.blobs import digest_of
from deai.store.models import ApiBatch, ApiFile, Job, Task

KINDS = {url: kind for kind, url in gateway.URLS.items()}
WINDOWS = {"24h": 24 * 3600}


def _file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def file_out(f: ApiFile) -> S.FileOut:
    return S.FileOut(id=f.id, bytes=f.size, created_at=int(f.created_at), filename=f.filename,
                     purpose=f.purpose)


MAX_LIVE_FILES = 10_000  # uploaded files an account may keep: each is a row and a listing
# entry, the same bytes uploaded again cost no quota, and accounts cost nothing to make


def _room_for_a_file(s: Session, account: str) -> None:
    live = s.scalar(select(func.count()).select_from(ApiFile).where(
        ApiFile.account == account, ApiFile.purpose == "batch")) or 0
    if live >= MAX_LIVE_FILES:
        raise ApiError(409, f"This account keeps {live} uploaded files, the most it may "
                            f"({MAX_LIVE_FILES}); delete one first.", code="files_limit",
                       param="file")


def upload(c: Coordinator, account: str, filename: str, purpose: str, data: bytes,
           hook: idempotency.Hook | None = None) -> S.FileOut:
    """``hook``: called with the new file's id in the transaction that records it. Refused
    (409) once the account keeps ``MAX_LIVE_FILES`` uploads."""
    if purpose != "batch":
        raise ApiError(400, f"purpose {purpose!r} is not supported; use 'batch'",
                       param="purpose")
    if not data:
        raise ApiError(400, "the file is empty", param="file")
    with c.db.read() as s:  # before any byte is kept; counted again below, under a lock
        _room_for_a_file(s, account)
    blob_quota.admit(c, account, digest_of(data), len(data), field="file")
    digest = c.blobs.put(data)
    with c.db.write() as s:
        if not c.db.is_sqlite:  # one account's uploads, one at a time (SQLite: always)
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                      {"k": f"api-files:{account}"})
        _room_for_a_file(s, account)
        row = ApiFile(id=_file_id(), account=account, purpose=purpose,
                      filename=_name(filename), size=len(data), digest=digest,
                      created_at=c.now())
        s.add(row)
        if hook is not None:
            hook(s, row.id)
        return file_out(row)


def _name(filename: str) -> str:
    """The name a file is kept under: control characters dropped (PostgreSQL's text
    columns refuse NUL), 255 characters at most."""
    return "".join(ch for ch in filename if ch >= " " and ch != "\x7f")[:255] or "upload.jsonl"


def _own_file(s: Session, account: str, file_id: str) -> ApiFile:
    row = s.get(ApiFile, file_id)
    if row is None or row.account != account:
        raise NotFound(f"No such File object: {file_id}", field="file_id")
    return row


def get_file(c: Coordinator, account: str, file_id: str) -> S.FileOut:
    with c.db.read() as s:
        return file_out(_own_file(s, account, file_id))


def file_content(c: Coordinator, account: str, file_id: str) -> tuple[int, Iterator[bytes]]:
    """The file's length and its bytes, read from disk as they are sent (``stream``)."""
    with c.db.read() as s:
        digest = _own_file(s, account, file_id).digest
    try:
        return c.blobs.stream(digest)
    except FileNotFoundError:  # deleted since (the file with it): as if never there
        raise NotFound(f"No such File object: {file_id}", field="file_id") from None


# --- batches ------------------------------------------------------------------------------

def _model(data: bytes) -> str:
    for _, obj in batch.jsonl(data):
        body = obj.get("body") if isinstance(obj, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            return model
        break
    raise ApiError(400, "the input file's first line needs body.model", param="input_file_id")


def create(c: Coordinator, key: keys.KeyInfo, body: S.BatchIn,
           hook: idempotency.Hook | None = None) -> S.BatchOut:
    """``hook``: called with the batch's id in the transaction that escrows its job."""
    kind_name = KINDS.get(body.endpoint)
    if kind_name is None:
        raise ApiError(400, f"endpoint {body.endpoint!r} is not supported; use "
                            f"{' or '.join(sorted(KINDS))}", param="endpoint")
    window = WINDOWS.get(body.completion_window)
    if window is None:
        raise ApiError(400, "completion_window must be 24h", param="completion_window")
    with c.db.read() as s:
        f = _own_file(s, key.account, body.input_file_id)
        digest = f.digest
    data = c.blobs.get(digest)
    name = body.sealed.model if body.sealed is not None else _model(data)
    model = catalog.lookup(name, field="model", workload=kind_name).name
    if body.sealed is not None:  # its parties named as keys before they are priced
        try:
            kinds.get(kind_name).parse_spec({
                "kind": kind_name, "model": model, "max_price": 0, "deadline": window,
                "sealed": True, "sealed_for": body.sealed.sealed_for})
        except InvalidInput as exc:
            raise ApiError(400, exc.message, param=exc.field) from None
    # UnknownModel: nobody serves it. A sealed batch runs only on its parties: priced by
    # theirs (its client chose them), or none of them would ever be offered it.
    price = gateway.going_price(c, kind_name, model, frozenset(body.sealed.sealed_for)
                                if body.sealed is not None else None)
    kind = kinds.get(kind_name)
    spec: dict[str, Any] = {"kind": kind_name, "model": model, "max_price": price,
                            "deadline": window}
    if body.sealed is not None:  # the file is a manifest: admitted as a sealed job
        spec.update(sealed=True, sealed_for=body.sealed.sealed_for)
    else:
        try:
            shards = kind.split(kind.parse_spec(spec), data)
        except InvalidInput as exc:
            raise ApiError(400, exc.message, param=exc.field) from None
        del shards  # split only to refuse a bad file with OpenAI's error; submit splits again
    batch_id = f"batch_{secrets.token_hex(12)}"

    def record(s: Session, job: Job) -> None:  # in the transaction that escrows the job
        s.add(ApiBatch(id=batch_id, account=key.account, api_key_id=key.id,
                       endpoint=body.endpoint, input_file_id=body.input_file_id, job_id=job.id,
                       completion_window=body.completion_window, meta=body.metadata,
                       created_at=c.now()))
        if hook is not None:
            hook(s, batch_id)

    jobs.submit(c, key.account, wire.JobIn(spec=spec, input_digest=digest),
                key=admission.KeyUse(key.id, "batch"), then=record)
    with c.db.write() as s:
        row = s.get(ApiBatch, batch_id)
        assert row is not None
        return _view(c, s, row)


def get(c: Coordinator, account: str, batch_id: str) -> S.BatchOut:
    with c.db.write() as s:  # a batch that just ended gets its output files here
        return _view(c, s, _own_batch(s, account, batch_id))


def list_batches(c: Coordinator, account: str, after: str | None, limit: int) -> S.BatchList:
    with c.db.write() as s:
        q = select(ApiBatch).where(ApiBatch.account == account)
        if after:
            cursor = s.get(ApiBatch, after)
            if cursor is not None and cursor.account == account:  # another's: not a hint
                q = q.where((ApiBatch.created_at < cursor.created_at) | (
                    (ApiBatch.created_at == cursor.created_at) & (ApiBatch.id < cursor.id)))
        rows = s.scalars(q.order_by(ApiBatch.created_at.desc(), ApiBatch.id.desc())
                         .limit(limit + 1)).all()
        data = [_view(c, s, r) for r in rows[:limit]]
    return S.BatchList(data=data, first_id=data[0].id if data else None,
                       last_id=data[-1].id if data else None, has_more=len(rows) > limit)


def cancel(c: Coordinator, account: str, batch_id: str) -> S.BatchOut:
    with c.db.read() as s:
        row = _own_batch(s, account, batch_id)
        job_id = row.job_id
    jobs.cancel(c, account, job_id)  # 409 if it already ended
    with c.db.write() as s:
        row = _own_batch(s, account, batch_id)
        row.cancelling_at = c.now()
        return _view(c, s, row)


def _own_batch(s: Session, account: str, batch_id: str) -> ApiBatch:
    row = s.get(ApiBatch, batch_id)
    if row is None or row.account != account:
        raise NotFound(f"No such Batch object: {batch_id}", field="batch_id")
    return row


def _status(b: ApiBatch, job: Job) -> str:
    if job.status in JOB_ACTIVE:
        return "cancelling" if b.cancelling_at is not None else "in_progress"
    if job.status == JobStatus.FAILED and job.error and "deadline" in job.error:
        return "expired"
    return job.status


def _view(c: Coordinator, s: Session, b: ApiBatch) -> S.BatchOut:
    job = s.get(Job, b.job_id)
    assert job is not None
    status = _status(b, job)
    done = sum(t.items for t in s.scalars(select(Task).where(Task.job_id == job.id,
                                                             Task.status == TaskStatus.DONE)))
    ended = job.status not in JOB_ACTIVE
    if ended and b.output_file_id is None and b.error_file_id is None:
        # Locked and read again: two reads of a batch that just ended (PostgreSQL lets
        # them overlap) would each write its files; the second finds them written.
        s.refresh(b, with_for_update=True)
        if b.output_file_id is None and b.error_file_id is None:
            _finalize(c, s, b, job, status)
    t = int(job.finished_at) if job.finished_at is not None else None
    errors = None
    if job.status == JobStatus.FAILED and job.error:
        errors = S.BatchErrors(data=[S.BatchError(code=status, message=job.error)])
    return S.BatchOut(
        id=b.id, endpoint=b.endpoint, errors=errors, input_file_id=b.input_file_id,
        completion_window=b.completion_window, status=status, output_file_id=b.output_file_id,
        error_file_id=b.error_file_id, created_at=int(b.created_at),
        in_progress_at=int(b.created_at), expires_at=int(b.created_at) + WINDOWS.get(
            b.completion_window, 86400),
        finalizing_at=t if job.status == JobStatus.COMPLETED else None,
        completed_at=t if status == "completed" else None,
        failed_at=t if status == "failed" else None,
        expired_at=t if status == "expired" else None,
        cancelling_at=int(b.cancelling_at) if b.cancelling_at is not None else None,
        cancelled_at=t if status == "cancelled" else None,
        request_counts=S.RequestCounts(total=job.items, completed=done,
                                       failed=job.items - done if ended else 0),
        metadata=b.meta, model=job.model)


def _finalize(c: Coordinator, s: Session, b: ApiBatch, job: Job, status: str) -> None:
    """Write the output file (finished requests) and the error file (the others)."""
    kind = kinds.get(job.kind)
    if sealed.is_sealed(job.spec):
        _finalize_sealed(c, s, b, job, status)
        return
    if job.status == JobStatus.COMPLETED and job.output_digest:
        output = c.blobs.get(job.output_digest)
    else:
        digests = s.scalars(select(Task.output_digest).where(
            Task.job_id == job.id, Task.status == TaskStatus.DONE).order_by(Task.idx)).all()
        outs = [c.blobs.get(d) for d in digests if d]
        output = kind.assemble(job.id, kind.parse_spec(job.spec), outs) if outs else b""
    finished = {obj.get("custom_id") for _, obj in batch.jsonl(output, "output")}
    data = c.blobs.get(job.input_digest)
    missing = [obj["custom_id"] for _, obj in batch.jsonl(data)
               if obj["custom_id"] not in finished]
    code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(status,
                                                                           "batch_failed")
    errors = b"".join(batch.dumps(_error_line(b.id, cid, code, job.error or status))
                      for cid in missing)
    if output:
        b.output_file_id = _store(c, s, b.account, f"{b.id}_output.jsonl", output)
    if errors:
        b.error_file_id = _store(c, s, b.account, f"{b.id}_error.jsonl", errors)


def _finalize_sealed(c: Coordinator, s: Session, b: ApiBatch, job: Job, status: str) -> None:
    """A sealed batch's output file is its job's sealed result file (only the client and the
    set can open it); without one, the error file states the job's error once."""
    if job.status == JobStatus.COMPLETED and job.output_digest:
        b.output_file_id = _store(c, s, b.account, f"{b.id}_output.jsonl",
                                  c.blobs.get(job.output_digest))
        return
    code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(status,
                                                                           "batch_failed")
    line = {"id": f"{b.id}-sealed", "custom_id": None, "response": None,
            "error": {"code": code, "message": job.error or status}}
    b.error_file_id = _store(c, s, b.account, f"{b.id}_error.jsonl", batch.dumps(line))


def _error_line(batch_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": f"{batch_id}-{custom_id}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def _store(c: Coordinator, s: Session, account: str, name: str, data: bytes) -> str:
    row = ApiFile(id=_file_id(), account=account, purpose="batch_output", filename=name,
                  size=len(data), digest=blob_quota.hold(c, s, data), created_at=c.now())
    s.add(row)
    return row.id
