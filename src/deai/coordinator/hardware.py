"""Hardware challenges on the coordinator: issue, time, check, record, flag and slash.

The provider asks (``poll``) and gets a challenge when one is due: at once
for a new provider (``registration``) or one whose registered hardware or
claimed rates changed since the last check (``identity``: the claim's
verified figures are dropped until it passes again), soon after a failure
(``retry``), and otherwise at exponentially distributed random times with
mean ``period_s`` (``random``). The clock starts when the challenge leaves
here and stops when its commitment arrives; only then are the rows to open
drawn (``commit``), and ``open`` judges the answer with ``core.hwcheck.check``
and applies ``core.hwcheck.next_state``: verified figures, ``Provider.compute_units``
set to the verified units, a flag, and on repeated failure a slash of part of
the stake through the settlement port (a journal entry). A challenge left
unanswered past its deadline plus ``grace_s`` expires, which is a failure; so
does one that was due that long ago while its provider, online, never asked for
it (``expire``: re-challenges are not left to the provider's goodwill).

Matching reads the outcome through ``apply_verified`` (see its docstring).
Parameters come from ``DEAI_HW_*`` variables (``params_from_env``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator, new_id
from deai.core import hwcheck as hc
from deai.core import ledger, market
from deai.core import wire_hardware as wh
from deai.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from deai.core.lifecycle import ProviderStatus
from deai.store.models import HwChallenge, HwClaim, Provider

log = logging.getLogger("deai.coordinator.hardware")

LIVE = ("issued", "committed")


def params_from_env(env: dict[str, str] | None = None) -> hc.Params:
    """``DEAI_HW_<FIELD>`` overrides a field of ``core.hwcheck.Params`` (numbers only)."""
    env = dict(os.environ) if env is None else env
    over: dict[str, Any] = {}
    for f in fields(hc.Params):
        raw = env.get(f"DEAI_HW_{f.name.upper()}")
        if raw is None or f.name == "cpu_n":
            continue
        try:
            over[f.name] = int(raw) if isinstance(getattr(hc.Params, f.name), int) \
                else float(raw)
        except ValueError:
            raise InvalidInput(f"DEAI_HW_{f.name.upper()} must be a number",
                               field=f.name) from None
    return replace(hc.Params(), **over)


DEVNET = {"DEAI_HW_TARGET_S": "0.3", "DEAI_HW_MEM_CAP_MB": "64", "DEAI_HW_MARGIN": "20",
          "DEAI_HW_LATENCY_S": "10", "DEAI_HW_SLASH_AFTER": "1000000"}
"""A devnet (tests, demos, a laptop) checks claims cheaply: a fraction of a second of
products and at most 64 MiB held. Every agent of a devnet shares one machine, whose
load says nothing about any one claim, so its deadlines are lenient (20× plus 10 s)
and a miss never slashes; a wrong product is still flagged at once. ``DEAI_HW_*``
variables say otherwise (the hardware tests set production margins explicitly)."""


def params(c: Coordinator) -> hc.Params:
    p: hc.Params | None = getattr(c, "_hw_params", None)
    if p is None:
        base = DEVNET if c.settings.devnet else {}
        p = params_from_env({**base, **os.environ})
        c._hw_params = p  # type: ignore[attr-defined]
    return p


def required(c: Coordinator) -> bool:
    """DEAI_HW_REQUIRE=1: a provider is matched only once its claim is verified."""
    return os.environ.get("DEAI_HW_REQUIRE", "") in ("1", "true", "yes")


# --- the claim ---------------------------------------------------------------------------------

def _state(row: HwClaim) -> hc.ClaimState:
    return hc.ClaimState(row.status, row.failures, row.passes, row.fails,
                         tuple(float(r) for r in row.ratios or ()), row.wrong, row.flags)


def _store(row: HwClaim, st: hc.ClaimState) -> None:
    row.status, row.failures, row.passes, row.fails = st.status, st.failures, st.passes, st.fails
    row.ratios, row.wrong, row.flags = list(st.ratios), st.wrong, st.flags


def _claim(c: Coordinator, s: Session, p: Provider) -> tuple[HwClaim, str | None]:
    """The claim row, created or reset when the identity changed; and why a challenge is
    due now (None: not due)."""
    now = c.now()
    fp = hc.fingerprint(p.hardware or {}, p.benchmark or {})
    row = s.get(HwClaim, p.id, with_for_update=True)
    if row is None:
        row = HwClaim(provider_id=p.id, fingerprint=fp, status="unverified", failures=0,
                      passes=0, fails=0, flags=0, wrong=False, ratios=[], verified={},
                      verified_units=0.0, slashed=0, next_at=now, updated_at=now)
        s.add(row)
        s.flush()
        return row, "registration"
    if row.fingerprint != fp:
        _store(row, hc.reset(_state(row)))
        row.fingerprint, row.next_at, row.updated_at = fp, now, now
        _refresh(c, s, row, p)
        c.emit(s, "hardware_identity_changed", p.id)
        return row, "identity"
    if row.next_at <= now:
        # A change noticed by a commit or a reveal (an identity changed while a challenge
        # was in flight) reset the row there, where no challenge is issued: the first one
        # for this fingerprint is still the identity's, whoever noticed the change.
        if s.scalar(select(HwChallenge.id).where(HwChallenge.provider_id == p.id,
                                                 HwChallenge.fingerprint == fp).limit(1)) is None:
            return row, "identity"
        return row, "retry" if row.failures else "random"
    return row, None


def _refresh(c: Coordinator, s: Session, row: HwClaim, p: Provider) -> None:
    devs = hc.devices(p.hardware or {}, p.benchmark or {})
    v = hc.verified(devs, int((p.hardware or {}).get("memory_mb", 0)), _state(row), params(c))
    row.verified = {"devices": list(v.devices), "units": v.units, "memory_mb": v.memory_mb}
    row.verified_units = v.units
    if row.status != "unverified":
        p.compute_units = v.units


# --- the protocol ------------------------------------------------------------------------------

def _nothing_due(c: Coordinator, pid: str) -> bool:
    """The common answer, from a read: same identity, not due, nothing outstanding."""
    with c.db.read() as s:
        p, row = s.get(Provider, pid), s.get(HwClaim, pid)
        if p is None or row is None or row.next_at <= c.now():
            return False
        if row.fingerprint != hc.fingerprint(p.hardware or {}, p.benchmark or {}):
            return False
        return s.scalar(select(HwChallenge.id).where(HwChallenge.provider_id == pid,
                                                     HwChallenge.status.in_(LIVE))) is None


def poll(c: Coordinator, pid: str) -> wh.PollOut:
    if _nothing_due(c, pid):
        return wh.PollOut()
    return c.db.run(lambda s: _poll(c, s, pid))


def _poll(c: Coordinator, s: Session, pid: str) -> wh.PollOut:
    p = _locked(c, s, pid)
    row, why = _claim(c, s, p)
    live = s.scalars(select(HwChallenge).where(HwChallenge.provider_id == pid,
                                               HwChallenge.status.in_(LIVE))).all()
    for ch in live:
        _expire_if_due(c, s, row, p, ch)
    if why == "identity":  # a challenge issued for the old identity proves nothing now
        for ch in live:
            if ch.status in LIVE:
                ch.status, ch.detail = "expired", "superseded: the identity changed"
    issued = [ch for ch in live if ch.status == "issued"]
    if issued:  # one the leader issued unasked (``_missed_of``), or a lost answer: again
        ch = issued[0]
        if ch.detail == UNASKED:  # its clock starts now, handed over for the first time
            ch.issued_at, ch.detail = c.now(), None
        return wh.PollOut(challenge=wh.ChallengeOut(id=ch.id, spec=ch.spec))
    if why is None or any(ch.status in LIVE for ch in live):
        return wh.PollOut()
    prm = params(c)
    spec = hc.make_spec(secrets.randbits(63), hc.devices(p.hardware or {},
                                                         p.benchmark or {}), prm)
    ch = HwChallenge(id=new_id("hwc"), provider_id=pid, fingerprint=row.fingerprint,
                     reason=why, spec=spec.to_dict(), status="issued", issued_at=c.now())
    s.add(ch)
    row.next_at = c.now() + prm.period_s  # until this one is judged
    c.emit(s, "hardware_challenge", pid, challenge=ch.id, reason=why)
    return wh.PollOut(challenge=wh.ChallengeOut(id=ch.id, spec=ch.spec))


def _locked(c: Coordinator, s: Session, pid: str) -> Provider:
    """The provider's row, locked before anything else: every write here (a poll, a
    commit, an opening, an expiry) takes it first, so two of them on one provider queue
    on it instead of locking its claim and challenge rows in different orders
    (PostgreSQL). Taking it later would not do: a claim's judged columns bump the
    provider's ``version`` through a trigger (migration 0019), and the flush's own
    order (providers before their claims) is not the order the rows were read in."""
    p = s.get(Provider, pid, with_for_update={"key_share": True})
    if p is None:
        raise NotFound("this key is not a registered provider; register first",
                       field="provider")
    return p


def _own(c: Coordinator, s: Session, pid: str, cid: str, *, lock: bool = True) -> HwChallenge:
    ch = s.get(HwChallenge, cid, with_for_update=lock)
    if ch is None:
        raise NotFound(f"no hardware challenge {cid}", field="challenge")
    if ch.provider_id != pid:
        raise Forbidden("this challenge was issued to another provider")
    return ch


def _judging(c: Coordinator, s: Session, pid: str, cid: str, status: str, rule: str
             ) -> tuple[Provider, HwChallenge, HwClaim]:
    """The provider, its challenge ``cid`` (which must be ``status``, else a conflict
    that states ``rule``) and its claim, locked in that order."""
    p = _locked(c, s, pid)
    ch = _own(c, s, pid, cid)
    if ch.status != status:
        raise Conflict(f"challenge {cid} is {ch.status}; {rule}", status=ch.status)
    return p, ch, _claim(c, s, p)[0]


def commit(c: Coordinator, pid: str, cid: str, body: wh.CommitIn) -> wh.CommitOut:
    now = c.now()
    return c.db.run(lambda s: _commit(c, s, pid, cid, body, now))


def _commit(c: Coordinator, s: Session, pid: str, cid: str, body: wh.CommitIn,
            now: float) -> wh.CommitOut:
    p, ch, row = _judging(c, s, pid, cid, "issued", "it takes one commitment")
    ch.elapsed_s = round(now - ch.issued_at, 4)
    if body.error is not None or body.root is None:
        if body.error is None:
            raise InvalidInput("root: a commitment needs a root or an error", field="root")
        v = hc.Verdict("error", f"the provider could not run it: {body.error}")
        return wh.CommitOut(verdict=_judge(c, s, row, p, ch, v))
    ch.status, ch.committed_at, ch.root = "committed", now, body.root
    ch.open_seed = str(secrets.randbits(63))
    op = hc.openings(hc.Spec.from_dict(ch.spec), int(ch.open_seed), params(c))
    return wh.CommitOut(opening=wh.OpeningOut(rows=[list(r) for r in op.rows],
                                              positions=[list(q) for q in op.positions]))


_OPEN_RULE = "open it once, after committing"


def open_(c: Coordinator, pid: str, cid: str, body: wh.OpenIn) -> wh.VerdictOut:
    """Judge an opening. The answer is checked first, on the challenge as read without a
    lock (what it is checked against, its spec, seed, root and time, is fixed once it is
    committed): the provider's row is locked only to record the verdict, not while its
    rows are decoded and its products recomputed."""
    with c.db.read() as s:
        ch = _own(c, s, pid, cid, lock=False)
        if ch.status != "committed":
            raise Conflict(f"challenge {cid} is {ch.status}; {_OPEN_RULE}", status=ch.status)
        assert ch.open_seed is not None and ch.root is not None and ch.elapsed_s is not None
        spec, seed, root = hc.Spec.from_dict(ch.spec), int(ch.open_seed), ch.root
        elapsed, committed_at = ch.elapsed_s, ch.committed_at or 0.0
    prm = params(c)
    op = hc.openings(spec, seed, prm)
    ans = _answer(spec, op, body)
    if c.now() - committed_at > spec.deadline_s + prm.grace_s:
        v = hc.Verdict("expired", "the opening came after the grace period")
    else:
        v = hc.check(spec, op, bytes.fromhex(root), ans, elapsed, prm)
    return c.db.run(lambda s: _judge(c, s, *_opening(c, s, pid, cid, root), v))


def _opening(c: Coordinator, s: Session, pid: str, cid: str, root: str
             ) -> tuple[HwClaim, Provider, HwChallenge]:
    """The claim, provider and challenge to record an opening's verdict on, locked; the
    challenge still committed to ``root`` (an expiry may have judged it meanwhile)."""
    p, ch, row = _judging(c, s, pid, cid, "committed", _OPEN_RULE)
    if ch.root != root:  # cannot happen: a committed challenge's root never changes
        raise Conflict(f"challenge {cid} changed while it was checked", status=ch.status)
    return row, p, ch


def _answer(spec: hc.Spec, op: hc.Opening, body: wh.OpenIn) -> hc.Answer:
    """Decode the opening; malformed data is bad input (4xx) and changes nothing."""
    if len(body.rows) != len(op.rows) or len(body.proofs) != len(op.rows):
        raise InvalidInput(f"rows: {len(op.rows)} rows and proofs were asked for",
                           field="rows")
    if len(body.values) != len(op.positions):
        raise InvalidInput(f"values: {len(op.positions)} buffer words were asked for",
                           field="values")
    rows, proofs = [], []
    for i, ((p, _t, _r), text, proof) in enumerate(zip(op.rows, body.rows, body.proofs,
                                                       strict=True)):
        n = spec.parts[p].n
        try:
            raw = base64.b64decode(text, validate=True)
            hashes = [bytes.fromhex(h) for h in proof]
        except (binascii.Error, ValueError):
            raise InvalidInput(f"rows[{i}]: base64 rows and hex proofs", field=f"rows[{i}]") \
                from None
        if len(raw) != 4 * n or len(hashes) > 64 or any(len(h) != 32 for h in hashes):
            raise InvalidInput(f"rows[{i}]: {n} float32 values and 32-byte proof hashes",
                               field=f"rows[{i}]")
        rows.append(np.frombuffer(raw, dtype="<f4"))
        proofs.append(hashes)
    return hc.Answer(rows, proofs, list(body.values))


def _expire_if_due(c: Coordinator, s: Session, row: HwClaim, p: Provider,
                   ch: HwChallenge) -> None:
    prm = params(c)
    start = ch.committed_at if ch.status == "committed" else ch.issued_at
    if c.now() > (start or 0.0) + hc.deadline_of(ch.spec or {}, prm) + prm.grace_s:
        _judge(c, s, row, p, ch, hc.Verdict("expired", "no answer before the deadline"))


def _judge(c: Coordinator, s: Session, row: HwClaim, p: Provider, ch: HwChallenge,
           v: hc.Verdict) -> wh.VerdictOut:
    prm = params(c)
    now = c.now()
    ch.status, ch.ratio, ch.detail = v.outcome, v.ratio, v.reason or None
    if ch.fingerprint != row.fingerprint:  # judged against an identity no longer claimed
        return _out(ch, row, prm)
    step = hc.next_state(_state(row), v, prm, 1.0 - secrets.SystemRandom().random())
    _store(row, step.state)
    row.last_at, row.last_outcome, row.updated_at = now, v.outcome, now
    row.next_at = now + step.next_in_s
    _refresh(c, s, row, p)
    c.emit(s, "hardware_verdict", p.id, challenge=ch.id, outcome=v.outcome,
           status=row.status, verified_units=row.verified_units)
    if step.flagged_now:
        c.emit(s, "hardware_flagged", p.id, challenge=ch.id, outcome=v.outcome)
    if step.slash_bps:
        stake = c.settlement.balance(s, ledger.stake(p.id))
        amount = stake * step.slash_bps // 10_000
        if amount > 0:
            amount = c.settlement.slash(s, p.id, amount, None, 0,
                                        {"reason": "hardware challenge", "challenge": ch.id,
                                         "outcome": v.outcome, "failures": row.failures})
        if amount > 0:
            row.slashed += amount
            c.emit(s, "slash", p.id, amount=amount, reason="hardware challenge")
    c.notifier.kick()
    return _out(ch, row, prm)


def _out(ch: HwChallenge, row: HwClaim, prm: hc.Params) -> wh.VerdictOut:
    return wh.VerdictOut(challenge=ch.id, outcome=ch.status, reason=ch.detail or "",
                         ratio=ch.ratio or 0.0, elapsed_s=ch.elapsed_s,
                         deadline_s=hc.deadline_of(ch.spec or {}, prm),
                         status=row.status,
                         verified_units=row.verified_units)


EXPIRE_EVERY_S = 2.0  # how often the leader judges challenges left unanswered


def expire(c: Coordinator) -> int:
    """Judge every challenge left unanswered past its deadline (the leader's loop, every
    ``EXPIRE_EVERY_S``), and every challenge an online provider did not ask for although
    it was due (``_missed_of``). Only providers with a challenge due get a transaction:
    the deadlines are read, not every live challenge's provider written each pass."""
    prm = params(c)
    now, grace = c.now(), prm.grace_s
    with c.db.read() as s:
        # the specs are parsed here, not by the database: one malformed stored spec (an
        # ``Infinity`` SQLite's JSON functions refuse) must not stop everyone's expiry
        live = s.execute(select(HwChallenge.provider_id, HwChallenge.id, HwChallenge.status,
                                HwChallenge.issued_at, HwChallenge.committed_at,
                                HwChallenge.spec)
                         .where(HwChallenge.status.in_(LIVE))
                         .order_by(HwChallenge.provider_id, HwChallenge.id)).all()
        # online providers only, in the query: one that polled once and left must not
        # cost a write transaction every pass
        overdue = s.scalars(select(HwClaim.provider_id)
                            .join(Provider, Provider.id == HwClaim.provider_id).where(
            HwClaim.next_at < now - grace,
            Provider.status == ProviderStatus.ACTIVE,
            Provider.last_seen >= now - c.settings.heartbeat_timeout,
            ~select(HwChallenge.id).where(HwChallenge.provider_id == HwClaim.provider_id,
                                          HwChallenge.status.in_(LIVE)).exists())
            .order_by(HwClaim.provider_id)).all()
    by: dict[str, list[str]] = {}
    for pid, cid, status, issued, committed, spec in live:
        start = committed if status == "committed" else issued
        deadline = hc.deadline_of(spec if isinstance(spec, dict) else {}, prm)
        if now > (start or 0.0) + deadline + grace:  # as ``_expire_if_due``
            by.setdefault(pid, []).append(cid)
    # One provider a transaction, each locked in the order of the other writes here: its
    # row, its claim, its challenges, read again locked (an opening may have judged one
    # since the read above; judged twice, a pass would be overwritten by an expiry).
    n = 0
    for pid, ids in by.items():  # one that fails is logged, and the others still expire
        try:
            n += c.db.run(functools.partial(_expire_of, c, pid=pid, ids=ids))
        except Exception:
            log.exception("expiring the hardware challenges of %s failed; skipped", pid)
    for pid in overdue:
        try:
            n += c.db.run(functools.partial(_missed_of, c, pid=pid))
        except Exception:
            log.exception("judging the missed hardware challenge of %s failed; skipped", pid)
    return n


