"""Ledger properties: any sequence of movements keeps every invariant, and tampering shows.

Operations are applied the way the store applies them: build the Draft, refuse it
when ``check_funds`` fails, otherwise chain it onto the journal. After every step
the replayed audit must agree with a plain model of the balances.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deai.core import ledger, money
from deai.core.errors import InsufficientFunds, InvalidInput
from deai.core.ledger import MINT, Draft, Entry

OWNERS = ["a" * 64, "b" * 64, "c" * 64]
JOBS = ["job-1", "job-2", "job-3"]
AMOUNTS = st.one_of(st.integers(-5, 5_000), st.sampled_from([0, 1, 10**6, 10**12]))

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

def _op(draw: st.DrawFn) -> tuple[str, Draft]:
    """One movement with arguments that are sometimes nonsense; returns (label, draft)."""
    kind = draw(st.sampled_from(
        ["faucet", "bond", "unbond", "escrow", "payout", "release", "refund"]))
    who = draw(st.sampled_from(OWNERS))
    job = draw(st.sampled_from(JOBS))
    amount = draw(AMOUNTS)
    if kind == "faucet":
        return kind, ledger.faucet(who, amount)
    if kind == "bond":
        return kind, ledger.bond(who, amount)
    if kind == "unbond":
        return kind, ledger.unbond(who, amount)
    if kind == "escrow":
        return kind, ledger.escrow_job(who, job, amount)
    if kind == "payout":
        fee_bps = draw(st.sampled_from([0, 250, 500, 10_000]))
        n = draw(st.integers(0, 10**6))
        return kind, ledger.payout(job, f"t{n}", f"as{n}", who, amount,
                                   money.fee_of(amount, fee_bps))
    if kind == "release":
        return kind, ledger.release(who, amount, [draw(st.integers(1, 10**6))])
    return kind, ledger.refund(who, job, amount, draw(st.sampled_from(["done", "cancelled"])))


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Draft | None]]:
    """A list of (kind, draft); draft is None where building it was refused."""
    out: list[tuple[str, Draft | None]] = []
    for _ in range(draw(st.integers(0, 40))):
        try:
            out.append(_op(draw))
        except (InvalidInput, ValueError):
            out.append(("refused", None))
    return out


class Book:
    """What the store does: check funds, chain, keep balances; plus a model to compare."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.balances: dict[str, int] = {}
        self.minted = 0

    def apply(self, kind: str, draft: Draft) -> bool:
        try:
            ledger.check_funds(draft, self.balances)
        except InsufficientFunds:
            return False
        prev = self.entries[-1].hash if self.entries else ledger.GENESIS
        entry = ledger.chain(draft, len(self.entries) + 1, prev, 1_700_000_000_000 + len(
            self.entries))
        self.entries.append(entry)
        for account, delta in draft.postings:
            self.balances[account] = self.balances.get(account, 0) + delta
        if kind == "faucet":
            self.minted += draft.body["amount"]
        return True


def build(ops: list[tuple[str, Draft | None]]) -> Book:
    book = Book()
    for kind, draft in ops:
        if draft is not None:
            book.apply(kind, draft)
    return book


def assert_invariants(book: Book) -> None:
    rep = ledger.audit(book.entries, claimed=book.balances)
    assert rep.ok, rep.problems
    assert rep.entries == len(book.entries)
    assert rep.head == (book.entries[-1].hash if book.entries else ledger.GENESIS)
    assert {a: v for a, v in rep.balances.items() if v} == {
        a: v for a, v in book.balances.items() if v}
    assert sum(rep.balances.values()) == 0
    assert all(v >= 0 for a, v in rep.balances.items() if a != MINT)
    assert rep.supply == book.minted == -rep.balances.get(MINT, 0)


# --- invariants under any sequence of operations -----------------------------------------

@SETTINGS
@given(operations())
def test_any_sequence_keeps_every_invariant(ops: list[tuple[str, Draft | None]]) -> None:
    book = Book()
    for kind, draft in ops:
        if draft is None:
            continue
        before = dict(book.balances)
        applied = book.apply(kind, draft)
        if not applied:
            assert book.balances == before
            # check_funds refuses exactly when some non-mint account would go negative.
            assert any(a != MINT and before.get(a, 0) + d < 0 for a, d in draft.postings)
        assert_invariants(book)


