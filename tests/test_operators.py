"""Operators, network origins and hardware fingerprints (issue 10, item 1).

``core.diversity`` is tested as pure functions (examples and properties); the
registration side against a real coordinator process on loopback: providers
register over real sockets, from distinct loopback source addresses
(127.0.0.2, 127.0.0.3, ...), and what the coordinator recorded is read back
from its database and through ``matching.provider_states``. The slow test runs
a real provider agent with ``--operator``, ``--machine-id`` and
``--source-address``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import matching
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import auth, diversity, wire
from deai.core.errors import InvalidInput
from deai.core.market import ProviderState
from deai.store import migrate
from tests.netutil import Network

HW: dict[str, Any] = {"cpu_model": "Test CPU 9000", "cores": 8, "memory_mb": 16384,
                      "gpus": [], "platform": "linux"}


def registration(hw: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "t", "hardware": hw or HW, "benchmark": {"gflops": 10.0, "mem_gbps": 5.0},
            "threads": 1, "offers": [{"workload": "embeddings", "model": "all-MiniLM-L6-v2",
                                      "price": 1000}], **extra}


def operator_fields(operator: Identity, provider: Identity) -> dict[str, str]:
    return {"operator": operator.id, "operator_signature": operator.sign(
        auth.operator_message(operator.id, provider.id))}


def register(url: str, ident: Identity, body: dict[str, Any], source: str = "127.0.0.1",
             headers: dict[str, str] | None = None) -> httpx.Response:
    """A signed POST /api/providers/register from ``source``."""
    raw = json.dumps(body).encode()
    path = "/api/providers/register"
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as http:
        nid = http.get("/api/network").json()["network_id"]
        return http.post(path, content=raw, headers={
            "content-type": "application/json", **ident.headers("POST", path, raw, network=nid),
            **(headers or {})})


def rows(net: Network) -> dict[str, dict[str, Any]]:
    """The providers table as the coordinator wrote it."""
    db = net.root / "coordinator" / "deai.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in
                conn.execute("SELECT id, operator, origin, fingerprint, hardware FROM providers")}


# --- core.diversity ---------------------------------------------------------------------

def state(pid: str, **kw: Any) -> ProviderState:
    return ProviderState(id=pid, online=True, stake=0, memory_mb=1, slots=1, **kw)


@pytest.mark.parametrize(("address", "block"), [
    ("203.0.113.7", "203.0.113.0/24"),
    ("203.0.113.250", "203.0.113.0/24"),
    ("2001:db8:1:2::5", "2001:db8:1::/48"),
    ("[2001:db8:1:ffff::1]", "2001:db8:1::/48"),
    ("::ffff:198.51.100.9", "198.51.100.0/24"),
    ("127.0.0.2", "127.0.0.2"),
    ("::1", "::1"),
    ("testclient", ""),
    ("", ""),
])
def test_origin_is_the_network_block(address: str, block: str) -> None:
    assert diversity.origin(address) == block


def test_client_address_trusts_forwarded_for_only_when_told() -> None:
    assert diversity.client_address("10.0.0.1", "1.2.3.4", False) == "10.0.0.1"
    assert diversity.client_address("10.0.0.1", "6.6.6.6, 1.2.3.4", True) == "1.2.3.4"
    assert diversity.client_address("10.0.0.1", None, True) == "10.0.0.1"
    assert diversity.client_address(None, None, False) == ""


def test_fingerprint_links_keys_on_one_box() -> None:
    box = {**HW, "machine_id": diversity.machine_id_digest("abc")}
    assert diversity.fingerprint(box) == diversity.fingerprint(dict(box))
    other = {**HW, "machine_id": diversity.machine_id_digest("def")}
    assert diversity.fingerprint(box) != diversity.fingerprint(other)
    gpus = [{"name": "H100", "uuid": "GPU-1"}, {"name": "H100", "uuid": "GPU-2"}]
    assert (diversity.fingerprint({**HW, "gpus": gpus})
            == diversity.fingerprint({**HW, "gpus": gpus[::-1]}))
    assert (diversity.fingerprint({**HW, "gpus": gpus})
            != diversity.fingerprint({**HW, "gpus": gpus[:1]}))
    assert diversity.machine_id_digest("abc\n") == diversity.machine_id_digest("abc")
    assert "abc" not in diversity.machine_id_digest("abc")


def test_conflicts_by_key_operator_origin_or_fingerprint() -> None:
    a = state("a", operator="op1", origin="203.0.113.0/24", fingerprint="f1")
    assert diversity.conflicts(a, a)
    assert diversity.conflicts(a, state("b", operator="op1"))
    assert diversity.conflicts(a, state("b", origin="203.0.113.0/24"))
    assert diversity.conflicts(a, state("b", fingerprint="f1"))
    assert not diversity.conflicts(a, state("b", operator="op2", origin="198.51.100.0/24",
                                            fingerprint="f2"))
    # No operator named: the key is its own, so another key naming it as operator is linked.
    assert diversity.conflicts(state("a"), state("b", operator="a"))
    # Unknown origins and fingerprints link nothing.
    assert not diversity.conflicts(state("a"), state("b"))
    assert diversity.diverse(a, [])
    assert diversity.diverse(a, [state("b"), state("c", operator="op2")])
    assert not diversity.diverse(a, [state("b"), state("c", fingerprint="f1")])


links = st.sampled_from(["", "x", "y"])


@given(st.tuples(st.sampled_from(["a", "b"]), links, links, links),
       st.tuples(st.sampled_from(["a", "b"]), links, links, links))
def test_conflicts_is_symmetric_and_matches_shared_links(
        x: tuple[str, str, str, str], y: tuple[str, str, str, str]) -> None:
    a = state(x[0], operator=x[1], origin=x[2], fingerprint=x[3])
    b = state(y[0], operator=y[1], origin=y[2], fingerprint=y[3])
    assert diversity.conflicts(a, b) == diversity.conflicts(b, a)
    shared = (a.id == b.id or (a.operator or a.id) == (b.operator or b.id)
              or bool(a.origin and a.origin == b.origin)
              or bool(a.fingerprint and a.fingerprint == b.fingerprint))
    assert diversity.conflicts(a, b) == shared
    assert diversity.diverse(a, [b]) == (not shared)


# --- the coordinator, in process: what matching sees ------------------------------------

@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Migration 0009 on both databases the coordinator runs on."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("fresh_pg_url")
    return url


def test_provider_states_carry_operator_origin_fingerprint(tmp_path: Path,
                                                           database_url: str) -> None:
    ops, p1, p2 = Identity.generate("ops"), Identity.generate("p1"), Identity.generate("p2")
    settings = Settings(data_dir=tmp_path, devnet=True, verifiers=frozenset({p2.id}),
                        database_url=database_url)
    c = Coordinator(settings)
    migrate.upgrade(c.db.engine)
    box = {**HW, "machine_id": diversity.machine_id_digest("box")}
    c.register(p1.id, wire.RegisterIn.model_validate(
        registration(box, **operator_fields(ops, p1))), address="203.0.113.7")
    c.register(p2.id, wire.RegisterIn.model_validate(registration(box)),
               address="2001:db8:5:6::1")
    with c.db.read() as s:
        online = {p.id: p for p in matching.provider_states(c, s)}
        every = {p.id: p for p in matching.all_provider_states(c, s)}
    assert online == every
    a, b = online[p1.id], online[p2.id]
    assert (a.operator, a.origin, a.verifier) == (ops.id, "203.0.113.0/24", False)
    assert (b.operator, b.origin, b.verifier) == (p2.id, "2001:db8:5::/48", True)
    assert a.fingerprint == b.fingerprint == diversity.fingerprint(box)
    assert diversity.conflicts(a, b)  # one box
    assert not diversity.conflicts(a, replace(b, fingerprint="other"))
    with pytest.raises(InvalidInput) as bad:  # signed by p1 for p2: refused, nothing written
        c.register(p2.id, wire.RegisterIn.model_validate(
            registration(HW, **operator_fields(ops, p1))))
    assert bad.value.field == "operator_signature"
    with c.db.read() as s:
        assert {p.id: p for p in matching.provider_states(c, s)}[p2.id].operator == p2.id


# --- the coordinator as a real process ---------------------------------------------------

@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("operators"))
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def test_two_keys_of_one_operator_share_it(net: Network) -> None:
    ops, p1, p2 = Identity.generate("ops"), Identity.generate("p1"), Identity.generate("p2")
    solo = Identity.generate("solo")
    for ident, source in ((p1, "127.0.0.2"), (p2, "127.0.0.3")):
        r = register(net.url, ident, registration(**operator_fields(ops, ident)), source)
        assert r.status_code == 200, r.text
    assert register(net.url, solo, registration(), "127.0.0.4").status_code == 200
    got = rows(net)
    assert got[p1.id]["operator"] == got[p2.id]["operator"] == ops.id
    assert got[solo.id]["operator"] == solo.id  # no operator named: its own


def test_a_bad_operator_signature_is_refused(net: Network) -> None:
    ops, other, p = (Identity.generate("ops"), Identity.generate("x"),
                     Identity.generate("p"))
    forged = {"operator": ops.id,  # signed by someone else
              "operator_signature": other.sign(auth.operator_message(ops.id, p.id))}
    r = register(net.url, p, registration(**forged))
    assert r.status_code == 422 and r.json()["error"]["field"] == "operator_signature", r.text
    for_another = operator_fields(ops, Identity.generate("q"))  # ops's, but for another key
    r = register(net.url, p, registration(**for_another))
    assert r.status_code == 422 and r.json()["error"]["field"] == "operator_signature", r.text
    r = register(net.url, p, registration(operator_signature="ab" * 64))
    assert r.status_code == 422 and r.json()["error"]["field"] == "operator", r.text
    r = register(net.url, p, registration(operator="zz"))
    assert r.status_code == 422 and "operator" in r.text, r.text
    assert p.id not in rows(net)  # nothing recorded
    assert httpx.get(f"{net.url}/api/providers/{p.id}").status_code == 404


def test_origin_and_fingerprint_recorded(net: Network) -> None:
    a, b, c = Identity.generate("a"), Identity.generate("b"), Identity.generate("c")
    box = {**HW, "machine_id": diversity.machine_id_digest("one-box")}
    assert register(net.url, a, registration(box), "127.0.0.5").status_code == 200
    # A forged X-Forwarded-For is ignored: this coordinator does not sit behind a proxy.
    assert register(net.url, b, registration(box), "127.0.0.6",
                    {"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    assert register(net.url, c, registration({**HW, "machine_id": "0" * 64}),
                    "127.0.0.6").status_code == 200
    got = rows(net)
    assert got[a.id]["origin"] == "127.0.0.5"
    assert got[b.id]["origin"] == got[c.id]["origin"] == "127.0.0.6"
    assert got[a.id]["fingerprint"] == got[b.id]["fingerprint"] == diversity.fingerprint(box)
    assert got[c.id]["fingerprint"] != got[a.id]["fingerprint"]
    # The machine id links keys; it is kept inside the fingerprint, never shown.
    assert "machine_id" not in json.loads(got[a.id]["hardware"])
    assert "machine_id" not in httpx.get(f"{net.url}/api/providers/{a.id}").json()["hardware"]
    r = register(net.url, a, registration({**HW, "machine_id": "not-a-digest"}))
    assert r.status_code == 422 and "machine_id" in r.text, r.text


def test_forwarded_for_is_trusted_only_when_configured(tmp_path: Path) -> None:
    n = Network(tmp_path, extra=("--trust-forwarded-for",))
    n.start_coordinator()
    try:
        p = Identity.generate("p")
        r = register(n.url, p, registration(), "127.0.0.7",
                     {"X-Forwarded-For": "6.6.6.6, 198.51.100.7"})
        assert r.status_code == 200, r.text
        assert rows(n)[p.id]["origin"] == "198.51.100.0/24"
    finally:
        n.close()


@pytest.mark.slow
def test_agent_registers_with_its_operator_and_machine(net: Network) -> None:
    ops, me = net.key("ops-agent"), net.key("agent-1")
    net.start_provider("agent-1", 1000, "--operator", "ops-agent", "--machine-id", "rack-7",
                       "--source-address", "127.0.0.9")
    net.wait_providers(1)
    got = rows(net)[me.id]
    assert got["operator"] == ops.id
    assert got["origin"] == "127.0.0.9"
    hw = {**json.loads(got["hardware"]), "machine_id": diversity.machine_id_digest("rack-7")}
    assert got["fingerprint"] == diversity.fingerprint(hw)
    with Client(net.url) as c:
        assert c.provider(me.id).online
    # An operator key that does not exist: the agent says so and exits 1.
    bad = net.start_provider("agent-2", 1000, "--operator", "no-such-key")
    end = time.time() + 120
    while bad.alive() and time.time() < end:
        time.sleep(0.5)
    assert bad.p.returncode == 1, bad.tail()
    assert "no-such-key" in bad.tail()


def test_a_slashed_or_offline_party_still_excludes_its_sybils() -> None:
    """A key that touched a task but is no longer a candidate (slashed below the minimum,
    offline, flagged) keeps its identity for exclusion: its operator's other key may not
    check, re-execute or redo that task."""
    def state(pid: str, operator: str) -> ProviderState:
        return ProviderState(id=pid, online=True, stake=10, memory_mb=1024, slots=1,
                             operator=operator)

    gone, partner = state("gone", "ring"), state("partner", "ring")
    honest = state("honest", "honest")
    attrs = ("operator", "origin", "fingerprint")
    index = matching._ConflictIndex([partner, honest], attrs, [gone])
    assert index.around({"gone"}) == {"gone", "partner"}
    # Without the absent party's identity the partner would slip through.
    assert matching._ConflictIndex([partner, honest], attrs).around({"gone"}) == {"gone"}
