"""Heartbeats without a database write per call.

A heartbeat is a signed request like any other, but it is not protected by a
nonce row: its signed timestamp is a per-provider monotonic counter. A
heartbeat is refused (401) unless its timestamp is strictly greater than the
highest one accepted from that provider (the *floor*), so a replayed
heartbeat, or one overtaken by a later one, changes nothing. The stale-clock
check (``core.auth.MAX_SKEW``) still applies, which bounds how long a floor
matters: a floor older than ``now - MAX_SKEW`` is below any acceptable
timestamp, so it may be forgotten.

What a heartbeat does is buffered here and written by ``flush`` (every
``period`` seconds on every replica, and at shutdown) in one transaction for
all the providers heard from since: ``providers.last_seen`` moves forward,
the listed live leases are extended, and each provider's floor is stored.
The flush follows the lock order of ``store.db``: assignments, then providers
(ascending ids), each claimed ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so a
heartbeat never waits for a transaction that holds one of those rows; the
rows it skipped are retried at the next flush.

Floors live in memory, and in the ``nonces`` table as one row per provider
whose nonce is ``~heartbeat`` (no signed request can carry ``~``, so it never
collides with a real nonce) and whose ``expires_at`` is the floor plus twice
``MAX_SKEW``, so the ordinary nonce purge deletes it exactly when it stops
mattering. A replica that has not yet seen a provider loads its floor from
there, so a heartbeat replayed to another replica, or after a restart, is
refused too, except inside the one ``period`` between a heartbeat and its
flush; even then a replay cannot move liveness or a lease past where the
original heartbeat put them by more than that period.

Answering needs no write: the provider must exist (cached once seen) and the
``drop`` list (the assignments it reports that are not its live leases)
comes from a read.

Heartbeats of one provider stamped in the same millisecond, or a provider
clock stepped backwards, are refused until its clock passes the floor.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from pydantic import ValidationError
from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy.orm import Session

from deai.coordinator import provider_index
from deai.coordinator.auth import signed_by, verified
from deai.coordinator.service import Coordinator
from deai.core import auth, wire
from deai.core.errors import AuthError, DeAIError, NotFound
from deai.core.lifecycle import AssignmentStatus
from deai.store import db
from deai.store.journal import dialect_insert
from deai.store.models import Assignment, Nonce, Provider

FLOOR_NONCE = "~heartbeat"
WINDOW = 2 * auth.MAX_SKEW
HEARTBEAT_PATH = "/api/providers/heartbeat"  # what a relayed beat's signature covers
MAX_REFUSED = 16  # refused beats in one relayed batch before the rest go unchecked
CHUNK = 500


@dataclass
class _Due:
    stamp: float  # the highest signed timestamp accepted since the last flush
    seen: float  # when (coordinator clock) it was received
    live: set[str] = field(default_factory=set)  # leases to extend


@dataclass(frozen=True)
class Beat:
    account: str
    stamp: float


async def heartbeat_signer(request: Request) -> Beat:
    """The signed-request checks without the nonce row; returns the signed timestamp."""
    account, _nonce, stamp = await verified(request)
    return Beat(account, stamp)


SignedBeat = Annotated[Beat, Depends(heartbeat_signer)]


class Liveness:
    def __init__(self, c: Coordinator, period: float = 0.5) -> None:
        self.c = c
        self.period = period
        self._lock = threading.Lock()
        self._floors: dict[str, float] = {}
        self._known: set[str] = set()
        self._due: dict[str, _Due] = {}
        self.flushed = 0  # heartbeats written, for tests and metrics

    # --- answering ------------------------------------------------------------------------

    def reads(self, pid: str, running: list[str]) -> bool:
        """Whether ``heartbeat`` would read the database: leases to confirm, or a provider
        (or timestamp floor) not yet known here. Otherwise it is memory only, quick enough
        to answer on the event loop without a thread."""
        with self._lock:
            return bool(running) or pid not in self._known or pid not in self._floors

    def heartbeat(self, pid: str, stamp: float, running: list[str]) -> wire.HeartbeatOut:
        if not math.isfinite(stamp):
            raise AuthError("X-DeAI-Timestamp must be a finite number")
        self._advance(pid, stamp)
        drop: list[str] = []
        live: set[str] = set()
        if running or pid not in self._known:
            with self.c.db.read() as s:
                if pid not in self._known:
                    if s.get(Provider, pid) is None:
                        raise NotFound("this key is not a registered provider; register "
                                       "first", field="provider")
                    with self._lock:
                        self._known.add(pid)
                if running:
                    rows = s.execute(select(Assignment.id, Assignment.provider_id,
                                            Assignment.status)
                                     .where(Assignment.id.in_(running))).all()
                    live = {i for i, p, st in rows if p == pid and st == AssignmentStatus.LEASED}
                    drop = [a for a in running if a not in live]
        now = self.c.now()
        provider_index.of(self.c).beat(pid, now)  # online at once for matching, no read
        with self._lock:
            due = self._due.get(pid)
            if due is None:
                self._due[pid] = _Due(stamp, now, live)
            else:
                due.stamp, due.seen = max(due.stamp, stamp), max(due.seen, now)
                due.live |= live
        return wire.HeartbeatOut(drop=drop)

    def relayed(self, beats: list[wire.SignedBeat]) -> list[wire.BeatOut]:
        """Heartbeats that a relay (a farm's gateway) carries for many providers, each
        checked as if it had come alone to ``POST /api/providers/heartbeat``: the same
        signature over the same path and bytes, the same timestamp floor. One refused beat
        refuses only itself, up to ``MAX_REFUSED`` a batch: after that the rest are not
        checked (a batch of forged beats must not buy 500 signature checks a request)."""
        out: list[wire.BeatOut] = []
        refused = 0
        self._prefetch({b.key for b in beats})
        for b in beats:
            if refused >= MAX_REFUSED:
                out.append(wire.BeatOut(key=b.key, error=f"not checked: {MAX_REFUSED} beats "
                                        "of this batch were refused already"))
                continue
            refused += 1  # until it is accepted
            try:
                body = b.body.encode()
                pid, stamp = signed_by(self.c, "POST", HEARTBEAT_PATH, body, b.key,
                                       b.timestamp, b.nonce, b.signature)
                running = wire.HeartbeatIn.model_validate_json(body).running
                out.append(wire.BeatOut(key=b.key, drop=self.heartbeat(pid, stamp,
                                                                        running).drop))
                refused -= 1
            except DeAIError as exc:
                out.append(wire.BeatOut(key=b.key, error=str(exc)))
            except ValidationError as exc:
                out.append(wire.BeatOut(key=b.key, error="body is not a heartbeat: "
                                        + exc.errors()[0]["msg"]))
        return out

    def _prefetch(self, pids: set[str]) -> None:
        """Read, in one transaction, what the first beat of each of these providers would
        read one by one: whether it is registered, and its stored floor."""
        with self._lock:
            missing = sorted(p for p in pids if p not in self._known or p not in self._floors)
        if not missing:
            return
        with self.c.db.read() as s:
            known = set(s.scalars(select(Provider.id).where(Provider.id.in_(missing))))
            stored = dict(s.execute(select(Nonce.account, Nonce.expires_at).where(
                Nonce.account.in_(missing), Nonce.nonce == FLOOR_NONCE)).all())
        with self._lock:
            self._known |= known
            for pid in known:
                exp = stored.get(pid)
                self._floors.setdefault(pid, -math.inf if exp is None else float(exp) - WINDOW)

    def _advance(self, pid: str, stamp: float) -> None:
        with self._lock:
            floor = self._floors.get(pid)
        if floor is None:
            floor = self._stored_floor(pid)
        with self._lock:
            floor = max(floor, self._floors.get(pid, -math.inf))
            if stamp <= floor:
                raise AuthError("heartbeat replayed: its timestamp is not after the last "
                                "one accepted from this provider")
            self._floors[pid] = stamp

    def _stored_floor(self, pid: str) -> float:
        with self.c.db.read() as s:
            exp = s.scalar(select(Nonce.expires_at).where(Nonce.account == pid,
                                                          Nonce.nonce == FLOOR_NONCE))
        return -math.inf if exp is None else float(exp) - WINDOW

    # --- writing --------------------------------------------------------------------------

    def flush(self) -> int:
        """Write what the heartbeats since the last flush changed; returns how many."""
        with self._lock:
            due, self._due = self._due, {}
            horizon = self.c.now() - auth.MAX_SKEW
            self._floors = {p: f for p, f in self._floors.items() if f >= horizon}
        if not due:
            return 0
        skipped = self.c.db.run(lambda s: self._write(s, due))
        if skipped:
            with self._lock:
                for pid in skipped:
                    cur = self._due.get(pid)
                    if cur is None:
                        self._due[pid] = due[pid]
                    else:
                        cur.stamp = max(cur.stamp, due[pid].stamp)
                        cur.seen = max(cur.seen, due[pid].seen)
                        cur.live |= due[pid].live
        self.flushed += len(due) - len(skipped)
        return len(due) - len(skipped)

    def _locked(self, s: Session, col: Any, ids: list[str], *extra: Any) -> set[str]:
        got: set[str] = set()
        for i in range(0, len(ids), CHUNK):
            q = (select(col).where(col.in_(ids[i:i + CHUNK]), *extra).order_by(col)
                 .with_for_update(skip_locked=True, key_share=True))
            got.update(s.scalars(q))
        return got

    def _write(self, s: Session, due: dict[str, _Due]) -> set[str]:
        ttl = self.c.settings.lease_ttl
        owner = {a: pid for pid, d in due.items() for a in d.live}
        leases = self._locked(s, Assignment.id, sorted(owner),
                              Assignment.status == AssignmentStatus.LEASED)
        if leases:
            t = cast(Table, Assignment.__table__)
            s.execute(update(t).where(t.c.id == bindparam("b_id"),
                                      t.c.lease_deadline < bindparam("b_d"))
                      .values(lease_deadline=db.capped(bindparam("b_d"), t.c.hold_until)),
                      [{"b_id": a, "b_d": due[owner[a]].seen + ttl} for a in sorted(leases)])
        pids = sorted(due)
        got = self._locked(s, Provider.id, pids)
        if got:
            t = cast(Table, Provider.__table__)
            s.execute(update(t).where(t.c.id == bindparam("b_id"),
                                      t.c.last_seen < bindparam("b_t"))
                      .values(last_seen=bindparam("b_t")),
                      [{"b_id": p, "b_t": due[p].seen} for p in sorted(got)])
        for i in range(0, len(pids), CHUNK):
            stmt = dialect_insert(s, Nonce).values([
                {"account": p, "nonce": FLOOR_NONCE, "expires_at": due[p].stamp + WINDOW}
                for p in pids[i:i + CHUNK]])
            s.execute(stmt.on_conflict_do_update(
                index_elements=["account", "nonce"],
                set_={"expires_at": case(
                    (stmt.excluded.expires_at > Nonce.__table__.c.expires_at,
                     stmt.excluded.expires_at), else_=Nonce.__table__.c.expires_at)}))
        return set(pids) - got


def of(c: Coordinator) -> Liveness:
    """The coordinator's one ``Liveness`` (made on first use)."""
    lv: Liveness | None = c.__dict__.get("_liveness")
    if lv is None:
        lv = c.__dict__.setdefault("_liveness", Liveness(c))
    return lv


