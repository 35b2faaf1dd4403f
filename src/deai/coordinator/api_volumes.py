"""Routes for volumes of leases (``coordinator.volumes``).

Owner (signed):     POST /api/volumes, GET /api/volumes, GET /api/volumes/{ref},
                    DELETE /api/volumes/{ref} (ref: the volume's id or name),
                    POST /api/leases/{id}/snapshot (save the lease's home now)
Provider (signed):  PUT /api/provider/leases/{id}/snapshot (the packed home as the body),
                    POST /api/provider/leases/{id}/snapshot/failed (why it could not)

A snapshot's bytes are read under the coordinator's upload limit
(``Settings.max_upload_bytes``) and then the volume's own size.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from deai.coordinator import volumes
from deai.coordinator.auth import coordinator, read_body, signer
from deai.coordinator.relay_leases import Hub
from deai.coordinator.service import Coordinator
from deai.core.wire_volumes import SnapshotFailedIn, VolumeIn, VolumeOut

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]


@router.post("/volumes", response_model=VolumeOut, status_code=201)
def create(body: VolumeIn, c: C, me: Signer) -> VolumeOut:
    return volumes.create(c, me, body)


@router.get("/volumes", response_model=dict[str, list[VolumeOut]])
def listing(c: C, me: Signer) -> dict[str, list[VolumeOut]]:
    return {"volumes": volumes.listing(c, me)}


@router.get("/volumes/{ref}", response_model=VolumeOut)
def show(ref: str, c: C, me: Signer) -> VolumeOut:
    return volumes.show(c, me, ref)


@router.delete("/volumes/{ref}", response_model=VolumeOut)
def remove(ref: str, c: C, me: Signer) -> VolumeOut:
    return volumes.remove(c, me, ref)


@router.post("/leases/{lease_id}/snapshot", response_model=VolumeOut)
async def snapshot(lease_id: str, request: Request, c: C, me: Signer) -> VolumeOut:
    out, pid = await run_in_threadpool(volumes.ask_snapshot, c, me, lease_id)
    hub: Hub = request.app.state.lease_hub
    hub.wake(pid)  # its long-poll hands the ask over at once
    return out


@router.put("/provider/leases/{lease_id}/snapshot", response_model=VolumeOut)
async def upload(lease_id: str, request: Request, c: C, me: Signer) -> VolumeOut:
    data = await read_body(request, c.settings.max_upload_bytes)
    return await run_in_threadpool(volumes.record, c, me, lease_id, data)


@router.post("/provider/leases/{lease_id}/snapshot/failed", status_code=204)
def snapshot_failed(lease_id: str, body: SnapshotFailedIn, c: C, me: Signer) -> None:
    volumes.failed(c, me, lease_id, body.reason)
