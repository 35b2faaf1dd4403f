"""Leases, pure: the state table, prices, per-second billing, settlements, host choice,
and the journal postings they turn into."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.core import leases as L
from deai.core import ledger
from deai.core.errors import Conflict, InvalidInput

PRICES = {"cpu": 360_000, "memory_gb": 36_000, "gpu": 2_000_000, "gpu:H100": 5_000_000}


def host(pid: str = "p", **kw: object) -> L.Host:
    base: dict[str, object] = dict(provider_id=pid, prices=PRICES, free_cpus=4,
                                   free_memory_mb=8192, free_gpus=0, gpu_model=None,
                                   network=False, online=True, stake=10_000_000,
                                   reputation=0.5)
    base.update(kw)
    return L.Host(**base)  # type: ignore[arg-type]


def test_state_table() -> None:
    L.check_transition("pending", L.LeaseStatus.ACTIVE)
    L.check_transition("pending", L.LeaseStatus.ENDED)
    L.check_transition("active", L.LeaseStatus.ENDED)
    for bad in (("active", L.LeaseStatus.PENDING), ("ended", L.LeaseStatus.ACTIVE),
                ("ended", L.LeaseStatus.ENDED)):
        with pytest.raises(Conflict):
            L.check_transition(*bad)
    assert {r.value for r in L.EndReason} == {"owner ended", "time up", "escrow exhausted",
                                              "provider lost", "preempted", "policy"}


def test_hourly_price() -> None:
    assert L.hourly_price(L.Ask(cpus=2, memory_mb=1500), PRICES) == 2 * 360_000 + 2 * 36_000
    assert L.hourly_price(L.Ask(cpus=1, memory_mb=1024, gpus=1, gpu_model="H100"),
                          PRICES) == 360_000 + 36_000 + 5_000_000
    assert L.hourly_price(L.Ask(cpus=1, memory_mb=1024, gpus=2, gpu_model="A10"),
                          PRICES) == 360_000 + 36_000 + 2 * 2_000_000
    assert L.hourly_price(L.Ask(cpus=1, memory_mb=1024, gpus=1),
                          {"cpu": 1, "memory_gb": 1}) is None
    assert L.hourly_price(L.Ask(cpus=1, memory_mb=64), {"cpu": 1}) is None


def test_price_classes_are_checked() -> None:
    L.check_price_class("gpu:H100", 1)
    with pytest.raises(InvalidInput) as e:
        L.check_price_class("disk", 1)
    assert e.value.field == "prices"
    with pytest.raises(InvalidInput):
        L.check_price_class("cpu", -1)


@given(price=st.integers(1, 10**10), escrow=st.integers(0, 10**13))
def test_covered_seconds_is_exactly_what_the_escrow_pays(price: int, escrow: int) -> None:
    s = L.covered_seconds(price, escrow)
    assert s is not None
    assert L.cost_of(price, s) <= escrow < L.cost_of(price, s + 1)


@given(price=st.integers(1, 10**9), hours=st.floats(0.001, 1000))
def test_escrow_for_pays_the_whole_term(price: int, hours: float) -> None:
    term = round(hours * 3600)
    cover = L.covered_seconds(price, L.escrow_for(price, hours))
    assert cover is not None and cover >= term


@given(price=st.integers(0, 10**9), escrow=st.integers(1, 10**12),
       charged_at=st.integers(0, 10**6), end=st.integers(0, 10**7),
       fee_bps=st.integers(0, 10_000), stake=st.integers(0, 10**12),
       penalty_bps=st.integers(0, 10_000))
def test_settlements_conserve_money(price: int, escrow: int, charged_at: int, end: int,
                                    fee_bps: int, stake: int, penalty_bps: int) -> None:
    b = L.Billing(price, escrow, 0, started_at=1000.0, term_end=None)
    first = L.settle(b, 1000.0 + charged_at, fee_bps)
    assert first.refund == 0 and first.penalty == 0
    b2 = L.Billing(price, escrow, first.charge, 1000.0, None)
    last = L.settle(b2, 1000.0 + max(end, charged_at), fee_bps, final=True, stake=stake,
                    penalty_bps=penalty_bps)
    for s in (first, last):
        assert s.charge >= 0 and s.to_provider + s.fee == s.charge and 0 <= s.fee <= s.charge
    assert first.charge + last.charge + last.refund == escrow
    assert 0 <= last.penalty <= stake


@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_billing_never_goes_backwards(a: int, b: int) -> None:
    bill = L.Billing(396_000, 10**9, 0, 0.0, term_end=5000.0)
    lo, hi = sorted((a, b))
    assert L.billable_seconds(bill, lo) <= L.billable_seconds(bill, hi) <= 5000


def test_ends_at_term_or_escrow() -> None:
    assert L.ends_at(L.Billing(3600, 10, 0, 0.0, None)) == (10.0, L.EndReason.ESCROW_EXHAUSTED)
    assert L.ends_at(L.Billing(3600, 10, 0, 0.0, 5.0)) == (5.0, L.EndReason.TIME_UP)
    assert L.ends_at(L.Billing(3600, 10, 0, 0.0, 10.0)) == (10.0, L.EndReason.TIME_UP)
    assert L.ends_at(L.Billing(3600, 10, 0, None, None)) == (None, None)
    assert L.warn_due(L.Billing(3600, 10, 0, 0.0, None), 6.0, 5.0)
    assert not L.warn_due(L.Billing(3600, 10, 0, 0.0, None), 4.0, 5.0)
    assert not L.warn_due(L.Billing(3600, 10, 0, 0.0, 5.0), 4.9, 5.0)  # term ends first


def test_provider_lost_is_billed_to_the_last_heartbeat() -> None:
    b = L.Billing(360_000, 360_000, 0, started_at=0.0, term_end=3600.0)
    st_ = L.settle(b, 600.0, 500, final=True, stake=10_000_000, penalty_bps=100)
    assert st_.charge == 60_000 and st_.fee == 3_000 and st_.refund == 300_000
    assert st_.penalty == 100_000


def test_choose_cheapest_eligible_and_says_why_not() -> None:
    hosts = [host("cheap-offline", online=False, prices={"cpu": 1, "memory_gb": 1}),
             host("poor", stake=1, prices={"cpu": 2, "memory_gb": 1}),
             host("small", free_cpus=1, prices={"cpu": 3, "memory_gb": 1}),
             host("b", prices={"cpu": 10, "memory_gb": 1}, reputation=0.9),
             host("a", prices={"cpu": 10, "memory_gb": 1}, reputation=0.4),
             host("dear", prices={"cpu": 10**6, "memory_gb": 1})]
    chosen, price, why = L.choose(L.Ask(cpus=2, memory_mb=1024), hosts, 100, 1_000_000)
    assert chosen is not None and chosen.provider_id == "b" and price == 21
    assert why["cheap-offline"] == ["offline"]
    assert "stake" in why["poor"][0] and "free CPUs" in why["small"][0]
    assert "over the maximum" in why["dear"][0]
    none, _, why = L.choose(L.Ask(cpus=1, memory_mb=64, network=True), hosts[3:5], 100, 0)
    assert none is None and all("no network for leases" in w for w in why.values())


def test_lease_postings_balance_and_audit() -> None:
    owner, prov, lid = "o" * 64, "p" * 64, "lease_0123456789abcdef"
    drafts = [ledger.faucet(owner, 1_000_000), ledger.faucet(prov, 20_000_000),
              ledger.bond(prov, 10_000_000), ledger.escrow_lease(owner, lid, 396_000),
              ledger.lease_charge(lid, prov, 1_100, 55, 10),
              ledger.lease_charge(lid, prov, 1, 0, 1),
              ledger.lease_refund(owner, lid, 396_000 - 1_101, "provider lost"),
              ledger.downtime_penalty(prov, lid, 100_000, 12.5)]
    entries, prev = [], ledger.GENESIS
    for i, d in enumerate(drafts, start=1):
        e = ledger.chain(d, i, prev, 1000 + i)
        entries.append(e)
        prev = e.hash
    rep = ledger.audit(entries)
    assert rep.ok, rep.problems
    assert rep.balances[ledger.escrow(lid)] == 0
    assert rep.balances[ledger.pending(prov)] == 1_045 + 1
    assert rep.balances[ledger.stake(prov)] == 9_900_000
    with pytest.raises(InvalidInput):
        ledger.escrow_lease(owner, lid, 0)
    with pytest.raises(ValueError):
        ledger.lease_charge(lid, prov, 10, 11, 1)


def test_spot_price_and_preemption_choice() -> None:
    ask = L.Ask(cpus=2, memory_mb=1024)
    assert L.lease_price(L.Ask(cpus=2, memory_mb=1024, spot=True), PRICES) == \
        L.hourly_price(ask, PRICES) // 2  # type: ignore[operator]
    full = host("h", free_cpus=0, free_memory_mb=0)
    spots = {"h": [L.SpotLease("s-dear", 2, 1024, 0, 10**9),
                   L.SpotLease("s-cheap", 1, 512, 0, 100),
                   L.SpotLease("s-cheaper", 1, 512, 0, 50)]}
    chosen, price, victims = L.choose_preempting(ask, [full], spots, 10**7, 0)
    assert chosen is full and price == L.hourly_price(ask, PRICES)
    assert victims == ["s-cheaper", "s-cheap"]  # cheapest first, only what pays less
    assert L.choose_preempting(L.Ask(cpus=2, memory_mb=1024, spot=True), [full], spots,
                               10**7, 0)[0] is None
    assert L.choose_preempting(L.Ask(cpus=3, memory_mb=1024), [full], spots, 10**7, 0)[0] \
        is None  # the dear spot lease pays more: not enough can be freed
