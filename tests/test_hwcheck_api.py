"""The hardware-challenge API against a real coordinator process: the protocol step by
step with signed requests, answered by the provider's real runner in this process, and
bad input refused with a 4xx naming the field and changing nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from deai.client.sdk import Client
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import wire
from deai.core import wire_hardware as wh
from deai.core.errors import Conflict, DeAIError, Forbidden, InvalidInput
from deai.core.hwcheck import Spec
from deai.provider import challenge
from deai.store.models import HwChallenge
from tests.netutil import Network

HW = wire.Hardware(cpu_model="test cpu", cores=1, memory_mb=600, gpus=[])
BENCH = wire.Benchmark(gflops=5.0, mem_gbps=4.0)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("hwapi"), verify=False)
    n.env.update({"DEAI_HW_TARGET_S": "0.05", "DEAI_HW_MEM_FRACTION": "0.05",
                  "DEAI_HW_LATENCY_S": "30", "DEAI_HW_RETRY_S": "0"})
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def provider(net: Network, name: str, hw: wire.Hardware = HW) -> Client:
    c = net.client(name)
    c.register(wire.RegisterIn(name=name, hardware=hw, benchmark=BENCH, threads=1,
                               offers=[wire.OfferIn(workload="embeddings",
                                                    model="all-MiniLM-L6-v2", price=1000)]))
    return c


def poll(c: Client) -> wh.ChallengeOut | None:
    return c._post("/api/hardware/challenge", {}, wh.PollOut).challenge  # type: ignore[no-any-return]


def claim(net: Network, pid: str) -> dict[str, object]:
    return httpx.get(f"{net.url}/api/hardware/claims/{pid}", timeout=30).json()  # type: ignore[no-any-return]


def test_registration_challenge_passes_and_verifies_the_claim(net: Network) -> None:
    c = provider(net, "hw-ok")
    ch = poll(c)
    assert ch is not None and Spec.from_dict(ch.spec).parts[0].device == "cpu"
    assert poll(c) == ch  # one outstanding challenge at a time: asked again, the same
    v = challenge.run_challenge(c, 1, ch, challenge.Cheat())
    assert v is not None and v.outcome == "passed", v
    got = claim(net, c._me())
    assert got["status"] == "verified" and got["passes"] == 1 and got["current"]
    assert got["verified_memory_mb"] == 600 and 0 < float(got["verified_units"]) <= 0.1
    assert poll(c) is None  # the next one comes at a random time, not now


def test_a_wrong_product_is_flagged_at_once(net: Network) -> None:
    c = provider(net, "hw-wrong")
    ch = poll(c)
    assert ch is not None
    v = challenge.run_challenge(c, 1, ch, challenge.Cheat(wrong=True))
    assert v is not None and v.outcome == "wrong" and v.status == "flagged"
    assert claim(net, c._me())["verified_units"] == 0


def test_bad_input_is_refused_with_the_field(net: Network) -> None:
    c = provider(net, "hw-bad")
    other = provider(net, "hw-other")
    ch = poll(c)
    assert ch is not None
    base = f"/api/hardware/challenges/{ch.id}"
    with pytest.raises(InvalidInput) as e:
        c._post(f"{base}/commit", {"root": "xyz"}, wh.CommitOut)
    assert e.value.field and "root" in e.value.field
    with pytest.raises(InvalidInput) as e:
        c._post(f"{base}/commit", {"seconds": 1.0}, wh.CommitOut)  # neither root nor error
    assert e.value.field == "root"
    with pytest.raises(Forbidden):
        other._post(f"{base}/commit", {"root": "0" * 64}, wh.CommitOut)
    with pytest.raises(Conflict):
        c._post(f"{base}/open", {"rows": [], "proofs": []}, wh.VerdictOut)  # not committed
    got = c._post(f"{base}/commit", {"root": "0" * 64}, wh.CommitOut)
    assert got.opening is not None and got.opening.rows
    with pytest.raises(InvalidInput) as e:
        c._post(f"{base}/open", {"rows": ["AAAA"], "proofs": [[]]}, wh.VerdictOut)
    assert e.value.field == "rows"
    n = len(got.opening.rows)
    with pytest.raises(InvalidInput) as e:
        c._post(f"{base}/open", {"rows": ["!!"] * n, "proofs": [[]] * n,
                                 "values": [0] * len(got.opening.positions)}, wh.VerdictOut)
    assert e.value.field == "rows[0]"
    with pytest.raises(Conflict):
        c._post(f"{base}/commit", {"root": "0" * 64}, wh.CommitOut)  # one commitment
    assert claim(net, c._me())["status"] == "unverified"  # none of it changed the claim
    with pytest.raises(DeAIError):
        c._post("/api/hardware/challenges/hwc_nope/commit", {"root": "0" * 64}, wh.CommitOut)
    assert httpx.get(f"{net.url}/api/hardware/claims/nobody", timeout=30).status_code == 404


def test_a_changed_identity_asks_for_a_new_challenge(net: Network) -> None:
    c = provider(net, "hw-move")
    ch = poll(c)
    assert ch is not None
    assert challenge.run_challenge(c, 1, ch, challenge.Cheat()).outcome == "passed"  # type: ignore[union-attr]
    assert poll(c) is None
    provider(net, "hw-move", HW.model_copy(update={"memory_mb": 300}))
    got = claim(net, c._me())
    assert not got["current"] and got["status"] == "unverified" and got["verified_units"] == 0
    again = poll(c)
    assert again is not None and Spec.from_dict(again.spec).parts[0].mem_mb == 15


def test_an_identity_changed_during_a_challenge_gets_an_identity_challenge(
        net: Network) -> None:
    """The change is noticed by the in-flight challenge's commit, not by a poll: the next
    challenge is still the new identity's (its reason says so), issued at once."""
    c = provider(net, "hw-midway")
    ch = poll(c)
    assert ch is not None
    provider(net, "hw-midway", HW.model_copy(update={"memory_mb": 300}))
    challenge.run_challenge(c, 1, ch, challenge.Cheat())  # judged against the old identity
    again = poll(c)
    assert again is not None and Spec.from_dict(again.spec).parts[0].mem_mb == 15
    reader = Coordinator(Settings(data_dir=net.root / "coordinator", devnet=True))
    try:
        with reader.db.read() as s:
            reasons = dict(s.execute(select(HwChallenge.id, HwChallenge.reason).where(
                HwChallenge.provider_id == c._me())).all())
    finally:
        reader.db.dispose()
    assert reasons == {ch.id: "registration", again.id: "identity"}


def test_cloud_index_lists_sources_and_dates(net: Network) -> None:
    idx = httpx.get(f"{net.url}/api/hardware/cloud-index", timeout=30).json()
    assert idx["cloud"] and all(r["source"] and r["date"] for r in idx["cloud"])
    assert all(r["usd_per_unit_hour"] > 0 for r in idx["cloud"])
    assert {r["hardware_class"] for r in idx["cloud"]} >= {"cpu", "gpu:H100"}

