"""Matching properties: placement is always eligible, bounded by slots, cheapest first,
and equal to a naive reference scan; quotes account for every provider."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deai.core import market
from deai.core.market import (
    DEFAULT_STRATEGY,
    Offer,
    Placement,
    ProviderState,
    Strategy,
    TaskDemand,
)
from deai.core.money import cost_for_units

MIN_STAKE = 100
KEYS = [("embeddings", "mini"), ("embeddings", "bge"), ("chat", "smol")]
PRICES = st.sampled_from([0, 1, 500, 1_000, 1_500, 2_000, 5_000])
REPUTATIONS = st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0])

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def providers(draw: st.DrawFn, max_size: int = 12) -> list[ProviderState]:
    out = []
    for i in range(draw(st.integers(0, max_size))):
        # Repeated keys on purpose: price_for() charges the first offer for a key.
        keys = draw(st.lists(st.sampled_from(KEYS), max_size=3))
        slots = draw(st.integers(0, 4))
        out.append(ProviderState(
            id=f"p{i:02d}",
            online=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
            stake=draw(st.sampled_from([0, 50, 100, 1_000])),
            memory_mb=draw(st.sampled_from([256, 512, 2_048])),
            slots=slots,
            load=draw(st.integers(0, slots + 1)),
            reputation=draw(REPUTATIONS),
            offers=tuple(Offer(w, m, draw(PRICES)) for w, m in keys),
        ))
    return draw(st.permutations(out))


@st.composite
def tasks(draw: st.DrawFn, ids: Sequence[str], max_size: int = 15) -> list[TaskDemand]:
    out = []
    for i in range(draw(st.integers(0, max_size))):
        w, m = draw(st.sampled_from([*KEYS, ("embeddings", "nobody-serves-this")]))
        out.append(TaskDemand(
            id=f"t{i}", workload=w, model=m,
            max_price=draw(st.sampled_from([0, 500, 1_500, 2_000, 10_000])),
            memory_mb=draw(st.sampled_from([0, 256, 512, 1_024])),
            units=draw(st.integers(1, 100)),
            exclude=frozenset(draw(st.lists(st.sampled_from(ids), max_size=3))) if ids
            else frozenset(),
            # a few named providers (a sealed set, a dataset's list), or anyone
            only=frozenset(draw(st.lists(st.sampled_from(ids), max_size=4)))
            if ids and draw(st.booleans()) else None,
        ))
    return out


@st.composite
def markets(draw: st.DrawFn) -> tuple[list[ProviderState], list[TaskDemand]]:
    ps = draw(providers())
    ids = [p.id for p in ps] + ["not-a-provider"]
    return ps, draw(tasks(ids))


def reference_place(tasks: Sequence[TaskDemand], providers: Sequence[ProviderState],
                    min_stake: int, strategy: Strategy = DEFAULT_STRATEGY) -> list[Placement]:
    """The obvious algorithm: for each task, scan everyone and take the best eligible."""
    load = {p.id: p.load for p in providers}
    out = []
    for t in tasks:
        best: tuple[tuple[float, int, str], ProviderState, int] | None = None
        for p in providers:
            if market.why_not(t, dataclasses.replace(p, load=load[p.id]), min_stake,
                              need_slot=True):
                continue
            price = p.price_for(t.workload, t.model)
            assert price is not None
            key = (strategy.score(price, p), load[p.id], p.id)
            if best is None or key < best[0]:
                best = (key, p, price)
        if best is not None:
            out.append(Placement(t.id, best[1].id, best[2]))
            load[best[1].id] += 1
    return out


def replay(tasks: Sequence[TaskDemand], providers: Sequence[ProviderState],
           placements: Sequence[Placement]) -> list[tuple[TaskDemand, Placement | None,
                                                          dict[str, ProviderState]]]:
    """Walk the tasks in order with loads updated as placements happen.

    Yields each task, its placement (or None) and the providers as they stood just
    before it was placed.
    """
    by_task = {pl.task_id: pl for pl in placements}
    assert len(by_task) == len(placements), "a task was placed twice"
    assert set(by_task) <= {t.id for t in tasks}, "placed a task that was not asked for"
    state = {p.id: p for p in providers}
    steps = []
    for t in tasks:
        pl = by_task.get(t.id)
        steps.append((t, pl, dict(state)))
        if pl is not None:
            p = state[pl.provider_id]
            state[p.id] = dataclasses.replace(p, load=p.load + 1)
    return steps


def _eligible_now(t: TaskDemand, state: dict[str, ProviderState]) -> list[ProviderState]:
    return [p for p in state.values() if not market.why_not(t, p, MIN_STAKE, need_slot=True)]


# --- place ----------------------------------------------------------------------------------

@SETTINGS
@given(markets())
def test_place_never_uses_an_ineligible_provider(
        m: tuple[list[ProviderState], list[TaskDemand]]) -> None:
    ps, ts = m
    placements = market.place(ts, ps, MIN_STAKE)
    for t, pl, state in replay(ts, ps, placements):
        if pl is None:
            continue
        p = state[pl.provider_id]
        assert market.why_not(t, p, MIN_STAKE, need_slot=True) == [], (t, p)
        assert pl.price == p.price_for(t.workload, t.model) <= t.max_price


@SETTINGS
@given(markets())
def test_place_never_exceeds_slots(m: tuple[list[ProviderState], list[TaskDemand]]) -> None:
    ps, ts = m
    placements = market.place(ts, ps, MIN_STAKE)
    for p in ps:
        n = sum(pl.provider_id == p.id for pl in placements)
        assert n <= max(0, p.slots - p.load)


@SETTINGS
@given(markets())
def test_place_leaves_a_task_unplaced_only_when_nobody_can_take_it(
        m: tuple[list[ProviderState], list[TaskDemand]]) -> None:
    ps, ts = m
    for t, pl, state in replay(ts, ps, market.place(ts, ps, MIN_STAKE)):
        if pl is None:
            assert _eligible_now(t, state) == []


@SETTINGS
@given(markets())
def test_place_prefers_the_cheaper_at_equal_reputation(
        m: tuple[list[ProviderState], list[TaskDemand]]) -> None:
    ps, ts = m
    for t, pl, state in replay(ts, ps, market.place(ts, ps, MIN_STAKE)):
        if pl is None:
            continue
        chosen = state[pl.provider_id]
        peers = [p for p in _eligible_now(t, state) if p.reputation == chosen.reputation]
        assert pl.price == min(p.price_for(t.workload, t.model) or 0 for p in peers)


@SETTINGS
@given(markets())
def test_place_matches_the_naive_reference(
        m: tuple[list[ProviderState], list[TaskDemand]]) -> None:
    ps, ts = m
    assert market.place(ts, ps, MIN_STAKE) == reference_place(ts, ps, MIN_STAKE)


@SETTINGS
@given(markets())
def test_place_ignores_the_order_providers_arrive_in(
        m: tuple[list[ProviderState], list[TaskDemand]]) -> None:
    ps, ts = m
    assert market.place(ts, ps, MIN_STAKE) == market.place(ts, list(reversed(ps)), MIN_STAKE)


def test_better_reputation_may_charge_a_little_more() -> None:
    offer = (Offer("embeddings", "mini", 1_000),)
    good = ProviderState("good", True, 100, 1_024, 1, reputation=1.0,
                         offers=(Offer("embeddings", "mini", 1_100),))
    new = ProviderState("new", True, 100, 1_024, 1, reputation=0.5, offers=offer)
    t = TaskDemand("t", "embeddings", "mini", 2_000, 512)
    assert market.place([t], [new, good], MIN_STAKE) == [Placement("t", "good", 1_100)]


def test_ties_go_to_the_less_loaded_then_the_smaller_id() -> None:
    offer = (Offer("embeddings", "mini", 1_000),)
    a = ProviderState("a", True, 100, 1_024, 4, load=2, offers=offer)
    b = ProviderState("b", True, 100, 1_024, 4, load=1, offers=offer)
    c = ProviderState("c", True, 100, 1_024, 4, load=1, offers=offer)
    ts = [TaskDemand(f"t{i}", "embeddings", "mini", 1_000, 0) for i in range(4)]
    got = [pl.provider_id for pl in market.place(ts, [c, a, b], MIN_STAKE)]
    assert got == ["b", "c", "a", "b"]


def test_named_providers_are_read_directly_in_the_heaps_order() -> None:
    """A task only a few named providers may take is placed from those (``only``), not by
    walking the heap: in the same order (score, then load, then id), and the heap sees
    the loads it added (a provider filled that way takes no more from it)."""
    offer = (Offer("embeddings", "mini", 1_000),)
    a = ProviderState("a", True, 100, 1_024, 4, load=2, offers=offer)
    b = ProviderState("b", True, 100, 1_024, 2, load=1, offers=offer)
    c = ProviderState("c", True, 100, 1_024, 4, load=1, offers=offer)
    d = ProviderState("d", True, 100, 1_024, 4, load=3, offers=offer)

    def task(i: int, only: frozenset[str] | None) -> TaskDemand:
        return TaskDemand(f"t{i}", "embeddings", "mini", 1_000, 0, only=only)

    ab = frozenset({"a", "b"})  # fewer than the heap's four: read directly
    ts = [task(0, ab), task(1, ab), task(2, None), task(3, None), task(4, ab),
          task(5, frozenset({"b"}))]
    got = [(pl.task_id, pl.provider_id) for pl in market.place(ts, [a, b, c, d], MIN_STAKE)]
    # t0: b (load 1 against a's 2), which fills b; t1: a (now 3); t2 and t3 from the heap:
    # c (load 1, then 2, against a's and d's 3), never b; t4: a; t5: b is full, nobody.
    assert got == [("t0", "b"), ("t1", "a"), ("t2", "c"), ("t3", "c"), ("t4", "a")]


def test_a_duplicate_offer_does_not_rank_a_provider_below_its_price() -> None:
    """Regression: place() used to rank a provider by every offer for a key (so by the
    cheapest) while charging the first, beating an honest provider at that price."""
    t = TaskDemand("t", "embeddings", "mini", 1_500, 0)
    honest = ProviderState("a", True, 100, 1_024, 1, offers=(Offer("embeddings", "mini", 1_000),))
    double = ProviderState("b", True, 100, 1_024, 1, offers=(
        Offer("embeddings", "mini", 1_000), Offer("embeddings", "mini", 500)))
    assert market.place([t], [double, honest], MIN_STAKE) == [Placement("t", "a", 1_000)]


def test_a_provider_serving_two_models_shares_its_slots_between_them() -> None:
    p = ProviderState("p", True, 100, 1_024, 2, offers=(
        Offer("embeddings", "mini", 10), Offer("embeddings", "bge", 10)))
    ts = [TaskDemand("t0", "embeddings", "mini", 10, 0),
          TaskDemand("t1", "embeddings", "bge", 10, 0),
          TaskDemand("t2", "embeddings", "mini", 10, 0),
          TaskDemand("t3", "embeddings", "bge", 10, 0)]
    assert [pl.task_id for pl in market.place(ts, [p], MIN_STAKE)] == ["t0", "t1"]


# --- why_not and quote ----------------------------------------------------------------------

def test_why_not_names_every_reason() -> None:
    p = ProviderState("p", online=False, stake=10, memory_mb=256, slots=1, load=1,
                      offers=(Offer("embeddings", "mini", 3_000),))
    t = TaskDemand("t", "embeddings", "mini", 2_000, 512, exclude=frozenset({"p"}))
    reasons = market.why_not(t, p, MIN_STAKE, need_slot=True)
    assert [r.split(" (")[0] for r in reasons] == [
        "offline", "no stake", "price above the maximum", "not enough memory",
        "excluded for this task", "no free slot"]
    assert "no free slot" not in market.why_not(t, p, MIN_STAKE)
    other = TaskDemand("t", "embeddings", "bge", 2_000, 0)
    assert "model not served (bge)" in market.why_not(other, p, MIN_STAKE)


@SETTINGS
@given(providers(), st.data())
def test_quote_lists_every_provider_once_with_reasons(ps: list[ProviderState],
                                                      data: st.DataObject) -> None:
    ts = data.draw(tasks([p.id for p in ps], max_size=1).filter(bool))
    t = ts[0]
    shards = data.draw(st.lists(st.integers(0, 5_000), min_size=1, max_size=5))
    q = market.quote(t, shards, ps, MIN_STAKE)
    eligible = [pid for pid, _ in q.eligible]
    ineligible = [pid for pid, _ in q.ineligible]
    assert sorted(eligible + ineligible) == sorted(p.id for p in ps)
    assert not set(eligible) & set(ineligible)
    by_id = {p.id: p for p in ps}
    for pid, price in q.eligible:
        assert market.why_not(t, by_id[pid], MIN_STAKE) == []
        assert price == by_id[pid].price_for(t.workload, t.model)
    for pid, reasons in q.ineligible:
        assert reasons and reasons == market.why_not(t, by_id[pid], MIN_STAKE)
    scores = [DEFAULT_STRATEGY.score(pr, by_id[pid]) for pid, pr in q.eligible]
    assert scores == sorted(scores)
    assert q.units == sum(shards)
    assert q.max_cost == sum(cost_for_units(u, t.max_price) for u in shards)
    if q.eligible:
        assert q.best_price == q.eligible[0][1] <= t.max_price
        assert q.estimated_cost == sum(cost_for_units(u, q.best_price) for u in shards)
        assert q.estimated_cost <= q.max_cost
    else:
        assert q.best_price is None and q.estimated_cost is None


def test_a_provider_is_asked_the_stake_its_own_price_makes_worth_cheating_for() -> None:
    """A task's ``stake_needed`` is sized at its maximum price; a provider is paid its own
    price, which is what it gains by cheating. Asked the maximum's stake, every provider
    was refused a /v1 request whose maximum (a going price sybils had raised) called for
    more stake than any had, and no request was placed."""
    need = market.stake_for(cost_for_units(1_000, 10**9), 0.5, 0.05)
    t = TaskDemand("t", "embeddings", "mini", 10**9, 0, units=1_000, stake_needed=need,
                   at_own_price=True)
    cheap = ProviderState("cheap", True, 10_000_000, 1_024, 1,
                          offers=(Offer("embeddings", "mini", 1_000),))
    dear = dataclasses.replace(cheap, id="dear", offers=(Offer("embeddings", "mini", 10**9),))
    assert market.place([t], [dear, cheap], MIN_STAKE) == [Placement("t", "cheap", 1_000)]
    assert "stake too small" in " ".join(market.why_not(t, dear, MIN_STAKE))
    at_own = market.stake_for(cost_for_units(1_000, 1_000), 0.5, 0.05)
    assert at_own <= market.stake_at(t, 1_000) <= at_own + market.STAKE_SLACK
    assert market.stake_at(t, 10**9) == need
    # A check is paid the checked result's price, whatever it asks: its full stake.
    check = t._replace(at_own_price=False)
    assert market.stake_at(check, 1_000) == need
    assert market.place([check], [cheap], MIN_STAKE) == []
