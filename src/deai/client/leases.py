"""SDK for leases: create, follow, extend and end them; exec, copy and forward into them.

    leases = Leases(Client(url, keys.load("alice")))
    lease = leases.create(cpus=1, memory_mb=1024, hours=1, max_price_hour=500_000)
    lease = leases.wait_active(lease.id)
    code = leases.exec(lease.id, ["python3", "-c", "print(6*7)"], stdout=buf)
    leases.put(lease.id, b"data", "in/data.bin"); leases.get(lease.id, "out.txt")
    leases.end(lease.id)

Sessions (``open``) are WebSockets to the coordinator's relay
(``coordinator.relay_leases``), signed like any request over ``GET <path>``.
Messages: binary = channel byte (0 stdin, 1 stdout, 2 stderr) + data; text =
JSON control (``resize``, ``eof``, ``signal`` from here; ``ready``, ``exit``,
``error`` from the lease). A refusal arrives as an ``error`` message and is
raised as the ``DeAIError`` it names (``Forbidden`` for someone else's lease).

The provider's side of leases (``set_host``, ``poll``, ``heartbeat``) is here too,
for the agent's lease runner.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time
from collections.abc import Iterator
from typing import IO, Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from deai.client.sdk import Client
from deai.core import wire_leases as wl
from deai.core.errors import Conflict, DeAIError, from_dict
from deai.core.wire_volumes import VolumeOut

CHUNK = 64 * 1024
STDIN, STDOUT, STDERR = 0, 1, 2
TERMINAL = "ended"


def refusal(exc: ConnectionClosed) -> DeAIError:
    """The error a relay's close frame carries (code 4000 + HTTP status, reason
    ``code: message``)."""
    frame = exc.rcvd
    if frame is None or not 4000 <= frame.code < 5000:
        return DeAIError(f"the relay closed the session: {exc}")
    code, _, message = frame.reason.partition(": ")
    return from_dict(frame.code - 4000, {"error": {"code": code, "message": message}})


class Session:
    """One interactive session inside a lease (an exec, a copy or a forwarded connection)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def send(self, data: bytes, channel: int = STDIN) -> None:
        self.ws.send(bytes([channel]) + data)

    def control(self, **msg: Any) -> None:
        self.ws.send(json.dumps(msg))

    def recv(self, timeout: float | None = None) -> tuple[int, bytes] | dict[str, Any] | None:
        """(channel, data), a control message, or None once the session is closed.
        An ``error`` message (or a refusing close) is raised."""
        try:
            msg = self.ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            if exc.rcvd is not None and 4000 <= exc.rcvd.code < 5000:
                raise refusal(exc) from None
            return None
        if isinstance(msg, bytes):
            return msg[0], msg[1:]
        ctl: dict[str, Any] = json.loads(msg)
        if ctl.get("type") == "error":
            status = int(ctl.pop("status", 500) or 500)
            ctl.pop("type", None)
            raise from_dict(status, {"error": ctl})
        return ctl

    def messages(self) -> Iterator[tuple[int, bytes] | dict[str, Any]]:
        while (m := self.recv()) is not None:
            yield m

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dial(base_url: str, path: str, headers: dict[str, str],
         timeout: float = 30.0) -> ClientConnection:
    """A WebSocket to the coordinator, owned by the caller (who closes it)."""
    ws = connect(ws_url(base_url, path), compression=None, proxy=None,
                 additional_headers=headers, open_timeout=timeout,
                 max_size=8 * 1024 * 1024, ping_interval=None)
    # entering marks it as managed: websockets >= 17.1 warns about bare connect() calls
    return ws.__enter__()


