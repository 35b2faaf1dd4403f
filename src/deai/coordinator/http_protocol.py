"""The coordinator's HTTP protocol: uvicorn's httptools one, with bounded request heads
and connections per peer; and the process's limit on open files.

``BoundedHttp`` is uvicorn's httptools protocol with a bounded request head: a head
(request line and headers) over ``Settings.max_head_bytes`` is answered 431, one not
complete within ``Settings.head_timeout`` of the connection (or of its first byte, on a
kept-alive one) 408, and the socket closed. ``raise_nofile`` lifts the process's file
limit to its hard limit, so idle sockets run out of time before the process runs out of
descriptors.

``BoundedHttp`` also closes at once a connection over ``MAX_CONNECTIONS_PER_PEER``
from one socket peer (not behind a trusted proxy, whose peer is everyone, which
``limits.install`` tells it through the app's ``state.max_connections_per_peer``), so one
peer's idle sockets cannot take all of uvicorn's ``limit_concurrency``. A connection
upgraded to a WebSocket stops counting against its peer at the upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("deai.coordinator.limits")  # its name before the split from limits

MAX_CONNECTIONS_PER_PEER = 256  # connections one socket peer may hold open at once


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on each request head: its size (431)
    and the time it takes to arrive (408), counted from the connection (a fresh one) or
    from the head's first byte (a kept-alive one; idle between requests is uvicorn's
    ``timeout_keep_alive``). httptools itself keeps a header of any size; the bytes
    received while a head is incomplete are counted instead, so the bound is
    ``max_head`` plus at most one read."""

    max_head = 32 * 1024
    head_timeout = 10.0
    # Open connections by socket peer, for the whole process (one event loop): a peer
    # over its cap (the app's ``state.max_connections_per_peer``, 0: none) is closed at once.
    _peers: dict[str, int] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes, self._in_head = 0, True
        self._head_timer: asyncio.TimerHandle | None = None
        self._peer: str | None = None
        super().connection_made(transport)
        cap = getattr(getattr(self.app, "state", None), "max_connections_per_peer",
                      MAX_CONNECTIONS_PER_PEER)
        peer = self.client[0] if cap and self.client else None
        if peer is not None:
            self._peer = peer
            self._peers[peer] = self._peers.get(peer, 0) + 1
            if self._peers[peer] > cap:  # counted down again in connection_lost
                transport.close()
                return
        self._head_since = self.loop.time()
        self._arm(self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # From here the connection is the WebSocket protocol's: its end never reaches this
        # protocol's ``connection_lost``, so it stops counting against its peer now (left
        # counted, every upgrade leaked a place, and a peer was refused for good after
        # ``MAX_CONNECTIONS_PER_PEER`` WebSockets over the process's life).
        self._release()
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._peer is not None:
            left = self._peers.pop(self._peer, 1) - 1
            if left > 0:
                self._peers[self._peer] = left
            self._peer = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head:
            self._refuse(b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes = True, 0
            self._head_since = self.loop.time()
            self._arm(self.head_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False  # the timer, if any, finds nothing to do and is not re-armed
        super().on_headers_complete()

    def _arm(self, delay: float) -> None:
        # One timer a connection at a time, not one a request: a kept-alive connection
        # asking many times a second re-arms it once a head_timeout at most.
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(delay, self._late)

    def _late(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        left = self._head_since + self.head_timeout - self.loop.time()
        busy = self.cycle is not None and not self.cycle.response_complete
        if left > 0 or busy:  # a later head; or a pipelined one behind an answer
            self._arm(max(left, 0.0) or self.head_timeout)
            return
        self._refuse(b"408 Request Timeout" if self._head_bytes else None)

    def _refuse(self, status: bytes | None) -> None:
        if self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if status is not None and not busy:  # never into the middle of another answer
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
        self.transport.close()


def http_protocol(max_head: int, head_timeout: float) -> type[asyncio.Protocol]:
    """``BoundedHttp`` with these bounds, for ``uvicorn.Config(http=...)``."""
    return type("BoundedHttp", (BoundedHttp,),
                {"max_head": max_head, "head_timeout": head_timeout})


def raise_nofile() -> int:
    """Raise this process's soft limit on open files to its hard limit, and return it. At
    the soft limit (often 1,024) accept fails and nobody new is served; idle sockets are
    closed after ``head_timeout``, which a higher limit gives them time for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", hard, exc)
    return soft
