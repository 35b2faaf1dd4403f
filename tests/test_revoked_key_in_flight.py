"""A key revoked while a request it authenticated is in flight spends nothing more.

Authentication reads the key once, unlocked, at the start of the request; the
transaction that escrows locks the key's row later (``admission.hold_cap``). A
revocation that commits in between must stop the spending there: 401, nothing
escrowed, no job. Driven step by step on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from deai.coordinator import admission
from deai.coordinator.openai import keys
from deai.coordinator.service import Coordinator
from deai.core import ledger, wire
from deai.core.errors import AuthError
from deai.store.models import ApiKeyJob, Job
from tests.helpers import admit_one
from tests.races import ENGINES, coordinator

OWNER = "cd" * 32
ESCROW = 5_000
PRICE = 1_000


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def spend(c: Coordinator, key: admission.KeyUse) -> str:
    """The escrowing transaction of a request spent through ``key``."""
    digest = c.blobs.put(b'{"custom_id": "r0", "input": ["hello"]}\n')
    return c.db.run(lambda s: admit_one(c, s, owner=OWNER, digest=digest, price=PRICE,
                                        escrow=ESCROW, key=key))


def money_and_jobs(c: Coordinator) -> tuple[int, int, int]:
    with c.db.read() as s:
        return (c.settlement.balance(s, ledger.acct(OWNER)),
                int(s.scalar(select(func.count()).select_from(Job)) or 0),
                int(s.scalar(select(func.count()).select_from(ApiKeyJob)) or 0))


@pytest.mark.parametrize("cap", [None, 10 * ESCROW])
def test_a_key_revoked_after_authentication_spends_nothing(c: Coordinator,
                                                           cap: int | None) -> None:
    c.db.run(lambda s: c.settlement.faucet(s, OWNER, 100 * ESCROW))
    out = keys.create(c, OWNER, wire.ApiKeyIn(name="leaked", spend_cap=cap))
    assert out.key is not None
    info = keys.authenticate(c, out.key)  # the request is let in...
    use = admission.KeyUse(info.id, "request")
    spend(c, use)  # ...and while the key is live, it spends
    before = money_and_jobs(c)
    keys.revoke(c, OWNER, info.id)  # ...revoked before its escrowing transaction
    with pytest.raises(AuthError, match="revoked"):
        spend(c, use)
    assert money_and_jobs(c) == before
    with pytest.raises(AuthError, match="revoked"):  # and a new request is not let in
        keys.authenticate(c, out.key)
