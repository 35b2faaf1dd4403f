"""Routes for hardware challenges (signed, the provider's) and verified compute (public).

    POST /api/hardware/challenge                  a due challenge, or {"challenge": null}
    POST /api/hardware/challenges/{id}/commit     the root (or an error) → rows to open
    POST /api/hardware/challenges/{id}/open       the opened rows → the verdict
    GET  /api/hardware/claims[/{provider}]        verified units, price per verified unit
    GET  /api/hardware/cloud-index                cloud list prices per compute-unit-hour

The public views carry the verdicts and verified figures, never when the next
challenge is due. ``claims`` is paged by provider id (``limit`` ≤ 500, ``after``,
``next``); the cloud index is computed once for every caller for a few seconds
(``public_reads.Shared``), and both take a slot of ``public_reads.public_read``.
Cloud rows come from ``cloud_prices.json`` (documented in docs/cloud-prices.md);
DEAI_USD_PER_DEAI converts DEAI to dollars (1.0 unless set).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from pydantic import Field
from sqlalchemy import func, select

from deai.coordinator import hardware
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.public_reads import Shared, public_read
from deai.coordinator.service import MAX_PAGE, Coordinator
from deai.core import compute
from deai.core import hwcheck as hc
from deai.core import wire_hardware as wh
from deai.core.errors import NotFound
from deai.store.models import Assignment, Event, HwClaim, Offer, Provider

router = APIRouter(prefix="/api/hardware")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]
Cid = Annotated[str, PathParam(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_]+$")]
Pid = Annotated[str, PathParam(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
PRICES = Path(__file__).with_name("cloud_prices.json")


@router.post("/challenge", response_model=wh.PollOut)
def poll(c: C, me: Signer) -> wh.PollOut:
    return hardware.poll(c, me)


@router.post("/challenges/{cid}/commit", response_model=wh.CommitOut)
def commit(cid: Cid, body: wh.CommitIn, c: C, me: Signer) -> wh.CommitOut:
    return hardware.commit(c, me, cid, body)


@router.post("/challenges/{cid}/open", response_model=wh.VerdictOut)
def open_(cid: Cid, body: wh.OpenIn, c: C, me: Signer) -> wh.VerdictOut:
    return hardware.open_(c, me, cid, body)


class ClaimsPage(wh.ClaimsOut):
    """``/claims``: a page of claims by provider id, and where the next begins."""

    next: str | None = Field(default=None, description=(
        "pass as ``after`` for the next page; null after the last"))


@router.get("/claims", response_model=ClaimsPage, dependencies=[Depends(public_read)])
def claims(c: C, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
           after: Annotated[str | None, Query(max_length=100)] = None) -> ClaimsPage:
    views = claim_views(c, limit=limit, after=after)
    return ClaimsPage(claims=views,
                      next=views[-1].provider if len(views) == limit else None)


@router.get("/claims/{pid}", response_model=wh.ClaimOut)
def claim(pid: Pid, c: C) -> wh.ClaimOut:
    found = [v for v in claim_views(c, pid) if v.provider == pid]
    if not found:
        raise NotFound(f"no provider {pid}", field="provider")
    return found[0]


@router.get("/cloud-index", response_model=wh.CloudIndexOut,
            dependencies=[Depends(public_read)])
def cloud_index(c: C) -> wh.CloudIndexOut:
    return INDEX.get(c, usd_per_deai(), lambda: index(c), lambda: _stamp(c))


INDEX: Shared[wh.CloudIndexOut] = Shared(ttl=5.0)


def _stamp(c: Coordinator) -> int:
    """What moves when the index may have: a verdict, a payment, a registration (each
    an event)."""
    with c.db.read() as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


# --- views -------------------------------------------------------------------------------------

def claim_views(c: Coordinator, only: str | None = None, *, limit: int = MAX_PAGE,
                after: str | None = None, verified: bool = False) -> list[wh.ClaimOut]:
    """Up to ``limit`` providers' claims by id, those above ``after`` (``only``: one
    provider's; ``verified``: only providers whose claim row holds verified units)."""
    # A read: challenges left unanswered are judged by the leader's loop
    # (``hardware.expire``), not by whoever asks (an anonymous GET wrote per provider).
    with c.db.read() as s:
        q = select(Provider).order_by(Provider.id).limit(min(limit, MAX_PAGE))
        if only is not None:
            q = q.where(Provider.id == only)
        if after is not None:
            q = q.where(Provider.id > after)
        if verified:
            q = q.where(Provider.id.in_(select(HwClaim.provider_id)
                                        .where(HwClaim.verified_units > 0)))
        provs = s.scalars(q).all()
        ids = [p.id for p in provs]
        rows = {r.provider_id: r for r in s.scalars(select(HwClaim)
                                                      .where(HwClaim.provider_id.in_(ids)))}
        state = hardware.verified_state(s, list(provs))
        prices = dict(s.execute(select(Offer.provider_id, func.min(Offer.price))
                                .where(Offer.provider_id.in_(ids))
                                .group_by(Offer.provider_id)).all())
        out = []
        for p in provs:
            r, st = rows.get(p.id), state[p.id]
            claimed = round(sum(compute.compute_units(d.gflops, d.mem_gbps or d.gflops)
                                for d in hc.devices(p.hardware or {}, p.benchmark or {})), 3)
            price = prices.get(p.id)
            out.append(wh.ClaimOut(
                provider=p.id, name=p.name, status=st.status, current=st.current,
                passes=r.passes if r else 0, fails=r.fails if r else 0,
                failures=r.failures if r else 0, claimed_units=claimed,
                verified_units=st.units, verified_memory_mb=st.memory_mb,
                devices=list((r.verified or {}).get("devices", [])) if r and st.current else [],
                hardware_class=hardware.hardware_class(p.hardware or {}),
                last_at=r.last_at if r else None, last_outcome=r.last_outcome if r else None,
                slashed=r.slashed if r else 0, min_price=price,
                price_per_verified_unit=(round(price / st.units, 3)
                                         if price is not None and st.units > 0 else None)))
        return out


