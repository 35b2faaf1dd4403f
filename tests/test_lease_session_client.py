"""The owner's side of a lease session against a WebSocket server on loopback that
answers as the relay does when the provider refuses the session at once: the session
opens, the provider's refusal comes through, and the relay closes. The client raises the
refusal. Before, its next send (the command's end of input) raised a bare
``ConnectionClosedOK`` first, and the reason was never read."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from deai.client.keys import Identity
from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.core.errors import Conflict

REFUSAL = {"type": "error", "status": 409, "code": "conflict",
           "message": "the lease is not running on this provider"}


@pytest.fixture
def relay() -> Iterator[tuple[str, list[Any]]]:
    """A relay that opens each session, passes the provider's refusal on, and closes."""
    heard: list[Any] = []

    def session(ws: ServerConnection) -> None:
        heard.append(json.loads(ws.recv()))
        ws.send('{"type": "open"}')
        ws.send(json.dumps(REFUSAL))
        ws.close()

    with serve(session, "127.0.0.1", 0) as server:
        port = server.socket.getsockname()[1]
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        yield f"http://127.0.0.1:{port}", heard
        server.shutdown()
        t.join(5)


def test_a_session_refused_at_once_raises_the_refusal(relay: tuple[str, list[Any]]) -> None:
    url, heard = relay
    # pinned: this relay answers WebSockets only, so the client cannot ask it
    leases = Leases(Client(url, Identity.generate("owner"), network_id="test-net"))
    with pytest.raises(Conflict, match="not running on this provider"):
        leases.exec("lease-1", ["true"], stdin=b"x" * 200_000)
    with pytest.raises(Conflict, match="not running on this provider"):
        leases.put("lease-1", io.BytesIO(b"y" * 200_000), "f.bin")
    assert [h["op"] for h in heard] == ["exec", "put"]
