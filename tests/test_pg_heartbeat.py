"""Heartbeats are replay-protected by a per-provider timestamp floor, not nonce rows.

Against real coordinator processes on SQLite and PostgreSQL: a heartbeat writes
no nonce row of its own; the same signed heartbeat sent again, or one stamped
before the last accepted, is refused 401; liveness reaches the database in a
batched flush; and on PostgreSQL a heartbeat replayed to a second replica is
refused there too, from the floor the first one stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from deai.client.keys import Identity
from deai.client.sdk import Client, signed_beat
from deai.coordinator.liveness import FLOOR_NONCE, MAX_REFUSED, WINDOW
from deai.core import auth, wire
from deai.store.db import Database
from deai.store.models import Nonce, Provider
from tests.netutil import Network

PATH = "/api/providers/heartbeat"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(tmp_path_factory.mktemp(f"hb-{request.param}"), url, heartbeat_timeout=5.0,
                verify=False)
    n.start_coordinator()
    yield n
    n.close()


def database(net: Network) -> Database:
    return Database(net.database_url or
                    f"sqlite:///{net.root / 'coordinator' / 'deai.sqlite3'}")


def register(net: Network) -> Identity:
    me = Identity.generate()
    c = Client(net.url, me)
    c.register(wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="test cpu", cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model="all-MiniLM-L6-v2", price=1000)]))
    c.close()
    return me


def signed(net: Network, me: Identity, stamp: float, running: list[str] | None = None
           ) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"running": running or []}).encode()
    nid = net.network_id
    hdr = me.headers("POST", PATH, body, network=nid)
    hdr[auth.HEADER_TS] = f"{stamp:.3f}"
    hdr[auth.HEADER_SIG] = me.sign(auth.message("POST", PATH, body, hdr[auth.HEADER_TS],
                                                hdr[auth.HEADER_NONCE], network=nid))
    return body, {**hdr, "content-type": "application/json"}


def send(url: str, req: tuple[bytes, dict[str, str]]) -> httpx.Response:
    return httpx.post(f"{url}{PATH}", content=req[0], headers=req[1], timeout=10)


def stored_floor(db: Database, pid: str, at_least: float, timeout: float = 20.0) -> float:
    """The floor the coordinator flushed for ``pid``, once it reaches ``at_least``."""
    end = time.time() + timeout
    while True:
        with db.read() as s:
            exp = s.scalar(select(Nonce.expires_at).where(Nonce.account == pid,
                                                          Nonce.nonce == FLOOR_NONCE))
        if exp is not None and exp - WINDOW >= at_least - 1e-6:
            return float(exp - WINDOW)
        assert time.time() < end, f"floor not flushed: {exp}"
        time.sleep(0.1)


def test_replayed_and_older_heartbeats_are_refused_without_nonce_rows(net: Network) -> None:
    me = register(net)
    db = database(net)
    with db.read() as s:
        before = set(s.scalars(select(Nonce.nonce).where(Nonce.account == me.id)))
    t0 = round(time.time(), 3)
    first = signed(net, me, t0)
    r = send(net.url, first)
    assert r.status_code == 200, r.text
    assert r.json() == {"drop": []}

    again = send(net.url, first)
    assert again.status_code == 401 and "replayed" in again.json()["error"]["message"]
    older = send(net.url, signed(net, me, t0 - 0.5))
    assert older.status_code == 401
    assert send(net.url, signed(net, me, t0 + 0.001)).status_code == 200

    assert stored_floor(db, me.id, t0 + 0.001) == pytest.approx(t0 + 0.001, abs=1e-3)
    with db.read() as s:
        nonces = s.scalars(select(Nonce.nonce).where(Nonce.account == me.id)).all()
        seen = s.scalar(select(Provider.last_seen).where(Provider.id == me.id))
    assert set(nonces) - before == {FLOOR_NONCE}  # one floor row, no nonce per heartbeat
    assert seen is not None and seen >= t0 - 1.0

    # A lease the provider does not hold is answered as one to drop.
    r = send(net.url, signed(net, me, t0 + 0.002, ["as_nothing"]))
    assert r.status_code == 200 and r.json() == {"drop": ["as_nothing"]}
    db.dispose()


def test_unregistered_key_is_404_and_bad_signature_401(net: Network) -> None:
    stranger = Identity.generate()
    r = send(net.url, signed(net, stranger, time.time()))
    assert r.status_code == 404 and r.json()["error"]["field"] == "provider"
    body, hdr = signed(net, register(net), time.time())
    hdr[auth.HEADER_SIG] = "00" * 64
    assert send(net.url, (body, hdr)).status_code == 401


def beat_of(req: tuple[bytes, dict[str, str]]) -> dict[str, str]:
    """A signed single heartbeat, as a relay carries it."""
    body, h = req
    return {"key": h[auth.HEADER_KEY], "timestamp": h[auth.HEADER_TS],
            "nonce": h[auth.HEADER_NONCE], "signature": h[auth.HEADER_SIG],
            "body": body.decode()}


def alone(beat: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A relayed beat as the single heartbeat it was signed as (``beat_of``'s inverse)."""
    return beat["body"].encode(), {
        auth.HEADER_KEY: beat["key"], auth.HEADER_TS: beat["timestamp"],
        auth.HEADER_NONCE: beat["nonce"], auth.HEADER_SIG: beat["signature"],
        "content-type": "application/json"}


