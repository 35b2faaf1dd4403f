"""Two adversary classes against real processes (a coordinator, three honest providers,
the network's trusted verifier and the cheater, each its own process):

- a **role reader** (``--cheat role-reader``, ``provider.cheat_roles``): before each
  task it reads its lease, what came with it, the explorer and the event stream, and
  fabricates embeddings only where nothing it can observe says the task is checked;
- a **rubber-stamper** (``--cheat rubber-stamp``): honest on its own work, and asked
  to check a chat claim it agrees without running the model.

Each is caught and slashed, no honest provider is, every result a client got is
correct once the challenge window has closed, and the ledger audits.

The coordinator runs with ``--forced-share 0.35`` (a chat check is handed a claim made
wrong on purpose a third of the time; the default is 2 %) so that the rubber-stamper
meets a forced error within a few checks instead of ~50: the mechanism is the real one
(``matching._lease`` forges, ``verify.on_result`` → ``decide.on_forced`` slashes), only
its rate is raised to keep the test short. The rubber-stamper bonds 10x the minimum
stake, as one that wants check fees would: checkers are drawn by stake x reputation.
Its test adds two honest chat providers: a checker that noticed a forced error is a
party to the task and is not drawn again for its real check, so with few eligible
checkers a task could run out of them (see the report in docs/verification.md).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import numpy as np
import pytest

from deai.client import keys
from deai.client.sdk import Client
from tests.helpers import audit_ok, check_books, honest_vectors, journal, sample
from tests.netutil import Network, Proc

pytestmark = pytest.mark.slow
EMBED = "all-MiniLM-L6-v2"
CHAT_MODEL = "SmolLM2-135M-Instruct"
MODELS = f"{EMBED},{CHAT_MODEL}"
SPEC = {"kind": "embeddings", "model": EMBED, "max_price": 2000, "deadline": 900,
        "shard_size": 5}  # 40 lines: 8 shards, larger than a canary job
CHAT = {"kind": "chat", "model": CHAT_MODEL, "max_price": 5000, "deadline": 900,
        "shard_size": 1}
HONEST = ("adv-honest-1", "adv-honest-2", "adv-honest-3")


class PatientNetwork(Network):
    """The coordinator may take more than a minute to import on a loaded 2-core box."""

    def wait_ready(self, timeout: float = 300.0) -> None:
        super().wait_ready(timeout)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = PatientNetwork(tmp_path_factory.mktemp("adversaries"), heartbeat_timeout=6.0,
                       challenge_window=90.0, verifiers=1,
                       extra=("--verify-timeout", "120", "--forced-share", "0.35"))
    n.start_coordinator()
    try:
        for name, price in zip(HONEST, (900, 950, 1000), strict=True):
            n.start_provider(name, price, "--models", MODELS)
        n.start_verifier("verifier-1", "--models", MODELS)
        n.wait_providers(3, timeout=900)
        yield n
    finally:
        n.close()


def start(net: Network, name: str, mode: str, price: int, *extra: str) -> Proc:
    proc = net.start_provider(name, price, *extra, env={"DEAI_PROVIDER_CHEAT": mode})
    pid = keys.load(name).id
    end = time.time() + 900
    while not any(p.id == pid and p.online and p.stake > 0 for p in net.client().providers()):
        assert proc.alive() and time.time() < end, proc.tail()
        time.sleep(0.5)
    return proc


def slashed(c: Client) -> set[str]:
    return {e.body["provider"] for e in journal(c) if e.kind == "slash"}


def until_slashed(net: Network, c: Client, cheater: str, spec: dict[str, object],
                  data: bytes, most: int) -> list[str]:
    """Jobs, one after the other, until ``cheater`` is slashed; their ids."""
    jobs: list[str] = []
    while cheater not in slashed(c):
        assert len(jobs) < most, net.logs()
        job = c.submit_job(spec, c.upload(data).digest)
        assert net.wait_job(c, job.id, timeout=600) == "completed", net.logs()
        jobs.append(job.id)
    return jobs


def wait_final(net: Network, c: Client, jobs: list[str]) -> None:
    """Until every job's challenge window has closed (look-backs and audits done)."""
    end = time.time() + 900
    while any(c.job(j).final_at is None for j in jobs):
        assert time.time() < end, net.logs()
        time.sleep(2.0)


def assert_honest_untouched(c: Client, cheater: str, before: dict[str, int],
                            names: tuple[str, ...] = HONEST) -> None:
    honest = {keys.load(n).id for n in names}
    assert cheater in slashed(c)
    assert not slashed(c) & honest
    after = {p.id: p.stake for p in c.providers()}
    assert after[cheater] < before[cheater]
    for pid in honest:
        assert after[pid] == before[pid], "no honest provider is slashed"


