"""Providers' matching states in memory, per coordinator process (issue 12, item 3).

The matcher's rounds, the /v1 decision and the quotes need every online
provider's state (offers, stake, slots, load, reputation, identity, verified
hardware). Read from the database each time, that is O(n) queries' worth of
rows per round and per request: seconds at 10,000 providers. The index keeps
them in memory and keeps them fresh:

- **built once** from the database (``load``), then **changed providers only**:
  a transaction that changes what matching reads about a provider records it
  (``touch.touched``: registration, bonds and slashes through the settlement
  port, the lifecycle's applier for leases ending, ratings), and the ids are
  re-read on the next use, a few rows each;
- **heartbeats** set a provider's last beat in memory (``beat``): whether it is
  online is judged at read time, with no read at all;
- **leases** this process makes add to the provider's load in memory (``leased``);
- **resynced** in the background every ``resync_s`` (at least 20 times the last
  build's duration, so it costs under 5 % of a core): what other replicas changed
  and anything no writer reported.

The index is a hint, never the authority. Every placement made from it is checked
against the provider's rows inside the write transaction that records it
(``reread``: its stake, load, reputation and last beat read again, and the rest
built again whenever its ``version`` moved, which the database's own triggers bump
on any change to what a state is built from): a stale entry costs a skipped
candidate, never a lease to a provider that is offline, full, unstaked, flagged or
no longer serving the model at that price.

The /v1 decision (``place``) walks a per-(workload, model) list sorted by the
strategy's score: O(log n) to keep sorted when a provider changes, and O(1) reads
per decision when the best candidates have free slots.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session

from deai.coordinator import hardware, touch
from deai.coordinator.service import Coordinator
from deai.core import catalog, ledger, market
from deai.core.lifecycle import AssignmentStatus, ProviderStatus
from deai.core.money import cost_for_units
from deai.core.verify import policy
from deai.core.verify.reputation import Reputation
from deai.store import db

log = logging.getLogger("deai.coordinator.provider_index")

GOING_FACTOR = 3  # a request with no price of its own pays at most this many times the
# median asking price of the providers that may run it (``going_price``)
_GOING_IGNORES = ~(market.NO_SLOT | market.OFFLINE)  # busy now, or online by a beat heard
# here that its state does not hold yet: still a provider the request could be given
GOING_REF_UNITS = 1_000  # a request's size the going price's stake is sized for
GOING_TTL_S = 1.0  # ``going_price`` read again at most this often per model, unless an offer
# of the model changed
RESYNC_S = 2.0  # a full re-read at most this often (and at least 20 builds apart)
MAX_FRESH = 8  # candidates re-read for one decision before it is left to the matcher

Key = tuple[str, str]
Ranked = tuple[float, str, int]  # (score, provider, price)
_Built = tuple[dict[str, market.ProviderState], dict[Key, list[Ranked]]]

# A provider's state with the version (and hardware rule) it was built at; None: the
# provider is not matched (its claim keeps it out).
Memo = dict[str, tuple[tuple[int, bool], market.ProviderState | None]]


def load(c: Coordinator, s: Session, ids: Sequence[str] | None = None,
         since: float | None = None, memo: Memo | None = None
         ) -> tuple[list[market.ProviderState], dict[str, float]]:
    """Active providers' states (only ``ids`` if given; only those seen at or after
    ``since`` if given) with each one's last beat in the database. ``online`` is True
    (the caller judges it from the beats).

    In the driver's own SQL, a few statements whatever the number of providers (not
    SQLAlchemy's statement building, 5x more, measured; nor a round trip per table on
    PostgreSQL): first each provider's moving parts (its stake, its leases, its
    reputation, its last beat) and its ``version``, which the database bumps whenever
    anything else a state is built from changes (its row's hardware, slots, identity;
    its offers; its hardware claim: triggers, migrations 0019 and 0020; a
    number never given back, compared for equality). ``memo`` (the index's)
    keeps each state with the version it was built at: a provider whose version is
    unchanged gets that state with its moving parts set, and only the others are read
    whole and built (``_build``). A matcher batch's re-read of its providers is then one
    statement of a few columns; building a state (its hardware's JSON, its identity,
    its verified claim) and reading its offers cost two thirds of a re-read before.
    """
    if ids is not None and not ids:
        return [], {}
    if ids is not None and len(ids) > IN_MAX:
        states: list[market.ProviderState] = []
        beats: dict[str, float] = {}
        for i in range(0, len(ids), IN_MAX):
            more, more_beats = load(c, s, ids[i:i + IN_MAX], since, memo)
            states += more
            beats.update(more_beats)
        return states, beats
    conn = s.connection()
    where, args = _where(conn, ids, since)
    rows = conn.exec_driver_sql(  # all at once: rows fetched one by one cost more
        f"SELECT p.id, p.version, p.last_seen, p.reputation, {_moving(db.placeholder(conn))} "
        f"FROM providers p WHERE {where}", (_LEASED, *args)).all()
    strict = hardware.required(c)
    got: dict[str, market.ProviderState] = {}
    stale: list[str] = []
    for pid, version, _, reputation, stake, n in rows:
        hit = memo.get(pid) if memo is not None else None
        if hit is None or hit[0] != (version, strict):
            stale.append(pid)
            continue
        st = hit[1]
        if st is None:  # its claim keeps it out of matching
            continue
        stake, reputation = int(stake or 0), float(reputation)
        got[pid] = (st if st.stake == stake and st.load == n and st.reputation == reputation
                    else st.with_(stake=stake, load=n, reputation=reputation))
    if stale:
        # The whole rows of those that changed, in the same snapshot: by id, or (a build,
        # or most of a full read changed) by the same condition, every row read once.
        by_id = ids is not None or len(stale) <= min(IN_MAX, len(rows) // 2)
        built = _build(c, conn, *(_where(conn, stale, None) if by_id else (where, args)),
                       by_id=by_id)
        for pid, (version, st) in built.items():
            if memo is not None:
                memo[pid] = ((version, strict), st)
            if st is not None:
                got[pid] = st
    return ([got[r[0]] for r in rows if r[0] in got],  # in the rows' order
            {r[0]: float(r[2] or 0.0) for r in rows})


def _where(conn: Any, ids: Sequence[str] | None, since: float | None
           ) -> tuple[str, list[Any]]:
    """The providers ``load`` reads: active, seen since ``since``, among ``ids``."""
    ph = db.placeholder(conn)
    where = "p.status = " + ph
    args: list[Any] = [ProviderStatus.ACTIVE.value]
    if since is not None:
        where += f" AND p.last_seen >= {ph}"
        args.append(since)
    if ids is not None:
        where += f" AND p.id IN ({', '.join([ph] * len(ids))})"
        args += list(ids)
    return where, args


def _build(c: Coordinator, conn: Any, where: str, args: list[Any], *, by_id: bool
           ) -> dict[str, tuple[int, market.ProviderState | None]]:
    """The states of the providers ``where`` selects, built from their whole rows, each
    with the version read with them (None: not matched, by its hardware claim).
    ``by_id``: ``where`` lists their ids (then their offers are read by id too; else
    every offer is, and those of other providers dropped)."""
    ph = db.placeholder(conn)
    rows = conn.exec_driver_sql(
        "SELECT p.id, p.hardware, p.benchmark, p.slots, p.reputation, p.compute_units, "
        f"p.operator, p.origin, p.fingerprint, p.last_seen, {_moving(ph)}, p.version, "
        "h.provider_id, h.fingerprint, h.status, h.verified, h.verified_units, h.wrong "
        f"FROM providers p LEFT JOIN hw_claims h ON h.provider_id = p.id WHERE {where}",
        (_LEASED, *args)).all()
    if not rows:
        return {}
    among, among_args = "", ()  # type: str, tuple[str, ...]
    if by_id:
        among = f" WHERE provider_id IN ({', '.join([ph] * len(rows))})"
        among_args = tuple(r[0] for r in rows)
    offered: dict[str, list[market.Offer]] = defaultdict(list)
    for pid, workload, model, price in conn.exec_driver_sql(
            f"SELECT provider_id, workload, model, price FROM offers{among} "
            "ORDER BY provider_id, workload, model", among_args).all():  # the key's order
        offered[pid].append(market.Offer(workload, model, int(price)))
    provs = [_Row(*r[:10]) for r in rows]
    claims = {r[0]: _Claim(*r[14:]) for r in rows if r[13] is not None}
    states = [market.ProviderState(
        id=p.id, online=True, stake=int(r[10] or 0),
        memory_mb=int(p.hardware.get("memory_mb", 0)), slots=p.slots, load=int(r[11]),
        reputation=p.reputation, compute_units=p.compute_units, offers=tuple(offered[p.id]),
        **identity(c, p)) for p, r in zip(provs, rows, strict=True)]
    # Hardware as verified by challenges: a provider flagged for a wrong or missing
    # answer is not matched; one that proved less keeps only what it proved.
    kept = {st.id: st for st in hardware.apply_claims(
        c, states, hardware.verified_of(provs, claims))}
    return {r[0]: (int(r[12]), kept.get(r[0])) for r in rows}


IN_MAX = 5000  # ids in one statement's IN list (SQLite allows 32,766 parameters in all,
# PostgreSQL 65,535): a longer list is read in parts
_LEASED = AssignmentStatus.LEASED.value
_STAKE = ledger.stake("")  # a stake account's prefix ("stake:"), a constant of the code
# written into the statement's text: nothing a client sends reaches it


def _moving(ph: str) -> str:
    """A provider's stake and live leases, as two columns (their one parameter: the
    leased status)."""
    return (f"(SELECT b.amount FROM balances b WHERE b.account = '{_STAKE}' || p.id), "
            f"(SELECT count(*) FROM assignments a WHERE a.provider_id = p.id "
            f"AND a.status = {ph})")


def _json(v: Any) -> Any:
    """A JSON column as the driver gave it: text on SQLite, parsed on PostgreSQL."""
    return json.loads(v) if isinstance(v, (str, bytes)) else v


class _Row:
    """A provider row's columns that matching reads (``verified_of`` reads it too)."""

    __slots__ = ("id", "hardware", "_benchmark", "slots", "reputation", "compute_units",
                 "operator", "origin", "fingerprint", "last_seen")

    def __init__(self, id: str, hardware: Any, benchmark: Any, slots: int,  # noqa: A002
                 reputation: float, compute_units: float, operator: str | None,
                 origin: str | None, fingerprint: str | None, last_seen: float) -> None:
        self.id, self.slots, self.last_seen = id, int(slots), last_seen
        self.hardware, self._benchmark = _json(hardware) or {}, benchmark
        self.reputation, self.compute_units = float(reputation), float(compute_units)
        self.operator, self.origin, self.fingerprint = operator, origin, fingerprint

    @property
    def benchmark(self) -> Any:
        """Parsed when read: only a provider with a hardware claim needs it."""
        return _json(self._benchmark) or {}


