"""``Idempotency-Key`` on the routes that create and escrow, on SQLite and PostgreSQL.

A retry with the same key by the same account gets what the first request
created and escrows nothing more, even when the retries race each other or the
coordinator restarted in between; the same key with another body is refused
with 422 naming the header; keys are per account, bounded, and expire.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import batch
from tests.helpers import MODEL, SPEC, HandProvider, audit_ok, lines
from tests.netutil import Network

LINE = {"custom_id": "r0", "method": "POST", "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": "one short sentence"}}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(tmp_path_factory.mktemp(f"idem-{request.param}"), url,
                heartbeat_timeout=60.0, lease_ttl=120.0, verify=False)
    n.start_coordinator()
    HandProvider(n)  # serves the model (never answers): jobs are admitted and stay open
    yield n
    n.close()


def post_job(net: Network, me: Identity, body: dict[str, Any], key: str | None,
             timeout: float = 60.0) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json", **me.headers("POST", "/api/jobs", raw,
                                                                     network=net.network_id)}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{net.url}/api/jobs", content=raw, headers=headers, timeout=timeout)


def owner(net: Network) -> tuple[Identity, Client, str]:
    me = Identity.generate()
    c = Client(net.url, me)
    c.faucet(100_000_000)
    return me, c, c.upload(lines(4)).digest


def test_retry_gets_the_same_job_and_escrows_once(net: Network) -> None:
    me, c, digest = owner(net)
    body = {"spec": SPEC, "input_digest": digest}
    before = c.balance().available
    first = post_job(net, me, body, "order-1")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    job = first.json()
    again = post_job(net, me, body, "order-1")
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == job["id"]
    assert [j.id for j in c.jobs()] == [job["id"]]
    assert before - c.balance().available == job["escrow"] > 0
    # The same key with another body: refused, naming the header; nothing is created.
    other = post_job(net, me, {**body, "spec": {**SPEC, "shard_size": 1}}, "order-1")
    assert other.status_code == 422, other.text
    err = other.json()["error"]
    assert err["code"] == "idempotency_key_reused" and err["field"] == "Idempotency-Key"
    assert len(c.jobs()) == 1
    assert before - c.balance().available == job["escrow"]
    # Without a key, or with a new one, a request is a new job.
    assert post_job(net, me, body, "order-2").json()["id"] != job["id"]
    assert post_job(net, me, body, None).status_code == 201
    assert len(c.jobs()) == 3
    audit_ok(c)


def test_keys_are_per_account_and_bounded(net: Network) -> None:
    a, ca, da = owner(net)
    b, cb, db = owner(net)
    ja = post_job(net, a, {"spec": SPEC, "input_digest": da}, "shared-key").json()["id"]
    jb = post_job(net, b, {"spec": SPEC, "input_digest": db}, "shared-key").json()["id"]
    assert ja != jb
    assert [j.id for j in cb.jobs()] == [jb]
    raw = json.dumps({"spec": SPEC, "input_digest": da}).encode()
    for bad in ("x" * 256, "tab\there", ""):
        r = httpx.post(f"{net.url}/api/jobs", content=raw, timeout=30, headers={
            **a.headers("POST", "/api/jobs", raw, network=net.network_id),
            "content-type": "application/json",
            "Idempotency-Key": bad})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "Idempotency-Key"
    assert len(ca.jobs()) == 1


def test_concurrent_retries_make_one_job(net: Network) -> None:
    me, c, digest = owner(net)
    body = {"spec": SPEC, "input_digest": digest}
    before = c.balance().available
    n = 8
    start = threading.Barrier(n)

    def send(_: int) -> httpx.Response:
        start.wait()
        return post_job(net, me, body, "racing-key", timeout=120.0)

    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(send, range(n)))
    assert all(r.status_code == 201 for r in got), [r.text for r in got]
    ids = {r.json()["id"] for r in got}
    assert len(ids) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in got) == n - 1
    (job_id,) = ids
    assert [j.id for j in c.jobs()] == [job_id]
    assert before - c.balance().available == c.job(job_id).escrow
    audit_ok(c)


def test_a_key_survives_a_restart(net: Network) -> None:
    me, c, digest = owner(net)
    body = {"spec": SPEC, "input_digest": digest}
    job_id = post_job(net, me, body, "before-restart").json()["id"]
    assert net.coordinator is not None
    net.coordinator.stop()
    net.start_coordinator()
    again = post_job(net, me, body, "before-restart")
    assert again.status_code == 201 and again.json()["id"] == job_id
    assert [j.id for j in c.jobs()] == [job_id]


def test_v1_files_and_batches(net: Network) -> None:
    me, c, _ = owner(net)
    key = c.create_api_key("idem").key
    assert key is not None
    data = batch.dumps(LINE)
    with httpx.Client(base_url=net.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as h:
        def upload(k: str, payload: bytes = data) -> httpx.Response:
            return h.post("/v1/files", files={"file": ("in.jsonl", payload)},
                          data={"purpose": "batch"}, headers={"Idempotency-Key": k})

        f1, f2 = upload("file-1"), upload("file-1")
        assert f1.status_code == f2.status_code == 200, f1.text
        assert f1.json()["id"] == f2.json()["id"] and f2.headers["idempotent-replayed"]
        assert len(h.get("/v1/files").json()["data"]) == 1
        clash = upload("file-1", data + data)
        assert clash.status_code == 422, clash.text
        assert clash.json()["error"]["param"] == "Idempotency-Key"

        before = c.balance().available
        req = {"input_file_id": f1.json()["id"], "endpoint": "/v1/embeddings",
               "completion_window": "24h"}
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda _: h.post("/v1/batches", json=req, headers={
                "Idempotency-Key": "batch-1"}), range(4)))
        assert all(r.status_code == 200 for r in got), [r.text for r in got]
        assert len({r.json()["id"] for r in got}) == 1
        assert len(h.get("/v1/batches").json()["data"]) == 1
        assert len(c.jobs()) == 1
        assert before - c.balance().available == c.jobs()[0].escrow
        clash = h.post("/v1/batches", json={**req, "metadata": {"x": "y"}},
                       headers={"Idempotency-Key": "batch-1"})
        assert clash.status_code == 422 and clash.json()["error"]["param"] == "Idempotency-Key"
    audit_ok(c)


def test_a_key_expires(tmp_path_factory: pytest.TempPathFactory) -> None:
    n = Network(tmp_path_factory.mktemp("idem-ttl"), heartbeat_timeout=60.0, verify=False,
                extra=("--idempotency-ttl", "1"))
    n.start_coordinator()
    try:
        HandProvider(n)
        me, c, digest = owner(n)
        body = {"spec": SPEC, "input_digest": digest}
        first = post_job(n, me, body, "short-lived").json()["id"]
        seen = {first}
        end = time.time() + 120
        while len(seen) == 1:  # replayed while the key lives, a new job once it expired
            assert time.time() < end, "the key never expired"
            time.sleep(0.5)
            seen.add(post_job(n, me, body, "short-lived").json()["id"])
        assert len(c.jobs()) == 2
    finally:
        n.close()