@pytest.mark.timeout(3000)
def test_role_reader_is_caught_and_its_results_corrected(net: Network) -> None:
    """It cheats only where nothing it can observe says "checked"; the replicas that a
    new provider's work always gets (and that it cannot see coming: ρ is drawn after
    the result is in) catch it, the verifier referees, it is slashed, and the look-back
    re-checks what it got accepted."""
    proc = start(net, "adv-reader", "role-reader", 500, "--models", EMBED)
    cheater = keys.load("adv-reader").id
    c = net.client("adv-reader-client")
    c.faucet(1_000_000_000)
    before = {p.id: p.stake for p in c.providers()}
    data = sample(40)
    want = honest_vectors(data)
    jobs = until_slashed(net, c, cheater, SPEC, data, most=5)
    proc.stop()
    log = (net.root / "adv-reader.log").read_text()
    decisions = re.findall(r"role reader: lease \S+ task \S+ job \S+: (cheat|honest)", log)
    assert "cheat" in decisions, log[-4000:]  # it did find leases it believed unchecked

    assert_honest_untouched(c, cheater, before)
    verdicts = [e.body for e in journal(c) if e.kind == "verdict"
                and cheater in (e.body.get("subject"), e.body.get("checker"))]
    assert verdicts and all(v["fault"] != "none" for v in verdicts)
    wait_final(net, c, jobs)  # no bad result left standing after the window
    for job_id in jobs:
        for line in map(json.loads, c.results(job_id).splitlines()):
            got = np.array(line["response"]["body"]["data"][0]["embedding"])
            assert float(got @ want[line["custom_id"]]) > 0.999, (job_id, line["custom_id"])
        check_books(c, job_id)
    audit_ok(c)


def chat_input(prompts: list[str]) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"q{i}", "url": "/v1/chat/completions",
        "body": {"model": CHAT_MODEL, "max_tokens": 8, "temperature": 0,
                 "messages": [{"role": "user", "content": p}]}}).encode() + b"\n"
        for i, p in enumerate(prompts))


def greedy(prompts: list[str]) -> dict[str, str]:
    from deai.workloads import chat

    shard = b"".join(json.dumps({"custom_id": f"q{i}", "messages": [
        {"role": "user", "content": p}], "max_tokens": 8, "temperature": 0.0, "top_p": 1.0,
        "seed": 0}).encode() + b"\n" for i, p in enumerate(prompts))
    return {o["custom_id"]: o["text"] for o in map(
        json.loads, chat.complete(CHAT_MODEL, shard)[0].splitlines())}


@pytest.mark.timeout(3000)
def test_rubber_stamper_is_caught_by_forced_errors(net: Network) -> None:
    """Its own completions are honest, and its stamps on honest claims are right by
    luck; a forced error (a claim the network made wrong on purpose) is what it
    agrees to, and that alone slashes it: no referee, no honest party's word."""
    more = ("adv-honest-4", "adv-honest-5")
    for name in more:  # enough eligible checkers for a task whatever the forced draws
        start(net, name, "", 1000, "--models", CHAT_MODEL)
    proc = start(net, "adv-stamper", "rubber-stamp", 1200, "--models", CHAT_MODEL,
                 "--stake", "100000000")  # 100 DEAI
    cheater = keys.load("adv-stamper").id
    c = net.client("adv-stamper-client")
    c.faucet(1_000_000_000)
    before = {p.id: p.stake for p in c.providers()}
    prompts = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."]
    data = chat_input(prompts)
    jobs = until_slashed(net, c, cheater, CHAT, data, most=8)
    proc.stop()
    log = (net.root / "adv-stamper.log").read_text()
    assert "agreed to a check without running it" in log, log[-4000:]

    assert_honest_untouched(c, cheater, before, HONEST + more)
    stamps = [e.body for e in journal(c) if e.kind == "verdict"
              and e.body.get("fault") == "rubber_stamp"]
    assert stamps and {v["checker"] for v in stamps} == {cheater}, stamps
    wait_final(net, c, jobs)
    want = greedy(prompts)
    for job_id in jobs:
        for line in map(json.loads, c.results(job_id).splitlines()):
            got = line["response"]["body"]["choices"][0]["message"]["content"]
            assert got == want[line["custom_id"]], (job_id, line["custom_id"])
        check_books(c, job_id)
    audit_ok(c)