UNASKED = "issued by the leader; not handed over yet"


def _missed_of(c: Coordinator, s: Session, *, pid: str) -> int:
    """A challenge was due and the provider, online all the same, has not asked for it:
    it is issued now, unasked (its next poll hands it over, ``_poll``), and expires like
    any other if it is not answered within its deadline and grace from now. So passing
    once and never polling again does not keep a claim verified; and an honest agent
    back from an outage, whose challenge thread polls a few seconds after its first
    heartbeat, is not judged before it could ask. An offline provider is left alone."""
    p = s.get(Provider, pid, with_for_update={"key_share": True})
    if p is None or not c.online(p):
        return 0
    row, why = _claim(c, s, p)
    if why is None or s.scalar(select(HwChallenge.id).where(
            HwChallenge.provider_id == pid, HwChallenge.status.in_(LIVE)).limit(1)):
        return 0
    prm = params(c)
    spec = hc.make_spec(secrets.randbits(63), hc.devices(p.hardware or {},
                                                         p.benchmark or {}), prm)
    if c.now() <= row.next_at + spec.deadline_s + prm.grace_s:
        return 0  # not overdue yet, or an identity change just made one due now
    # Not handed over yet: its clock restarts when it is (``_poll``); unasked for good, it
    # expires its deadline and grace from now.
    ch = HwChallenge(id=new_id("hwc"), provider_id=pid, fingerprint=row.fingerprint,
                     reason=why, spec=spec.to_dict(), status="issued", issued_at=c.now(),
                     detail=UNASKED)
    s.add(ch)
    row.next_at = c.now() + prm.period_s  # until this one is judged
    c.emit(s, "hardware_challenge", pid, challenge=ch.id, reason=why, unasked=True)
    return 1


