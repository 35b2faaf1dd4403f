"""Leases of a machine by the hour, pure: states, prices, per-second billing, end effects.

A lease goes ``pending → active → ended(reason)`` (``TRANSITIONS``); it may also
end straight from ``pending`` (nobody started it). Every end names a reason
(``EndReason``), shown by the CLI, the API and the explorer.

Money, all integer micro-units:

- A provider posts per-hour prices per resource class (``cpu`` per core,
  ``memory_gb`` per GiB, ``gpu`` or ``gpu:<model>`` per GPU); a lease's price
  per hour is their sum for what it asks (``hourly_price``).
- The owner funds an escrow (and tops it up with ``extend``). After ``s``
  billable seconds the lease has cost ``price_hour * s // 3600``
  (``cost_of``): billing is per second, rounded down, never more than the
  escrow holds. ``covered_seconds`` is how long an escrow lasts.
- ``settle`` says what to move now: the charge since the last settlement
  (the provider's share to its pending earnings, the network fee aside), and
  at the end the refund of what is left and, when the provider was lost, a
  penalty from its stake. The coordinator turns a ``Settlement`` into journal
  entries (``core.ledger``) in one transaction.

Time is passed in (seconds since the epoch, as floats from the coordinator's
clock) and cut to whole seconds here, so tests drive it without sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from deai.core.errors import Conflict, InvalidInput
from deai.core.hwcheck import gpu_class

SECONDS_PER_HOUR = 3600
BPS = 10_000


class LeaseStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(StrEnum):
    OWNER_ENDED = "owner ended"
    TIME_UP = "time up"
    ESCROW_EXHAUSTED = "escrow exhausted"
    PROVIDER_LOST = "provider lost"
    PREEMPTED = "preempted"
    POLICY = "policy"


TRANSITIONS: dict[LeaseStatus, frozenset[LeaseStatus]] = {
    LeaseStatus.PENDING: frozenset({LeaseStatus.ACTIVE, LeaseStatus.ENDED}),
    LeaseStatus.ACTIVE: frozenset({LeaseStatus.ENDED}),
    LeaseStatus.ENDED: frozenset(),
}


def check_transition(current: str, new: LeaseStatus) -> None:
    """Refuse a move the table does not allow (a ``Conflict``: the lease is in the wrong
    state for what was asked)."""
    if new not in TRANSITIONS[LeaseStatus(current)]:
        raise Conflict(f"a lease that is {current} cannot become {new.value}",
                       status=current)


# --- what a lease asks, and what it costs per hour ------------------------------------------

RESOURCE_CLASSES = ("cpu", "memory_gb", "gpu")
_CLASS = re.compile(r"^(cpu|memory_gb|gpu|gpu:[A-Za-z0-9 ._-]{1,60})$")
MAX_PRICE_HOUR = 10**12  # a million DEAI an hour: anything above is a typo


@dataclass(frozen=True)
class Ask:
    """The resources a lease asks for."""

    cpus: int
    memory_mb: int
    gpus: int = 0
    gpu_model: str | None = None
    network: bool = False
    spot: bool = False


def check_price_class(name: str, price: int, field: str = "prices") -> None:
    if not _CLASS.match(name):
        raise InvalidInput(f"{field}: unknown resource class {name!r} (use cpu, memory_gb, "
                           "gpu or gpu:<model>)", field=field)
    if not 0 <= price <= MAX_PRICE_HOUR:
        raise InvalidInput(f"{field}.{name}: a price per hour between 0 and {MAX_PRICE_HOUR} µ",
                           field=f"{field}.{name}")


def hourly_price(ask: Ask, prices: Mapping[str, int]) -> int | None:
    """µ per hour for ``ask`` at a provider's prices; None when it lacks a needed class.

    Memory is priced per GiB, rounded up; a GPU of a named model uses that model's
    price (``gpu:<model>``) when there is one, else the plain ``gpu`` price.
    """
    if "cpu" not in prices or "memory_gb" not in prices:
        return None
    gib = -(-ask.memory_mb // 1024)
    total = ask.cpus * prices["cpu"] + gib * prices["memory_gb"]
    if ask.gpus:
        per_gpu = prices.get(f"gpu:{ask.gpu_model}") if ask.gpu_model else None
        if per_gpu is None:
            per_gpu = prices.get("gpu")
        if per_gpu is None:
            return None
        total += ask.gpus * per_gpu
    return total


SPOT_BPS = 5_000  # a spot lease pays half the price, and may be preempted


def lease_price(ask: Ask, prices: Mapping[str, int]) -> int | None:
    """What a lease pays per hour: ``hourly_price``, at ``SPOT_BPS`` of it when spot."""
    price = hourly_price(ask, prices)
    if price is None or not ask.spot:
        return price
    return price * SPOT_BPS // BPS


# --- billing --------------------------------------------------------------------------------

def cost_of(price_hour: int, seconds: int) -> int:
    """What ``seconds`` of a lease cost at ``price_hour`` µ/h, rounded down."""
    if price_hour < 0 or seconds < 0:
        raise ValueError("price and seconds must be non-negative")
    return price_hour * seconds // SECONDS_PER_HOUR


def covered_seconds(price_hour: int, escrow: int) -> int | None:
    """The most whole seconds an escrow pays for; None when the lease is free."""
    if price_hour <= 0:
        return None
    # largest s with price*s // 3600 <= escrow, i.e. price*s < (escrow+1)*3600
    return ((escrow + 1) * SECONDS_PER_HOUR - 1) // price_hour


def escrow_for(price_hour: int, hours: float) -> int:
    """The escrow that pays ``hours`` at ``price_hour``, rounded up to a whole µ."""
    seconds = round(hours * SECONDS_PER_HOUR)
    return -(-price_hour * seconds // SECONDS_PER_HOUR)


@dataclass(frozen=True)
class Billing:
    """What the coordinator knows about a lease's money at one instant."""

    price_hour: int
    escrow: int  # everything deposited so far
    charged: int  # everything already moved to the provider and the fee
    started_at: float | None  # None while pending: nothing is billed
    term_end: float | None  # the owner's end time (None: until the escrow runs out)


