"""The coordinator's state and its account, blob and provider operations.

``Coordinator`` bundles the database, blob store, settings, clock and notifier;
every operation is a method or a function taking it, and every change of state
happens inside one ``db.run(fn)`` transaction (re-run when PostgreSQL aborts it
for a deadlock or a serialization failure; notifications go after it returns)
so a crash leaves no half-written job, task or posting.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deai import __version__
from deai.coordinator import touch
from deai.coordinator.notifier import Notifier
from deai.coordinator.settings import Settings
from deai.coordinator.settlement import Settlement
from deai.core import auth, catalog, compute, diversity, ledger, wire
from deai.core.clock import Clock, SystemClock
from deai.core.errors import AuthError, Conflict, Forbidden, InvalidInput, NotFound
from deai.core.lifecycle import AssignmentStatus, ProviderStatus
from deai.core.standing import standing
from deai.store import db
from deai.store.blobs import BlobStore
from deai.store.db import Database
from deai.store.models import Assignment, Event, NetworkMeta, Nonce, Offer, Payout, Provider
from deai.store.models import Reputation as RepRow


def new_id(prefix: str) -> str:
    """``prefix_`` and 64 random bits from the OS (``secrets.token_hex(8)``, its layers
    skipped: the matcher makes one per lease)."""
    return f"{prefix}_{os.urandom(8).hex()}"


def new_ids(prefix: str, n: int) -> list[str]:
    """``n`` ids as ``new_id`` makes them, from one read of the OS's random source."""
    raw = os.urandom(8 * n).hex()
    return [f"{prefix}_{raw[i:i + 16]}" for i in range(0, 16 * n, 16)]


def ordered_ids(prefix: str, n: int) -> list[str]:
    """``n`` ids that sort by the time they were made: ``prefix_``, the milliseconds
    since the epoch in 12 hex digits, and 64 random bits (as ``new_id``'s, as hard to
    guess). For rows made at a high rate into a table that keeps them (a lease per
    placement): a random id lands each row at a random place in the primary key's index,
    and each commit wrote a page of it per row (a third of a lease's cost once the table
    held 300,000 leases); these land together at the index's end."""
    ms = f"{prefix}_{int(time.time() * 1000):012x}"
    raw = os.urandom(8 * n).hex()
    return [ms + raw[i:i + 16] for i in range(0, 16 * n, 16)]


