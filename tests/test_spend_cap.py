"""An API key's spend cap holds under concurrency, on SQLite and on PostgreSQL.

Requests of every kind that spends through a key (``/v1/embeddings``,
``/v1/batches``, and native jobs submitted with the bearer key) are sent at
once; the cap is held in the transaction that escrows, under a row lock on the
key, so the escrow committed through the key never passes the cap.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import batch, kinds, ledger
from deai.core.money import cost_for_units
from tests.helpers import MODEL, HandProvider, audit_ok
from tests.netutil import Network

PRICE = 1000
EACH = 6  # requests of each kind
LINE = {"custom_id": "r0", "method": "POST", "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": "the same short sentence"}}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(tmp_path_factory.mktemp(f"cap-{request.param}"), url, heartbeat_timeout=30.0,
                lease_ttl=120.0, verify=False)
    n.start_coordinator()
    yield n
    n.close()


def one_request_cost() -> int:
    """What each request escrows: the same one-line input at the only offer's price."""
    kind = kinds.get("embeddings")
    spec = kind.parse_spec({"kind": "embeddings", "model": MODEL, "max_price": PRICE})
    (shard,) = kind.split(spec, batch.dumps(LINE))
    return cost_for_units(shard.max_units, PRICE)


def test_concurrent_spending_never_passes_the_cap(net: Network) -> None:
    provider = HandProvider(net, price=PRICE)  # serves the model, never answers
    me = Identity.generate()
    owner = Client(net.url, me)
    owner.faucet(100_000_000)
    each = one_request_cost()
    cap = 4 * each
    key = owner.create_api_key("capped", spend_cap=cap).key
    assert key is not None
    data = batch.dumps(LINE)
    digest = owner.upload(data).digest
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=net.url, headers=auth, timeout=60) as h:
        files = [h.post("/v1/files", files={"file": ("in.jsonl", data)},
                        data={"purpose": "batch"}).json()["id"] for _ in range(EACH)]
    start = threading.Barrier(3 * EACH)

    def send(kind: str, i: int) -> int:
        with httpx.Client(base_url=net.url, headers=auth, timeout=8) as h:
            start.wait()
            try:
                if kind == "embeddings":
                    r = h.post("/v1/embeddings", json={"model": MODEL, "input": LINE["body"][
                        "input"]})
                elif kind == "batch":
                    r = h.post("/v1/batches", json={"input_file_id": files[i],
                                                    "endpoint": "/v1/embeddings",
                                                    "completion_window": "24h"})
                else:
                    spec = {"kind": "embeddings", "model": MODEL, "max_price": PRICE}
                    r = h.post("/api/jobs", json={"spec": spec, "input_digest": digest})
            except httpx.ReadTimeout:
                return 0  # admitted and waiting for an answer that never comes
            return r.status_code

    with ThreadPoolExecutor(3 * EACH) as pool:
        codes = list(pool.map(lambda a: send(*a), [(k, i) for k in ("embeddings", "batch", "job")
                                                    for i in range(EACH)]))
    refused = codes.count(429)
    assert all(code in (0, 200, 201, 429) for code in codes), codes
    assert refused == 3 * EACH - 4, codes  # exactly the cap's worth got in

    entries = [ledger.Entry.from_dict(e) for e in owner.journal(0, 1000).entries]
    escrowed = sum(e.body["amount"] for e in entries
                   if e.kind == "escrow" and e.body["owner"] == me.id)
    assert escrowed <= cap, f"{escrowed} µ committed against a cap of {cap} µ"
    assert escrowed == 4 * each
    audit_ok(owner)
    provider.quit()


def test_a_refused_request_moves_no_money(net: Network) -> None:
    HandProvider(net, price=PRICE)
    owner = Client(net.url, Identity.generate())
    owner.faucet(10_000_000)
    key = owner.create_api_key("tiny", spend_cap=one_request_cost() - 1).key
    before = owner.balance().available
    digest = owner.upload(batch.dumps(LINE)).digest
    r = httpx.post(f"{net.url}/api/jobs", headers={"Authorization": f"Bearer {key}"},
                   json={"spec": {"kind": "embeddings", "model": MODEL, "max_price": PRICE},
                         "input_digest": digest}, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == "spend_cap_exceeded"
    assert owner.balance().available == before
    assert json.loads(r.text)["error"]["details"]["spend_cap"] == one_request_cost() - 1


def test_an_account_holds_a_bounded_number_of_keys_even_when_it_asks_at_once(
        net: Network) -> None:
    """Keys cost nothing to mint, so an account holds at most ``MAX_LIVE`` unrevoked ones:
    creations sent at once never pass it (the count is held per account), the rest are
    refused naming ``api_keys`` with nothing written. A listing shows every live key and
    only the latest revoked ones, each with what it committed."""
    from deai.coordinator.openai.keys import LISTED_REVOKED, MAX_LIVE
    from deai.core.errors import DeAIError

    me = Client(net.url, Identity.generate())

    def mint(i: int) -> int:
        try:
            me.create_api_key(f"k{i}")
            return 201
        except DeAIError as exc:
            assert exc.field == "api_keys", exc
            return exc.status

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(mint, range(MAX_LIVE + 12)))
    assert codes.count(201) == MAX_LIVE and codes.count(409) == 12
    listed = me.api_keys()
    assert len(listed) == MAX_LIVE and all(k.revoked_at is None for k in listed)
    me.revoke_api_key(listed[0].id)
    assert mint(0) == 201  # a revoked key frees its place
    assert mint(1) == 409
    for k in me.api_keys():
        if k.revoked_at is None:
            me.revoke_api_key(k.id)
    listed = me.api_keys()
    assert len(listed) == LISTED_REVOKED and all(k.revoked_at is not None for k in listed)
    assert all(k.spent == 0 for k in listed)


def test_a_nul_in_a_name_is_refused_or_dropped_never_a_500(net: Network) -> None:
    """PostgreSQL's text columns refuse NUL: a key's name with one was a 500 after the
    request was accepted. A signed body's text fields refuse it naming the field; a /v1
    file's name (multipart, chosen by the caller's library) keeps its printable part."""
    from deai.core.errors import DeAIError

    me = Client(net.url, Identity.generate())
    with pytest.raises(DeAIError) as refused:
        me.request("POST", "/api/api-keys", json_body={"name": "bad\x00name"})
    assert (refused.value.status, refused.value.field) == (422, "name")
    key = me.create_api_key("good").key
    with httpx.Client(base_url=net.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as h:
        body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                b'--b\r\nContent-Disposition: form-data; name="file"; '
                b'filename="in\x00put.jsonl"\r\n\r\n' + batch.dumps(LINE) + b"\r\n--b--\r\n")
        r = h.post("/v1/files", content=body,
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 200, r.text
        assert r.json()["filename"] == "input.jsonl"
