"""Hardware challenges with real processes: a uvicorn coordinator and provider agents that
answer challenges with torch on this CPU, over loopback.

An honest provider passes round after round while the machine is busy; providers that
claim twice their speed, memory they cannot hold, or that cut operands to bfloat16 are
flagged within three challenges, lose what they claimed in matching's inputs and, on
repeated failure, part of their stake; a changed identity is challenged again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from deai.coordinator import hardware
from deai.coordinator.matching import provider_states
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger, wire
from deai.store.models import Event, HwChallenge
from tests.helpers import HW_ENV, audit_ok
from tests.netutil import Network, Proc

pytestmark = pytest.mark.slow


@contextmanager
def _network(root: Path, **env: str) -> Iterator[Network]:
    n = Network(root, heartbeat_timeout=6.0, verify=False)
    n.env.update({**HW_ENV, **env})
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with _network(tmp_path) as n:
        yield n


@pytest.fixture
def busy_net(tmp_path: Path) -> Iterator[Network]:
    """For an honest provider on a shared 2-core test machine under deliberate load: a
    margin of 4 (docs/compute-units.md: timing spread measured 2-4x under such load),
    which still flags a 4x overclaim; production's 1.5 assumes a machine of its own."""
    with _network(tmp_path, DEAI_HW_MARGIN="4") as n:
        yield n


@pytest.fixture
def patient_net(tmp_path: Path) -> Iterator[Network]:
    """Deadlines no busy test machine misses (30 s latency allowance): what flags a
    provider here is what it computed, never when."""
    with _network(tmp_path, DEAI_HW_LATENCY_S="30") as n:
        yield n


def start(net: Network, name: str, *, env: dict[str, str] | None = None,
          data_limit_mb: int | None = None) -> Proc:
    """A provider agent; ``data_limit_mb`` runs it under a real memory limit (RLIMIT_DATA)."""
    if data_limit_mb is None:
        return net.start_provider(name, 1000, "--name", name, env=env)
    net.key(name)
    args = ["prlimit", f"--data={data_limit_mb << 20}", sys.executable, "-m", "deai.provider",
            "--coordinator", net.url, "--key", name, "--threads", "1", "--price", "1000",
            "--models", "all-MiniLM-L6-v2", "--name", name]
    proc = Proc(args, net.root / f"{name}.log", {**net.env, **(env or {})})
    net.providers[name] = proc
    return proc


def claims(net: Network) -> dict[str, dict[str, Any]]:
    data = httpx.get(f"{net.url}/api/hardware/claims", timeout=60).json()
    return {c["name"]: c for c in data["claims"]}


def wait_for(net: Network, what: str, cond: Any, timeout: float = 300.0) -> dict[str, Any]:
    end = time.time() + timeout
    while time.time() < end:
        got = claims(net)
        if cond(got):
            return got
        time.sleep(0.5)
    raise TimeoutError(f"{what}: {claims(net)}\n{net.logs()}")


@dataclass(frozen=True)
class Ch:
    id: str
    status: str
    reason: str


def challenges(coord: Coordinator, pid: str) -> list[Ch]:
    with coord.db.read() as s:
        return [Ch(r.id, r.status, r.reason) for r in s.scalars(
            select(HwChallenge).where(HwChallenge.provider_id == pid)
            .order_by(HwChallenge.issued_at))]


def flagging_challenge(coord: Coordinator, pid: str) -> str | None:
    """The challenge whose verdict first flagged the provider's claim."""
    with coord.db.read() as s:
        ev = s.scalars(select(Event).where(Event.kind == "hardware_flagged",
                                           Event.subject == pid).order_by(Event.id)).first()
        return None if ev is None else str(ev.body["challenge"])


def judged(rows: list[Ch]) -> list[str]:
    return [r.status for r in rows if r.status not in ("issued", "committed")]


def reader(net: Network) -> Coordinator:
    """The coordinator's own database, opened read-side from the test."""
    return Coordinator(Settings(data_dir=net.root / "coordinator", devnet=True))


def test_honest_provider_passes_every_round_under_load(busy_net: Network) -> None:
    net = busy_net
    # other work on the machine, there before the provider measured what it claims and
    # all along: a busy process, and embedding jobs for the provider itself
    hog = subprocess.Popen([sys.executable, "-c",
                            "import numpy as np\nx=np.ones(2_000_000)\nwhile True: x.sum()"])
    try:
        start(net, "honest")
        net.wait_providers(1, timeout=400)
        c = net.client("client")
        c.faucet(1_000_000_000)
        lines = (Path(__file__).resolve().parents[1] / "examples" / "sentences.jsonl") \
            .read_bytes().splitlines()[:60]
        digest = c.upload(b"\n".join(lines) + b"\n").digest
        c.submit_job({"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 2000,
                      "deadline": 900}, digest)
        got = wait_for(net, "eight judged challenges", lambda g: g.get("honest", {})
                       .get("passes", 0) + g.get("honest", {}).get("fails", 0) >= 8)
    finally:
        hog.kill()
        hog.wait(10)
    h = got["honest"]
    rows = challenges(reader(net), h["provider"])
    outcomes = judged(rows)
    # never flagged, never slashed, never a wrong answer; a round that ran late under the
    # load is a measurement (it lowers the verified figure), not a failed claim
    assert h["status"] == "verified" and h["current"] and h["slashed"] == 0, (h, outcomes)
    assert set(outcomes) <= {"passed", "slow"}, outcomes
    pairs = zip(outcomes[:-1], outcomes[1:], strict=True)
    assert not any(a == b == "slow" for a, b in pairs), outcomes
    assert 0 < h["verified_units"] <= h["claimed_units"] + 1e-9
    assert h["verified_memory_mb"] == 512
    assert rows[0].reason == "registration"
    with reader(net).db.read() as s:
        assert s.scalar(select(func.count()).select_from(Event)
                        .where(Event.kind == "hardware_flagged")) == 0


