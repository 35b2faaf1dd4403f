"""``Idempotency-Key`` on the routes that create (and escrow): a retry gets the original.

A client that does not know whether its request went through (a timeout, a
dropped connection) sends it again with the same ``Idempotency-Key`` header.
The coordinator answers the retry with what the first request created (the
same job, batch or file, marked ``Idempotent-Replayed: true``) and creates,
escrows and charges nothing again.

- Keys are per account (the signer, or the API key's account): one account's
  key never touches another's. 1 to 255 printable ASCII characters.
- A key remembers the route and a fingerprint of the request (its canonical
  JSON, or the file's digest). The same key with another route or body is
  refused with 422 ``idempotency_key_reused`` naming the header; nothing runs.
- A key expires after ``Settings.idempotency_ttl`` (24 h); the leader's
  retention loop deletes expired rows, and an expired key is free again.
- Only a request that created something is remembered: one that failed
  rolled back, and its retry runs afresh.

Race safety: the key's row is inserted in the same transaction that creates
and escrows (``hook``), and (account, key) is its primary key. Of two
concurrent twins one commits; the other fails on the key (PostgreSQL makes it
wait for the first to commit, SQLite serialises writers), its whole
transaction rolls back, and it answers with what the first created. A twin
can fail earlier in that transaction, because of what the first committed
while it waited: the API key's spend cap or the account's balance, checked
again under their locks, no longer cover a second escrow. So a twin that fails
in any way looks the key up once more; when the key is now live it answers
with what the first created (or 422 if the key went to another request), and
only otherwise with its own error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import delete
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator
from deai.core.errors import InvalidInput
from deai.store import db
from deai.store.idempotency import MAX_KEY, IdempotencyKey

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
T = TypeVar("T")
Hook = Callable[[Session, str], None]
"""Called inside the creating transaction with the id of what was created."""


class KeyReused(InvalidInput):
    """The key was already used for another request (another body or route)."""

    status = 422
    code = "idempotency_key_reused"


class _Taken(Exception):
    """Inside the transaction: the key is already live (a twin committed first)."""


@dataclass(frozen=True)
class Claim:
    account: str
    key: str
    scope: str
    fingerprint: str


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def claim(request: Request, account: str, scope: str, *parts: bytes) -> Claim | None:
    """The request's claim on its ``Idempotency-Key``, or None when it sends none."""
    raw = request.headers.get(HEADER.lower())
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY or not all(" " <= ch <= "~" for ch in raw):
        raise InvalidInput(f"{HEADER}: 1 to {MAX_KEY} printable ASCII characters",
                           field=HEADER)
    h = hashlib.sha256(scope.encode())
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return Claim(account, raw, scope, h.hexdigest())


def _live(row: IdempotencyKey | None, cl: Claim, now: float) -> str | None:
    """What the key created, if it is live; raises if it was used for another request."""
    if row is None or row.expires_at <= now:
        return None
    if row.scope != cl.scope or row.fingerprint != cl.fingerprint:
        raise KeyReused(f"{HEADER}: this key was already used for a different request "
                        f"({row.scope}); use a new key for a new request", field=HEADER,
                        scope=row.scope)
    return row.resource


def find(c: Coordinator, cl: Claim) -> str | None:
    with c.db.read() as s:
        return _live(s.get(IdempotencyKey, (cl.account, cl.key)), cl, c.now())


def record(c: Coordinator, s: Session, cl: Claim, resource: str) -> None:
    """Take the key for ``resource`` inside the creating transaction (flushed at once,
    so a twin fails here, before anything else of its transaction is kept)."""
    now = c.now()
    row = s.get(IdempotencyKey, (cl.account, cl.key))
    if row is not None:
        if _live(row, cl, now) is not None:
            raise _Taken
        s.delete(row)  # expired: the key is free again
        s.flush()
    s.add(IdempotencyKey(account=cl.account, key=cl.key, scope=cl.scope,
                         fingerprint=cl.fingerprint, resource=resource, created_at=now,
                         expires_at=now + c.settings.idempotency_ttl))
    s.flush()


def once(c: Coordinator, cl: Claim | None, create: Callable[[Hook | None], T],
         replay: Callable[[str], T]) -> tuple[T, bool]:
    """``create(hook)`` once per key; a retry gets ``replay(id)``. Returns (answer, replayed).

    ``create`` must call ``hook(session, id)`` inside the transaction that creates."""
    if cl is None:
        return create(None), False
    done = find(c, cl)
    if done is not None:
        return replay(done), True
    try:
        return create(lambda s, resource: record(c, s, cl, resource)), False
    except Exception:
        # Not only the key's own conflict (IntegrityError, ``_Taken``): a twin that
        # committed while this one waited for a lock has taken the cap or the funds, and
        # this one's refusal (429, 402) would tell the client that nothing was created.
        done = find(c, cl)
        if done is None:
            raise
        return replay(done), True


def purge(c: Coordinator) -> int:
    """Delete expired keys (the leader's retention loop)."""
    with c.db.write() as s:
        return db.changed(s.execute(delete(IdempotencyKey).where(
            IdempotencyKey.expires_at <= c.now())))