def _expire_of(c: Coordinator, s: Session, *, pid: str, ids: list[str]) -> int:
    p = s.get(Provider, pid, with_for_update={"key_share": True})
    row = s.get(HwClaim, pid, with_for_update=True)
    if p is None or row is None:
        return 0
    n = 0
    for ch in s.scalars(select(HwChallenge).where(HwChallenge.id.in_(ids))
                        .order_by(HwChallenge.id).with_for_update()).all():
        if ch.status in LIVE:
            _expire_if_due(c, s, row, p, ch)
            n += ch.status not in LIVE
    return n


# --- what matching uses -----------------------------------------------------------------------

@dataclass(frozen=True)
class VerifiedClaim:
    status: str  # unverified | verified | flagged
    current: bool  # the registered hardware is the one that was verified
    units: float
    memory_mb: int
    gpus: int  # GPUs whose part passed
    wrong: bool
    gpu_models: tuple[str, ...] = ()  # the models of those GPUs, while current


def gpus_shown(claim: VerifiedClaim) -> tuple[str, ...]:
    """The models of the GPUs a provider's hardware shows, for what it may offer beyond
    the challenges (leases): those its claim verified, each at its class's floor rate,
    and none before. Its registered GPUs were shown while a challenge ran: a claim of
    0.1 GFLOP/s a GPU gets a challenge hours long, and a 2-core box was leased eight
    "H100s" meanwhile, and again after each new registration started another."""
    return claim.gpu_models if claim.status == "verified" else ()