@SETTINGS
@given(operations())
def test_journal_survives_a_round_trip_through_dicts(
        ops: list[tuple[str, Draft | None]]) -> None:
    book = build(ops)
    again = [Entry.from_dict(e.to_dict()) for e in book.entries]
    assert again == book.entries
    assert ledger.audit(again, claimed=book.balances).ok


def test_a_funded_job_settles_to_the_cent() -> None:
    client, prov = OWNERS[0], OWNERS[1]
    book = Book()
    cost = money.cost_for_units(130, 2_000)
    fee = money.fee_of(cost, 500)
    for kind, draft in [
        ("faucet", ledger.faucet(client, 10 * money.MICRO)),
        ("faucet", ledger.faucet(prov, 5 * money.MICRO)),
        ("bond", ledger.bond(prov, 5 * money.MICRO)),
        ("escrow", ledger.escrow_job(client, "j", 1_000)),
        ("payout", ledger.payout("j", "t", "as", prov, cost, fee)),
        ("release", ledger.release(prov, cost - fee, [1])),
        ("refund", ledger.refund(client, "j", 1_000 - cost, "done")),
    ]:
        assert book.apply(kind, draft), kind
    assert_invariants(book)
    b = book.balances
    assert b[ledger.acct(client)] == 10 * money.MICRO - cost
    assert b[ledger.acct(prov)] == cost - fee
    assert b[ledger.FEE] == fee
    assert b[ledger.escrow("j")] == 0 and b[ledger.pending(prov)] == 0
    assert b[ledger.stake(prov)] == 5 * money.MICRO


def test_check_funds_refuses_overdraft_and_names_the_account() -> None:
    with pytest.raises(InsufficientFunds) as exc:
        ledger.check_funds(ledger.bond(OWNERS[0], 5), {ledger.acct(OWNERS[0]): 4})
    assert exc.value.details == {"account": ledger.acct(OWNERS[0]), "balance": 4, "needed": 5}
    ledger.check_funds(ledger.faucet(OWNERS[0], 5), {})  # the mint may go below zero


def test_drafts_must_balance_and_hold_ints() -> None:
    with pytest.raises(ValueError):
        Draft("x", {}, (("a", 1), ("b", -2)))
    with pytest.raises(TypeError):
        Draft("x", {}, (("a", True), ("b", -1)))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Draft("x", {}, (("a", 1.0), ("b", -1.0)))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        ledger.faucet(OWNERS[0], 0)
    with pytest.raises(ValueError):
        ledger.payout("j", "t", "a", OWNERS[0], 10, 11)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["acct:x", "acct:y", "fee"]),
                          st.integers(-50, 50)), min_size=1, max_size=6))
def test_an_entry_that_check_funds_accepts_passes_the_audit(
        legs: list[tuple[str, int]]) -> None:
    """Hand-built drafts too: check_funds nets an entry per account, and so must the audit."""
    legs.append((MINT, -sum(d for _, d in legs)))
    draft = Draft("custom", {}, tuple(legs))
    seed = ledger.chain(ledger.faucet("x", 20), 1, ledger.GENESIS, 0)
    balances = {MINT: -20, "acct:x": 20}
    try:
        ledger.check_funds(draft, balances)
    except InsufficientFunds:
        assume(False)
    entry = ledger.chain(draft, 2, seed.hash, 0)
    assert ledger.audit([seed, entry]).ok


# --- tampering is detected ---------------------------------------------------------------

@st.composite
def journals(draw: st.DrawFn, min_entries: int = 2) -> Book:
    book = build(draw(operations()))
    # Make sure there is something to tamper with.
    while len(book.entries) < min_entries:
        book.apply("faucet", ledger.faucet(draw(st.sampled_from(OWNERS)),
                                           draw(st.integers(1, 10**6))))
    return book


def _rehash(e: Entry) -> Entry:
    return dataclasses.replace(
        e, hash=ledger.entry_hash(e.seq, e.prev_hash, e.ts_ms, e.kind, e.body, e.postings))


