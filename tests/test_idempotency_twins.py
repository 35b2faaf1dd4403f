"""Twins of one ``Idempotency-Key`` refused by what the first of them spent.

Two copies of one request, the second of which looked the key up before the first
committed: the second then waits for the first (on the API key's row, the account's
balance) and checks the cap or the funds again, which now cover only the job the
first created. It must answer with that job, not 429 ``spend_cap_exceeded`` or 402
``insufficient_funds``: a client told "refused" would submit again and pay twice.

The interleaving is made, not hoped for. In one process, a twin's ``create`` lets
the first run to its commit before it opens its own transaction (SQLite and
PostgreSQL). Through a real coordinator on PostgreSQL, the test holds the API key's
row locked until every twin waits on it, as ``pg_stat_activity`` shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.orm import Session

from deai.client.sdk import Client
from deai.coordinator import admission, idempotency
from deai.coordinator.openai import keys
from deai.coordinator.service import Coordinator
from deai.core import batch, ledger, wire
from deai.core.errors import InsufficientFunds
from deai.store.models import Job
from tests.helpers import MODEL, SPEC, HandProvider, admit_one, audit_ok, funded, lines
from tests.netutil import Network
from tests.races import ENGINES, coordinator

OWNER = "ab" * 32
ESCROW = 5_000
PRICE = 1_000

# --- in one process, on SQLite and PostgreSQL ---------------------------------------------


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


Create = Callable[[idempotency.Hook | None], str]


def submitter(c: Coordinator, key: admission.KeyUse | None) -> Create:
    """``once``'s ``create`` for one job of ``ESCROW``: the route's transaction in small
    (hold the key's cap, escrow, write the job, then the hook)."""
    digest = c.blobs.put(b'{"custom_id": "r0", "input": ["hello"]}\n')

    def create(hook: idempotency.Hook | None) -> str:
        def tx(s: Session) -> str:
            job_id = admit_one(c, s, owner=OWNER, digest=digest, price=PRICE, escrow=ESCROW,
                               key=key)
            if hook is not None:
                hook(s, job_id)
            return job_id
        return c.db.run(tx)
    return create


def fund(c: Coordinator, amount: int) -> None:
    c.db.run(lambda s: c.settlement.faucet(s, OWNER, amount))


def available(c: Coordinator) -> int:
    with c.db.read() as s:
        return c.settlement.balance(s, ledger.acct(OWNER))


def jobs_of(c: Coordinator) -> int:
    with c.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Job)
                            .where(Job.owner == OWNER)) or 0)


def claim(key: str = "order-1", fingerprint: str = "f" * 64) -> idempotency.Claim:
    return idempotency.Claim(OWNER, key, "POST /api/jobs", fingerprint)


def late_twin(c: Coordinator, create: Create, first: list[tuple[str, bool]],
              first_claim: idempotency.Claim) -> Create:
    """A twin that has looked the key up and found nothing: the first runs to its
    commit now, and only then does this one's transaction begin."""
    def twin(hook: idempotency.Hook | None) -> str:
        first.append(idempotency.once(c, first_claim, create, lambda j: j))
        return create(hook)
    return twin


@pytest.mark.parametrize("limit", ["spend_cap", "balance"])
def test_a_twin_refused_by_what_the_first_spent_gets_its_job(c: Coordinator,
                                                             limit: str) -> None:
    """The twin's own cap or escrow check fails after the first committed; it answers
    with the first's job, replayed, and nothing more is escrowed."""
    key = None
    if limit == "spend_cap":  # funds for many jobs, a key's cap for one
        fund(c, 100 * ESCROW)
        out = keys.create(c, OWNER, wire.ApiKeyIn(name="one job", spend_cap=ESCROW))
        key = admission.KeyUse(out.id, "job")
    else:  # funds for exactly one job
        fund(c, ESCROW)
    before = available(c)
    create = submitter(c, key)
    first: list[tuple[str, bool]] = []
    got = idempotency.once(c, claim(), late_twin(c, create, first, claim()), lambda j: j)
    [(job_id, replayed)] = first
    assert not replayed
    assert got == (job_id, True)
    assert jobs_of(c) == 1
    assert before - available(c) == ESCROW


def test_a_failure_with_no_twin_behind_it_is_the_answer(c: Coordinator) -> None:
    """Looking again finds nothing: the request's own error stands, the key stays free,
    and its retry (now funded) runs afresh."""
    create = submitter(c, None)
    with pytest.raises(InsufficientFunds):
        idempotency.once(c, claim(), create, lambda j: j)
    assert jobs_of(c) == 0
    fund(c, ESCROW)
    job_id, replayed = idempotency.once(c, claim(), create, lambda j: j)
    assert not replayed and jobs_of(c) == 1
    assert idempotency.once(c, claim(), create, lambda j: j) == (job_id, True)


def test_a_twin_whose_key_went_to_another_request_is_told_so(c: Coordinator) -> None:
    """The same key, another body, committed first: the refused one hears 422
    ``idempotency_key_reused`` (what it would have heard a moment later), not 402."""
    fund(c, ESCROW)
    create = submitter(c, None)
    first: list[tuple[str, bool]] = []
    other = claim(fingerprint="0" * 64)
    with pytest.raises(idempotency.KeyReused):
        idempotency.once(c, claim(), late_twin(c, create, first, other), lambda j: j)
    assert [r for _, r in first] == [False] and jobs_of(c) == 1


