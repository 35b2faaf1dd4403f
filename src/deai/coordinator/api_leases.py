"""Routes for leases of machines by the hour, and the lease loop's lifespan.

Owner (signed):     POST /api/leases, GET /api/leases, GET /api/leases/{id},
                    POST /api/leases/{id}/end, POST /api/leases/{id}/extend,
                    WS /api/leases/{id}/attach (``relay_leases``)
Provider (signed):  PUT /api/provider/leases/host, DELETE /api/provider/leases/host
                    (the offer taken back: the host drains), POST /api/provider/leases/poll,
                    POST /api/provider/leases/heartbeat,
                    WS /api/provider/leases/sessions/{sid}
Public:             GET /api/market/leases (hosts, prices, counts by status and reason)

``router`` carries its own lifespan (merged into the app's by ``include_router``):
it makes the session ``Hub`` (on PostgreSQL with its ``Relay``: the sessions every
replica sees and this replica's internal relay endpoint), has other replicas' wake-ups
wake it, and runs ``leases.tick`` every ``LeaseConfig.tick`` seconds. Like the app's
loops it keeps no state of its own: a restarted coordinator picks up from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket
from starlette.concurrency import run_in_threadpool

from deai.coordinator import leases, relay_leases, volumes
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.service import Coordinator
from deai.core.wire_leases import (
    ExtendIn,
    HostIn,
    HostOut,
    HostWithdrawOut,
    LeaseBeatIn,
    LeaseBeatOut,
    LeaseIn,
    LeaseOut,
    LeasePollIn,
    LeasePollOut,
)

log = logging.getLogger("deai.coordinator.leases")


async def _loop(app: FastAPI) -> None:
    c: Coordinator = app.state.coordinator
    cfg: leases.LeaseConfig = app.state.lease_config
    hub: relay_leases.Hub = app.state.lease_hub
    failures = 0
    while True:
        leader = getattr(app.state, "leader", None)  # with replicas, only the leader ticks
        try:
            if leader is None or leader.is_leader:
                for pid in await run_in_threadpool(leases.tick, c, cfg):
                    hub.wake(pid)
                if hub.relay is not None:
                    await run_in_threadpool(hub.relay.sweep)
            failures = 0
        except Exception:
            failures += 1  # the first ticks may run before the app's migration
            if failures > 3:
                log.exception("lease tick failed; retrying")
        await asyncio.sleep(cfg.tick)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    c: Coordinator = app.state.coordinator
    app.state.lease_config = leases.LeaseConfig.from_env()
    hub = relay_leases.Hub(asyncio.get_running_loop(), c.notifier)
    app.state.lease_hub = hub
    c.notifier.on_remote_wake.append(hub.woken_elsewhere)
    if not c.db.is_sqlite:  # replicas may share the database: sessions must cross them
        hub.relay = relay_leases.Relay(c, hub)
        await hub.relay.start()
    task = asyncio.create_task(_loop(app))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(ValueError):
            c.notifier.on_remote_wake.remove(hub.woken_elsewhere)
        if hub.relay is not None:
            await hub.relay.stop()


router = APIRouter(prefix="/api", lifespan=lifespan)
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]


async def _hub(request: Request) -> relay_leases.Hub:
    hub: relay_leases.Hub = request.app.state.lease_hub
    return hub


async def _cfg(request: Request) -> leases.LeaseConfig:
    cfg: leases.LeaseConfig = request.app.state.lease_config
    return cfg


Hub = Annotated[relay_leases.Hub, Depends(_hub)]
Cfg = Annotated[leases.LeaseConfig, Depends(_cfg)]


# --- the owner ----------------------------------------------------------------------------

@router.post("/leases", response_model=LeaseOut, status_code=201)
async def create(body: LeaseIn, c: C, me: Signer, hub: Hub, cfg: Cfg) -> LeaseOut:
    out = await run_in_threadpool(leases.create, c, me, body, cfg)
    hub.wake(out.provider_id)
    return out


@router.get("/leases", response_model=dict[str, list[LeaseOut]])
def listing(c: C, me: Signer) -> dict[str, list[LeaseOut]]:
    return {"leases": leases.listing(c, me)}


@router.get("/leases/{lease_id}", response_model=LeaseOut)
def show(lease_id: str, c: C, me: Signer) -> LeaseOut:
    return leases.show(c, me, lease_id)


@router.post("/leases/{lease_id}/end", response_model=LeaseOut)
async def end(lease_id: str, c: C, me: Signer, hub: Hub) -> LeaseOut:
    out = await run_in_threadpool(leases.end, c, me, lease_id)
    hub.wake(out.provider_id)
    return out


@router.post("/leases/{lease_id}/extend", response_model=LeaseOut)
def extend(lease_id: str, body: ExtendIn, c: C, me: Signer) -> LeaseOut:
    return leases.extend(c, me, lease_id, body)


@router.websocket("/leases/{lease_id}/attach")
async def attach(ws: WebSocket, lease_id: str) -> None:
    await relay_leases.attach(ws, lease_id, ws.app.state.coordinator, ws.app.state.lease_hub)


@router.get("/market/leases")
def market(c: C, after: Annotated[str, Query(max_length=64)] = "") -> dict[str, Any]:
    """Lease counts and the hosts' offers, a page of ``leases.HOSTS_LISTED`` after the
    cursor ``after`` (the last page's ``next``)."""
    return leases.public_summary(c, after)


# --- the provider -------------------------------------------------------------------------

@router.put("/provider/leases/host", response_model=HostOut)
def host(body: HostIn, c: C, me: Signer, cfg: Cfg) -> HostOut:
    return leases.set_host(c, cfg, me, body)


@router.delete("/provider/leases/host", response_model=HostWithdrawOut)
def withdraw_host(c: C, me: Signer) -> HostWithdrawOut:
    """Take the offer back: no new lease; the live ones run to their end, not extended."""
    return leases.withdraw_host(c, me)


@router.post("/provider/leases/poll", response_model=LeasePollOut)
async def poll(body: LeasePollIn, c: C, me: Signer, hub: Hub) -> LeasePollOut:
    """Long-poll for lease work: leases to start or stop, sessions to pick up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait
    known = set(body.known)
    with hub.watching(me) as woken:
        while True:
            woken.reading()  # a wake from here on ends the wait below at once
            start, stop, notices = await run_in_threadpool(leases.work_for, c, me, known)
            asks = await run_in_threadpool(volumes.asked, c, me)
            sessions = hub.take(me)
            if hub.relay is not None:  # filed on any replica
                sessions += await run_in_threadpool(hub.relay.take, me)
            left = deadline - loop.time()
            fresh = [n for n in notices if n.id not in body.noticed]
            # A notice the agent delivered and the lease no longer has: withdrawn (the
            # lease that caused it ended first); the agent tells the lease, hears a new one.
            withdrawn = set(body.noticed) & known - {n.id for n in notices}
            fresh_asks = [a for a in asks if a in known and a not in body.saving]
            if (start or stop or sessions or fresh or withdrawn or fresh_asks or left <= 0
                    or c.notifier.closing):
                return LeasePollOut(start=start, stop=stop, sessions=sessions,
                                    notices=notices, snapshots=asks)
            await woken.wait(min(left, 5.0))


@router.post("/provider/leases/heartbeat", response_model=LeaseBeatOut)
def heartbeat(body: LeaseBeatIn, c: C, me: Signer) -> LeaseBeatOut:
    return LeaseBeatOut(stop=leases.heartbeat(c, me, body.running, body.failed))


@router.websocket("/provider/leases/sessions/{sid}")
async def session(ws: WebSocket, sid: str) -> None:
    await relay_leases.provider_end(ws, sid, ws.app.state.coordinator, ws.app.state.lease_hub)
