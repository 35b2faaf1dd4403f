"""Routes for the network, accounts, blobs and the ledger (native API under /api).

Blobs are private: ``PUT /api/blobs`` records the uploader, and ``GET
/api/blobs/{digest}`` answers only a signed request from an account that
``access`` lets read it (uploader, owner of a job using it, provider with a live
lease that needs it); anyone else gets the 404 of a missing blob. The journal
and balances are public.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from deai.coordinator import access, blob_quota, ledger_audit
from deai.coordinator.auth import coordinator, read_body, signer
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core.errors import InvalidInput, NotFound
from deai.store.blobs import digest_of
from deai.store.models import Balance, JournalHead

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]


@router.get("/network", response_model=wire.NetworkInfo)
def network(c: C) -> wire.NetworkInfo:
    return c.network()


@router.post("/faucet", response_model=wire.BalanceOut)
def faucet(body: wire.FaucetIn, c: C, me: Signer) -> wire.BalanceOut:
    return c.faucet(me, body.amount)


@router.get("/accounts/{account}", response_model=wire.BalanceOut)
def account(account: Annotated[str, Path(min_length=1, max_length=100)],
            c: C) -> wire.BalanceOut:
    return c.balance(account)  # a NUL in it: ``limits.plain_url``


@router.put("/blobs", response_model=wire.BlobOut, status_code=201)
async def put_blob(request: Request, c: C, me: Signer) -> wire.BlobOut:
    """Counted against the uploader's quota before it is stored (``blob_quota``)."""
    data = await read_body(request, c.settings.max_upload_bytes)
    if not data:
        raise InvalidInput("body: an empty blob is not allowed", field="body")
    await run_in_threadpool(blob_quota.admit, c, me, digest_of(data), len(data))
    return c.put_blob(data)


@router.get("/blobs/{digest}")
def get_blob(digest: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], c: C,
             me: Signer) -> Response:
    access.require_blob(c, me, digest)
    try:
        length, pieces = c.blobs.stream(digest)  # from disk as it is sent, not held whole
    except FileNotFoundError:
        raise NotFound(f"no blob {digest}", field="digest") from None
    return StreamingResponse(pieces, media_type="application/octet-stream",
                             headers={"content-length": str(length)})


@router.get("/ledger/journal", response_model=wire.JournalOut)
def journal_page(c: C, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                 limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> Response:
    """A ``wire.JournalOut``, written straight from the rows (``ledger_audit.journal_page``)."""
    return Response(ledger_audit.journal_page(c.db, after, limit), media_type="application/json")


@router.get("/ledger/balances")
def balances(c: C, after: Annotated[str, Query(max_length=100)] = "",
             limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> dict[str, Any]:
    """Balances in account order, a page at a time: pass the page's ``next`` as ``after``
    (``next`` is null on the last page). ``head_seq`` is the journal entry the page's
    snapshot reflects, so an auditor can compare it mid-replay (``client.audit``)."""
    with c.db.read() as s:  # a NUL in ``after`` never gets here: ``limits.plain_url``
        rows = s.execute(select(Balance.account, Balance.amount).where(Balance.account > after)
                         .order_by(Balance.account).limit(limit)).all()
        head = s.scalar(select(JournalHead.seq).where(JournalHead.id == 1)) or 0
    return {"balances": {a: int(v) for a, v in rows}, "head_seq": int(head),
            "next": rows[-1][0] if len(rows) == limit else None}


@router.get("/ledger/audit", response_model=wire.AuditOut)
def audit(c: C) -> wire.AuditOut:
    """The server's replay, cached and incremental (``ledger_audit``); clients can (and
    should) replay the journal themselves."""
    return ledger_audit.of(c).summary()
