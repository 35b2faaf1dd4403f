"""Routes for clusters (gangs of leases that become Ray clusters), and the cluster loop.

Owner (signed):  POST /api/clusters, GET /api/clusters, GET /api/clusters/{id},
                 POST /api/clusters/{id}/end, PUT /api/clusters/{id}/ray

Reads are the owner's only (a cluster names its leases and Ray's addresses).
``router`` carries its own lifespan: ``clusters.tick`` every ``ClusterConfig.tick``
seconds on the leader, like the lease loop (``api_leases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from deai.coordinator import clusters
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.service import Coordinator
from deai.core.wire_clusters import ClusterIn, ClusterOut, RayIn

log = logging.getLogger("deai.coordinator.clusters")


def _wake(app: FastAPI, out: ClusterOut) -> None:
    hub = getattr(app.state, "lease_hub", None)
    if hub is not None:
        for m in out.members:
            hub.wake(m.provider_id)


async def _loop(app: FastAPI) -> None:
    c: Coordinator = app.state.coordinator
    cfg: clusters.ClusterConfig = app.state.cluster_config
    failures = 0
    while True:
        leader = getattr(app.state, "leader", None)
        try:
            if leader is None or leader.is_leader:
                await run_in_threadpool(clusters.tick, c)
            failures = 0
        except Exception:
            failures += 1  # the first ticks may run before the app's migration
            if failures > 3:
                log.exception("cluster tick failed; retrying")
        await asyncio.sleep(cfg.tick)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.cluster_config = clusters.ClusterConfig.from_env()
    task = asyncio.create_task(_loop(app))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


router = APIRouter(prefix="/api", lifespan=lifespan)
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]


async def _cfg(request: Request) -> clusters.ClusterConfig:
    cfg: clusters.ClusterConfig = request.app.state.cluster_config
    return cfg


Cfg = Annotated[clusters.ClusterConfig, Depends(_cfg)]


@router.post("/clusters", response_model=ClusterOut, status_code=201)
async def create(body: ClusterIn, request: Request, c: C, me: Signer, cfg: Cfg) -> ClusterOut:
    out = await run_in_threadpool(clusters.create, c, me, body, cfg)
    _wake(request.app, out)
    return out


@router.get("/clusters", response_model=dict[str, list[ClusterOut]])
def listing(c: C, me: Signer) -> dict[str, list[ClusterOut]]:
    return {"clusters": clusters.listing(c, me)}


@router.get("/clusters/{cluster_id}", response_model=ClusterOut)
def show(cluster_id: str, c: C, me: Signer) -> ClusterOut:
    return clusters.show(c, me, cluster_id)


@router.post("/clusters/{cluster_id}/end", response_model=ClusterOut)
async def end(cluster_id: str, request: Request, c: C, me: Signer) -> ClusterOut:
    out = await run_in_threadpool(clusters.end, c, me, cluster_id)
    _wake(request.app, out)
    return out


@router.put("/clusters/{cluster_id}/ray", response_model=ClusterOut)
def ray(cluster_id: str, body: RayIn, c: C, me: Signer) -> ClusterOut:
    return clusters.report_ray(c, me, cluster_id, body)
