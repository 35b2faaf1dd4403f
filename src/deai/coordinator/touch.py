"""Which providers a transaction changed, told to whoever keeps their state after commit.

A writer that changes what matching reads about a provider (its row, offers,
stake, reputation, leases) calls ``touched(s, ids)`` inside its transaction.
When that transaction commits, every callback registered for the database
(``on_commit``) is called with the ids; a rolled-back transaction tells nobody.
This module knows nothing of the coordinator, so the service, the settlement
port and the lifecycle's applier can all call it without an import cycle.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

log = logging.getLogger("deai.coordinator.touch")

_KEY = "deai_touched"
_lock = threading.Lock()
# Weak both ways: registering keeps neither the engine nor the callback's owner alive.
# (A plain reference to the owner, not ``WeakMethod``: its finaliser can fail when the
# method and its owner die in one garbage collection, CPython 3.11.)
_Ref = tuple[weakref.ref[Any], Callable[..., None]]
_callbacks: weakref.WeakKeyDictionary[Engine, list[_Ref]] = weakref.WeakKeyDictionary()


def on_commit(engine: Engine, fn: Callable[[set[str]], None]) -> None:
    """Call the bound method ``fn(ids)`` after each commit on ``engine`` that touched
    providers, for as long as its object lives."""
    owner, func = fn.__self__, fn.__func__  # type: ignore[attr-defined]
    with _lock:
        _callbacks.setdefault(engine, []).append((weakref.ref(owner), func))


def touched(s: Session, ids: Iterable[str]) -> None:
    """Record, inside ``s``'s transaction, that these providers changed."""
    got = s.info.get(_KEY)
    if got is None:
        got = s.info[_KEY] = set()
    got.update(i for i in ids if i)


def _engine(s: Session) -> Any:
    bind = s.get_bind()
    return getattr(bind, "engine", bind)


@event.listens_for(Session, "after_commit")
def _after_commit(s: Session) -> None:
    ids = s.info.pop(_KEY, None)
    if not ids:
        return
    with _lock:
        refs = list(_callbacks.get(_engine(s), ()))
    for ref, func in refs:
        owner = ref()
        if owner is None:
            continue
        try:
            func(owner, ids)
        except Exception:  # a cache's hint must never fail a committed transaction
            log.exception("a provider-change callback failed")


@event.listens_for(Session, "after_rollback")
def _after_rollback(s: Session) -> None:
    s.info.pop(_KEY, None)
