"""The checkpoint hash chain (pure) and the coordinator's checkpoint API (a real process).

The API part (on SQLite and on PostgreSQL: a fresh database each, so the
checkpoints migration runs on both) drives providers by hand: the coordinator checks the lease, the
blob, the step and the chain link but not what a checkpoint holds, so the
blobs here are arbitrary bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import checkpoints, kinds, specs, wire
from deai.core.checkpoints import Link
from deai.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from deai.core.kinds import train
from tests.netutil import Network

G = checkpoints.genesis("ab" * 32)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def chain_of(ends: list[int], seed: int = 3) -> list[Link]:
    chain: list[Link] = []
    for e in ends:
        chain.append(checkpoints.extend(chain, G, sha(b"ckpt %d" % e), e, seed))
    return chain


def test_link_is_the_documented_sha256() -> None:
    d, prev = sha(b"weights"), "cd" * 32
    msg = (b"deai.chain.v1" + bytes.fromhex(d) + bytes.fromhex(prev) + (0).to_bytes(8, "big")
           + (50).to_bytes(8, "big") + (7).to_bytes(8, "big"))
    assert checkpoints.link(d, prev, 0, 50, 7) == sha(msg)


@given(st.lists(st.integers(1, 50), min_size=1, max_size=12), st.integers(0, 2**63 - 1))
def test_any_extended_chain_verifies_and_any_change_breaks_it(gaps: list[int],
                                                              seed: int) -> None:
    ends = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    chain = chain_of(ends, seed)
    checkpoints.verify(chain, G)
    i = len(chain) // 2
    for bad in (Link(chain[i].start, chain[i].end, sha(b"other"), seed, chain[i].hash),
                Link(chain[i].start, chain[i].end, chain[i].digest, seed ^ 1, chain[i].hash)):
        broken = [*chain[:i], bad, *chain[i + 1:]]
        with pytest.raises(InvalidInput) as exc:
            checkpoints.verify(broken, G)
        assert exc.value.field == f"chain[{i}]"
    with pytest.raises(InvalidInput):
        checkpoints.verify(chain, checkpoints.genesis("cd" * 32))


def test_gaps_overlaps_and_bad_values_name_the_link() -> None:
    chain = chain_of([10, 20, 30])
    with pytest.raises(InvalidInput) as exc:
        checkpoints.verify([chain[0], chain[2]], G)
    assert exc.value.field == "chain[1]"
    with pytest.raises(InvalidInput):
        checkpoints.link(sha(b""), G, 10, 10, 0)
    with pytest.raises(InvalidInput):
        checkpoints.link("AB" * 32, G, 0, 10, 0)
    with pytest.raises(InvalidInput):
        Link.from_dict({"start": 0, "end": True, "digest": "ab" * 32, "seed": 0,
                        "hash": "ab" * 32})


def test_first_mismatch_points_at_the_first_differing_segment() -> None:
    a = chain_of([10, 20, 30])
    b = [a[0], checkpoints.extend(a[:1], G, sha(b"forged"), 20, 3)]
    assert checkpoints.first_mismatch(a, b) == 1
    assert checkpoints.first_mismatch(a, a[:2]) is None


# --- the coordinator's checkpoint API -------------------------------------------------------

SPEC = {"kind": "train", "model": "mlp-digits", "max_price": 1000, "epochs": 1,
        "checkpoint_every": 10}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(Path(tmp_path_factory.mktemp(f"ckpt-{request.param}")), url,
                heartbeat_timeout=2.0, lease_ttl=30.0, verify=False)
    n.start_coordinator()
    yield n
    n.close()


class Hand:
    def __init__(self, net: Network, price: int) -> None:
        self.ident = Identity.generate()
        self.c = Client(net.url, self.ident)
        self.c.faucet(50_000_000)
        self.c.register(wire.RegisterIn(
            hardware=wire.Hardware(cpu_model="test cpu", cores=2, memory_mb=4096),
            benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
            offers=[wire.OfferIn(workload="train", model="mlp-digits", price=price)]))
        self.c.bond(10_000_000)

    def take(self) -> wire.AssignmentOut:
        # A poll is no sign of life: beat between short polls as an agent does, or this
        # hand would go offline itself (heartbeat_timeout=2) while it waits for the task.
        end = time.monotonic() + 90
        while time.monotonic() < end:
            self.c.heartbeat([])
            got = self.c.poll(wait=1).assignments
            if got:
                assert len(got) == 1
                return got[0]
        raise AssertionError("no assignment within 90 s")

    def post(self, a: wire.AssignmentOut, step: int, data: bytes, chain_hash: str
             ) -> wire.CheckpointOut:
        digest = self.c.upload(data).digest
        return self.c.checkpoint(a.id, wire.CheckpointIn(step=step, digest=digest,
                                                         chain_hash=chain_hash))


def test_checkpoints_are_checked_recorded_and_resumed_elsewhere(net: Network) -> None:
    first = Hand(net, 500)
    client = Client(net.url, Identity.generate())
    client.faucet(100_000_000)
    shard = kinds.get("train").split(specs.parse_spec(SPEC), b"")[0].payload
    job = client.submit_job(SPEC, client.upload(b'{"dataset": "digits"}').digest)
    a = first.take()
    assert a.resume is None and a.input_digest == sha(shard)
    seed = train.parse_payload(shard).seed
    g = checkpoints.genesis(a.input_digest)

    h10 = checkpoints.link(sha(b"step 10"), g, 0, 10, seed)
    assert first.post(a, 10, b"step 10", h10).status == "recorded"
    with pytest.raises(Conflict):
        first.post(a, 10, b"step 10", h10)  # the step does not advance
    with pytest.raises(InvalidInput) as exc:  # links to genesis, skipping step 10
        first.post(a, 20, b"step 20", checkpoints.link(sha(b"step 20"), g, 0, 20, seed))
    assert exc.value.field == "chain_hash"
    with pytest.raises(NotFound) as exc:  # never uploaded: the 404 of another's blob
        first.c.checkpoint(a.id, wire.CheckpointIn(step=20, digest="0" * 64, chain_hash=h10))
    assert exc.value.field == "digest"
    with pytest.raises(InvalidInput) as exc:
        first.post(a, 10_000, b"late", checkpoints.link(sha(b"late"), h10, 10, 10_000, seed))
    assert exc.value.field == "step"
    h20 = checkpoints.link(sha(b"step 20"), h10, 10, 20, seed)
    assert first.post(a, 20, b"step 20", h20).step == 20

    second = Hand(net, 900)
    with pytest.raises(Forbidden):
        second.post(a, 30, b"step 30", checkpoints.link(sha(b"step 30"), h20, 20, 30, seed))
    first.c.close()  # goes silent; its lease expires and the task moves on
    b = second.take()
    assert b.task_id == a.task_id and b.id != a.id
    assert b.resume == {"step": 20, "digest": sha(b"step 20"), "chain_hash": h20, "meta": {}}
    first.c = Client(net.url, first.ident)
    with pytest.raises(Conflict):  # the first provider's lease is over
        first.post(a, 30, b"step 30", checkpoints.link(sha(b"step 30"), h20, 20, 30, seed))
    h30 = checkpoints.link(sha(b"step 30"), h20, 20, 30, seed)
    assert second.post(b, 30, b"step 30", h30).status == "recorded"

    listed = client.checkpoints(job.id)
    assert [(cp["step"], cp["provider_id"]) for cp in listed] == [
        (10, first.ident.id), (20, first.ident.id), (30, second.ident.id)]
    assert [cp["chain_hash"] for cp in listed] == [h10, h20, h30]
    pages, after = [], 0  # a page at a time, as far as ``next_after`` leads
    while after is not None:
        page = client.request("GET", f"/api/jobs/{job.id}/checkpoints",
                              params={"after": after, "limit": 2}).json()
        pages.append([cp["step"] for cp in page["checkpoints"]])
        after = page["next_after"]
    assert pages == [[10, 20], [30]]
    client.cancel_job(job.id)

