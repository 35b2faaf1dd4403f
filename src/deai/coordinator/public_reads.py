"""Bounds on the anonymous reads that cost the most: how many run at once, and how
often an aggregate is computed.

Registering a provider is free, so anything that grows with the providers (their
list, their hardware claims, the overview, the cloud index) is a stranger's to
grow. Each such list is paged (``service.MAX_PAGE``), and on top of that:

- ``public_read``, a route dependency: at most ``SLOTS`` of these reads run at once
  per coordinator; one more is answered 429 (``rate_limited``, as the rate limits
  answer) at once instead of queueing for a thread and then for a database
  connection (which answered 500 after 30 s, and starved every other route of
  connections meanwhile).
- ``Shared``: an aggregate computed once for every caller who asked while it was being
  computed, and kept ``ttl`` seconds unless ``stamp`` (the newest event id) moved.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import Request

from deai.core.errors import RateLimited

if TYPE_CHECKING:
    from deai.coordinator.service import Coordinator

T = TypeVar("T")
SLOTS = 8  # heavy public reads at once, per coordinator: well under the database pool


@dataclass
class _Gate:
    busy: int = 0


_gates: weakref.WeakKeyDictionary[Any, _Gate] = weakref.WeakKeyDictionary()


async def public_read(request: Request) -> AsyncIterator[None]:
    """Hold one of ``SLOTS`` for the route, or answer 429 at once. Runs on the event
    loop, so the count needs no lock."""
    gate = _gates.setdefault(request.app.state.coordinator, _Gate())
    if gate.busy >= SLOTS:
        raise RateLimited("too many public reads at once; retry in a second")
    gate.busy += 1
    try:
        yield
    finally:
        gate.busy -= 1


@dataclass
class _Entry(Generic[T]):
    lock: threading.Lock = field(default_factory=threading.Lock)
    at: float = float("-inf")  # time.monotonic() when its computation ended
    stamp: Any = None
    value: T | None = None


class Shared(Generic[T]):
    """One value per (coordinator, key), computed by one caller at a time."""

    def __init__(self, ttl: float, keys: int = 16) -> None:
        self.ttl, self.keys = ttl, keys
        self._lock = threading.Lock()
        self._entries: weakref.WeakKeyDictionary[Coordinator, dict[Hashable, _Entry[T]]] = (
            weakref.WeakKeyDictionary())

    def get(self, c: Coordinator, key: Hashable, compute: Callable[[], T],
            stamp: Callable[[], Any]) -> T:
        """The value for ``key``: the one computed since this call began (by a caller
        ahead of it), or one younger than ``ttl`` whose ``stamp()`` still holds, else
        ``compute()``'s."""
        asked = time.monotonic()
        with self._lock:
            entries = self._entries.setdefault(c, {})
            entry = entries.get(key)
            if entry is None:
                # Keys come from the query (an overview's windows): the oldest go, so a
                # caller varying them holds at most ``keys`` values here.
                while len(entries) >= self.keys:
                    del entries[next(iter(entries))]
                entry = entries[key] = _Entry()
        with entry.lock:  # callers queued here share the computation ahead of them
            if entry.value is not None and entry.at >= asked:
                return entry.value
            now_stamp = stamp()
            if (entry.value is not None and time.monotonic() - entry.at < self.ttl
                    and entry.stamp == now_stamp):
                return entry.value
            value = compute()
            entry.value, entry.stamp, entry.at = value, now_stamp, time.monotonic()
            return value
