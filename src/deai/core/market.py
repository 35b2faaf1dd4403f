"""Matching: which provider runs which task, as pure functions of plain data.

Placement is eligibility first (online, staked, serves the model at or under the
job's maximum price, enough memory, free slot, not excluded), then the cheapest
by a strategy's score. The default strategy scores ``price × (1.5 − reputation)``
so that at equal reputation the cheaper offer always wins and a provider with a
better record may charge a little more; ties go to the less loaded provider.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

from deai.core.money import cost_for_units


@dataclass(frozen=True)
class Offer:
    workload: str
    model: str
    price: int  # micro-units per 1,000 units


@dataclass(frozen=True)
class ProviderState:
    id: str
    online: bool
    stake: int
    memory_mb: int
    slots: int
    load: int = 0
    reputation: float = 0.5
    compute_units: float = 1.0
    offers: tuple[Offer, ...] = ()
    # Who is behind the key (core.diversity): no two parties on one task may share one.
    operator: str = ""  # "" = the key is its own operator
    origin: str = ""  # network block it registered from; "" = unknown
    fingerprint: str = ""  # digest of its registered hardware; "" = unknown
    verifier: bool = False  # listed in the coordinator's settings as a trusted verifier

    def price_for(self, workload: str, model: str) -> int | None:
        for o in self.offers:
            if o.workload == workload and o.model == model:
                return o.price
        return None

    def with_(self, **changes: Any) -> ProviderState:
        """A copy with ``changes``: ``dataclasses.replace`` without its ``__init__`` call
        (0.4 µs against 2.5; the matcher makes one per lease and per re-read provider)."""
        if not changes.keys() <= _STATE_FIELDS:
            unknown = sorted(changes.keys() - _STATE_FIELDS)
            raise TypeError(f"not fields of ProviderState: {unknown}")
        new = object.__new__(ProviderState)
        new.__dict__.update(self.__dict__, **changes)
        return new


_STATE_FIELDS = frozenset(f.name for f in fields(ProviderState))


class TaskDemand(NamedTuple):
    """What a task needs of a provider. A named tuple, not a frozen dataclass: the matcher
    makes one per task, and a dataclass's ``__init__`` cost 1.7 µs against 0.4."""

    id: str
    workload: str
    model: str
    max_price: int
    memory_mb: int
    units: int = 1
    exclude: frozenset[str] = frozenset()
    stake_needed: int = 0  # the stake that makes cheating on it a losing bet (``stake_for``)
    at_own_price: bool = False  # a primary, paid its provider's own price: ``stake_at``
    only: frozenset[str] | None = None  # a sealed job's parties (``core.sealed``): nobody
    # else may run or check it


class Placement(NamedTuple):
    """A task given to a provider at a price (one per placement: a named tuple, as
    ``TaskDemand``)."""

    task_id: str
    provider_id: str
    price: int


class Strategy(Protocol):
    def score(self, price: int, provider: ProviderState) -> float:
        """Lower is better."""
        ...


class LowestEffectivePrice:
    def score(self, price: int, provider: ProviderState) -> float:
        rep = min(1.0, max(0.0, provider.reputation))
        return price * (1.5 - rep)


DEFAULT_STRATEGY: Strategy = LowestEffectivePrice()


# --- eligibility: one predicate, read by why_not (quotes) and place (matching) -----------------

OFFLINE, NO_STAKE, STAKE_SMALL, NOT_SERVED, TOO_DEAR, NO_MEMORY, EXCLUDED, NO_SLOT = (
    1 << i for i in range(8))


def failures(t: TaskDemand, p: ProviderState, min_stake: int, price: int | None) -> int:
    """Why ``p`` cannot run ``t``, as a bitmask of the flags above (0: it can).

    ``price`` is ``p.price_for(t.workload, t.model)``, passed in because the caller
    has it. Every rule of eligibility is written here and nowhere else.
    """
    f = 0
    if not p.online:
        f |= OFFLINE
    if p.stake < min_stake:
        f |= NO_STAKE
    elif p.stake < stake_at(t, price):
        f |= STAKE_SMALL
    if price is None:
        f |= NOT_SERVED
    elif price > t.max_price:
        f |= TOO_DEAR
    if p.memory_mb < t.memory_mb:
        f |= NO_MEMORY
    if p.id in t.exclude or (t.only is not None and p.id not in t.only):
        f |= EXCLUDED
    if p.load >= p.slots:
        f |= NO_SLOT
    return f


STAKE_SLACK = 8  # µ: what the rounding of ``stake_for`` may add to a scaled stake