class Coordinator:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.db_url, settings.db_connections)
        self.blobs = BlobStore(settings.blob_dir)
        self.notifier = Notifier()
        self.settlement = Settlement(self.clock, settings.fee_bps)
        # The verification draws (replicate? plant a canary?): seedable for tests and
        # replays, unpredictable otherwise.
        self.rng: random.Random = (random.Random(settings.verify_seed)
                                   if settings.verify_seed is not None else secrets.SystemRandom())

    def now(self) -> float:
        return self.clock.now()

    @functools.cached_property
    def network_id(self) -> str:
        """This deployment's id, which every signed request signs (``core.auth``): made at
        random with its database (migration 0028), the same on every replica."""
        return self._meta("network_id")

    def check_nonce(self, subject_id: str) -> bytes:
        """What a sampling check of the result ``subject_id`` draws with (training's
        segments, ``Kind.check_payload``): keyed by a secret made with the database and
        never published, so the claimant cannot know it when it commits, and the same
        for every check of that result (a replica's and a referee's audits replay the
        same segments: drawn apart, a referee that missed the replica's bad segment
        agreed with both, and the cheat stood)."""
        key = bytes.fromhex(self._check_secret)
        return hmac.new(key, subject_id.encode(), hashlib.sha256).digest()[:16]

    @functools.cached_property
    def _check_secret(self) -> str:
        try:
            return self._meta("check_secret")
        except RuntimeError:  # a database from before the secret: made once, by one replica
            try:
                with self.db.write() as s:
                    s.add(NetworkMeta(key="check_secret", value=secrets.token_hex(32)))
            except IntegrityError:
                pass
            return self._meta("check_secret")

    def _meta(self, key: str) -> str:
        with self.db.read() as s:
            value = s.scalar(select(NetworkMeta.value).where(NetworkMeta.key == key))
        if value is None:
            raise RuntimeError(f"the database has no {key}: run its migrations")
        return value

    def emit(self, s: Session, kind: str, subject: str = "", /, **body: Any) -> None:
        s.add(Event(ts=self.now(), kind=kind, subject=subject, body=body))

    def network(self) -> wire.NetworkInfo:
        st = self.settings
        return wire.NetworkInfo(
            version=__version__, network_id=self.network_id, devnet=st.devnet,
            min_stake=st.min_stake, min_bond=st.min_bond, fee_bps=st.fee_bps,
            challenge_window=st.challenge_window, heartbeat_timeout=st.heartbeat_timeout,
            lease_ttl=st.lease_ttl, max_upload_bytes=st.max_upload_bytes)

    # --- identity -------------------------------------------------------------------------

    def check_signature(self, account: str, message: bytes, signature: str) -> None:
        try:
            VerifyKey(bytes.fromhex(account)).verify(message, bytes.fromhex(signature))
        except (BadSignatureError, ValueError):
            raise AuthError("signature does not verify") from None

    def use_nonce(self, account: str, nonce: str, window: float) -> None:
        """Record a nonce; a second use inside the window is a replay."""
        try:
            self.db.run(lambda s: s.add(Nonce(account=account, nonce=nonce,
                                              expires_at=self.now() + window)))
        except IntegrityError:
            raise AuthError("nonce already used (replayed request)") from None

    def purge_nonces(self) -> None:
        self.db.run(lambda s: s.execute(delete(Nonce).where(Nonce.expires_at < self.now())))

    # --- money ----------------------------------------------------------------------------

    def faucet(self, account: str, amount: int) -> wire.BalanceOut:
        if not self.settings.devnet:
            raise Forbidden("the faucet exists only on a devnet")
        if amount > self.settings.faucet_max:
            raise InvalidInput(f"amount: at most {self.settings.faucet_max} µ per request",
                               field="amount")
        def body(s: Session) -> None:
            self.settlement.faucet(s, account, amount)
            self.emit(s, "faucet", account, amount=amount)

        self.db.run(body)
        self.notifier.published()
        return self.balance(account)

    def balance(self, account: str) -> wire.BalanceOut:
        with self.db.read() as s:
            b = self.settlement.balances(s, [ledger.acct(account), ledger.pending(account),
                                             ledger.stake(account)])
        return wire.BalanceOut(account=account, available=b.get(ledger.acct(account), 0),
                               pending=b.get(ledger.pending(account), 0),
                               stake=b.get(ledger.stake(account), 0))

    # --- blobs ----------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> wire.BlobOut:
        return wire.BlobOut(digest=self.blobs.put(data), size=len(data))

    # --- providers ------------------------------------------------------------------------

    def register(self, pid: str, reg: wire.RegisterIn, address: str = "") -> wire.ProviderOut:
        """Record a provider's hardware and offers, and who is behind it (``core.diversity``):
        its operator (checked against ``operator_signature``), the network block of
        ``address`` (the request's client) and the fingerprint of its hardware. A key
        claiming ``capabilities["verifier"]`` keeps it only if ``settings.verifiers`` lists it.
        """
        if reg.operator_signature and not reg.operator:
            raise InvalidInput("operator: required with operator_signature", field="operator")
        if reg.operator:
            try:
                VerifyKey(bytes.fromhex(reg.operator)).verify(
                    auth.operator_message(reg.operator, pid),
                    bytes.fromhex(reg.operator_signature))
            except (BadSignatureError, ValueError):
                raise InvalidInput("operator_signature: not the operator's signature over "
                                   "this provider key", field="operator_signature") from None
        caps = dict(reg.capabilities)
        if pid in self.settings.verifiers:
            caps["verifier"] = True
        else:  # an untrusted claim is dropped: the key serves as an ordinary provider
            caps.pop("verifier", None)
        hw = reg.hardware.model_dump()
        fp = diversity.fingerprint(hw)
        hw.pop("machine_id", None)  # links keys on one box; kept only inside the fingerprint
        seen: set[tuple[str, str]] = set()
        for i, o in enumerate(reg.offers):
            info = catalog.lookup(o.model, field=f"offers[{i}].model", workload=o.workload)
            o.model = info.name
            # After the alias is resolved: two names of one model are one offer (the
            # table's key), and a second would fail the insert as a 500.
            if (o.workload, o.model) in seen:
                raise InvalidInput(f"offers[{i}]: {o.workload} {o.model} is offered twice",
                                   field=f"offers[{i}]")
            seen.add((o.workload, o.model))
        cu = compute.compute_units(reg.benchmark.gflops, reg.benchmark.mem_gbps)
        now = self.now()

        def body(s: Session) -> None:
            p = s.get(Provider, pid, with_for_update={"key_share": True})
            if p is None:
                p = Provider(id=pid, registered_at=now, reputation=0.5, tasks_done=0)
                s.add(p)
            p.name = reg.name or pid[:12]
            p.hardware = hw
            p.benchmark = reg.benchmark.model_dump()
            p.compute_units = cu
            p.threads, p.slots, p.last_seen = reg.threads, reg.slots, now
            p.status = ProviderStatus.ACTIVE
            p.capabilities = caps
            p.operator = reg.operator or pid
            p.origin = diversity.origin(address) or None
            p.fingerprint = fp
            s.flush()
            s.execute(delete(Offer).where(Offer.provider_id == pid))
            for o in reg.offers:
                s.add(Offer(provider_id=pid, workload=o.workload, model=o.model, price=o.price))
            self.emit(s, "provider_registered", pid, name=p.name, compute_units=cu,
                      offers=[o.model_dump() for o in reg.offers])
            touch.touched(s, [pid])  # matching's index reads it again

        self.db.run(body)
        self.notifier.kick()
        self.notifier.published()
        return self.provider(pid)

    def require_provider(self, s: Session, pid: str) -> Provider:
        p = s.get(Provider, pid)
        if p is None:
            raise NotFound("this key is not a registered provider; register first",
                           field="provider")
        return p

    def bond(self, pid: str, amount: int) -> wire.BalanceOut:
        def body(s: Session) -> None:
            self.require_provider(s, pid)
            # At least min_bond, or what brings the stake up to the minimum (a top-up
            # after a penalty, once per fall below it): each bond is a vault call the
            # settlement key pays gas for, and bonds of 1 µ made it a million per DEAI.
            st = self.settings
            if amount < st.min_bond and not (
                    self.settlement.balance(s, ledger.stake(pid)) < st.min_stake
                    <= self.settlement.balance(s, ledger.stake(pid)) + amount):
                raise InvalidInput(f"amount: at least {st.min_bond} µ a bond, or what "
                                   f"brings the stake up to {st.min_stake} µ",
                                   field="amount", minimum=st.min_bond)
            self.settlement.bond(s, pid, amount)
            self.emit(s, "bond", pid, amount=amount)

        self.db.run(body)
        self.notifier.kick()
        self.notifier.published()
        return self.balance(pid)

    def heartbeat(self, pid: str, running: list[str]) -> wire.HeartbeatOut:
        now = self.now()

        def body(s: Session) -> list[str]:
            # Lock order: assignments (ascending id), then the provider (``store.db``).
            drop: list[str] = []
            if running:
                rows = s.scalars(select(Assignment).where(Assignment.id.in_(running))).all()
                live = {a.id for a in rows
                        if a.provider_id == pid and a.status == AssignmentStatus.LEASED}
                drop = [a for a in running if a not in live]
                s.execute(update(Assignment).where(Assignment.id.in_(sorted(live)))
                          .values(lease_deadline=db.capped(now + self.settings.lease_ttl,
                                                           Assignment.hold_until)))
            p = self.require_provider(s, pid)
            p.last_seen = now
            touch.touched(s, [pid])  # matching's index: online again, maybe
            return drop

        return wire.HeartbeatOut(drop=self.db.run(body))

    def live_lease(self, s: Session, pid: str, assignment_id: str, *,
                   lock: bool = True) -> Assignment:
        """The assignment, locked (unless ``lock`` is False: a check before a write), if
        ``pid`` holds its lease and the lease is still live."""
        a = s.get(Assignment, assignment_id, with_for_update=lock)
        if a is None:
            raise NotFound(f"no assignment {assignment_id}", field="assignment")
        if a.provider_id != pid:
            raise Forbidden("this assignment was leased to another provider")
        if a.status != AssignmentStatus.LEASED:
            raise Conflict(f"assignment {assignment_id} is {a.status}; its lease is over",
                           status=a.status)
        if a.lease_deadline < self.now():
            raise Conflict(f"assignment {assignment_id}: the lease expired",
                           status=AssignmentStatus.EXPIRED.value)
        return a

    def online(self, p: Provider) -> bool:
        fresh = p.last_seen >= self.now() - self.settings.heartbeat_timeout
        return p.status == ProviderStatus.ACTIVE and fresh

    def provider(self, pid: str) -> wire.ProviderOut:
        with self.db.read() as s:
            p = s.get(Provider, pid)
            if p is None:
                raise NotFound(f"no provider {pid}", field="provider")
            return self._provider_out(s, p, *_records(s, [pid]))

    def providers(self) -> list[wire.ProviderOut]:
        """Every provider with its whole hardware, a page at a time (``providers_page``):
        for callers inside the process; the API serves pages of summaries."""
        out: list[wire.ProviderOut] = []
        after: str | None = None
        while True:
            page = self.providers_page(MAX_PAGE, after, summary=False)
            out.extend(page.providers)
            if page.next is None:
                return out
            after = page.next

    def providers_page(self, limit: int, after: str | None = None, *,
                       summary: bool = True) -> wire.ProvidersOut:
        """Up to ``limit`` providers by id, those above ``after``, in a few statements
        whatever their number: offers, stakes, earnings and records each read for the
        page at once. Each row carries a summary of its hardware, not the registration's
        blob (up to ~16 KB each: registering is free, so a list of them must not be what
        a stranger can grow; ``summary=False``: whole); ``provider`` gives it whole.
        ``next``: the id to pass as ``after`` for the next page, None after the last."""
        limit = max(1, min(limit, MAX_PAGE))
        with self.db.read() as s:
            q = select(Provider).order_by(Provider.id).limit(limit)
            if after is not None:
                q = q.where(Provider.id > after)
            rows = s.scalars(q).all()
            ids = [p.id for p in rows]
            slashes, probation = _records(s, ids)
            offers: dict[str, list[Offer]] = {}
            for o in s.scalars(select(Offer).where(Offer.provider_id.in_(ids))
                               .order_by(Offer.provider_id, Offer.workload, Offer.model)):
                offers.setdefault(o.provider_id, []).append(o)
            stakes = self.settlement.balances(s, [ledger.stake(p.id) for p in rows])
            earned = {str(k): int(v) for k, v in s.execute(
                select(Payout.provider_id, func.sum(Payout.amount))
                .where(Payout.provider_id.in_(ids)).group_by(Payout.provider_id)).all()}
            out = [self._provider_out(s, p, slashes, probation,
                                      (offers.get(p.id, []), stakes.get(ledger.stake(p.id), 0),
                                       earned.get(p.id, 0)),
                                      hardware=hardware_summary if summary else dict)
                   for p in rows]
        return wire.ProvidersOut(providers=out, next=ids[-1] if len(ids) == limit else None)

    def _provider_out(self, s: Session, p: Provider, slashes: dict[str, int],
                      probation: set[str],
                      known: tuple[list[Offer], int, int] | None = None,
                      hardware: Callable[[dict[str, Any]], dict[str, Any]] = dict,
                      ) -> wire.ProviderOut:
        """``known``: its offers, stake and earnings, read with others' (``providers``);
        ``hardware``: what of its hardware to show (a list's rows: ``hardware_summary``)."""
        if known is None:
            offers = list(s.scalars(select(Offer).where(Offer.provider_id == p.id)
                                    .order_by(Offer.workload, Offer.model)))
            stake = self.settlement.balances(s, [ledger.stake(p.id)]).get(
                ledger.stake(p.id), 0)
            earned = s.scalar(select(func.coalesce(func.sum(Payout.amount), 0))
                              .where(Payout.provider_id == p.id)) or 0
        else:
            offers, stake, earned = known
        online = self.online(p)
        n, on_probation = slashes.get(p.id, 0), p.id in probation
        return wire.ProviderOut(
            id=p.id, name=p.name, status=p.status, online=online,
            hardware=hardware(p.hardware or {}), benchmark=p.benchmark,
            compute_units=p.compute_units, threads=p.threads, slots=p.slots, stake=stake,
            reputation=p.reputation,
            last_seen=p.last_seen, tasks_done=p.tasks_done, earned=int(earned),
            capabilities=p.capabilities or {},
            offers=[wire.OfferOut(workload=o.workload, model=o.model, price=o.price,
                                  price_per_cu=_per_cu(o.price, p.compute_units))
                    for o in offers],
            standing=standing(online=online, slashes=n, probation=on_probation, stake=stake,
                              min_stake=self.settings.min_stake).value,
            slashes=n, probation=on_probation)