def billable_seconds(b: Billing, until: float) -> int:
    """Whole seconds billed from the start to ``until``, capped by the term and escrow."""
    if b.started_at is None:
        return 0
    stop = until if b.term_end is None else min(until, b.term_end)
    seconds = max(0, int(stop - b.started_at))
    cover = covered_seconds(b.price_hour, b.escrow)
    return seconds if cover is None else min(seconds, cover)


def paid_until(b: Billing) -> float | None:
    """When the escrow runs out (None while pending or free)."""
    cover = covered_seconds(b.price_hour, b.escrow)
    if b.started_at is None or cover is None:
        return None
    return b.started_at + cover


def ends_at(b: Billing) -> tuple[float | None, EndReason | None]:
    """When an active lease ends by itself, and why: its term or its escrow, whichever
    comes first (the term wins a tie: it was what the owner asked for)."""
    paid = paid_until(b)
    if b.term_end is not None and (paid is None or b.term_end <= paid):
        return b.term_end, EndReason.TIME_UP
    if paid is not None:
        return paid, EndReason.ESCROW_EXHAUSTED
    return None, None


@dataclass(frozen=True)
class Settlement:
    """Money to move now. ``charge`` = ``to_provider`` + ``fee``; ``penalty`` leaves the
    provider's stake; ``refund`` goes back to the owner (at the end only)."""

    charge: int
    to_provider: int
    fee: int
    refund: int
    penalty: int


def settle(b: Billing, until: float, fee_bps: int, *, final: bool = False,
           stake: int = 0, penalty_bps: int = 0) -> Settlement:
    """Charge up to ``until``; when ``final``, refund the rest of the escrow and, with
    ``penalty_bps``, take that share of ``stake`` (a lost provider's downtime penalty)."""
    due = cost_of(b.price_hour, billable_seconds(b, until))
    charge = max(0, min(due, b.escrow) - b.charged)
    fee = charge * fee_bps // BPS
    refund = b.escrow - b.charged - charge if final else 0
    penalty = stake * penalty_bps // BPS if final and penalty_bps > 0 else 0
    return Settlement(charge, charge - fee, fee, refund, min(penalty, max(stake, 0)))


def warn_due(b: Billing, now: float, lead: float) -> bool:
    """Whether the owner should be warned now: the lease ends (escrow) within ``lead``."""
    end, reason = ends_at(b)
    return reason is EndReason.ESCROW_EXHAUSTED and end is not None and now >= end - lead


# --- choosing a provider --------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """A provider as a lease host: what it has free now, its prices, stake and standing."""

    provider_id: str
    prices: Mapping[str, int]
    free_cpus: int
    free_memory_mb: int
    free_gpus: int
    gpu_model: str | None
    network: bool
    online: bool
    stake: int
    reputation: float
    sandbox: bool = True
    agent: bool = True  # its lease agent polled (or beat) recently
    hardware_wrong: bool = False  # its hardware claim is flagged for a wrong answer


