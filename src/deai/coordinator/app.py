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

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from deai import __version__
from deai.coordinator import (
    api_chain,
    api_explorer,
    api_jobs,
    api_leases,
    api_ledger,
    checkpoints,
    errors,
    jobs,
    limits,
    matching,
    metrics,
    openai,
)
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.store import migrate

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
            placed = await run_in_threadpool(matching.match_once, c)
            c.notifier.wake(placed)
        except Exception:
            log.exception("matching failed; retrying")
        await c.notifier.wait_match(c.settings.tick)


def _upkeep(c: Coordinator) -> None:
    jobs.expire_leases(c)
    jobs.give_up_checks(c)
    jobs.enforce_deadlines(c)
    jobs.release_earnings(c)


def create_app(settings: Settings, coordinator: Coordinator | None = None) -> FastAPI:
    c = coordinator or Coordinator(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate.upgrade, c.db.engine)
        await run_in_threadpool(jobs.recover, c)
        c.notifier.bind(asyncio.get_running_loop())
        tasks = [
            asyncio.create_task(_matcher(c)),
            asyncio.create_task(_every(settings.tick, lambda: _upkeep(c), "upkeep")),
            asyncio.create_task(_every(60.0, c.purge_nonces, "nonce purge")),
        ]
        log.info("coordinator up: %s (devnet=%s)", settings.db_url.split("@")[-1],
                 settings.devnet)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            c.db.dispose()

    app = FastAPI(title="DeAI coordinator", version=__version__, lifespan=lifespan)
    app.state.coordinator = c
    errors.install(app)

    limits.install(app, settings.max_upload_bytes)  # body size and depth, request rates

    app.include_router(api_ledger.router)
    app.include_router(api_jobs.router)
    app.include_router(checkpoints.router)
    app.include_router(api_leases.router)  # leases by the hour, their relay and loop
    api_explorer.install(app)  # read API, event stream, and the page at /explorer/
    metrics.install(app)  # /metrics, and request counts
    openai.install(app)  # /v1 in OpenAI's shape, API keys, task progress
    api_chain.install(app)  # /api/chain; the chain rail when $DEAI_CHAIN is set

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
