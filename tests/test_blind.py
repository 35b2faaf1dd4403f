"""Blind work: a provider cannot tell a primary from a replica or a canary.

Leases of every role carry the same fields and the provider's own price, and
before a task's challenge window closes the public surfaces (events, the
explorer's provider and job pages) say nothing about roles, checks, canaries or
who pays. Roles are read afterwards from the coordinator's own database.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deai.client.keys import Identity
from deai.coordinator import public
from deai.core import wire
from tests.helpers import SPEC, HandProvider, funded, lines
from tests.netutil import Network

VERIFIER = Identity.generate()
WINDOW = 120.0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=10.0, lease_ttl=60.0, challenge_window=WINDOW,
                extra=("--canary-share", "0.5", "--verifier-key", VERIFIER.id))
    n.start_coordinator()
    yield n
    n.close()


def roles(net: Network) -> dict[str, str]:
    db = sqlite3.connect(net.root / "coordinator" / "deai.sqlite3")
    try:
        return dict(db.execute("SELECT id, role FROM assignments").fetchall())
    finally:
        db.close()


def leased_view(net: Network, lease: wire.AssignmentOut) -> dict[str, object]:
    page = httpx.get(f"{net.url}/api/explorer/jobs/{lease.job_id}").json()
    (shard,) = [x for x in page["shards"] if x["task_id"] == lease.task_id]
    face = page["job"]
    return {"shard": (shard["status"], shard["state"]), "states": page["states"],
            "status": face["status"], "span": face["deadline_at"] - face["created_at"]}


def test_leases_of_every_role_look_alike_and_nothing_public_tells(net: Network) -> None:
    # Three workers: a canary never goes to one that ran its input before, and a primary
    # and its replica are two of them.
    a, b = HandProvider(net, price=900, slots=2), HandProvider(net, price=950, slots=2)
    d = HandProvider(net, price=980, slots=2)
    v = HandProvider(net, price=0, stake=0, ident=VERIFIER)
    c = funded(net)
    seen: dict[str, list[wire.AssignmentOut]] = {a.id: [], b.id: [], d.id: []}
    # What a worker reads on its job's public page while it holds the lease, before the
    # work: before, a replica read its shard as "verifying" and a canary's job a day long.
    held: dict[str, dict[str, object]] = {}
    jobs = []
    end = time.time() + 90
    # Jobs until the workers have seen primaries, replicas and a canary among them.
    while time.time() < end:
        jobs.append(c.submit_job({**SPEC, "shard_size": 1},
                                 c.upload(lines(2, start=10 * len(jobs))).digest).id)
        done = time.time() + 30
        while c.job(jobs[-1]).status != "completed" and time.time() < done:
            for p in (a, b, d, v):
                for lease in p.take(wait=0.2):
                    if p is not v:
                        held[lease.id] = leased_view(net, lease)
                    seen.get(p.id, []).append(lease)
                    p.answer(lease)
        got = {roles(net)[x.id] for leases in seen.values() for x in leases}
        if {"primary", "replica", "canary"} <= got:
            break
    by_role = roles(net)
    got = {by_role[x.id] for leases in seen.values() for x in leases}
    assert {"primary", "replica", "canary"} <= got, got

    for p, price in ((a, 900), (b, 950), (d, 980)):
        if not seen[p.id]:
            continue
        leases = seen[p.id]
        assert {frozenset(x.model_dump()) for x in leases} == {frozenset(leases[0].model_dump())}
        assert {x.price for x in leases} == {price}, "every role pays the provider's own price"
        assert all(x.input_b64 is not None for x in leases), "every role ships its input alike"

    # While a lease of any role is held, its shard reads as any running shard and its
    # job spans the deadline its spec asked for, a canary's and a replica's too.
    held_roles = {by_role[x] for x in held}
    assert {"primary", "replica", "canary"} <= held_roles, held_roles
    for lease_id, view in held.items():
        assert view["shard"] == ("assigned", "running"), (by_role[lease_id], view)
        assert "verifying" not in view["states"], (by_role[lease_id], view)
        assert view["status"] in ("running", "pending"), (by_role[lease_id], view)
        assert view["span"] == pytest.approx(SPEC["deadline"]), (by_role[lease_id], view)

    # Before the window closes: nothing public names a role, a check or a canary.
    events = httpx.get(f"{net.url}/api/events", params={"after": 0, "limit": 500}).json()
    assert not {e["kind"] for e in events["events"]} & public.SEALED
    # a job's end says what it cost only once the window has closed (a canary's is 0)
    ends = [e for e in events["events"] if e["kind"] in public.JOB_ENDS]
    assert ends and not any({"cost", "refunded"} & set(e["body"]) for e in ends), ends
    for p in (a, b, d):
        page = httpx.get(f"{net.url}/api/explorer/providers/{p.id}").json()
        # rows leased inside the window are not listed at all (another's on a
        # leaseholder's own task would tell it its lease is a check); any shown are sealed
        assert all(r["role"] == "sealed" for r in page["recent"])
        assert page["checks"] == []
    canary_jobs = {x.job_id for leases in seen.values() for x in leases
                   if by_role[x.id] == "canary"}
    announced = {e["subject"]: e["body"] for e in events["events"]
                 if e["kind"] == "job_submitted"}
    for job_id in [*jobs, *canary_jobs]:
        # Every job is announced alike, a canary too; who pays waits for the window.
        assert job_id in announced, f"{job_id} was never announced: a canary would stand out"
        assert not {"owner", "escrow"} & set(announced[job_id]), announced[job_id]
        page = httpx.get(f"{net.url}/api/explorer/jobs/{job_id}").json()
        face = page["job"]
        assert face["owner"] == "" and face["escrow"] == face["cost"] == 0
        # Nothing says a result waits for its check, nor who else ran a shard (a checker
        # would learn it is one, and whom it checks).
        assert face["status"] != "verifying" and "verifying" not in face["tasks"], face
        assert face["providers"] == {}, face
        assert {shard["state"] for shard in page["shards"]} <= {"accepted", "running",
                                                               "queued"}, page["shards"]
        assert all(shard["providers"] == [] for shard in page["shards"]), page["shards"]
        assert page["assignments"] == [] and page["providers"] == [], page
        # Every job spans its spec's deadline (a canary: its source job's), and reads
        # final a window after it finished, whatever waits for it
        assert face["deadline_at"] - face["created_at"] == pytest.approx(SPEC["deadline"])
        ends = None if face["finished_at"] is None else face["finished_at"] + WINDOW
        assert face["final"] is False and face["final_at"] == pytest.approx(ends), face
        assert {s["status"] for s in page["shards"]} <= {"done", "assigned", "queued"}
    listed = {j["id"] for j in httpx.get(f"{net.url}/api/explorer/jobs").json()["jobs"]}
    assert canary_jobs <= listed, "canaries are listed like any job"