def ws_url(base_url: str, path: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://"):] + path
    return "ws://" + base_url.removeprefix("http://") + path


class Leases:
    def __init__(self, client: Client) -> None:
        self.client = client

    # --- the owner ------------------------------------------------------------------------

    def create(self, **fields: Any) -> wl.LeaseOut:
        return self.client._post("/api/leases", wl.LeaseIn(**fields), wl.LeaseOut)

    def list(self) -> builtins.list[wl.LeaseOut]:
        data = self.client.request("GET", "/api/leases", signed=True).json()
        return [wl.LeaseOut.model_validate(x) for x in data["leases"]]

    def show(self, lease_id: str) -> wl.LeaseOut:
        resp = self.client.request("GET", f"/api/leases/{lease_id}", signed=True)
        return wl.LeaseOut.model_validate(resp.json())

    def end(self, lease_id: str) -> wl.LeaseOut:
        return self.client._post(f"/api/leases/{lease_id}/end", {}, wl.LeaseOut)

    def extend(self, lease_id: str, *, hours: float | None = None,
               amount: int | None = None) -> wl.LeaseOut:
        return self.client._post(f"/api/leases/{lease_id}/extend",
                                 wl.ExtendIn(hours=hours, amount=amount), wl.LeaseOut)

    def wait_active(self, lease_id: str, timeout: float = 60.0,
                    poll: float = 0.1) -> wl.LeaseOut:
        """Until the provider has started the lease; ``Conflict`` if it ended instead."""
        end = time.monotonic() + timeout
        while True:
            lease = self.show(lease_id)
            if lease.status == "active":
                return lease
            if lease.status == TERMINAL:
                raise Conflict(f"lease {lease_id} ended before it started: "
                               f"{lease.end_reason} ({lease.detail or ''})", status="ended")
            if time.monotonic() > end:
                raise DeAIError(f"lease {lease_id} did not start within {timeout:.0f} s")
            time.sleep(poll)

    def wait_ended(self, lease_id: str, timeout: float = 60.0) -> wl.LeaseOut:
        end = time.monotonic() + timeout
        while (lease := self.show(lease_id)).status != TERMINAL:
            if time.monotonic() > end:
                raise DeAIError(f"lease {lease_id} did not end within {timeout:.0f} s")
            time.sleep(0.2)
        return lease

    # --- sessions -------------------------------------------------------------------------

    def open(self, lease_id: str, params: dict[str, Any], *,
             timeout: float = 30.0) -> Session:
        if self.client.identity is None:
            raise DeAIError("opening a session needs a key (pass --key)")
        path = f"/api/leases/{lease_id}/attach"
        ws = dial(self.client.base_url, path, self.client.signed_headers("GET", path, b""),
                  timeout)
        try:
            ws.send(json.dumps(params))
            first = Session(ws).recv(timeout=timeout)
        except ConnectionClosed as exc:
            raise refusal(exc) from None
        except Exception:
            ws.close()
            raise
        if not (isinstance(first, dict) and first.get("type") == "open"):
            ws.close()
            raise DeAIError(f"the relay answered {first!r} instead of opening the session")
        return Session(ws)

    def exec(self, lease_id: str, argv: builtins.list[str], *, stdin: bytes | None = None,
             stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None,
             env: dict[str, str] | None = None) -> int:
        """Run ``argv`` in the lease without a terminal; its exit status."""
        with self.open(lease_id, {"op": "exec", "argv": argv, "env": env or {}}) as s:
            # A session the provider refused at once (the lease not running there, or not
            # answering) is closed by the time this sends: the send raises before the
            # refusal is read. Stop sending then, and read: the refusal is raised below.
            with contextlib.suppress(ConnectionClosed):
                if stdin:
                    for i in range(0, len(stdin), CHUNK):
                        s.send(stdin[i:i + CHUNK])
                s.control(type="eof")
            for m in s.messages():
                if isinstance(m, tuple):
                    out = stdout if m[0] == STDOUT else stderr
                    if out is not None:
                        out.write(m[1])
                elif m.get("type") == "exit":
                    return int(m["code"])
        raise DeAIError("the session closed before the command's exit status came")

    def put(self, lease_id: str, data: bytes | IO[bytes], remote: str,
            mode: int | None = None) -> int:
        """Write ``data`` to ``remote`` in the lease (relative to its home); bytes written."""
        params: dict[str, Any] = {"op": "put", "path": remote}
        if mode is not None:
            params["mode"] = mode
        with self.open(lease_id, params) as s:
            with contextlib.suppress(ConnectionClosed):  # refused at once: as in ``exec``
                if isinstance(data, bytes):
                    for i in range(0, len(data), CHUNK):
                        s.send(data[i:i + CHUNK])
                else:
                    while chunk := data.read(CHUNK):
                        s.send(chunk)
                s.control(type="eof")
            for m in s.messages():
                if isinstance(m, dict) and m.get("type") == "exit":
                    return int(m.get("size", 0))
        raise DeAIError("the session closed before the copy was confirmed")

    def get(self, lease_id: str, remote: str, out: IO[bytes] | None = None) -> bytes:
        """Read ``remote`` from the lease; written to ``out`` if given, else returned."""
        parts: builtins.list[bytes] = []
        with self.open(lease_id, {"op": "get", "path": remote}) as s:
            for m in s.messages():
                if isinstance(m, tuple):
                    if out is not None:
                        out.write(m[1])
                    else:
                        parts.append(m[1])
                elif m.get("type") == "exit":
                    return b"".join(parts)
        raise DeAIError("the session closed before the whole file came")

    # --- the provider ---------------------------------------------------------------------

    def set_host(self, host: wl.HostIn) -> wl.HostOut:
        resp = self.client.request("PUT", "/api/provider/leases/host",
                                   json_body=host.model_dump(mode="json"))
        return wl.HostOut.model_validate(resp.json())

    def withdraw_host(self) -> wl.HostWithdrawOut:
        """Take this provider's offer back: no new lease; its live ones run to their end."""
        resp = self.client.request("DELETE", "/api/provider/leases/host")
        return wl.HostWithdrawOut.model_validate(resp.json())

    def poll(self, wait: float, known: builtins.list[str],
             noticed: builtins.list[str] | None = None,
             saving: builtins.list[str] | None = None) -> wl.LeasePollOut:
        return self.client._post("/api/provider/leases/poll",
                                 wl.LeasePollIn(wait=wait, known=known, noticed=noticed or [],
                                                saving=saving or []),
                                 wl.LeasePollOut, timeout=wait + 15.0)

    def save_snapshot(self, lease_id: str, data: bytes | IO[bytes]) -> VolumeOut:
        """The packed home of a lease with a volume (``provider.volume_pack``): a file is
        streamed, never read into memory."""
        resp = self.client.request("PUT", f"/api/provider/leases/{lease_id}/snapshot",
                                   body=data, content_type="application/octet-stream",
                                   timeout=300.0)
        return VolumeOut.model_validate(resp.json())

    def snapshot_failed(self, lease_id: str, reason: str) -> None:
        self.client.request("POST", f"/api/provider/leases/{lease_id}/snapshot/failed",
                            json_body={"reason": reason[:500]})

    def heartbeat(self, running: builtins.list[str], failed: dict[str, str]) -> wl.LeaseBeatOut:
        return self.client._post("/api/provider/leases/heartbeat",
                                 wl.LeaseBeatIn(running=running, failed=failed),
                                 wl.LeaseBeatOut)