def test_cheaters_are_flagged_within_three_challenges(net: Network) -> None:
    # 4x its best measured rate: a 2x claim against margin 1.5 leaves 20 % between the
    # cheat and the deadline, and an agent that measured its rate while another started
    # beside it (both load models) can run that much faster later: in a whole-suite run
    # it passed three challenges before failing (docs/benchmarks.md, bench_hwcheck, has
    # how 1.5x and 2x claims fare on a machine whose load is steady).
    start(net, "fast-talker", env={"DEAI_HW_CHEAT": "overclaim=4"})
    start(net, "no-memory", env={"DEAI_HW_CHEAT": "memory_mb=16384"}, data_limit_mb=1536)
    net.wait_providers(2, timeout=400)
    got = wait_for(net, "two cheaters flagged",
                   lambda g: all(g.get(n, {}).get("status") == "flagged"
                                 for n in ("fast-talker", "no-memory")))
    coord = reader(net)
    for name, first_fail in (("fast-talker", "slow"), ("no-memory", "error")):
        rows = challenges(coord, got[name]["provider"])
        flagged_by = flagging_challenge(coord, got[name]["provider"])
        order = [r.id for r in rows if r.status not in ("issued", "committed")]
        outcomes = judged(rows)
        assert flagged_by in order and order.index(flagged_by) < 3, (name, outcomes)
        assert first_fail in outcomes[:3] and "passed" not in outcomes, (name, outcomes)
    assert got["no-memory"]["verified_memory_mb"] == 0
    assert 0 < got["fast-talker"]["verified_units"] < 0.75 * got["fast-talker"]["claimed_units"]

    # matching's inputs, through the hook: the wrong one is out, the others keep only
    # what they proved (no memory for a model: not matched for work needing it)
    with coord.db.read() as s:
        states = {st.id: st for st in hardware.apply_verified(coord, s,
                                                              provider_states(coord, s))}
    nomem = states.get(got["no-memory"]["provider"])
    assert nomem is None or nomem.memory_mb == 0
    fast = states.get(got["fast-talker"]["provider"])
    assert fast is not None and fast.compute_units == pytest.approx(
        got["fast-talker"]["verified_units"], rel=1e-6)

    # repeated hard failure slashes part of the stake, through the journal; late answers
    # alone never do (a client's load can make an honest machine late)
    got = wait_for(net, "a slash", lambda g: g["no-memory"]["slashed"] > 0)
    c = net.client()
    entries = [ledger.Entry.from_dict(e) for e in c.journal(limit=5000).entries]
    slashes = [e for e in entries if e.kind == "slash"
               and e.body.get("provider") == got["no-memory"]["provider"]]
    assert slashes and slashes[0].body["reason"] == "hardware challenge"
    fast = challenges(coord, got["fast-talker"]["provider"])
    if "passed" not in judged(fast) and {"wrong", "error", "expired"}.isdisjoint(judged(fast)):
        assert got["fast-talker"]["slashed"] == 0, judged(fast)
    audit_ok(c)


def test_a_wrong_product_is_flagged_whatever_the_time(patient_net: Network) -> None:
    """An agent that cuts the challenge operands to bfloat16 (cheap, wrong) is flagged by its
    answer alone, is out of matching's inputs and never passes."""
    net = patient_net
    start(net, "approximator", env={"DEAI_HW_CHEAT": "wrong"})
    net.wait_providers(1, timeout=400)
    got = wait_for(net, "the approximator flagged",
                   lambda g: g.get("approximator", {}).get("status") == "flagged")
    coord = reader(net)
    pid = got["approximator"]["provider"]
    rows = challenges(coord, pid)
    order = [r.id for r in rows if r.status not in ("issued", "committed")]
    outcomes = judged(rows)
    assert flagging_challenge(coord, pid) in order[:3], outcomes
    assert "wrong" in outcomes[:3] and "passed" not in outcomes, outcomes
    assert got["approximator"]["verified_units"] == 0
    with coord.db.read() as s:
        states = {st.id for st in hardware.apply_verified(coord, s, provider_states(coord, s))}
    assert pid not in states


def test_a_changed_identity_is_challenged_again(net: Network) -> None:
    start(net, "mover")
    net.wait_providers(1, timeout=400)
    got = wait_for(net, "verified", lambda g: g.get("mover", {}).get("passes", 0) >= 1)
    pid = got["mover"]["provider"]
    c = net.client("mover")
    p = c.provider(pid)
    hw = dict(p.hardware)
    hw["gpus"] = []
    hw["memory_mb"] = 400  # the same key now reports other hardware
    reg = wire.RegisterIn(name=p.name, hardware=wire.Hardware(**hw),
                          benchmark=wire.Benchmark(**p.benchmark), threads=p.threads,
                          slots=p.slots, offers=[wire.OfferIn(workload=o.workload,
                                                              model=o.model, price=o.price)
                                                 for o in p.offers])
    c.register(reg)
    after = claims(net)["mover"]
    assert not after["current"] or after["status"] == "unverified" or \
        any(r.reason == "identity" for r in challenges(reader(net), pid))
    wait_for(net, "an identity challenge",
             lambda g: any(r.reason == "identity" for r in challenges(reader(net), pid)))
    got = wait_for(net, "verified again", lambda g: g["mover"]["status"] == "verified"
                   and g["mover"]["current"] and g["mover"]["verified_memory_mb"] == 400)
    rows = challenges(reader(net), pid)
    first = next(i for i, r in enumerate(rows) if r.reason == "identity")
    assert "passed" in [r.status for r in rows[first:]], rows