MAX_PAGE = 500  # rows of a public list, at most


def hardware_summary(hw: dict[str, Any]) -> dict[str, Any]:
    """A list row's hardware: the figures a table shows, and how many GPUs (not each
    GPU's entry: a registration may carry 64 of them)."""
    gpus = hw.get("gpus")
    out: dict[str, Any] = {k: hw[k] for k in ("cpu_model", "cores", "memory_mb", "platform")
                           if k in hw}
    out["gpu_count"] = len(gpus) if isinstance(gpus, list) else 0
    return out


def _records(s: Session, pids: list[str] | None) -> tuple[dict[str, int], set[str]]:
    """Slash counts (``slash`` events, by subject) and who is on probation for some
    workload, for ``pids`` (None: every provider)."""
    slash_q = (select(Event.subject, func.count()).where(Event.kind == "slash")
               .group_by(Event.subject))
    prob_q = select(RepRow.provider_id).where(RepRow.probation > 0).distinct()
    if pids is not None:
        slash_q = slash_q.where(Event.subject.in_(pids))
        prob_q = prob_q.where(RepRow.provider_id.in_(pids))
    slashes = {str(k): int(n) for k, n in s.execute(slash_q).all()}
    return slashes, set(s.scalars(prob_q).all())


def _per_cu(price: int, cu: float) -> float | None:
    return round(compute.price_per_cu(price, cu), 3) if cu > 0 else None