def _tamper_body(e: Entry, data: st.DataObject) -> Entry:
    body: dict[str, Any] = dict(e.body)
    key = data.draw(st.sampled_from(sorted(body) + ["forged"]), label="key")
    old = body.get(key)
    new = data.draw(st.one_of(st.integers(), st.text(max_size=5)).filter(
        lambda v: v != old or type(v) is not type(old)), label="value")
    body[key] = new
    return dataclasses.replace(e, body=body)


def _tamper_postings(e: Entry, data: st.DataObject) -> Entry:
    legs = [list(p) for p in e.postings]
    how = data.draw(st.sampled_from(["shift", "unbalance", "rename", "drop", "add"]))
    i = data.draw(st.integers(0, len(legs) - 1))
    delta = data.draw(st.integers(1, 10**6))
    if how == "shift":
        j = (i + 1) % len(legs)
        legs[i][1] += delta
        legs[j][1] -= delta
    elif how == "unbalance":
        legs[i][1] += delta
    elif how == "rename":
        legs[i][0] = "acct:" + "f" * 64
    elif how == "drop":
        del legs[i]
    else:
        legs.append(["acct:" + "e" * 64, 0])
    return dataclasses.replace(e, postings=tuple((str(a), int(d)) for a, d in legs))


@SETTINGS
@given(journals(), st.data())
def test_tampering_with_an_entry_is_detected(book: Book, data: st.DataObject) -> None:
    entries = list(book.entries)
    head = entries[-1].hash
    i = data.draw(st.integers(0, len(entries) - 1), label="index")
    what = data.draw(st.sampled_from(["body", "postings", "hash", "ts", "kind", "seq"]))
    e = entries[i]
    if what == "body":
        forged = _tamper_body(e, data)
    elif what == "postings":
        forged = _tamper_postings(e, data)
    elif what == "hash":
        forged = dataclasses.replace(e, hash=data.draw(
            st.text("0123456789abcdef", min_size=64, max_size=64).filter(lambda h: h != e.hash)))
    elif what == "ts":
        forged = dataclasses.replace(e, ts_ms=e.ts_ms + data.draw(st.integers(1, 10**6)))
    elif what == "kind":
        forged = dataclasses.replace(e, kind=e.kind + "x")
    else:
        forged = dataclasses.replace(e, seq=e.seq + data.draw(st.integers(1, 5)))
    assume(forged != e)

    # Left as found: the entry's own hash no longer recomputes.
    entries[i] = forged
    assert not ledger.audit(entries).ok

    # Rehashed by the forger: the next entry's link breaks, or, at the end of the
    # journal, the head differs from the one already published.
    if what == "hash":
        return
    entries[i] = _rehash(forged)
    rep = ledger.audit(entries)
    if i < len(entries) - 1:
        assert not rep.ok
    else:
        assert rep.head != head


@SETTINGS
@given(journals(), st.data())
def test_reordering_entries_is_detected(book: Book, data: st.DataObject) -> None:
    entries = list(book.entries)
    i = data.draw(st.integers(0, len(entries) - 2))
    j = data.draw(st.integers(i + 1, len(entries) - 1))
    entries[i], entries[j] = entries[j], entries[i]
    assert not ledger.audit(entries).ok


@SETTINGS
@given(journals(), st.data())
def test_deleting_entries_is_detected(book: Book, data: st.DataObject) -> None:
    entries = list(book.entries)
    head = entries[-1].hash
    i = data.draw(st.integers(0, len(entries) - 1))
    n = data.draw(st.integers(1, len(entries) - i))
    del entries[i:i + n]
    rep = ledger.audit(entries)
    if i + n < len(book.entries):
        assert not rep.ok
    else:
        # Truncating the tail leaves a valid shorter chain: only the head tells.
        assert rep.ok and rep.head != head


@SETTINGS
@given(journals(min_entries=1), st.data())
def test_duplicated_entry_is_detected(book: Book, data: st.DataObject) -> None:
    entries = list(book.entries)
    i = data.draw(st.integers(0, len(entries) - 1))
    entries.insert(i, entries[i])
    assert not ledger.audit(entries).ok


