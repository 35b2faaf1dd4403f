"""Progress from a running task to the caller streaming its answer, in memory.

A provider running a task whose payload asks to stream posts what it has so
far (``POST /api/assignments/{id}/progress``, signed, ``{"events": [{"text":
delta}, ...]}``); the relay hands the events to the /v1 response waiting on
that task. Nothing is stored: progress is a courtesy to an open connection,
and the result the provider submits afterwards stays the only record. Only the
task's primary, posting under its own key, is relayed; anything else, or a
task nobody is streaming, is answered ``{"listening": false}`` so the provider
can stop posting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from deai.coordinator.auth import coordinator, signer
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store.models import Assignment

Event = dict[str, Any]


class ProgressIn(wire.In):
    events: list[dict[str, Any]] = Field(max_length=4096)


class ProgressOut(wire.Out):
    listening: bool


class Relay:
    def __init__(self) -> None:
        self._streams: dict[str, asyncio.Queue[Event]] = {}
        # assignment -> ((task, provider) while its lease is live, when that was read)
        self.routes: dict[str, tuple[tuple[str, str] | None, float]] = {}

    def open(self, task_id: str) -> asyncio.Queue[Event]:
        return self._streams.setdefault(task_id, asyncio.Queue())

    def close(self, task_id: str) -> None:
        self._streams.pop(task_id, None)
        for a, (route, _) in list(self.routes.items()):
            if route is None or route[0] == task_id:
                self.routes.pop(a, None)

    def streaming(self) -> bool:
        return bool(self._streams)

    def push(self, task_id: str, events: list[Event]) -> bool:
        q = self._streams.get(task_id)
        if q is None:
            return False
        for e in events:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(e)
        return True


def _route(c: Coordinator, assignment_id: str) -> tuple[str, str] | None:
    with c.db.read() as s:
        row = s.execute(select(Assignment.task_id, Assignment.provider_id).where(
            Assignment.id == assignment_id, Assignment.role == Role.PRIMARY,
            Assignment.status == AssignmentStatus.LEASED)).first()
    return (row.task_id, row.provider_id) if row else None


ROUTE_TTL = 2.0  # seconds a progress route is trusted before its lease is read again

router = APIRouter(prefix="/api")


async def relay_of(request: Request) -> Relay:
    r: Relay = request.app.state.relay
    return r


@router.post("/assignments/{assignment_id}/progress", response_model=ProgressOut)
async def progress(assignment_id: str, body: ProgressIn,
                   c: Annotated[Coordinator, Depends(coordinator)],
                   me: Annotated[str, Depends(signer)],
                   relay: Annotated[Relay, Depends(relay_of)]) -> ProgressOut:
    if not relay.streaming():
        return ProgressOut(listening=False)
    route, read_at = relay.routes.get(assignment_id, (None, -ROUTE_TTL))
    now = time.monotonic()
    if now - read_at >= ROUTE_TTL:  # read again now and then: a lease that ended (the task
        # placed again, streaming to the same caller) must not keep its voice
        route = await run_in_threadpool(_route, c, assignment_id)
        relay.routes[assignment_id] = (route, now)
    if route is None or route[1] != me:
        return ProgressOut(listening=False)
    return ProgressOut(listening=relay.push(route[0], body.events))