class _Claim:
    """A hardware claim row's columns that ``hardware.verified_of`` reads."""

    __slots__ = ("fingerprint", "status", "verified", "verified_units", "wrong")

    def __init__(self, fingerprint: str, status: str, verified: Any, verified_units: float,
                 wrong: Any) -> None:
        self.fingerprint, self.status, self.verified = fingerprint, status, _json(verified)
        self.verified_units, self.wrong = float(verified_units or 0.0), bool(wrong)


def identity(c: Coordinator, p: Any) -> dict[str, Any]:
    """Who is behind a provider (``core.diversity``) and whether the network trusts it."""
    return {"operator": p.operator or p.id, "origin": p.origin or "",
            "fingerprint": p.fingerprint or "", "verifier": p.id in c.settings.verifiers}


class ProviderIndex:
    def __init__(self, c: Coordinator, resync_s: float = RESYNC_S) -> None:
        self.c = c
        self.resync_s = resync_s
        self._lock = threading.RLock()
        self._states: dict[str, market.ProviderState] = {}
        self._db_seen: dict[str, float] = {}  # last beat, as the database has it
        self._heard: dict[str, float] = {}  # beats heard here (maybe not written yet)
        self._ranked: dict[Key, list[Ranked]] = {}
        self._going: dict[Key, tuple[float, int]] = {}  # ``going_price``, when read
        self._memo: Memo = {}  # states with the version they were built at (``load``)
        self._dirty: set[str] = set()
        # When each provider last changed (touch) or was leased here, on a counter: a read
        # that began before a change may not hold it (``reread``, ``_resync``).
        self._tick = 0
        self._changed: dict[str, int] = {}
        self._leased: dict[str, int] = {}
        self._built = False
        self._synced = -math.inf  # time.monotonic() of the last full read
        self._build_s = 0.0
        self._resyncing = False
        self.builds = 0  # full reads, for tests and metrics
        self.rereads = 0  # providers re-read one by one
        touch.on_commit(c.db.engine, self._committed)
        c.notifier.on_remote_wake.append(self.touch)  # leases by other replicas
        c.notifier.on_remote_change.append(self.touch)  # their other changes

    # --- what writers tell it ------------------------------------------------------------

    def touch(self, ids: Iterable[str]) -> None:
        """These providers changed: re-read them on the next use."""
        with self._lock:
            self._tick += 1
            for pid in ids:
                self._dirty.add(pid)
                self._changed[pid] = self._tick

    def _committed(self, ids: set[str]) -> None:
        """A transaction here changed these providers: re-read them, and tell the other
        replicas (``NOTIFY``, PostgreSQL) so that theirs do too."""
        self.touch(ids)
        self.c.notifier.providers_changed(ids)

    def beat(self, pid: str, now: float) -> None:
        with self._lock:
            if now > self._heard.get(pid, -math.inf):
                self._heard[pid] = now
            if pid not in self._states and self._built:
                self._dirty.add(pid)  # back from offline, or new: read it

    def leased(self, pid: str, n: int = 1) -> None:
        """This process committed ``n`` leases to ``pid``."""
        with self._lock:
            st = self._states.get(pid)
            if st is not None:
                self._states[pid] = st.with_(load=st.load + n)
            self._tick += 1
            self._leased[pid] = self._tick  # a resync reading from before must not undo it

    # --- reading -------------------------------------------------------------------------

    def states(self, s: Session) -> list[market.ProviderState]:
        """Every online provider's state, as ``matching.provider_states`` would read it,
        up to the changes not yet reported (checked again at commit)."""
        self.refresh(s)
        since = self.c.now() - self.c.settings.heartbeat_timeout
        with self._lock:  # copies (in C, ~0.1 ms at 10,000): a beat waits on this lock
            states, db_seen, heard = dict(self._states), dict(self._db_seen), dict(self._heard)
        never = -math.inf
        return [st for pid, st in states.items()
                if db_seen.get(pid, never) >= since or heard.get(pid, never) >= since]

    def reread(self, s: Session, ids: Sequence[str]) -> dict[str, market.ProviderState]:
        """The providers' states read now in ``s`` (the authority), stored in the index;
        an id missing from the answer is not active, not verified or gone. ``online``
        counts beats heard here that the database has not been told of yet."""
        ids = sorted(set(ids))
        with self._lock:
            start = self._tick
        states, seen = load(self.c, s, ids, memo=self._memo)
        since = self.c.now() - self.c.settings.heartbeat_timeout
        out: dict[str, market.ProviderState] = {}
        with self._lock:
            self.rereads += len(ids)
            # Changed again while this read ran: what it read may be older than the change
            # (another thread's read of it may even have landed first). Read it once more.
            self._dirty.update(p for p in ids if self._changed.get(p, -1) > start)
            for pid in set(ids).difference(st.id for st in states):
                self._drop(pid)
            for st in states:
                self._db_seen[st.id] = seen[st.id]
                last = self._last(st.id)
                self._put(st)
                out[st.id] = st if last >= since else replace(st, online=False)
        return out

    def refresh(self, s: Session) -> None:
        """Build on first use; re-read what changed; start a resync when one is due."""
        if not self._built:
            with self._lock:
                if not self._built:
                    self._build(s)
            return
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            due = (not self._resyncing
                   and time.monotonic() - self._synced >= max(self.resync_s,
                                                              20 * self._build_s))
            if due:
                self._resyncing = True
        if dirty and s.info.get("snapshot") and s.in_transaction():
            # A snapshot may predate the changes: read them in a transaction begun now.
            with self.c.db.read() as now:
                self.reread(now, sorted(dirty))
        elif dirty:
            self.reread(s, sorted(dirty))
        if due:
            threading.Thread(target=self._resync, name="provider-index-resync",
                             daemon=True).start()

    def going_price(self, s: Session, workload: str, model: str,
                    only: frozenset[str] | None = None) -> int | None:
        """The most a request with no price of its own (``/v1``) pays a unit of ``model``:
        the highest price among the online providers that could be given it (staked,
        memory enough for the model, a slot, not the network's verifiers), but never more
        than ``GOING_FACTOR`` times their median price. Not the highest price of anyone
        online: a provider asking 10⁹ was paid 10⁹ by whichever request the cheap ones
        were too busy for, and one that bonds nothing priced every caller out of the
        model; and not anyone's who could never be placed (a sybil with 1 MB of memory
        asking 0 dragged the median to 0, and no request was ever placed). Read at most
        once every ``GOING_TTL_S`` per model (it looks at every provider's price); None
        when no such provider serves it. ``only`` (a sealed job's parties, whom its
        client chose): the highest price among those of them that could run it."""
        self.refresh(s)
        key = (workload, model)
        at = time.monotonic()
        if only is None:
            with self._lock:
                got = self._going.get(key)
                if got is not None and at - got[0] < GOING_TTL_S:
                    return got[1]
        floor = self.c.settings.min_stake
        d = market.TaskDemand(id="", workload=workload, model=model, max_price=2**62,
                              memory_mb=catalog.lookup(model).memory_mb,
                              stake_needed=floor, only=only)
        since = self.c.now() - self.c.settings.heartbeat_timeout
        with self._lock:
            asks = sorted(price for _, pid, price in self._ranked.get(key, ())
                          if self._last(pid) >= since
                          and (st := self._states.get(pid)) is not None
                          and not st.verifier and st.slots > 0
                          and not market.failures(d, st, floor, price) & _GOING_IGNORES
                          and st.stake >= self._going_stake(price))
            if not asks:
                return None  # not kept: the first provider to come serves at once
            if only is not None:
                return asks[-1]
            going = min(asks[-1], GOING_FACTOR * asks[(len(asks) - 1) // 2])
            self._going[key] = (at, going)
            return going

    def _going_stake(self, price: int) -> int:
        """The stake a provider asking ``price`` needs to count in the going price: what
        a request of ``GOING_REF_UNITS`` at that price asks of it (``matching.stake_needed``,
        a task that may be a canary). Sybils asking 10⁹ on a bare minimum stake each set
        the median, and with it every caller's escrow and the stake asked of every
        provider; to count, a price must now be staked in proportion to it."""
        vp = self.c.settings.verify
        p = policy.check_probability(Reputation(cv=2**31), vp, canary=True)
        return market.stake_for(cost_for_units(GOING_REF_UNITS, price), vp.slash_fraction, p) \
            if p > 0 else 0

    def place(self, s: Session, d: market.TaskDemand, min_stake: int) -> market.Placement | None:
        """The best provider for ``d`` by the strategy (as ``market.place`` would choose
        among the non-verifiers), checked against its rows in ``s``; None when no
        candidate holds up (the matcher places it later)."""
        self.refresh(s)
        since = self.c.now() - self.c.settings.heartbeat_timeout
        key = (d.workload, d.model)
        tried = 0
        with self._lock:
            ranked = list(self._ranked.get(key, ()))  # a copy: a reread below edits it
        i = 0
        while i < len(ranked) and tried < MAX_FRESH:
            # Candidates of one score in a group: ``market.place`` breaks ties by load.
            score = ranked[i][0]
            group = []
            while i < len(ranked) and ranked[i][0] == score:
                group.append(ranked[i][1])
                i += 1
            with self._lock:
                ok = [self._states[pid] for pid in group
                      if pid in self._states and not self._states[pid].verifier
                      and self._last(pid) >= since
                      and not market.failures(d, self._states[pid], min_stake,
                                              self._states[pid].price_for(*key))]
            if not ok:
                continue
            ok.sort(key=lambda st: (st.load, st.id))
            for cand in ok:
                tried += 1
                fresh = self.reread(s, [cand.id]).get(cand.id)
                if fresh is not None and not market.failures(d, fresh, min_stake,
                                                             price := fresh.price_for(*key)):
                    assert price is not None
                    return market.Placement(d.id, fresh.id, price)
                if tried >= MAX_FRESH:
                    break
        return None

    # --- keeping it -----------------------------------------------------------------------

    def _last(self, pid: str) -> float:
        """A provider's last beat: the database's, or a later one heard here."""
        return max(self._db_seen.get(pid, -math.inf), self._heard.get(pid, -math.inf))

    def _read_all(self, s: Session) -> tuple[list[market.ProviderState], dict[str, float]]:
        """Every provider online by the database, and those online by a beat heard here
        that the database has not been told of yet."""
        since = self.c.now() - self.c.settings.heartbeat_timeout
        states, seen = load(self.c, s, since=since, memo=self._memo)
        with self._lock:
            heard = sorted(p for p, t in self._heard.items() if t >= since and p not in seen)
        if heard:
            more, more_seen = load(self.c, s, heard, memo=self._memo)
            states += more
            seen.update(more_seen)
        return states, seen

    def _build(self, s: Session) -> None:
        t0 = time.monotonic()
        states, seen = self._read_all(s)
        self._replace_all(self._structures(states), seen)
        self._build_s = time.monotonic() - t0
        self._synced = time.monotonic()
        self._built = True
        self.builds += 1

    def _resync(self) -> None:
        try:
            with self._lock:
                start = self._tick
            with self.c.db.read() as s:
                t0 = time.monotonic()
                states, seen = self._read_all(s)
            built = self._structures(states)
            with self._lock:
                self._replace_all(built, seen)
                # What changed or was leased while it read may be missing from its snapshot.
                for marks in (self._changed, self._leased):
                    self._dirty.update(p for p, t in marks.items() if t > start)
                self._changed = {p: t for p, t in self._changed.items() if t > start}
                self._leased = {p: t for p, t in self._leased.items() if t > start}
                # Beats the database has caught up with are not needed any more.
                self._heard = {p: t for p, t in self._heard.items() if t > seen.get(p, -math.inf)}
                self._build_s = time.monotonic() - t0
                self.builds += 1
        except Exception:  # the database closed under it (shutdown); the next use retries
            log.debug("provider index resync failed", exc_info=True)
        finally:
            with self._lock:
                self._synced = time.monotonic()
                self._resyncing = False

    def _structures(self, states: list[market.ProviderState]) -> _Built:
        """The index's maps for these states, built without the lock: a heartbeat answered
        on the event loop takes it, so it is held for the swap only."""
        by_id: dict[str, market.ProviderState] = {}
        by: dict[Key, list[Ranked]] = defaultdict(list)
        strategy = self.c.settings.strategy
        for st in states:
            by_id[st.id] = st
            for key, price in _first_offers(st).items():
                by[key].append((strategy.score(price, st), st.id, price))
        for items in by.values():
            items.sort()
        return by_id, dict(by)

    def _replace_all(self, built: _Built, seen: dict[str, float]) -> None:
        with self._lock:
            self._states, self._ranked = built
            self._going.clear()
            self._db_seen = dict(seen)
            for pid in list(self._memo):  # who left (offline, gone): built again if back
                if pid not in seen:
                    self._memo.pop(pid, None)

    def _drop(self, pid: str) -> None:
        old = self._states.pop(pid, None)
        if old is None:
            return
        strategy = self.c.settings.strategy
        for key, price in _first_offers(old).items():
            self._going.pop(key, None)
            items = self._ranked.get(key)
            if items is None:
                continue
            item = (strategy.score(price, old), pid, price)
            j = bisect.bisect_left(items, item)
            if j < len(items) and items[j] == item:
                del items[j]

    def _put(self, st: market.ProviderState) -> None:
        old = self._states.get(st.id)
        score = self.c.settings.strategy.score
        if old is not None and old.offers == st.offers and all(
                score(o.price, old) == score(o.price, st) for o in st.offers):
            self._states[st.id] = st  # ranked as before (a re-read that found its load
            # changed, most often): moving it in the sorted lists cost two memmoves each
            return
        self._drop(st.id)
        self._states[st.id] = st
        strategy = self.c.settings.strategy
        for key, price in _first_offers(st).items():
            self._going.pop(key, None)  # its price moved, or it is new: read again
            bisect.insort(self._ranked.setdefault(key, []), (strategy.score(price, st), st.id,
                                                              price))


def _first_offers(st: market.ProviderState) -> dict[Key, int]:
    """Each (workload, model) at the price ``price_for`` charges: its first offer."""
    first: dict[Key, int] = {}
    for o in st.offers:
        first.setdefault((o.workload, o.model), o.price)
    return first


def warm(c: Coordinator) -> None:
    """Build the index now (at start), so no request pays for the first full read."""
    with c.db.read() as s:
        of(c).refresh(s)


def of(c: Coordinator) -> ProviderIndex:
    """The coordinator's one index (made on first use)."""
    idx: ProviderIndex | None = c.__dict__.get("_provider_index")
    if idx is None:
        with _made:
            idx = c.__dict__.get("_provider_index")
            if idx is None:
                idx = c.__dict__.setdefault("_provider_index", ProviderIndex(c))
    return idx


_made = threading.Lock()
