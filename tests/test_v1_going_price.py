"""A ``/v1`` request names no price: it pays at most the model's going price
(``ProviderIndex.going_price``), the highest price among the online providers that may
run it (staked, not the network's verifiers), never above ``GOING_FACTOR`` times their
median.

Before, it was escrowed and placed at the highest price of any provider online: a
provider asking 10⁹ µ per unit was paid 10⁹ by whichever request the cheap providers
were too busy for (the same 21 tokens cost a million times more), and one that bonded
nothing, asking 10¹², priced every caller out of the model (402 and 429 for all) for as
long as it beat. Both engines, the real index and the gateway's own admission."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deai.coordinator import provider_index
from deai.coordinator.openai import gateway, keys
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core.errors import UnknownModel
from deai.core.money import cost_for_units
from deai.store.models import Job, Task
from tests.helpers import MODEL
from tests.test_provider_index import c, index, leased, provider

__all__ = ["c"]  # the engines' fixture

CLIENT = "d" * 64
CHEAP = 1_000
DEAR = 100_000  # its stake (10 DEAI) covers a request at this price: it counts
SYBIL = 10**9  # a price no minimum stake covers


def request(c: Coordinator) -> gateway.Started:
    key = keys.authenticate(c, keys.create(c, CLIENT, wire.ApiKeyIn(name="t")).key or "")
    return gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})


def going(c: Coordinator) -> int | None:
    with c.db.read() as s:
        return index(c).going_price(s, "embeddings", MODEL)


def priced(c: Coordinator, job_id: str) -> tuple[int, int]:
    """A job's price per unit; its escrow is what its one task may cost at that price."""
    with c.db.read() as s:
        job = s.scalars(select(Job).where(Job.id == job_id)).one()
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        assert job.escrow == cost_for_units(task.units, job.max_price)
        return job.max_price, job.escrow


def test_a_dear_provider_is_offered_no_request_and_sets_no_escrow(c: Coordinator) -> None:
    c.faucet(CLIENT, 10**12)
    cheap = [provider(c, k, price=CHEAP) for k in range(3)]
    dear = provider(c, 3, price=DEAR)
    assert going(c) == provider_index.GOING_FACTOR * CHEAP

    first = [request(c) for _ in range(3)]
    assert sorted(str(r.provider) for r in first) == sorted(cheap)
    late = request(c)  # the cheap ones are busy: it waits, the dear one never gets it
    assert late.provider is None and leased(c, [late.task_id]) == {}
    for r in [*first, late]:
        assert priced(c, r.job_id)[0] == provider_index.GOING_FACTOR * CHEAP
    assert dear not in {r.provider for r in first}


def test_an_unstaked_or_lone_outlier_moves_nothing(c: Coordinator) -> None:
    c.faucet(CLIENT, 10**12)
    provider(c, 0, price=CHEAP)
    assert going(c) == CHEAP  # one provider: its own price, however low the factor
    provider(c, 1, price=10**12, stake=0)  # bonds nothing: may run nothing
    assert going(c) == CHEAP
    r = request(c)
    assert r.provider is not None and priced(c, r.job_id)[0] == CHEAP
    provider(c, 2, price=CHEAP)
    provider(c, 3, price=DEAR)  # staked, but a quarter of the providers
    assert going(c) == provider_index.GOING_FACTOR * CHEAP


def test_staked_sybils_asking_more_than_their_stake_covers_set_no_price(
        c: Coordinator) -> None:
    """Two sybils asking 10⁹ on the bare minimum stake each, against one honest provider:
    they were the median, every request was escrowed at 10⁹ a unit and asked each
    provider for 39 DEAI of stake for one embedding, so none was placed (a 504 after ten
    minutes, for as long as they beat). To count in the going price a price must be
    staked in proportion to it (``_going_stake``); and a provider is asked for the stake
    its own price makes worth cheating for, not the request's maximum's
    (``market.stake_at``)."""
    c.faucet(CLIENT, 10**12)
    honest = provider(c, 0, price=CHEAP)
    for k in (1, 2):
        provider(c, k, price=SYBIL)
    assert going(c) == CHEAP
    r = request(c)
    assert r.provider == honest and priced(c, r.job_id)[0] == CHEAP


def test_a_new_price_counts_at_once_and_nobody_staked_serves_nothing(c: Coordinator) -> None:
    c.faucet(CLIENT, 10**12)
    with pytest.raises(UnknownModel):  # nobody at all
        request(c)
    provider(c, 0, price=CHEAP, stake=0)
    with pytest.raises(UnknownModel):  # nobody who may run it
        request(c)
    pid = provider(c, 1, price=CHEAP)
    assert going(c) == CHEAP  # not the "nobody" of a moment ago
    provider(c, 1, price=2 * CHEAP, pid=pid, stake=0)  # re-registered at a new price
    assert going(c) == 2 * CHEAP


def test_who_could_never_be_given_the_request_sets_no_price(c: Coordinator) -> None:
    """A sybil with too little memory for the model, asking 1, is never placed (so never
    at risk): counted, it dragged the median to its price, and no request was ever
    placed on the honest providers. A sealed batch's parties price it among themselves
    (its client chose them): the network's going price left a dearer party never offered
    its batch."""
    honest = provider(c, 0, price=CHEAP)
    for k in range(1, 4):
        provider(c, k, price=1, memory_mb=1)
    assert going(c) == CHEAP
    c.faucet(CLIENT, 10**12)
    r = request(c)
    assert r.provider == honest and priced(c, r.job_id)[0] == CHEAP

    party = provider(c, 5, price=10 * CHEAP)
    with c.db.read() as s:
        idx = index(c)
        assert idx.going_price(s, "embeddings", MODEL) == CHEAP * 3  # the median's cap
        assert idx.going_price(s, "embeddings", MODEL, frozenset({party})) == 10 * CHEAP
        assert idx.going_price(s, "embeddings", MODEL, frozenset({"e" * 64})) is None
