"""API keys: minted by an account's signed request, presented as ``Authorization: Bearer``.

A key is ``sk-deai-`` plus 43 random URL-safe characters; only its sha256 is
stored, with a short prefix for people to recognise it. Spending through a key
draws on its account's balance. What a key has committed is derived, not
counted: the escrow of the jobs it started minus what those jobs refunded
(``api_key_jobs``), so a refund or a forfeit lowers it without bookkeeping of
its own. A key with a ``spend_cap`` refuses a request whose maximum cost would
take the committed amount past the cap: ``admission.create`` holds the cap in
the transaction that escrows, with the key's row locked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from deai.coordinator import admission
from deai.coordinator.service import Coordinator, new_id
from deai.core import wire
from deai.core.errors import AuthError, Conflict, Forbidden, NotFound
from deai.store.models import ApiKey

PREFIX = "sk-deai-"


@dataclass(frozen=True)
class KeyInfo:
    id: str
    account: str
    spend_cap: int | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MAX_LIVE = 100  # unrevoked keys an account may hold: a key is a row and a listing entry,
# and accounts cost nothing to make
LISTED_REVOKED = 100  # the latest revoked keys a listing shows, besides every live one


def committed(s: Session, key_id: str) -> int:
    return admission.committed(s, key_id)


def _out(s: Session, row: ApiKey, key: str | None = None,
         spent: int | None = None) -> wire.ApiKeyOut:
    return wire.ApiKeyOut(id=row.id, account=row.account, name=row.name, prefix=row.prefix,
                          spend_cap=row.spend_cap,
                          spent=committed(s, row.id) if spent is None else spent,
                          created_at=row.created_at, revoked_at=row.revoked_at, key=key)


def create(c: Coordinator, account: str, body: wire.ApiKeyIn) -> wire.ApiKeyOut:
    """A new key, unless the account already holds ``MAX_LIVE`` unrevoked ones (409,
    naming ``api_keys``; nothing written)."""
    key = PREFIX + secrets.token_urlsafe(32)
    with c.db.write() as s:
        if not c.db.is_sqlite:  # one account's creations, one at a time (SQLite: always)
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                      {"k": f"api-keys:{account}"})
        live = s.scalar(select(func.count()).select_from(ApiKey).where(
            ApiKey.account == account, ApiKey.revoked_at.is_(None))) or 0
        if live >= MAX_LIVE:
            raise Conflict(f"api_keys: this account holds {live} unrevoked keys, the most "
                           f"it may; revoke one first", field="api_keys", limit=MAX_LIVE)
        row = ApiKey(id=new_id("key"), account=account, key_hash=hash_key(key),
                     prefix=key[:len(PREFIX) + 4], name=body.name, spend_cap=body.spend_cap,
                     created_at=c.now(), revoked_at=None)
        s.add(row)
        c.emit(s, "api_key_created", account, key=row.id, name=row.name,
               spend_cap=row.spend_cap)
        s.flush()
        return _out(s, row, key)


def list_keys(c: Coordinator, account: str) -> list[wire.ApiKeyOut]:
    """The account's live keys and its ``LISTED_REVOKED`` latest revoked ones, oldest
    first, each with what it has committed (one grouped read)."""
    with c.db.read() as s:
        live = s.scalars(select(ApiKey).where(ApiKey.account == account,
                                              ApiKey.revoked_at.is_(None))).all()
        revoked = s.scalars(select(ApiKey).where(ApiKey.account == account,
                                                 ApiKey.revoked_at.is_not(None))
                            .order_by(ApiKey.revoked_at.desc()).limit(LISTED_REVOKED)).all()
        rows = sorted([*live, *revoked], key=lambda r: (r.created_at, r.id))
        spent = admission.committed_many(s, [r.id for r in rows])
        return [_out(s, r, spent=spent.get(r.id, 0)) for r in rows]


def revoke(c: Coordinator, account: str, key_id: str) -> wire.ApiKeyOut:
    with c.db.write() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key {key_id}", field="key")
        if row.account != account:
            raise Forbidden("only the key's account may revoke it")
        if row.revoked_at is None:
            row.revoked_at = c.now()
            c.emit(s, "api_key_revoked", account, key=row.id)
        return _out(s, row)


def authenticate(c: Coordinator, key: str) -> KeyInfo:
    with c.db.read() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
        if row is None:
            raise AuthError("Incorrect API key provided.")
        if row.revoked_at is not None:
            raise AuthError("This API key has been revoked.")
        return KeyInfo(row.id, row.account, row.spend_cap)
