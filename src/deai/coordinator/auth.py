"""Request authentication: the signed-request dependency and the body size guard.

``signer`` verifies the four signature headers over the exact bytes received,
rejects stale or non-finite timestamps and replayed nonces, and returns the
account id. It checks the headers before it reads the body, and reads the body
itself (bounded by the upload limit, which ``limits.BodyLimit`` has already
enforced on the wire) so routes that take raw bytes and routes that take JSON
are checked the same way.
"""

from __future__ import annotations

import math

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from deai.coordinator.limits import declared_length
from deai.coordinator.service import Coordinator
from deai.core import auth
from deai.core.errors import AuthError, PayloadTooLarge


def coordinator_of(request: Request) -> Coordinator:
    c: Coordinator = request.app.state.coordinator
    return c


async def coordinator(request: Request) -> Coordinator:
    """The dependency. ``async`` because FastAPI runs a plain ``def`` dependency in the
    thread pool: a hop per request, which cost more than many routes' own work."""
    return coordinator_of(request)


async def read_body(request: Request, limit: int) -> bytes:
    raw = request.headers.get("content-length")
    declared = declared_length(raw) if raw is not None else None
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit",
                              field="body", limit=limit)
    cached = getattr(request, "_body", None)
    if cached is not None:
        return bytes(cached)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit", field="body",
                                  limit=limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body
    return body


async def signer(request: Request) -> str:
    key, nonce, _ = await verified(request)
    await run_in_threadpool(coordinator_of(request).use_nonce, key, nonce, 2 * auth.MAX_SKEW)
    return key


async def verified(request: Request) -> tuple[str, str, float]:
    """Every check of ``signer`` but the nonce's: (account, nonce, timestamp). Heartbeats
    use it with a per-provider timestamp floor instead (``coordinator.liveness``)."""
    c = coordinator_of(request)
    h = request.headers
    key, ts, nonce, sig = (h.get(auth.HEADER_KEY), h.get(auth.HEADER_TS),
                           h.get(auth.HEADER_NONCE), h.get(auth.HEADER_SIG))
    key, ts, nonce, sig, stamp = checked_headers(c, key, ts, nonce, sig)  # before the body
    body = await read_body(request, c.settings.max_upload_bytes)
    c.check_signature(key, auth.message(request.method, request.url.path, body, ts, nonce,
                                         network=c.network_id), sig)
    return key, nonce, stamp


def signed_by(c: Coordinator, method: str, path: str, body: bytes, key: str | None,
              ts: str | None, nonce: str | None, sig: str | None) -> tuple[str, float]:
    """``verified``'s checks of a request carried as data (a relayed heartbeat):
    (account, timestamp)."""
    key, ts, nonce, sig, stamp = checked_headers(c, key, ts, nonce, sig)
    c.check_signature(key, auth.message(method, path, body, ts, nonce,
                                         network=c.network_id), sig)
    return key, stamp


def checked_headers(c: Coordinator, key: str | None, ts: str | None, nonce: str | None,
                    sig: str | None) -> tuple[str, str, str, str, float]:
    """The signature headers' own checks (all but the signature's): the four, and the
    timestamp as a number."""
    if not (key and ts and nonce and sig):
        raise AuthError("this request must be signed (X-DeAI-Key, -Timestamp, -Nonce, "
                        "-Signature)")
    if not auth.is_account_id(key):
        raise AuthError("X-DeAI-Key must be a 64-character hex Ed25519 public key")
    if not auth.is_nonce(nonce):
        raise AuthError("X-DeAI-Nonce must be 8-64 characters of [A-Za-z0-9_-]")
    try:
        stamp = float(ts) if len(ts) <= 32 else math.nan
    except ValueError:
        stamp = math.nan
    if not math.isfinite(stamp):  # nan would pass any comparison below, and replay later
        raise AuthError("X-DeAI-Timestamp must be seconds since the epoch (a finite number)")
    if abs(stamp - c.now()) > auth.MAX_SKEW:
        raise AuthError("request timestamp is too far from the coordinator's clock (stale)")
    return key, ts, nonce, sig, stamp