def registered_gpus(p: Any) -> tuple[str, ...]:
    """The models of the GPUs a provider registered (``p`` has ``hardware``, ``benchmark``)."""
    return tuple(d.model for d in hc.devices(p.hardware or {}, p.benchmark or {}) if d.gpu)


def verified_state(s: Session, providers: list[Provider]) -> dict[str, VerifiedClaim]:
    rows = {r.provider_id: r for r in s.scalars(select(HwClaim).where(
        HwClaim.provider_id.in_([p.id for p in providers])))}
    return verified_of(providers, rows)


def verified_of(providers: Sequence[Any], rows: dict[str, Any]) -> dict[str, VerifiedClaim]:
    """What each provider's claim row (or none) proves, for its current registration.
    ``providers`` have ``id``, ``hardware`` and ``benchmark``; ``rows`` are claim rows
    by provider (ORM rows or anything with their columns as attributes)."""
    out = {}
    for p in providers:
        r = rows.get(p.id)
        if r is None:
            out[p.id] = VerifiedClaim("unverified", False, 0.0, 0, 0, False)
            continue
        current = r.fingerprint == hc.fingerprint(p.hardware or {}, p.benchmark or {})
        devs = (r.verified or {}).get("devices", [])
        # a GPU counts when its memory and at least its class's floor rate were proven
        models = tuple(str(d.get("model", "")) for d in devs if _proven_gpu(d)) \
            if r.status == "verified" else ()
        gpus = len(models)
        # a wrong answer stays flagged across a new registration until the new identity
        # passes (``hc.reset``), whether or not it has polled since
        fresh = "flagged" if r.wrong else "unverified"
        out[p.id] = VerifiedClaim(r.status if current else fresh, current,
                                  r.verified_units if current else 0.0,
                                  int((r.verified or {}).get("memory_mb", 0)) if current else 0,
                                  gpus, r.wrong, models if current else ())
    return out