@SETTINGS
@given(journals(min_entries=1), st.data())
def test_claimed_balances_must_match_the_journal(book: Book, data: st.DataObject) -> None:
    claimed = dict(book.balances)
    assert ledger.audit(book.entries, claimed=claimed).ok
    account = data.draw(st.sampled_from(sorted(claimed) + ["acct:" + "9" * 64]))
    claimed[account] = claimed.get(account, 0) + data.draw(
        st.integers(-10**6, 10**6).filter(bool))
    rep = ledger.audit(book.entries, claimed=claimed)
    assert not rep.ok
    assert any(account in p for p in rep.problems)


def test_an_empty_journal_audits_clean() -> None:
    rep = ledger.audit([], claimed={})
    assert rep.ok and rep.entries == 0 and rep.head == ledger.GENESIS and rep.supply == 0


# --- money ---------------------------------------------------------------------------------

@given(st.integers(-10**15, 10**15))
def test_fmt_and_parse_round_trip(amount: int) -> None:
    text = money.fmt(amount)
    assert money.parse(text) == amount
    assert money.parse(f"{amount}µ") == amount == money.parse(f" {amount}u ")


@pytest.mark.parametrize(("text", "micro"), [
    ("1", 1_000_000), ("1.5", 1_500_000), ("0.000001", 1), ("-2.25", -2_250_000),
    (".5", 500_000), ("12.", 12_000_000), ("  3.000010 ", 3_000_010), ("1500000µ", 1_500_000),
    ("7u", 7), ("-7µ", -7),
])
def test_parse_examples(text: str, micro: int) -> None:
    assert money.parse(text) == micro


@pytest.mark.parametrize("text", [
    "abc", "1.2.3", "1.0000001", "1,5", "--1", "+-1", "1e6", "1.5µ", "µ", "0x10", "1 000",
    "nan", "inf", "-1.-5",
])
def test_parse_refuses_what_is_not_an_amount(text: str) -> None:
    with pytest.raises(ValueError):
        money.parse(text)


@pytest.mark.parametrize("text", ["", " ", "-", ".", "-."])
def test_parse_refuses_empty_amounts(text: str) -> None:
    with pytest.raises(ValueError):
        money.parse(text)


def test_fmt_examples() -> None:
    assert money.fmt(0) == "0.000000"
    assert money.fmt(1) == "0.000001"
    assert money.fmt(-1_500_000) == "-1.500000"
    assert money.fmt(12_345_678_901) == "12345.678901"


@pytest.mark.parametrize(("units", "price", "cost"), [
    (0, 2_000, 0), (1, 2_000, 2), (1, 1, 1), (999, 1, 1), (1000, 1, 1), (1001, 1, 2),
    (130, 2_000, 260), (3, 333, 1), (1, 0, 0), (10**9, 10**12, 10**18),
])
def test_cost_for_units_rounds_up_to_a_micro_unit(units: int, price: int, cost: int) -> None:
    assert money.cost_for_units(units, price) == cost


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_cost_for_units_is_the_exact_ceiling(units: int, price: int) -> None:
    cost = money.cost_for_units(units, price)
    assert cost * 1000 >= units * price > (cost - 1) * 1000 or cost == 0 == units * price


def test_cost_for_units_refuses_negatives() -> None:
    with pytest.raises(ValueError):
        money.cost_for_units(-1, 10)
    with pytest.raises(ValueError):
        money.cost_for_units(1, -10)


@pytest.mark.parametrize(("amount", "bps", "fee"), [
    (0, 500, 0), (19, 500, 0), (20, 500, 1), (39, 500, 1), (1_000_000, 500, 50_000),
    (7, 10_000, 7), (7, 0, 0), (9_999, 1, 0), (10_000, 1, 1),
])
def test_fee_rounds_down(amount: int, bps: int, fee: int) -> None:
    assert money.fee_of(amount, bps) == fee


@given(st.integers(0, 10**15), st.integers(0, 10_000))
def test_fee_never_exceeds_the_cost_and_never_over_charges(amount: int, bps: int) -> None:
    fee = money.fee_of(amount, bps)
    assert 0 <= fee <= amount
    assert fee * 10_000 <= amount * bps < (fee + 1) * 10_000
