"""Datasets through a real coordinator, on SQLite and on PostgreSQL.

An owner publishes a dataset encrypted under its own key; its public face shows
terms and uses, never the content or a key. A job on it that fails a term is
refused naming the term and nothing moves; a job within the terms pays the
owner once, in the transaction that escrows it. The owner's key release reaches
only the providers leased for the job, and a provider decrypts the rows with
it; revocation stops the next job and every later release. The audit holds.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from deai.client import datasets
from deai.client import sealed as crypto
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator.datasets import HOLD_PERIOD_S
from deai.core import datasets as D
from deai.core import ledger, wire
from deai.core import wire_datasets as W
from deai.core.errors import DeAIError
from deai.core.kinds import train_data
from tests.helpers import HandProvider, audit_ok, journal
from tests.netutil import Network

SPEC: dict[str, Any] = {"kind": "train", "model": "mlp-digits", "max_price": 1000,
                        "deadline": 600, "epochs": 1, "batch_size": 16, "seed": 3,
                        "checkpoint_every": 4}
PRICE = 250_000


def rows(n: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).round(3)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    return "\n".join(",".join(f"{v:g}" for v in (*r, int(c))) for r, c in
                     zip(x, y, strict=True)).encode() + b"\n"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = request.getfixturevalue("module_pg_url") if request.param == "postgresql" else ""
    n = Network(tmp_path_factory.mktemp(f"datasets-{request.param}"), url,
                heartbeat_timeout=30.0, lease_ttl=120.0)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def refused(call: Any, status: int, field: str) -> None:
    with pytest.raises(DeAIError) as exc:
        call()
    assert (exc.value.status, exc.value.field) == (status, field), exc.value


def terms(**kw: Any) -> D.Terms:
    return D.Terms(**{"price_per_use": PRICE, "allow": ("train",), **kw})


def test_publish_lists_public_metadata_only(net: Network) -> None:
    owner = Client(net.url, Identity.generate())
    data = rows()
    ds = datasets.publish(owner, data, "public rows", terms(max_uses=5))
    assert ds.train is not None and ds.train["n"] == 40 and ds.size == len(data)
    public = {d.id: d for d in datasets.listing(Client(net.url))}[ds.id]
    assert public.terms == ds.terms and public.uses == 0 and public.owner == owner._me()
    face = Client(net.url).request("GET", f"/api/datasets/{ds.id}").json()
    assert "blob_digest" not in face and "owner_key" not in face
    explorer = Client(net.url).request("GET", "/api/explorer/datasets").json()["datasets"]
    assert {d["id"] for d in explorer} >= {ds.id}
    assert all("owner_key" not in d and "blob_digest" not in d for d in explorer)
    # The coordinator keeps ciphertext: no row of the file is in the blob it stores.
    mine = datasets.show(owner, ds.id)
    assert isinstance(mine, W.DatasetPrivateOut)
    blob = owner.request("GET", f"/api/datasets/{ds.id}/content").content
    assert data.splitlines()[0] not in blob
    key = crypto.unwrap(mine.owner_key or "", owner.identity)  # type: ignore[arg-type]
    assert datasets.decrypt(blob, ds.id, key) == data
    stranger = Client(net.url, Identity.generate())
    refused(lambda: stranger.request("GET", f"/api/datasets/{ds.id}/content"), 404, "dataset")
    refused(lambda: stranger.request("GET", f"/api/datasets/{ds.id}/uses"), 404, "dataset")
    refused(lambda: datasets.revoke(stranger, ds.id), 403, None)  # type: ignore[arg-type]
    # Bad publications: 4xx naming the field.
    refused(lambda: datasets.publish(owner, b"a,b\n1,x\n", "bad", terms()), 422,
            "dataset[line 2]")
    past = W.DatasetIn(id=datasets.new_id(), name="old", blob_digest=mine.blob_digest,
                       size=1, owner_key="AAAA", terms=terms(expires_at=1.0),
                       train=W.TrainInfo(**ds.train))
    refused(lambda: owner._post("/api/datasets", past, W.DatasetOut), 422, "terms.expires_at")
    theirs = past.model_copy(update={"terms": terms()})
    refused(lambda: stranger._post("/api/datasets", theirs, W.DatasetOut), 404, "blob_digest")


def test_a_user_never_runs_its_own_job_on_a_dataset(net: Network) -> None:
    """A dataset's key goes to the providers of its jobs: a user registered as the
    cheapest trainer on its own account took its own job's lease, the owner's serve loop
    released the key to it, and it read every row for one royalty. The matcher now passes
    over the job's owner, and the owner's release refuses it."""
    from deai.client.keys import Identity

    owner = Client(net.url, Identity.generate())
    ds = datasets.publish(owner, rows(seed=3), "not for the user's eyes", terms())
    me = HandProvider(net, price=1, offer=("train", "mlp-digits"))  # the user, cheapest
    other = HandProvider(net, price=500, offer=("train", "mlp-digits"))
    user = me.c
    user.faucet(50_000_000)
    job = datasets.submit(user, SPEC, ds.id)
    prov, leased = take(user, other.c)
    assert prov is other.c and leased.job_id == job.id
    waiting = owner.request("GET", "/api/datasets/pending").json()["pending"]
    assert [p["providers"] for p in waiting if p["job_id"] == job.id] == [[other.id]]
    refused(lambda: owner.request("POST", f"/api/datasets/{ds.id}/release", json_body={
        "job_id": job.id, "keys": {me.id: "AAAA"}}), 403, "keys")
    user.cancel_job(job.id)


def test_terms_refusals_royalty_release_and_revocation(net: Network) -> None:
    owner = Client(net.url, Identity.generate())
    user = Client(net.url, Identity.generate())
    user.faucet(100_000_000)
    data = rows(seed=1)
    ds = datasets.publish(owner, data, "rows", terms(max_uses=2))
    before = user.balance().available

    # Every failed term: 422 naming it, nothing moves, no use is counted.
    refused(lambda: datasets.submit(user, SPEC, ds.id, price=PRICE - 1), 422,
            "spec.dataset_terms.price_per_use")
    emb = owner._post("/api/datasets", W.DatasetIn(
        id=datasets.new_id(), name="emb only", blob_digest=datasets.show(owner, ds.id)
        .blob_digest, size=10, owner_key="AAAA",  # type: ignore[attr-defined]
        terms=D.Terms(price_per_use=1, allow=("embeddings",))), W.DatasetOut)
    refused(lambda: datasets.submit(user, SPEC, emb.id), 422, "spec.dataset_terms.allow")
    soon = datasets.publish(owner, data, "soon", terms(expires_at=time.time() + 3))
    while time.time() < (soon.terms.expires_at or 0) + 1:  # wall clock only moves forward
        time.sleep(0.2)
    refused(lambda: datasets.submit(user, SPEC, soon.id), 422, "spec.dataset_terms.expires_at")
    no_terms = {**SPEC, "dataset": "file", "dataset_id": ds.id}
    refused(lambda: user.submit_job(no_terms, user.upload(b"{}").digest), 422,
            "spec.dataset_terms.dataset_terms")
    assert user.balance().available == before
    assert datasets.show(owner, ds.id).uses == 0

    # Within the terms, once a trainer is online: the escrow holds the royalty, unpaid
    # until the job completes (a model was made from the rows).
    a, b = (HandProvider(net, price=500, offer=("train", "mlp-digits")).c for _ in range(2))
    owner_before = owner.balance().available
    job = datasets.submit(user, SPEC, ds.id)
    assert job.cost == 0 and job.escrow > PRICE
    assert owner.balance().available == owner_before
    assert user.balance().available == before - job.escrow
    assert not [e for e in journal(user) if e.kind == "royalty"]

    # The lease carries the public summary only; the key waits for the owner.
    prov, leased = take(a, b)
    outsider = b if prov is a else a
    assert leased.job_id == job.id
    shard = payload(leased, prov)
    assert shard["dataset"] == D.SOURCE + ds.id and shard["x"] is None
    refused(lambda: datasets.rows(prov, prov.identity, ds.id, job.id),  # type: ignore[arg-type]
            409, "key")
    pending = owner.request("GET", "/api/datasets/pending").json()["pending"]
    assert [(p["job_id"], p["providers"]) for p in pending] == [(job.id, [prov._me()])]
    refused(lambda: owner.request("POST", f"/api/datasets/{ds.id}/release", json_body={
        "job_id": job.id, "keys": {outsider._me(): "AAAA"}}), 422, "keys")
    assert datasets.serve_once(owner) == [(job.id, [prov._me()])]
    assert datasets.serve_once(owner) == []  # released once
    # A release pays nothing (the coordinator cannot tell a usable key from garbage):
    # the royalty waits for the job to complete.
    assert not [e for e in journal(user) if e.kind == "royalty"]
    assert owner.balance().available == owner_before and user.job(job.id).cost == 0
    x, y = datasets.rows(prov, prov.identity, ds.id, job.id)  # type: ignore[arg-type]
    xa, ya, info = train_data.parse_file(data)
    assert (x, y) == train_data.pack(xa, ya) and info.sha256 == shard["data_sha256"]
    refused(lambda: datasets.rows(outsider, outsider.identity, ds.id,  # type: ignore[arg-type]
                                  job.id), 404, "job")
    refused(lambda: outsider.request("GET", f"/api/datasets/{ds.id}/content"), 404, "dataset")
    user.cancel_job(job.id)
    settled(user, job.id, 0)  # it never completed: the royalty came back, the use uncounted
    assert (datasets.show(owner, ds.id).uses, datasets.show(owner, ds.id).royalties) == (0, 0)
    refused(lambda: prov.request("GET", f"/api/datasets/{ds.id}/content"), 404, "dataset")

    # Uses are listed to the owner; max_uses counts; revocation stops new releases and
    # new jobs, not a job already let in.
    second = datasets.submit(user, SPEC, ds.id)
    third = datasets.submit(user, SPEC, ds.id)
    refused(lambda: datasets.submit(user, SPEC, ds.id), 422, "spec.dataset_terms.max_uses")
    listed = datasets.uses(owner, ds.id)
    assert [u.job_id for u in listed] == [second.id, third.id]
    pages, after = [], 0  # a page at a time: one use each, then the end
    while after is not None:
        page = owner.request("GET", f"/api/datasets/{ds.id}/uses",
                             params={"after": after, "limit": 1}).json()
        pages.append([u["job_id"] for u in page["uses"]])
        after = page["next_after"]
    assert pages == [[second.id], [third.id]]
    refused(lambda: owner.request("GET", f"/api/datasets/{ds.id}/uses",
                                  params={"limit": 1000}), 422, "query.limit")
    other = datasets.publish(owner, data, "to revoke", terms())
    datasets.revoke(owner, other.id)
    spent = user.balance().available
    refused(lambda: datasets.submit(user, SPEC, other.id), 422, "spec.dataset_terms.revoked")
    assert user.balance().available == spent
    holder, first = take(a, b)
    late, left = take(a, b)
    assert left.job_id != first.job_id
    key = datasets._key(datasets.show(owner, ds.id), owner.identity)  # type: ignore[arg-type]
    owner.request("POST", f"/api/datasets/{ds.id}/release", json_body={
        "job_id": first.job_id, "keys": {holder._me(): crypto.wrap(key, holder._me())}})
    datasets.revoke(owner, ds.id)
    assert datasets.serve_once(owner) == []  # nothing is released after revocation
    # The key released before it is still served, with the rows, to that job's provider.
    assert datasets.rows(holder, holder.identity, ds.id,  # type: ignore[arg-type]
                         first.job_id) == (x, y)
    refused(lambda: owner.request("POST", f"/api/datasets/{ds.id}/release", json_body={
        "job_id": left.job_id, "keys": {late._me(): "AAAA"}}), 409, "dataset")
    refused(lambda: datasets.rows(late, late.identity, ds.id,  # type: ignore[arg-type]
                                  left.job_id), 403, "dataset")
    for j in (second, third):
        user.cancel_job(j.id)
        settled(user, j.id, 0)
    assert datasets.uses(owner, ds.id) == []
    assert not [e for e in journal(user) if e.kind == "royalty"]
    audit_ok(user)
    # The explorer shows uses and royalties paid, and still no content or key.
    row = {d["id"]: d for d in Client(net.url).request(
        "GET", "/api/explorer/datasets").json()["datasets"]}[ds.id]
    assert (row["uses"], row["royalties"], row["terms"]["max_uses"]) == (0, 0, 2)
    assert row["revoked_at"] is not None and set(row) >= {"name", "owner", "size", "train"}
    assert not {"blob_digest", "owner_key"} & set(row)


def test_a_dataset_is_deleted_once_no_job_using_it_runs(net: Network) -> None:
    """While a job on it runs (and a provider holds its lease) the owner's delete is 409
    ``in_use`` and nothing changes; once the job ended, the dataset is deleted: revoked,
    gone from the lists, its content and key served to nobody, its row still shown."""
    owner = Client(net.url, Identity.generate())
    user = Client(net.url, Identity.generate())
    user.faucet(100_000_000)
    ds = datasets.publish(owner, rows(seed=2), "to delete", terms())
    a, b = (HandProvider(net, price=500, offer=("train", "mlp-digits")).c for _ in range(2))
    job = datasets.submit(user, SPEC, ds.id)
    prov, leased = take(a, b)
    assert leased.job_id == job.id
    refused(lambda: datasets.delete(Client(net.url, Identity.generate()), ds.id), 403,
            None)  # type: ignore[arg-type]
    with pytest.raises(DeAIError) as busy:
        datasets.delete(owner, ds.id)
    assert (busy.value.status, busy.value.field) == (409, "dataset")
    assert busy.value.details["running"] == 1 and busy.value.details["leased"] == 1
    still = datasets.show(owner, ds.id)
    assert still.revoked_at is None and still.deleted_at is None
    assert datasets.serve_once(owner) == [(job.id, [prov._me()])]  # the job goes on

    user.cancel_job(job.id)
    settled(user, job.id, 0)
    gone = datasets.delete(owner, ds.id)
    assert gone.deleted_at is not None and gone.revoked_at is not None
    assert datasets.delete(owner, ds.id).deleted_at == gone.deleted_at  # once is enough
    assert ds.id not in {d.id for d in datasets.listing(Client(net.url))}
    assert ds.id not in {d["id"] for d in Client(net.url).request(
        "GET", "/api/explorer/datasets").json()["datasets"]}
    face = Client(net.url).request("GET", f"/api/datasets/{ds.id}").json()
    assert face["deleted_at"] == gone.deleted_at  # its history stays readable
    refused(lambda: owner.request("GET", f"/api/datasets/{ds.id}/content"), 404, "dataset")
    refused(lambda: datasets.rows(prov, prov.identity, ds.id,  # type: ignore[arg-type]
                                  job.id), 404, "job")
    refused(lambda: datasets.submit(user, SPEC, ds.id), 422, "spec.dataset_terms.revoked")
    audit_ok(user)


def test_an_owner_serving_only_trusted_providers_refuses_the_others(net: Network) -> None:
    """``serve --trust``: a provider not in the owner's list is refused, not left waiting
    for a key that never comes (holding the job's use and its own slot until the job's
    deadline); the task goes to another provider, which is released the key."""
    owner = Client(net.url, Identity.generate())
    user = Client(net.url, Identity.generate())
    user.faucet(100_000_000)
    ds = datasets.publish(owner, rows(seed=3), "trusted only", terms(max_uses=1))
    a, b = (HandProvider(net, price=500, offer=("train", "mlp-digits")).c for _ in range(2))
    job = datasets.submit(user, SPEC, ds.id)
    prov, leased = take(a, b)
    other = b if prov is a else a
    assert leased.job_id == job.id
    url = f"/api/datasets/{ds.id}/refuse"
    refused(lambda: user.request("POST", url, json_body={
        "job_id": job.id, "providers": [prov._me()]}), 403, None)  # type: ignore[arg-type]
    refused(lambda: datasets.refuse(owner, ds.id, job.id, [other._me()]), 422, "providers")
    refused(lambda: owner.request("POST", url, json_body={"job_id": job.id, "providers": []}),
            422, "providers")
    refused(lambda: owner.request("POST", url, json_body={
        "job_id": job.id, "providers": ["f" * 65]}), 422, "providers.0")
    refused(lambda: datasets.refuse(owner, ds.id, "job_nope", [prov._me()]), 404, "job_id")

    trust = frozenset({other._me()})
    done = datasets.serve_pass(owner, trust=trust)
    assert (done.released, done.refused) == ([], [(job.id, [prov._me()])])
    assert prov.heartbeat([leased.id]).drop == [leased.id]  # its agent drops the lease
    again, lease2 = take(other)
    assert (again, lease2.job_id) == (other, job.id)
    assert datasets.serve_pass(owner, trust=trust).released == [(job.id, [other._me()])]
    refused(lambda: datasets.refuse(owner, ds.id, job.id, [other._me()]), 409, "providers")
    user.cancel_job(job.id)
    settled(user, job.id, 0)


def test_a_dataset_names_the_only_providers_its_jobs_run_on(net: Network) -> None:
    """``providers`` at publication, ``PUT /api/datasets/{id}/providers`` after: the
    matcher places the dataset's jobs on those only, however cheap the others; the list
    is public (a buyer sees where its job will run)."""
    owner = Client(net.url, Identity.generate())
    user = Client(net.url, Identity.generate())
    user.faucet(100_000_000)
    cheap = HandProvider(net, price=1, offer=("train", "mlp-digits"))
    dear = HandProvider(net, price=500, offer=("train", "mlp-digits"))
    ds = datasets.publish(owner, rows(seed=5), "named providers", terms(),
                          frozenset({dear.id}))
    assert datasets.show(Client(net.url), ds.id).providers == [dear.id]
    url = f"/api/datasets/{ds.id}/providers"
    refused(lambda: user.request("PUT", url, json_body={"providers": [cheap.id]}), 403, None)
    refused(lambda: owner.request("PUT", url, json_body={"providers": ["F" * 64]}), 422,
            "providers.0")
    refused(lambda: owner.request("PUT", url, json_body={"providers": []}), 422, "providers")
    refused(lambda: owner.request("PUT", url, json_body={}), 422, "providers")
    assert datasets.show(Client(net.url), ds.id).providers == [dear.id]  # unchanged

    job = datasets.submit(user, SPEC, ds.id)
    prov, leased = take(cheap.c, dear.c)  # the cheap one asks first, every time
    assert (prov, leased.job_id) == (dear.c, job.id)
    # The owner names the cheap one instead and refuses the lease it no longer trusts.
    assert datasets.set_providers(owner, ds.id, frozenset({cheap.id})).providers == [cheap.id]
    assert datasets.refuse(owner, ds.id, job.id, [dear.id]) == [dear.id]
    again, lease2 = take(dear.c, cheap.c)
    assert (again, lease2.job_id) == (cheap.c, job.id)
    assert datasets.set_providers(owner, ds.id, None).providers is None
    user.cancel_job(job.id)
    settled(user, job.id, 0)


def settled(c: Client, job_id: str, royalty: int) -> None:
    """A job on a dataset that ended: ``royalty`` paid (it completed), or else the hold
    fee of a scarce use for the seconds it sat queued (a few here), and the rest of its
    escrow came back."""
    rep = audit_ok(c)
    job = c.job(job_id)
    held = held_fee(c, job_id)
    assert 0 <= held <= PRICE * 300 // HOLD_PERIOD_S
    assert job.cost + job.refunded == job.escrow and job.cost == royalty + held
    assert rep.balances.get(ledger.escrow(job_id), 0) == 0


def held_fee(c: Client, job_id: str) -> int:
    """The hold fee the job paid (``datasets.hold_fee``), from the journal."""
    return sum(e.body["amount"] for e in journal(c)
               if e.kind == "hold_fee" and e.body["job"] == job_id)


def take(*providers: Client) -> tuple[Client, wire.AssignmentOut]:
    """The first lease any of ``providers`` is handed, and who got it."""
    end = time.time() + 120
    while time.time() < end:
        for p in providers:
            p.heartbeat([])
            got = p.poll(wait=1.0).assignments
            if got:
                return p, got[0]
    raise AssertionError("no lease placed")


def payload(a: wire.AssignmentOut, prov: Client) -> dict[str, Any]:
    raw = base64.b64decode(a.input_b64) if a.input_b64 else prov.download(a.input_digest)
    out: dict[str, Any] = json.loads(raw)
    return out


def test_ciphertext_binds_dataset_and_key() -> None:
    """A dataset's ciphertext does not open with another dataset's id or another key."""
    key = b"k" * 32
    blob = datasets.encrypt(b"1,2,0\n", "ds_" + "a" * 24, key)
    assert datasets.decrypt(blob, "ds_" + "a" * 24, key) == b"1,2,0\n"
    with pytest.raises(crypto.SealError):
        datasets.decrypt(blob, "ds_" + "b" * 24, key)
    with pytest.raises(crypto.SealError):
        datasets.decrypt(blob, "ds_" + "a" * 24, b"j" * 32)


def test_refusal_names_the_first_failed_term() -> None:
    t = terms(expires_at=100.0, max_uses=3)
    ok = D.Accepted(price_per_use=PRICE, allow=("train",))
    assert D.refusal(t, ok, "train", 50.0, False, 2) is None
    cases = [((t, ok, "train", 50.0, True, 0), "revoked"),
             ((t, ok, "train", 100.0, False, 0), "expires_at"),
             ((t, ok, "embeddings", 50.0, False, 0), "allow"),
             ((t, None, "train", 50.0, False, 0), "dataset_terms"),
             ((t, D.Accepted(price_per_use=PRICE + 1, allow=("train",)), "train", 50.0, False,
               0), "price_per_use"),
             ((t, D.Accepted(price_per_use=PRICE, allow=("train", "embeddings")), "train",
               50.0, False, 0), "allow"),
             ((t, ok, "train", 50.0, False, 3), "max_uses")]
    for args, term in cases:
        got = D.refusal(*args)  # type: ignore[arg-type]
        assert got is not None and got[0] == term, (args, got)
        assert D.field_of(term) == f"spec.dataset_terms.{term}"