def stake_at(t: TaskDemand, price: int | None) -> int:
    """The stake a provider asking ``price`` needs for ``t``: ``t.stake_needed`` is sized
    for the task paid at ``t.max_price``, and a primary (``at_own_price``) is paid its
    own price, which is what it gains by cheating (``stake_for`` is linear in that, to
    its rounding). A check is paid the price of the result it checks: its full stake. Sized
    at the maximum for everyone, a /v1 request's maximum (a going price that staked
    sybils asking 10⁹ had raised) asked every provider for more stake than any had, and
    no request was placed."""
    need = t.stake_needed
    if (not t.at_own_price or need <= 0 or price is None or price >= t.max_price
            or t.max_price <= 0):
        return need  # a check is paid the checked result's price, not its own
    return min(need, -(-need * price // t.max_price) + STAKE_SLACK)


def why_not(task: TaskDemand, p: ProviderState, min_stake: int,
            *, need_slot: bool = False) -> list[str]:
    """Every reason ``p`` cannot run ``task``, in words; empty when it can."""
    price = p.price_for(task.workload, task.model)
    f = failures(task, p, min_stake, price) & (~0 if need_slot else ~NO_SLOT)
    words = {
        OFFLINE: "offline",
        NO_STAKE: f"no stake (bonded {p.stake} µ, needs {min_stake} µ)",
        NOT_SERVED: f"model not served ({task.model})",
        TOO_DEAR: f"price above the maximum ({price} > {task.max_price} µ per 1,000)",
        NO_MEMORY: f"not enough memory ({p.memory_mb} MB < {task.memory_mb} MB)",
        EXCLUDED: "excluded for this task",
        STAKE_SMALL: (f"stake too small for a task this large (bonded {p.stake} µ, "
                      f"needs {stake_at(task, price)} µ)"),
        NO_SLOT: "no free slot",
    } if f else {}
    return [text for flag, text in words.items() if f & flag]


def eligible(task: TaskDemand, p: ProviderState, min_stake: int) -> bool:
    """``why_not(task, p, min_stake) == []``, without the words."""
    return failures(task, p, min_stake, p.price_for(task.workload, task.model)) & ~NO_SLOT == 0


_ANY = TaskDemand(id="", workload="", model="", max_price=0, memory_mb=0)


def place(tasks: Sequence[TaskDemand], providers: Iterable[ProviderState], min_stake: int,
          strategy: Strategy = DEFAULT_STRATEGY) -> list[Placement]:
    """Place tasks in order on the best eligible provider with a free slot.

    Providers are indexed by (workload, model) into heaps ordered by score, so a
    task costs O(log n) when the best candidate is eligible, which is the common
    case; candidates skipped for a task go back on the heap afterwards.
    """
    # Entries are (score, load, provider, price): the price of the offer for that key,
    # kept beside the score so a candidate's check needs no second look at its offers.
    heaps: dict[tuple[str, str], list[tuple[float, int, str, int]]] = {}
    by_id: dict[str, ProviderState] = {}
    load: dict[str, int] = {}
    for p in providers:
        # What does not depend on the task is applied once, to build the index.
        if failures(_ANY, p, min_stake, 0) & (OFFLINE | NO_STAKE | NO_SLOT):
            continue
        by_id[p.id] = p
        load[p.id] = p.load
        # Rank each (workload, model) by the offer price_for() charges: the first one.
        first: dict[tuple[str, str], int] = {}
        for o in p.offers:
            first.setdefault((o.workload, o.model), o.price)
        for key, offered in first.items():
            heaps.setdefault(key, []).append((strategy.score(offered, p), p.load, p.id,
                                              offered))
    for h in heaps.values():
        heapq.heapify(h)

    out: list[Placement] = []
    for t in tasks:
        heap = heaps.get((t.workload, t.model))
        if not heap:
            continue
        if t.only is not None and len(t.only) < len(heap):
            # A few named providers (a sealed set, a dataset's list): read those, not the
            # heap, which a task none of them can take now would walk whole, every round.
            pl = _best_of(t, by_id, load, min_stake, strategy)
            if pl is not None:
                out.append(pl)
                load[pl.provider_id] += 1  # its heap entries are refreshed as they are popped
            continue
        pl = _from_heap(t, heap, by_id, load, min_stake)
        if pl is not None:
            out.append(pl)
    return out


def _from_heap(t: TaskDemand, heap: list[tuple[float, int, str, int]],
               by_id: dict[str, ProviderState], load: dict[str, int],
               min_stake: int) -> Placement | None:
    """``place``'s choice for ``t`` from its (workload, model)'s heap: the best candidate
    that can take it, its load counted; the candidates skipped go back afterwards."""
    skipped: list[tuple[float, int, str, int]] = []
    try:
        while heap:
            score, seen_load, pid, price = heapq.heappop(heap)
            p = by_id[pid]
            if seen_load != load[pid]:
                # Placed through another of its offers since this entry was pushed.
                if load[pid] < p.slots:
                    heapq.heappush(heap, (score, load[pid], pid, price))
                continue
            if failures(t, p, min_stake, price) & ~NO_SLOT:
                skipped.append((score, seen_load, pid, price))  # the heap counts slots
                continue
            load[pid] = seen_load + 1
            if load[pid] < p.slots:
                heapq.heappush(heap, (score, load[pid], pid, price))
            return Placement(t.id, pid, price)
        return None
    finally:
        for item in skipped:
            heapq.heappush(heap, item)


def _best_of(t: TaskDemand, by_id: dict[str, ProviderState], load: dict[str, int],
             min_stake: int, strategy: Strategy) -> Placement | None:
    """``place``'s choice for a task only ``t.only`` may take, read from those providers:
    the same order as the heap's (score, then load, then id)."""
    assert t.only is not None
    best: tuple[float, int, str, int] | None = None
    for pid in t.only:
        p = by_id.get(pid)
        if p is None or load[pid] >= p.slots:
            continue
        price = p.price_for(t.workload, t.model)
        if price is None or failures(t, p, min_stake, price) & ~NO_SLOT:
            continue
        cand = (strategy.score(price, p), load[pid], pid, price)
        if best is None or cand < best:
            best = cand
    return None if best is None else Placement(t.id, best[2], best[3])


def stake_for(value: int, slash_fraction: float, check_probability: float) -> int:
    """The bond at which cheating on a task worth ``value`` has negative expected profit.

    Caught with probability p, a cheater loses ``slash_fraction`` of its stake;
    unchecked it keeps ``value``. Loss outweighs gain when
    p · slash_fraction · stake > (1 − p) · value.
    """
    if value <= 0:
        return 0
    if slash_fraction <= 0 or check_probability <= 0:
        return 2**62
    p = check_probability
    loss = int(value * (1 - p) / p) + 1  # the slash must exceed this
    stake = math.ceil(loss / slash_fraction)

    def enough(st: int) -> bool:  # the slash rounds down to a micro-unit
        return int(st * slash_fraction) >= loss

    if enough(stake):
        return stake
    # The smallest stake above that is enough: ``enough`` only flips once as the stake
    # grows, so step out by doubling and bisect back, in O(log) steps even where floats
    # are too coarse for +1 to change the product (values of 10^22 and up).
    low, step = stake, 1
    while not enough(low + step):
        low, step = low + step, step * 2
    high = low + step
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


@dataclass
class Quote:
    units: int
    best_price: int | None
    estimated_cost: int | None
    max_cost: int
    eligible: list[tuple[str, int]] = field(default_factory=list)
    ineligible: list[tuple[str, list[str]]] = field(default_factory=list)


def quote(task: TaskDemand, shard_units: Sequence[int], providers: Iterable[ProviderState],
          min_stake: int, strategy: Strategy = DEFAULT_STRATEGY) -> Quote:
    """What a job would cost and who could run it, with every other provider's reasons."""
    eligible: list[tuple[float, str, int]] = []
    ineligible: list[tuple[str, list[str]]] = []
    for p in providers:
        reasons = why_not(task, p, min_stake)
        if reasons:
            ineligible.append((p.id, reasons))
        else:
            price = p.price_for(task.workload, task.model)
            assert price is not None
            eligible.append((strategy.score(price, p), p.id, price))
    eligible.sort()
    units = sum(shard_units)
    max_cost = sum(cost_for_units(u, task.max_price) for u in shard_units)
    best = eligible[0][2] if eligible else None
    est = sum(cost_for_units(u, best) for u in shard_units) if best is not None else None
    return Quote(units, best, est, max_cost, [(pid, pr) for _, pid, pr in eligible],
                 sorted(ineligible))


def pick(task: TaskDemand, providers: Sequence[ProviderState], min_stake: int, draw: float,
         load: Mapping[str, int]) -> Placement | None:
    """A checker for ``task``, drawn at random among the eligible with a free slot,
    weighted by stake × reputation (``draw`` is uniform in [0, 1)).

    Never cheapest-first: a low price cannot buy the checker's seat, and a party with
    more at stake and a better record is likelier to check. ``load`` overrides each
    provider's load with what this round has already placed on it.
    """
    cands: list[tuple[str, int, float]] = []
    total = 0.0
    for p in providers:
        price = p.price_for(task.workload, task.model)
        if price is None or failures(task, p, min_stake, price) & ~NO_SLOT:
            continue
        if load.get(p.id, p.load) >= p.slots:
            continue
        w = max(p.stake, 1) * max(p.reputation, 0.05)
        cands.append((p.id, price, w))
        total += w
    if not cands:
        return None
    x = draw * total
    for pid, price, w in cands:
        x -= w
        if x < 0:
            return Placement(task.id, pid, price)
    pid, price, _ = cands[-1]
    return Placement(task.id, pid, price)
