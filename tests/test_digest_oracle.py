"""No route tells whether a digest is stored: a guessed sha256 of a file someone may have
uploaded confirms nothing.

Each route that takes a digest answers a digest that does not exist and one another
account uploaded with the same status and body, and a result or checkpoint for a
made-up assignment answers the same whatever digest it names. Before, the result and
checkpoint routes answered 422 "upload ... first" for a missing digest and 404 for
another's; a command job naming a guess and a missing digest got a 404 naming the missing
one exactly when the guess was stored; and once the disk budget was spent, an upload of
bytes someone else had stored passed (201) while unknown bytes got 507.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from deai.client import datasets
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import access, blob_quota
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import auth, sealed, wire
from deai.core.clock import ManualClock
from deai.core.errors import NotFound
from deai.store import migrate
from tests.helpers import MODEL, HandProvider, funded, running
from tests.netutil import Network

EMBED = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600}
COMMAND = {"kind": "command", "model": "bwrap-sandbox", "max_price": 500, "deadline": 600,
           "cpu_seconds": 1, "wall_seconds": 5}
NOWHERE = "f" * 64  # stored by nobody; sorts after any other digest


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from running(Network(Path(tmp_path_factory.mktemp("digest-oracle")), "",
                               heartbeat_timeout=60.0, lease_ttl=300.0, verify=False))


class World:
    """Alice's private upload (``theirs``), a digest nobody stored (``missing``), the
    curious ``mallory`` (funded, with a /v1 key) and a provider ``prov`` holding a live
    lease ``lease`` of an unrelated job."""

    def __init__(self, net: Network) -> None:
        self.net = net
        alice = funded(net)
        self.theirs = alice.upload(b"alice's private record: patient 4711, diagnosis XYZ\n").digest
        self.missing = hashlib.sha256(b"alice's private record: patient 4711, diagnosis ABC\n"
                                      ).hexdigest()
        self.mallory = funded(net)
        key = self.mallory.create_api_key("curious").key
        assert key is not None
        self.bearer = key
        self.prov = HandProvider(net, price=500)
        line = json.dumps({"custom_id": "c0", "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": MODEL, "input": "hello"}}).encode() + b"\n"
        alice.submit_job(EMBED, alice.upload(line).digest)
        leases: list[wire.AssignmentOut] = []
        while not leases:
            leases = self.prov.take()
        self.lease = leases[0]


@pytest.fixture(scope="module")
def world(net: Network) -> World:
    return World(net)


def signed(net: Network, me: Client, method: str, path: str, body: Any) -> httpx.Response:
    assert me.identity is not None
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json",
               **me.identity.headers(method, path, raw, network=net.network_id)}
    return httpx.request(method, f"{net.url}{path}", content=raw, headers=headers, timeout=30)


def same_answer(w: World, call: Callable[[str], httpx.Response], status: int,
                field: str | None) -> None:
    """``call`` answers the missing digest and alice's alike (each echoed digest read as
    the one it was given), with ``status`` naming ``field``."""
    missing, theirs = call(w.missing), call(w.theirs)
    assert missing.status_code == theirs.status_code == status, (missing.text, theirs.text)
    assert missing.text.replace(w.missing, "<d>") == theirs.text.replace(w.theirs, "<d>"), \
        (missing.text, theirs.text)
    assert missing.json()["error"].get("field") == field, missing.text


def test_a_result_names_no_digest_it_may_not_use(net: Network, world: World) -> None:
    w, a = world, world.lease

    def result(who: Client, ident: Identity, assignment: str) -> Callable[[str], httpx.Response]:
        def call(d: str) -> httpx.Response:
            sig = ident.sign(auth.result_message(assignment, d, 1))
            return signed(net, who, "POST", f"/api/assignments/{assignment}/result",
                          {"output_digest": d, "units": 1, "signature": sig})
        return call

    assert w.mallory.identity is not None
    same_answer(w, result(w.mallory, w.mallory.identity, "asg_made_up"), 404, "assignment")
    same_answer(w, result(w.mallory, w.mallory.identity, a.id), 403, None)  # another's lease
    same_answer(w, result(w.prov.c, w.prov.ident, a.id), 404, "output_digest")


def test_a_checkpoint_names_no_digest_it_may_not_use(net: Network, world: World) -> None:
    w, a = world, world.lease

    def checkpoint(who: Client, assignment: str) -> Callable[[str], httpx.Response]:
        return lambda d: signed(net, who, "POST", f"/api/assignments/{assignment}/checkpoint",
                                {"step": 1, "digest": d, "chain_hash": "0" * 64, "meta": {}})

    same_answer(w, checkpoint(w.mallory, "asg_made_up"), 404, "assignment")
    same_answer(w, checkpoint(w.mallory, a.id), 403, None)  # another's lease
    same_answer(w, checkpoint(w.prov.c, a.id), 404, "digest")


def test_a_job_names_no_digest_it_may_not_use(net: Network, world: World) -> None:
    w = world
    same_answer(w, lambda d: signed(net, w.mallory, "POST", "/api/jobs",
                                    {"spec": EMBED, "input_digest": d}), 404, "input_digest")

    def files(*names: str) -> Callable[[str], dict[str, Any]]:
        def body(d: str) -> dict[str, Any]:
            named = {"a": {"digest": d}, **{n: {"digest": NOWHERE} for n in names}}
            script = json.dumps({"script": "cat a", "files": named}).encode()
            return {"spec": COMMAND, "input_digest": w.mallory.upload(script).digest}
        return body

    def submit(body: Callable[[str], dict[str, Any]], bearer: bool
               ) -> Callable[[str], httpx.Response]:
        if bearer:  # a /v1 key spends on the same route
            return lambda d: httpx.post(f"{net.url}/api/jobs", json=body(d), timeout=30,
                                        headers={"Authorization": f"Bearer {w.bearer}"})
        return lambda d: signed(net, w.mallory, "POST", "/api/jobs", body(d))

    for body in (files(), files("b")):  # the guess alone, and beside a certainly missing one
        for bearer in (False, True):
            same_answer(w, submit(body, bearer), 404, "input.files")


def test_a_sealed_job_names_no_shard_it_may_not_use(net: Network, world: World) -> None:
    w = world
    assert w.mallory.identity is not None
    owner, party = w.mallory.identity.id, w.prov.id
    spec = {**EMBED, "sealed": True, "sealed_for": [party]}

    def body(d: str) -> dict[str, Any]:
        manifest = sealed.Manifest("0" * 32, {owner: "AAAA", party: "AAAA"},
                                   [sealed.ShardRef(d, 1, 1, None)])
        return {"spec": spec, "input_digest": w.mallory.upload(manifest.to_bytes()).digest}

    same_answer(w, lambda d: signed(net, w.mallory, "POST", "/api/jobs", body(d)),
                404, "input_digest.shards[0].digest")


def test_a_dataset_and_a_read_name_no_digest_they_may_not_use(net: Network,
                                                              world: World) -> None:
    w = world

    def publish(d: str) -> httpx.Response:
        return signed(net, w.mallory, "POST", "/api/datasets", {
            "id": datasets.new_id(), "name": "mine", "blob_digest": d, "size": 1,
            "owner_key": base64.b64encode(b"k" * 32).decode(),
            "terms": {"price_per_use": 1, "allow": ["embeddings"]}})

    same_answer(w, publish, 404, "blob_digest")
    assert w.mallory.identity is not None
    ident = w.mallory.identity

    def read(d: str) -> httpx.Response:
        path = f"/api/blobs/{d}"
        return httpx.get(f"{net.url}{path}", timeout=30,
                         headers=ident.headers("GET", path, b"", network=net.network_id))

    same_answer(w, read, 404, "digest")


class FullDisk:
    """A disk whose budget for uploads is spent: what ``blob_quota._free`` reads."""

    def __init__(self) -> None:
        self.free = 10**9

    def __call__(self, c: Coordinator) -> int:
        return self.free


def test_a_spent_disk_budget_refuses_alike_unless_the_account_holds_the_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the disk budget, bytes another account stored are refused as unknown bytes
    are (507): only the account holding them already uploads them again."""
    disk = FullDisk()
    monkeypatch.setattr(blob_quota, "_free", disk)
    c = Coordinator(replace(Settings(data_dir=tmp_path).for_devnet(), blob_disk_budget=4096),
                    clock=ManualClock(1000.0))
    migrate.upgrade(c.db.engine)
    try:
        alice, mallory = "a1" * 32, "b2" * 32
        known = os.urandom(1000)
        blob_quota.admit(c, alice, hashlib.sha256(known).hexdigest(), len(known))
        c.blobs.put(known)
        disk.free -= 4096  # the budget spent, by whatever wrote
        answers = []
        for data in (known, os.urandom(1000)):
            with pytest.raises(blob_quota.StorageFull) as refused:
                blob_quota.admit(c, mallory, hashlib.sha256(data).hexdigest(), len(data))
            answers.append((refused.value.status, refused.value.code, str(refused.value)))
        assert answers[0] == answers[1] and answers[0][0] == 507
        blob_quota.admit(c, alice, hashlib.sha256(known).hexdigest(), len(known))  # hers
    finally:
        c.db.dispose()


def test_naming_many_digests_costs_a_few_statements(tmp_path: Path) -> None:
    """Checking a job's 1,000 named files is a few statements, whether or not they are
    stored: made-up digests cost no more than a handful of queries each round. One
    digest at a time, they cost 7,005 statements (free keys, any number of jobs)."""
    c = Coordinator(Settings(data_dir=tmp_path).for_devnet(), clock=ManualClock(1000.0))
    migrate.upgrade(c.db.engine)
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    event.listen(c.db.engine, "before_cursor_execute", count)
    try:
        mine = c.blobs.put(b"one file of mine")
        blob_quota.admit(c, "a1" * 32, mine, 16)
        made_up = [hashlib.sha256(os.urandom(8)).hexdigest() for _ in range(999)]
        with pytest.raises(NotFound) as refused:
            access.require_own_blobs(c, "a1" * 32, [mine, *made_up], "input.files")
        assert refused.value.field == "input.files" and made_up[0] in str(refused.value)
        assert statements[0] <= 40, f"{statements[0]} statements for 1,000 digests"
        access.require_own_blobs(c, "a1" * 32, [mine], "input.files")  # its own passes
    finally:
        event.remove(c.db.engine, "before_cursor_execute", count)
        c.db.dispose()
