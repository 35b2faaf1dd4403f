"""The FastAPI application and its background loops.

Loops (matching, lease expiry, deadlines, release of earnings) run on the
event loop and do their database work in threads. They hold no state of their
own: killed at any instant, the coordinator restarts from the database alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from deai import __version__
from deai.coordinator import (
    api_chain,
    api_clusters,
    api_datasets,
    api_explorer,
    api_hardware,
    api_jobs,
    api_leases,
    api_ledger,
    api_volumes,
    checkpoints,
    datasets,
    errors,
    hardware,
    jobs,
    leader,
    limits,
    liveness,
    lookback,
    matching,
    metrics,
    openai,
    provider_index,
    retention,
    sealed_jobs,
)
from deai.coordinator.leader import Leader
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings

log = logging.getLogger("deai.coordinator")


async def _every(period: float, fn: Callable[[], Any], name: str) -> None:
    while True:
        try:
            await run_in_threadpool(fn)
        except Exception:
            log.exception("%s failed; retrying", name)
        await asyncio.sleep(period)


async def _matcher(c: Coordinator) -> None:
    while True:
        try:
            await run_in_threadpool(matching.match_once, c)  # it wakes whom it leased to
        except Exception:
            log.exception("matching failed; retrying")
        await c.notifier.wait_match(c.settings.tick)


def _upkeep(c: Coordinator) -> None:
    """Each step on its own: one that fails (and is logged) does not keep the steps after
    it from running, pass after pass."""
    for step in (jobs.expire_leases, jobs.give_up_checks, jobs.enforce_deadlines,
                 lookback.resume,  # a look-back's backlog, a batch at a time
                 datasets.drop_blocked_audits,  # before the earnings they would hold
                 jobs.release_earnings):
        try:
            step(c)
        except Exception:
            log.exception("upkeep: %s failed; the other steps went on", step.__name__)


def create_app(settings: Settings, coordinator: Coordinator | None = None) -> FastAPI:
    c = coordinator or Coordinator(settings)

    elected = Leader(c.db)  # every replica serves; only the leader runs the loops

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(leader.migrate, c.db)
        await run_in_threadpool(provider_index.warm, c)  # matching's index of providers
        c.notifier.bind(asyncio.get_running_loop())
        await c.notifier.connect(c.db.url)  # LISTEN/NOTIFY between replicas (PostgreSQL)

        async def start_loops() -> list[asyncio.Task[None]]:
            await run_in_threadpool(jobs.recover, c, elected.served_for())
            return [
                asyncio.create_task(_matcher(c)),
                asyncio.create_task(_every(settings.tick, lambda: _upkeep(c), "upkeep")),
                asyncio.create_task(_every(60.0, c.purge_nonces, "nonce purge")),
                asyncio.create_task(_every(hardware.EXPIRE_EVERY_S,
                                           lambda: hardware.expire(c), "hardware expiry")),
                asyncio.create_task(_every(retention.period(settings),
                                           lambda: retention.sweep(c), "retention")),
            ]

        await elected.campaign(start_loops)
        beats = liveness.of(c)  # every replica writes the heartbeats it received
        tasks = [asyncio.create_task(elected.run(start_loops)),
                 asyncio.create_task(_every(beats.period, beats.flush, "liveness flush"))]
        log.info("coordinator up: %s (devnet=%s, leader=%s)", settings.db_url.split("@")[-1],
                 settings.devnet, elected.is_leader)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await run_in_threadpool(beats.flush)
            await c.notifier.disconnect()
            c.db.dispose()

    # ``limits.plain_url`` first on every route: no NUL reaches a route's SQL (PostgreSQL).
    app = FastAPI(title="DeAI coordinator", version=__version__, lifespan=lifespan,
                  dependencies=[Depends(limits.plain_url)])
    app.state.coordinator = c
    app.state.leader = elected
    errors.install(app)

    limits.install(app, settings.max_upload_bytes)  # body size and depth, request rates

    # First, and on the event loop: load balancers and probes call it often, and routes
    # are matched in order (the included routers' ~100 routes cost more than the answer).
    @app.get("/health")
    async def health() -> dict[str, str | bool]:
        return {"status": "ok", "version": __version__, "leader": elected.is_leader}

    app.include_router(api_ledger.router)
    app.include_router(api_jobs.router)
    app.include_router(checkpoints.router)
    app.include_router(api_leases.router)  # leases by the hour, their relay and loop
    app.include_router(api_volumes.router)  # volumes of leases and their snapshots
    app.include_router(api_clusters.router)  # gangs of leases as Ray clusters, their loop
    app.include_router(api_hardware.router)  # hardware challenges, verified units
    app.include_router(sealed_jobs.router)  # GET /api/verifiers, for sealed jobs
    app.include_router(api_datasets.router)  # datasets, their terms, key release, uses
    api_explorer.install(app)  # read API, event stream, and the page at /explorer/
    metrics.install(app)  # /metrics, and request counts
    openai.install(app)  # /v1 in OpenAI's shape, API keys, task progress
    api_chain.install(app)  # /api/chain; the chain rail when $DEAI_CHAIN is set

    return app