# --- a real coordinator on PostgreSQL: twins wait on the key's row --------------------------


@pytest.fixture(scope="module")
def net(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("twins-pg"), module_pg_url, heartbeat_timeout=60.0,
                lease_ttl=120.0, verify=False)
    n.start_coordinator()
    HandProvider(n, price=PRICE)  # serves the model (never answers): jobs stay open
    yield n
    n.close()


TWINS = 3


def held_key_race(net: Network, key_id: str, send: Callable[[], httpx.Response]
                  ) -> list[httpx.Response]:
    """``TWINS`` copies of ``send`` while the test holds the API key's row locked: each
    has looked its idempotency key up (nothing yet) and waits in ``hold_cap``. Once all
    wait, the lock goes; the first commits, and the others check the cap again."""
    engine = create_engine(net.database_url)
    try:  # the pool outside the connection: a failure here lets go of the lock first
        with ThreadPoolExecutor(TWINS) as pool, engine.connect() as conn:
            tx = conn.begin()
            conn.execute(text("SELECT id FROM api_keys WHERE id = :k FOR UPDATE"),
                         {"k": key_id})
            futures = [pool.submit(send) for _ in range(TWINS)]
            deadline = time.monotonic() + 120  # a bound for a hang, not a timing
            while waiting(conn) < TWINS:
                assert time.monotonic() < deadline, "the twins never reached the key"
                assert not any(f.done() for f in futures), [
                    f.result().text for f in futures if f.done()]
                time.sleep(0.02)
            tx.commit()
        return [f.result() for f in futures]
    finally:
        engine.dispose()


def capped_key(c: Client, name: str, escrow: int) -> tuple[str, str]:
    """A new key of ``c``'s capped at ``escrow``: its id and its secret."""
    key = c.create_api_key(name, spend_cap=escrow)
    assert key.key is not None
    return key.id, key.key


def spent_once(c: Client, key_id: str, before: int, escrow: int) -> None:
    """``c`` paid one ``escrow`` since its balance was ``before``, all of it through the key
    ``key_id``; the books hold."""
    assert before - c.balance().available == escrow
    [k] = [k for k in c.api_keys() if k.id == key_id]
    assert k.spent == escrow
    audit_ok(c)


def waiting(conn: Connection) -> int:
    """Coordinator transactions waiting for a lock on ``api_keys`` (the test's own holds
    it and waits for nothing). PostgreSQL keeps one snapshot of the activity for a
    whole transaction: cleared before each look."""
    conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    return int(conn.execute(text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE '%api_keys%'")).scalar_one())


@pytest.mark.postgres
def test_job_twins_through_a_capped_key_get_one_job(net: Network) -> None:
    """POST /api/jobs with a bearer key capped at one job's escrow."""
    c = funded(net)
    body = json.dumps({"spec": SPEC, "input_digest": c.upload(lines(4)).digest})
    escrow = c.submit_job(SPEC, c.upload(lines(4)).digest).escrow
    before = c.balance().available
    key_id, secret = capped_key(c, "one job", escrow)

    def send() -> httpx.Response:
        return httpx.post(f"{net.url}/api/jobs", content=body, timeout=120,
                          headers={"authorization": f"Bearer {secret}",
                                   "content-type": "application/json",
                                   "Idempotency-Key": "cap-twin"})

    got = held_key_race(net, key_id, send)
    assert [r.status_code for r in got] == [201] * TWINS, [r.text[:200] for r in got]
    assert len({r.json()["id"] for r in got}) == 1
    assert sorted(r.headers.get("idempotent-replayed", "") for r in got) == \
        [""] + ["true"] * (TWINS - 1)
    spent_once(c, key_id, before, escrow)


@pytest.mark.postgres
def test_batch_twins_through_a_capped_key_get_one_batch(net: Network) -> None:
    """POST /v1/batches with a key capped at one batch's escrow."""
    c = funded(net)
    line = {"custom_id": "r0", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": "one short sentence"}}
    probe = c.create_api_key("probe").key
    assert probe is not None
    with httpx.Client(base_url=net.url, timeout=120,
                      headers={"Authorization": f"Bearer {probe}"}) as h:
        f = h.post("/v1/files", files={"file": ("in.jsonl", batch.dumps(line))},
                   data={"purpose": "batch"})
        assert f.status_code == 200, f.text
        req = {"input_file_id": f.json()["id"], "endpoint": "/v1/embeddings",
               "completion_window": "24h"}
        first = h.post("/v1/batches", json=req)
        assert first.status_code == 200, first.text
    [job] = c.jobs()
    escrow = job.escrow
    before = c.balance().available
    key_id, secret = capped_key(c, "one batch", escrow)

    def send() -> httpx.Response:
        return httpx.post(f"{net.url}/v1/batches", json=req, timeout=120,
                          headers={"Authorization": f"Bearer {secret}",
                                   "Idempotency-Key": "batch-twin"})

    got = held_key_race(net, key_id, send)
    assert [r.status_code for r in got] == [200] * TWINS, [r.text[:200] for r in got]
    assert len({r.json()["id"] for r in got}) == 1
    spent_once(c, key_id, before, escrow)