def _proven_gpu(d: dict[str, Any]) -> bool:
    """A verified device entry that counts as a GPU: a CUDA device whose memory passed
    and whose proven rate is at least its class's floor (``hc.gpu_floor_gflops``)."""
    gflops = d.get("gflops", 0)
    return (str(d.get("device", "")).startswith("cuda") and d.get("memory_mb", 0) > 0
            and isinstance(gflops, (int, float))
            and gflops >= hc.gpu_floor_gflops(str(d.get("model", ""))))


def eligible(claim: VerifiedClaim, needs_gpu: bool, strict: bool) -> bool:
    """May a provider with ``claim`` be matched for work (GPU work: ``needs_gpu``)?"""
    if claim.wrong and claim.status == "flagged":
        return False  # it answered wrongly: no work until it passes again
    if needs_gpu and claim.gpus == 0:
        return False
    return claim.status != "unverified" or not strict


def apply_verified(c: Coordinator, s: Session, states: list[market.ProviderState],
                   rows: Sequence[Provider] | None = None) -> list[market.ProviderState]:
    """Matching's inputs with hardware as verified: a provider flagged for a wrong or
    missing answer (or, with DEAI_HW_REQUIRE=1, not yet verified) is left out; a flagged
    one keeps only the memory and compute units it proved. The hook for
    ``matching.provider_states``: ``return hardware.apply_verified(c, s, states, rows)``
    (``rows``: the Provider rows the states were built from; read again when omitted)."""
    if not states:
        return states
    if rows is None:
        rows = s.scalars(select(Provider).where(Provider.id.in_([p.id for p in states]))).all()
    return apply_claims(c, states, verified_state(s, list(rows)))


def apply_claims(c: Coordinator, states: list[market.ProviderState],
                 claims: dict[str, VerifiedClaim]) -> list[market.ProviderState]:
    """``apply_verified`` once the claims are read."""
    strict, out = required(c), []
    for st in states:
        cl = claims.get(st.id)
        if cl is None or not eligible(cl, False, strict):
            continue
        if cl.status == "flagged":
            st = replace(st, memory_mb=min(st.memory_mb, cl.memory_mb))
        if cl.status != "unverified":  # what it proved, even if it registered again since
            st = replace(st, compute_units=cl.units)
        out.append(st)
    return out


def hardware_class(hw: dict[str, Any]) -> str:
    gpus = hw.get("gpus") or []
    if not gpus:
        return "cpu"
    name = str(gpus[0].get("name", "gpu")) if isinstance(gpus[0], dict) else "gpu"
    return hc.gpu_class(name)


def median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)
