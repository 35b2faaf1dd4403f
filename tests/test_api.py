"""The coordinator's API against a real uvicorn process, on SQLite and on PostgreSQL.

Providers here are driven by hand through the SDK (no model), so each rule of
the protocol can be exercised exactly: auth, bad input that moves no money,
leases that expire, late results, payment exactly once, and the audit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import auth, ledger, wire
from deai.core.errors import (
    AuthError,
    Conflict,
    DeAIError,
    Forbidden,
    InsufficientFunds,
    InvalidInput,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    UnknownModel,
)
from tests.helpers import (  # noqa: F401 - re-exported for older imports
    MODEL,
    SPEC,
    HandProvider,
    audit_ok,
    funded,
    head,
    lines,
)
from tests.netutil import Network


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(tmp_path_factory.mktemp(f"api-{request.param}"), url, heartbeat_timeout=2.0,
                lease_ttl=30.0, max_upload_bytes=200_000, verify=False)
    n.start_coordinator()
    yield n
    n.close()


# --- identity ----------------------------------------------------------------------------

def test_unsigned_bad_stale_and_replayed_requests_are_refused(net: Network) -> None:
    body = json.dumps({"amount": 5}).encode()
    r = httpx.post(f"{net.url}/api/faucet", content=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"

    me, nid = Identity.generate(), net.network_id
    hdr = {**me.headers("POST", "/api/faucet", body, network=nid),
           "content-type": "application/json"}
    bad = dict(hdr, **{auth.HEADER_SIG: "00" * 64})
    assert httpx.post(f"{net.url}/api/faucet", content=body, headers=bad).status_code == 401

    other_body = json.dumps({"amount": 6}).encode()  # signature over different bytes
    r = httpx.post(f"{net.url}/api/faucet", content=other_body, headers=hdr)
    assert r.status_code == 401

    ok = httpx.post(f"{net.url}/api/faucet", content=body, headers=hdr)
    assert ok.status_code == 200
    replay = httpx.post(f"{net.url}/api/faucet", content=body, headers=hdr)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]["message"]

    stale = {**me.headers("POST", "/api/faucet", body, network=nid),
             "content-type": "application/json"}
    stale[auth.HEADER_TS] = f"{time.time() - 3600:.3f}"
    stale[auth.HEADER_SIG] = me.sign(auth.message("POST", "/api/faucet", body,
                                                  stale[auth.HEADER_TS],
                                                  stale[auth.HEADER_NONCE], network=nid))
    r = httpx.post(f"{net.url}/api/faucet", content=body, headers=stale)
    assert r.status_code == 401 and "stale" in r.json()["error"]["message"]
    assert Client(net.url).balance(me.id).available == 5


def test_a_key_acts_only_on_its_own_account(net: Network) -> None:
    HandProvider(net)
    alice, mallory = funded(net), funded(net)
    job = alice.submit_job(SPEC, alice.upload(lines(2)).digest)
    with pytest.raises(Forbidden):
        mallory.cancel_job(job.id)
    assert alice.cancel_job(job.id).status == "cancelled"


# --- bad input moves no money ------------------------------------------------------------

@pytest.mark.parametrize("spec, exc, field", [
    ({**SPEC, "max_price": -1}, InvalidInput, "spec.max_price"),
    ({**SPEC, "kind": "mining"}, InvalidInput, "spec.kind"),
    ({**SPEC, "shard_size": 0}, InvalidInput, "spec.shard_size"),
    ({**SPEC, "colour": "red"}, InvalidInput, "spec.colour"),
    ({**SPEC, "model": "gpt-7"}, UnknownModel, "spec.model"),
])
def test_malformed_spec_names_the_field(net: Network, spec: dict, exc: type, field: str
                                        ) -> None:
    c = funded(net)
    digest = c.upload(lines(3)).digest
    before, seq = c.balance(), head(c)
    with pytest.raises(exc) as info:
        c.submit_job(spec, digest)
    assert info.value.field == field
    assert c.balance() == before and head(c) == seq


@pytest.mark.parametrize("data, field", [
    (lines(1) + b"{not json\n", "input[line 2]"),
    (lines(1) + json.dumps({"custom_id": "x", "body": {"model": MODEL, "input": ""}}).encode(),
     "input[line 2].body.input"),
    (lines(2) + lines(1), "input[line 3].custom_id"),
    (json.dumps({"custom_id": "x", "url": "/v1/chat/completions",
                 "body": {"model": MODEL, "input": "a"}}).encode(), "input[line 1].url"),
])
def test_malformed_input_line_names_the_line(net: Network, data: bytes, field: str) -> None:
    c = funded(net)
    before, seq = c.balance(), head(c)
    with pytest.raises(InvalidInput) as info:
        c.submit_job(SPEC, c.upload(data).digest)
    assert info.value.field == field and info.value.status == 422
    assert c.balance() == before and head(c) == seq


def test_unaffordable_job_is_refused_with_402(net: Network) -> None:
    HandProvider(net)
    c = funded(net, amount=3)
    seq = head(c)
    with pytest.raises(InsufficientFunds) as info:
        c.submit_job(SPEC, c.upload(lines(10)).digest)
    assert info.value.status == 402
    assert c.balance().available == 3 and head(c) == seq


def test_too_large_upload_is_refused_with_413(net: Network) -> None:
    c = funded(net)
    seq = head(c)
    with pytest.raises(PayloadTooLarge) as info:
        c.upload(b"x" * 300_000)
    assert info.value.status == 413 and info.value.field == "body"
    assert head(c) == seq


def test_unknown_input_digest_and_job_are_404(net: Network) -> None:
    c = funded(net)
    with pytest.raises(NotFound) as info:
        c.submit_job(SPEC, "ab" * 32)
    assert info.value.field == "input_digest"
    with pytest.raises(NotFound):
        c.job("job_nope")


def test_malformed_json_and_wrong_types_are_422_not_500(net: Network) -> None:
    me, nid = Identity.generate(), net.network_id
    for body in (b"{", b"[]", b'{"spec": 5, "input_digest": "zz"}', b"\xff\xfe"):
        hdr = {**me.headers("POST", "/api/jobs", body, network=nid),
               "content-type": "application/json"}
        r = httpx.post(f"{net.url}/api/jobs", content=body, headers=hdr)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_input"
    r = httpx.get(f"{net.url}/api/jobs", params={"limit": "many"},
                  headers=me.headers("GET", "/api/jobs", b"", network=nid))
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.limit"


# --- the market --------------------------------------------------------------------------

def test_quote_explains_every_provider_that_cannot_run_the_job(net: Network) -> None:
    cheap = HandProvider(net, price=500)
    dear = HandProvider(net, price=5000)
    small = HandProvider(net, memory_mb=100)
    broke = HandProvider(net, stake=0)
    client = funded(net)
    end = time.monotonic() + 60
    while True:  # alive as agents are: beat (heartbeat_timeout is 2 s, beats are flushed
        for p in (cheap, dear, small, broke):  # in batches) until the quote sees them
            p.c.heartbeat([])
        q = client.quote(SPEC, [2, 2, 1])
        eligible = {e["provider"]: e["price"] for e in q.eligible}
        if cheap.id in eligible or time.monotonic() > end:
            break
        time.sleep(0.3)
    reasons = {i["provider"]: " ".join(i["reasons"]) for i in q.ineligible}
    assert eligible[cheap.id] == 500 and q.max_cost == 2 * 4 + 2
    assert "price above the maximum" in reasons[dear.id]
    assert "not enough memory" in reasons[small.id]
    assert "no stake" in reasons[broke.id]
    assert q.ineligible_count == len(q.ineligible) >= 3  # under the list's cap: all listed
    for p in (cheap, dear, small, broke):
        p.quit()


def test_job_no_provider_can_run_fails_at_once_with_reasons(net: Network) -> None:
    time.sleep(2.5)  # earlier tests' hand providers go offline
    HandProvider(net, price=5000)
    c = funded(net)
    before = c.balance()
    with pytest.raises(NoCapacity) as info:
        c.submit_job({**SPEC, "max_price": 100}, c.upload(lines(2)).digest)
    assert "price above the maximum" in info.value.message
    assert c.balance() == before


# --- leases and payment ------------------------------------------------------------------

def test_job_completes_pays_once_and_audits(net: Network) -> None:
    time.sleep(2.5)
    p = HandProvider(net, price=1000)
    c = funded(net)
    data = lines(5)
    job = c.submit_job(SPEC, c.upload(data).digest)
    assert job.escrow == 4 + 4 + 2  # shards of 2, 2 and 1 units at 2000 µ per 1,000
    done = 0
    while done < 3:
        for a in p.take():
            assert p.answer(a).status == "accepted"
            with pytest.raises(Conflict):
                p.answer(a)  # a second submission is refused: paid exactly once
            done += 1
    final = c.job(job.id)
    assert final.status == "completed" and final.tasks == {"done": 3}
    assert final.cost == 2 + 2 + 1 and final.refunded == final.escrow - final.cost
    out = [json.loads(x) for x in c.results(job.id).splitlines()]
    assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(5)]
    assert len(out[0]["response"]["body"]["data"][0]["embedding"]) == 384
    rep = audit_ok(c)
    payouts = [e for e in (ledger.Entry.from_dict(x) for x in c.journal(0, 5000).entries)
               if e.kind == "payout" and e.body["job"] == job.id]
    assert len(payouts) == 3 and len({e.body["task"] for e in payouts}) == 3
    assert rep.balances[ledger.escrow(job.id)] == 0


def test_silent_provider_loses_its_lease_and_late_result_is_refused(net: Network) -> None:
    time.sleep(2.5)
    quitter = HandProvider(net, price=100)
    c = funded(net)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(3)).digest)
    [lease] = quitter.take()
    honest = HandProvider(net, price=900)
    quitter.quit()  # stops heartbeating; lease expires after heartbeat_timeout
    got: list[wire.AssignmentOut] = []
    end = time.time() + 20
    while not got and time.time() < end:
        got = honest.take(wait=2)
    assert got and got[0].task_id == lease.task_id
    late = HandProvider.__new__(HandProvider)
    late.ident, late.c = quitter.ident, Client(net.url, quitter.ident)
    with pytest.raises(Conflict) as info:
        late.answer(lease)
    assert "expired" in info.value.message
    assert honest.answer(got[0]).status == "accepted"
    assert c.job(job.id).status == "completed"
    assert Client(net.url).balance(quitter.id).pending == 0
    audit_ok(c)


def test_malformed_output_is_rejected_and_the_task_redone(net: Network) -> None:
    time.sleep(2.5)
    p = HandProvider(net, price=100)
    c = funded(net)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2)).digest)
    [a] = p.take()
    assert p.answer(a, dims=3).status == "rejected"
    other = HandProvider(net, price=200)
    [b] = other.take(wait=10)
    assert b.task_id == a.task_id
    assert other.answer(b).status == "accepted"
    assert c.job(job.id).providers == {other.id: 1}
    audit_ok(c)


def test_result_for_someone_elses_lease_is_forbidden(net: Network) -> None:
    time.sleep(2.5)
    p = HandProvider(net, price=100)
    thief = HandProvider(net, price=5000)
    c = funded(net)
    c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(1)).digest)
    [a] = p.take()
    with pytest.raises((Forbidden, AuthError)):
        thief.answer(a)
    assert p.answer(a).status == "accepted"


def test_earnings_release_after_the_challenge_window(net: Network) -> None:
    time.sleep(2.5)
    p = HandProvider(net, price=1000)
    c = funded(net)
    c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(4)).digest)
    [a] = p.take()
    p.answer(a)
    bal = p.c.balance()
    assert bal.pending == 4 - 0  # 4 µ cost, fee rounds down to 0
    end = time.time() + 15
    while p.c.balance().pending and time.time() < end:
        time.sleep(0.3)
    after = p.c.balance()
    assert after.pending == 0 and after.available == bal.available + 4
    audit_ok(c)


def test_server_audit_agrees(net: Network) -> None:
    rep = Client(net.url).server_audit()
    assert rep.ok and rep.entries > 0
    with pytest.raises(DeAIError):
        Client(net.url).faucet(1)  # no key