def gpus_offerable(offered: int, gpu_model: str | None, shown: Sequence[str]) -> int:
    """How many of the ``offered`` GPUs a host may lease: no more than the devices its
    hardware shows (``shown``: their model names, as its claim verified them;
    see ``coordinator.hardware.gpus_shown``), counting only those of the class its
    ``gpu_model`` names when it names one."""
    if gpu_model:
        want = gpu_class(gpu_model)
        shown = [m for m in shown if gpu_class(m) == want
                 and (want != "gpu:other" or gpu_model.lower() in m.lower())]
    return max(0, min(offered, len(shown)))


def reasons_against(ask: Ask, h: Host, max_price_hour: int, min_stake: int) -> list[str]:
    """Why ``h`` cannot host ``ask`` (empty: it can)."""
    why = []
    if not h.online:
        why.append("offline")
    if h.hardware_wrong:
        why.append("hardware claim flagged for a wrong answer")
    if not h.sandbox:
        why.append("no sandbox")
    if not h.agent:
        why.append("lease agent silent")
    if h.stake < min_stake:
        why.append(f"stake {h.stake} µ below the minimum {min_stake} µ")
    if ask.cpus > h.free_cpus:
        why.append(f"{h.free_cpus} free CPUs")
    if ask.memory_mb > h.free_memory_mb:
        why.append(f"{h.free_memory_mb} MiB free memory")
    if ask.gpus and ask.gpus > h.free_gpus:  # below 0 when its claim shows fewer than leased
        why.append(f"{max(0, h.free_gpus)} free GPUs")
    if ask.gpus and ask.gpu_model and (h.gpu_model or "").lower() != ask.gpu_model.lower():
        why.append(f"GPU model {h.gpu_model or 'none'}")
    if ask.network and not h.network:
        why.append("no network for leases")
    price = lease_price(ask, h.prices)
    if price is None:
        why.append("no price for a resource asked")
    elif price > max_price_hour:
        why.append(f"{price} µ/h over the maximum {max_price_hour} µ/h")
    return why


def choose(ask: Ask, hosts: Iterable[Host], max_price_hour: int,
           min_stake: int) -> tuple[Host | None, int, dict[str, list[str]]]:
    """The cheapest eligible host (ties: higher reputation, then more stake, then id),
    its price per hour, and why every other host was passed over."""
    best: tuple[int, float, int, str] | None = None
    chosen: Host | None = None
    rejected: dict[str, list[str]] = {}
    for h in hosts:
        why = reasons_against(ask, h, max_price_hour, min_stake)
        if why:
            rejected[h.provider_id] = why
            continue
        price = lease_price(ask, h.prices)
        assert price is not None
        key = (price, -h.reputation, -h.stake, h.provider_id)
        if best is None or key < best:
            best, chosen = key, h
    return chosen, (best[0] if best else 0), rejected


@dataclass(frozen=True)
class SpotLease:
    """A running spot lease, as a candidate for preemption."""

    lease_id: str
    cpus: int
    memory_mb: int
    gpus: int
    price_hour: int


def choose_preempting(ask: Ask, hosts: Iterable[Host], spots: Mapping[str, list[SpotLease]],
                      max_price_hour: int, min_stake: int
                      ) -> tuple[Host | None, int, list[str]]:
    """When no host is free: the cheapest host that would be, once some of its spot leases
    that pay less per hour than this lease are preempted (cheapest first, as few as
    needed). Returns the host, the price, and the leases to preempt. Spot asks never
    preempt."""
    if ask.spot:
        return None, 0, []
    best: tuple[int, int, float, str] | None = None
    found: tuple[Host, int, list[str]] | None = None
    for h in hosts:
        price = lease_price(ask, h.prices)
        if price is None:
            continue
        mine = sorted((x for x in spots.get(h.provider_id, []) if x.price_hour < price),
                      key=lambda x: (x.price_hour, x.lease_id))
        cpu, mem, gpu, chosen = h.free_cpus, h.free_memory_mb, h.free_gpus, []
        for x in mine:
            if cpu >= ask.cpus and mem >= ask.memory_mb and (not ask.gpus or gpu >= ask.gpus):
                break
            cpu, mem, gpu = cpu + x.cpus, mem + x.memory_mb, gpu + x.gpus
            chosen.append(x.lease_id)
        if not chosen:
            continue
        freed = replace(h, free_cpus=cpu, free_memory_mb=mem, free_gpus=gpu)
        if reasons_against(ask, freed, max_price_hour, min_stake):
            continue
        key = (price, len(chosen), -h.reputation, h.provider_id)
        if best is None or key < best:
            best, found = key, (h, price, chosen)
    return found if found is not None else (None, 0, [])