@cache
def cloud_table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PRICES.read_text())
    return data


def usd_per_deai() -> float:
    try:
        return max(0.0, float(os.environ.get("DEAI_USD_PER_DEAI", "1.0")))
    except ValueError:
        return 1.0


def index(c: Coordinator) -> wh.CloudIndexOut:
    table = cloud_table()
    factor = float(table.get("sustained_factor", 0.7))
    cloud = []
    for row in table["rows"]:
        units = compute.compute_units(row["fp32_tflops"] * 1000 * factor,
                                      row["mem_gbps"] * factor) * max(1, row["gpus"])
        cloud.append(wh.CloudRow(
            hardware_class=row["hardware_class"], provider=row["provider"],
            instance=row["instance"], gpus=row["gpus"], usd_per_hour=row["usd_per_hour"],
            units=round(units, 2), usd_per_unit_hour=round(row["usd_per_hour"] / units, 6),
            source=row["source"], date=row["date"]))
    best: dict[str, float] = {}
    for r in cloud:
        best[r.hardware_class] = min(best.get(r.hardware_class, float("inf")),
                                     r.usd_per_unit_hour)
    rate = usd_per_deai()
    views: list[wh.ClaimOut] = []
    after: str | None = None
    while True:  # a page at a time: each statement's list of ids stays bounded
        page = claim_views(c, limit=MAX_PAGE, after=after, verified=True)
        views += [v for v in page if v.verified_units > 0]
        if len(page) < MAX_PAGE:
            break
        after = page[-1].provider
    earn = _earnings_per_second(c, [v.provider for v in views])
    by_class: dict[str, list[wh.ClaimOut]] = defaultdict(list)
    for v in views:
        by_class[v.hardware_class].append(v)
    network = []
    for cls, vs in sorted(by_class.items()):
        per_hour = [earn[v.provider] * 3600 / 1e6 * rate / v.verified_units
                    for v in vs if v.provider in earn]
        usd = hardware.median(per_hour)
        ref = best.get(cls)
        network.append({
            "hardware_class": cls, "providers": len(vs),
            "verified_units": round(sum(v.verified_units for v in vs), 3),
            "median_price_per_verified_unit": hardware.median(
                [v.price_per_verified_unit for v in vs
                 if v.price_per_verified_unit is not None]),
            "usd_per_unit_hour": hardware.finite(usd),
            "cloud_best_usd_per_unit_hour": hardware.finite(ref),
            "index": hardware.finite(usd / ref) if usd is not None and ref else None,
        })
    return wh.CloudIndexOut(usd_per_deai=rate, cloud=cloud, network=network)


def _earnings_per_second(c: Coordinator, ids: list[str]) -> dict[str, float]:
    """µ a provider earns per second of work, from its recent measured assignments."""
    if not ids:
        return {}
    with c.db.read() as s:
        rows = s.execute(select(Assignment.provider_id, Assignment.price, Assignment.units,
                                Assignment.seconds)
                         .where(Assignment.provider_id.in_(ids),
                                Assignment.units.is_not(None),
                                Assignment.seconds > 0)
                         .order_by(Assignment.leased_at.desc()).limit(5000)).all()
    money: dict[str, float] = defaultdict(float)
    secs: dict[str, float] = defaultdict(float)
    for pid, price, units, seconds in rows:
        money[pid] += price * (units or 0) / 1000
        secs[pid] += seconds or 0.0
    return {pid: money[pid] / secs[pid] for pid in money if secs[pid] > 0}
