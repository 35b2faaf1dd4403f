"""Routes for datasets (``coordinator.datasets``) and their public explorer view.

Public: the list and each dataset's public face (``GET /api/datasets``,
``/api/datasets/{id}``, ``/api/explorer/datasets``). Signed: publishing,
revoking, deleting, naming its trusted providers, the owner's pending releases, key
releases and list of uses; a provider's wrapped key; the ciphertext (owner or a
provider holding a key).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from deai.coordinator import dataset_refusals, datasets
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.service import Coordinator
from deai.core import auth
from deai.core import wire_datasets as W

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]
DatasetId = Annotated[str, Path(min_length=1, max_length=40)]
JobId = Annotated[str, Query(min_length=1, max_length=40)]


async def maybe_signer(request: Request) -> str | None:
    """The signer of a signed request, None for an unsigned one (a public read)."""
    return await signer(request) if request.headers.get(auth.HEADER_KEY) else None


@router.post("/datasets", response_model=W.DatasetPrivateOut, status_code=201)
def publish(body: W.DatasetIn, c: C, me: Signer) -> W.DatasetOut:
    return datasets.publish(c, me, body)


@router.get("/datasets", response_model=dict[str, list[W.DatasetOut]])
def listing(c: C, owner: Annotated[str | None, Query(max_length=64)] = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, list[W.DatasetOut]]:
    return {"datasets": datasets.listing(c, owner, limit)}


@router.get("/explorer/datasets", response_model=dict[str, list[W.DatasetOut]])
def explorer(c: C, limit: Annotated[int, Query(ge=1, le=500)] = 100
             ) -> dict[str, list[W.DatasetOut]]:
    """Public metadata only: name, owner, terms, size, uses and royalties paid."""
    return {"datasets": datasets.listing(c, None, limit)}


@router.get("/datasets/pending", response_model=dict[str, list[W.PendingOut]])
def pending(c: C, me: Signer) -> dict[str, list[W.PendingOut]]:
    return {"pending": datasets.pending(c, me)}


@router.get("/datasets/{dataset_id}", response_model=W.DatasetPrivateOut | W.DatasetOut)
def show(dataset_id: DatasetId, c: C,
         me: Annotated[str | None, Depends(maybe_signer)]) -> W.DatasetOut:
    return datasets.show(c, dataset_id, me)


@router.post("/datasets/{dataset_id}/revoke", response_model=W.DatasetOut)
def revoke(dataset_id: DatasetId, c: C, me: Signer) -> W.DatasetOut:
    return datasets.revoke(c, me, dataset_id)


@router.put("/datasets/{dataset_id}/providers", response_model=W.DatasetOut)
def providers(dataset_id: DatasetId, body: W.ProvidersIn, c: C, me: Signer) -> W.DatasetOut:
    """The owner names the only providers its dataset's jobs run on (``null``: any)."""
    return datasets.set_providers(c, me, dataset_id, body)


@router.delete("/datasets/{dataset_id}", response_model=W.DatasetOut)
def delete(dataset_id: DatasetId, c: C, me: Signer) -> W.DatasetOut:
    """The owner deletes its dataset once no job using it runs (409 ``in_use``)."""
    return datasets.delete(c, me, dataset_id)


@router.post("/datasets/{dataset_id}/release", response_model=dict[str, list[str]])
def release(dataset_id: DatasetId, body: W.ReleaseIn, c: C, me: Signer
            ) -> dict[str, list[str]]:
    return {"released": datasets.release(c, me, dataset_id, body)}


@router.post("/datasets/{dataset_id}/refuse", response_model=dict[str, list[str]])
def refuse(dataset_id: DatasetId, body: W.RefuseIn, c: C, me: Signer
           ) -> dict[str, list[str]]:
    """The owner turns away providers leased for a job on its dataset, before releasing
    them the key (``dataset_refusals.refuse``)."""
    return {"refused": dataset_refusals.refuse(c, me, dataset_id, body)}


@router.get("/datasets/{dataset_id}/key", response_model=W.KeyOut)
def key(dataset_id: DatasetId, job: JobId, c: C, me: Signer) -> W.KeyOut:
    return datasets.key_for(c, me, dataset_id, job)


@router.get("/datasets/{dataset_id}/content")
def content(dataset_id: DatasetId, c: C, me: Signer) -> Response:
    return Response(datasets.content(c, me, dataset_id),
                    media_type="application/octet-stream")


@router.get("/datasets/{dataset_id}/uses", response_model=W.UsesOut)
def uses(dataset_id: DatasetId, c: C, me: Signer,
         after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
         limit: Annotated[int, Query(ge=1, le=datasets.USES_PAGE)] = datasets.USES_PAGE
         ) -> W.UsesOut:
    """The owner's dataset's uses, oldest first, a page at a time (``next_after``)."""
    return datasets.uses(c, me, dataset_id, after, limit)
