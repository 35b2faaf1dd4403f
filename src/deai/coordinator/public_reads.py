"""Bounds on the anonymous reads that cost the most: how many run at once, whose they
are, and how often an aggregate is computed.

Registering a provider is free, so anything that grows with the providers (their
list, their hardware claims, the overview, the cloud index) is a stranger's to
grow. Each such list is paged (``service.MAX_PAGE``), and on top of that:

- ``hold`` (and ``public_read``, the same as a route dependency): at most ``SLOTS``
  of these reads run at once per coordinator, at most ``PER_ADDRESS`` of them for one
  client address (``address_of``: as the rate limit reads it, an IPv6 address by its
  /64). One more waits on the event loop, first come first served, up to ``WAIT_S``
  for a slot (neither a thread nor a database connection meanwhile), then is answered
  429 (``rate_limited``, ``details.retry_after``); so is one more beyond ``QUEUE``
  waiting in all or ``QUEUE_PER_ADDRESS`` for one address. Refusing at once answered
  honest viewers 429 whenever a few refreshed together.
- ``Shared``: an aggregate computed once for every caller who asked while it was being
  computed, and kept ``ttl`` seconds unless ``stamp`` (the newest event id) moved.
  ``shared_read`` answers a kept one that still holds without taking a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from deai.core.diversity import client_address
from deai.core.errors import RateLimited

if TYPE_CHECKING:
    from deai.coordinator.service import Coordinator

T = TypeVar("T")
SLOTS = 8  # heavy public reads at once, per coordinator: well under the database pool
PER_ADDRESS = 2  # of those, for one client address
WAIT_S = 5.0  # a read waits this long for a slot, then is answered 429
QUEUE = 256  # reads waiting for a slot, in all; more are answered 429 at once
QUEUE_PER_ADDRESS = 32  # of those, from one client address (a NAT can hide an office)
RETRY_AFTER_S = 2


def address_of(request: Request) -> str:
    """The client's address as the rate limit reads it (``diversity.client_address``),
    an IPv6 one by its /64: one host usually holds a whole /64."""
    c = request.app.state.coordinator
    raw = client_address(request.client.host if request.client else None,
                         request.headers.get("x-forwarded-for"),
                         c.settings.trust_forwarded_for) or "-"
    try:
        ip = ipaddress.ip_address(raw.strip().strip("[]"))
    except ValueError:
        return raw
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Gate:
    """Slots held, in all and by address, and the reads waiting for one, oldest first.
    Touched on the event loop only, so it needs no lock."""

    busy: int = 0
    held: dict[str, int] = field(default_factory=dict)
    queue: deque[tuple[str, asyncio.Future[None]]] = field(default_factory=deque)
    queued: dict[str, int] = field(default_factory=dict)

    def _free_for(self, address: str) -> bool:
        return self.busy < SLOTS and self.held.get(address, 0) < PER_ADDRESS

    def _take(self, address: str) -> None:
        self.busy += 1
        self.held[address] = self.held.get(address, 0) + 1

    def release(self, address: str) -> None:
        self.busy -= 1
        left = self.held.get(address, 1) - 1
        if left > 0:
            self.held[address] = left
        else:
            self.held.pop(address, None)
        self._hand_on()

    def _hand_on(self) -> None:
        """Give free slots to the oldest waiters their address allows."""
        for item in list(self.queue):
            if self.busy >= SLOTS:
                return
            address, fut = item
            if self.held.get(address, 0) < PER_ADDRESS:
                self._dequeue(item)
                if not fut.done():
                    self._take(address)
                    fut.set_result(None)

    def _dequeue(self, item: tuple[str, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(item)
            left = self.queued.get(item[0], 1) - 1
            if left > 0:
                self.queued[item[0]] = left
            else:
                self.queued.pop(item[0], None)

    async def acquire(self, address: str) -> None:
        if self._free_for(address):
            self._take(address)
            return
        if len(self.queue) >= QUEUE or self.queued.get(address, 0) >= QUEUE_PER_ADDRESS:
            raise _refused()
        item = (address, asyncio.get_running_loop().create_future())
        self.queue.append(item)
        self.queued[address] = self.queued.get(address, 0) + 1
        try:
            async with asyncio.timeout(WAIT_S):
                await item[1]
        except BaseException as exc:
            if item[1].done() and not item[1].cancelled():
                self.release(address)  # given a slot just as it gave up
            else:
                self._dequeue(item)
            if isinstance(exc, TimeoutError):
                raise _refused() from None
            raise


def _refused() -> RateLimited:
    return RateLimited(f"too many public reads at once; retry in {RETRY_AFTER_S} s",
                       retry_after=RETRY_AFTER_S)


_gates: weakref.WeakKeyDictionary[Any, _Gate] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def hold(request: Request) -> AsyncIterator[None]:
    """Hold a slot for the block: at once, or after waiting up to ``WAIT_S``, else 429."""
    gate = _gates.setdefault(request.app.state.coordinator, _Gate())
    address = address_of(request)
    await gate.acquire(address)
    try:
        yield
    finally:
        gate.release(address)


async def public_read(request: Request) -> AsyncIterator[None]:
    """``hold`` as a route dependency."""
    async with hold(request):
        yield


async def shared_read(request: Request, shared: Shared[T], c: Coordinator, key: Hashable,
                      compute: Callable[[], T], stamp: Callable[[], Any]) -> T:
    """``shared.get`` under a slot, unless a kept value still holds (young, and no new
    event since): that one is answered at once, without a slot."""
    kept = shared.peek(c, key)
    if kept is not None and await run_in_threadpool(stamp) == kept[1]:
        return kept[0]
    async with hold(request):
        return await run_in_threadpool(shared.get, c, key, compute, stamp)


@dataclass
class _Entry(Generic[T]):
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (value, stamp, time.monotonic() when its computation ended), replaced whole so a
    # reader without the lock never sees half of one.
    kept: tuple[T, Any, float] | None = None


class Shared(Generic[T]):
    """One value per (coordinator, key), computed by one caller at a time."""

    def __init__(self, ttl: float, keys: int = 16) -> None:
        self.ttl, self.keys = ttl, keys
        self._lock = threading.Lock()
        self._entries: weakref.WeakKeyDictionary[Coordinator, dict[Hashable, _Entry[T]]] = (
            weakref.WeakKeyDictionary())

    def peek(self, c: Coordinator, key: Hashable) -> tuple[T, Any] | None:
        """The value kept for ``key`` and its stamp, if younger than ``ttl``."""
        with self._lock:
            entry = self._entries.get(c, {}).get(key)
        kept = entry.kept if entry is not None else None
        if kept is None or time.monotonic() - kept[2] >= self.ttl:
            return None
        return kept[0], kept[1]

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
            kept = entry.kept
            if kept is not None and kept[2] >= asked:
                return kept[0]
            now_stamp = stamp()
            if kept is not None and time.monotonic() - kept[2] < self.ttl \
                    and kept[1] == now_stamp:
                return kept[0]
            value = compute()
            entry.kept = (value, now_stamp, time.monotonic())
            return value
