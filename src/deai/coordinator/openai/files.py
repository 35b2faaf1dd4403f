"""OpenAI files: listing and deleting (upload, retrieve and content are in ``batches``).

``list_files`` pages an account's files newest first, as OpenAI does
(``after`` a file id, ``limit`` 1 to 10,000, ``order`` desc or asc, optional
``purpose``). ``delete`` removes the file's record, so it is no longer listed
or readable; its bytes stay in the content-addressed blob store while a batch's
job (or anything else) still uses them (blobs are shared by digest), and are
deleted once nothing does (``blob_quota``). Deleting a file a batch used does
not change the batch.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select

from deai.coordinator import blob_quota
from deai.coordinator.openai import batches
from deai.coordinator.openai import schemas as S
from deai.coordinator.service import Coordinator
from deai.core.errors import NotFound
from deai.store.models import ApiFile


def list_files(c: Coordinator, account: str, after: str | None, limit: int,
               order: Literal["asc", "desc"], purpose: str | None) -> S.FileList:
    with c.db.read() as s:
        q = select(ApiFile).where(ApiFile.account == account)
        if purpose:
            q = q.where(ApiFile.purpose == purpose)
        cursor = s.get(ApiFile, after) if after else None
        if cursor is not None and cursor.account == account:
            if order == "desc":
                q = q.where((ApiFile.created_at < cursor.created_at) | (
                    (ApiFile.created_at == cursor.created_at) & (ApiFile.id < cursor.id)))
            else:
                q = q.where((ApiFile.created_at > cursor.created_at) | (
                    (ApiFile.created_at == cursor.created_at) & (ApiFile.id > cursor.id)))
        keys = (ApiFile.created_at.desc(), ApiFile.id.desc()) if order == "desc" else (
            ApiFile.created_at.asc(), ApiFile.id.asc())
        rows = s.scalars(q.order_by(*keys).limit(limit + 1)).all()
        data = [batches.file_out(r) for r in rows[:limit]]
    return S.FileList(data=data, first_id=data[0].id if data else None,
                      last_id=data[-1].id if data else None, has_more=len(rows) > limit)


def delete(c: Coordinator, account: str, file_id: str) -> S.FileDeleted:
    with c.db.write() as s:
        row = s.get(ApiFile, file_id)
        if row is None or row.account != account:
            raise NotFound(f"No such File object: {file_id}", field="file_id")
        digest = row.digest
        s.delete(row)
        blob_quota.bury(s, [digest])
    blob_quota.discard_quietly(c, [digest])  # the bytes too, unless something uses them
    return S.FileDeleted(id=file_id)
