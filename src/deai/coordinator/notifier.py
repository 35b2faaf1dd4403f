"""Wake-ups between threads and the event loop: long-polls and the matcher sleep here.

Request handlers run in a thread pool; the poll endpoint and background loops
run on the event loop. ``wake`` and ``kick`` may be called from either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


class Notifier:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._providers: dict[str, asyncio.Event] = {}
        self._match = asyncio.Event()
        self._listeners: set[asyncio.Queue[int]] = set()
        self._results: dict[str, asyncio.Event] = {}
        self.closing = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        if self.loop is None or self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(fn, *args)

    def wake(self, provider_ids: Iterable[str]) -> None:
        ids = list(provider_ids)
        if ids:
            self._call(self._wake, ids)

    def _wake(self, ids: list[str]) -> None:
        for pid in ids:
            self._providers.setdefault(pid, asyncio.Event()).set()

    def close(self) -> None:
        """Shutting down: release every long-poll so the server can stop at once."""
        self.closing = True
        self._call(self._release)

    def _release(self) -> None:
        for ev in (*self._providers.values(), *self._results.values()):
            ev.set()
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(0)

    def kick(self) -> None:
        """Ask the matcher to run now rather than at its next tick."""
        self._call(self._match.set)

    async def wait_provider(self, provider_id: str, timeout: float) -> None:
        ev = self._providers.setdefault(provider_id, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()

    async def wait_match(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._match.wait(), timeout)
        self._match.clear()

    # Event listeners (server-sent events) get the id of each new event row.
    def subscribe(self) -> asyncio.Queue[int]:
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=1000)
        self._listeners.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[int]) -> None:
        self._listeners.discard(q)

    def published(self) -> None:
        self._call(self._publish)

    def _publish(self) -> None:
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(1)

    # Result waiters (the /v1 gateway) wait on a task id for its first submitted output.
    def watch_result(self, task_id: str) -> asyncio.Event:
        """Register interest in ``task_id`` (on the event loop) before checking the database."""
        return self._results.setdefault(task_id, asyncio.Event())

    def unwatch_result(self, task_id: str) -> None:
        self._results.pop(task_id, None)

    def result_arrived(self, task_id: str) -> None:
        """An assignment of ``task_id`` has a result (any thread); wakes only its watchers."""
        self._call(self._result, task_id)

    def _result(self, task_id: str) -> None:
        ev = self._results.get(task_id)
        if ev is not None:
            ev.set()