def relay(url: str, beats: list[dict[str, str]]) -> httpx.Response:
    return httpx.post(f"{url}/api/providers/heartbeats", json={"beats": beats}, timeout=10)


def test_relayed_beats_are_judged_each_as_if_sent_alone(net: Network) -> None:
    a, b, stranger = register(net), register(net), Identity.generate()
    db = database(net)
    t0 = round(time.time(), 3)
    first_a = signed(net, a, t0)
    tampered = beat_of(signed(net, b, t0 + 0.001))
    tampered["body"] = json.dumps({"running": ["as_mine"]})  # the relay edits the body
    junk_body = b"not a heartbeat"
    junk = {**beat_of(signed(net, b, t0 + 0.002)), "body": junk_body.decode()}
    junk["signature"] = b.sign(auth.message("POST", PATH, junk_body, junk["timestamp"],
                                            junk["nonce"], network=net.network_id))
    beats = [beat_of(first_a),
             beat_of(signed(net, b, t0 + 0.003, ["as_nothing"])),
             tampered,
             beat_of(first_a),  # the same beat twice: a replay
             beat_of(signed(net, stranger, t0)),
             junk,
             beat_of(signed(net, a, t0 - 0.5))]  # older than the beat just accepted
    r = relay(net.url, beats)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["key"] for g in got] == [x["key"] for x in beats]
    assert got[0] == {"key": a.id, "drop": [], "error": None}
    assert got[1] == {"key": b.id, "drop": ["as_nothing"], "error": None}
    assert got[2]["error"] == "signature does not verify"
    assert "replayed" in got[3]["error"] and "replayed" in got[6]["error"]
    assert "not a registered provider" in got[4]["error"]
    assert got[5]["error"].startswith("body is not a heartbeat")

    # The floor is one: the relayed beat cannot be sent again alone, and liveness and
    # floors reach the database in the same flush as single heartbeats.
    assert send(net.url, first_a).status_code == 401
    assert stored_floor(db, a.id, t0) == pytest.approx(t0, abs=1e-3)
    assert stored_floor(db, b.id, t0 + 0.003) == pytest.approx(t0 + 0.003, abs=1e-3)
    with db.read() as s:
        seen = dict(s.execute(select(Provider.id, Provider.last_seen)
                              .where(Provider.id.in_([a.id, b.id]))).all())
    assert all(v is not None and v >= t0 - 1.0 for v in seen.values())
    db.dispose()


def test_relayed_batches_are_bounded_and_a_bad_batch_changes_nothing(net: Network) -> None:
    me = register(net)
    db = database(net)
    one = beat_of(signed(net, me, round(time.time(), 3)))
    for beats, field in (([], "beats"), ([one] * (wire.MAX_RELAYED_BEATS + 1), "beats"),
                         ([{**one, "signature": "zz"}], "signature"),
                         ([{**one, "body": "x" * 80_000}], "body")):
        r = relay(net.url, beats)
        assert r.status_code == 422, r.text
        assert field in json.dumps(r.json()["error"])
    # None of them counted: the beat is still fresh when it comes alone.
    assert send(net.url, alone(one)).status_code == 200
    db.dispose()


def test_a_batch_of_forged_beats_stops_being_checked(net: Network) -> None:
    me = register(net)
    forged = [{**beat_of(signed(net, me, time.time())), "signature": "00" * 64}
              for _ in range(MAX_REFUSED + 4)]
    good = beat_of(signed(net, me, round(time.time(), 3) + 0.5))
    got = relay(net.url, [*forged, good]).json()["results"]
    assert [g["error"] for g in got[:MAX_REFUSED]] == ["signature does not verify"] * MAX_REFUSED
    assert all(g["error"].startswith("not checked") for g in got[MAX_REFUSED:])
    # The good beat was not checked either, so it still counts when it comes alone.
    assert send(net.url, alone(good)).status_code == 200


def test_the_sdk_signs_beats_for_a_relay(net: Network) -> None:
    people = [register(net) for _ in range(3)]
    with Client(net.url, Identity.generate()) as relay_client:  # the relay: any key
        out = relay_client.relay_heartbeats([signed_beat(p, network=relay_client.network_id)
                                              for p in people])
    assert [(r.key, r.error) for r in out.results] == [(p.id, None) for p in people]


@pytest.mark.slow
@pytest.mark.postgres
def test_replay_to_another_replica_is_refused(tmp_path: Path, fresh_pg_url: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Network(tmp_path / "a", fresh_pg_url, verify=False)
    b = Network(tmp_path / "b", fresh_pg_url, verify=False)
    a.start_coordinator()
    b.start_coordinator()
    db = Database(fresh_pg_url)
    try:
        me = register(a)
        beat = signed(a, me, time.time())
        assert send(a.url, beat).status_code == 200
        stored_floor(db, me.id, float(beat[1][auth.HEADER_TS]))
        r = send(b.url, beat)
        assert r.status_code == 401 and "replayed" in r.json()["error"]["message"]
        assert send(b.url, signed(a, me, time.time())).status_code == 200
    finally:
        db.dispose()
        a.close()
        b.close()
