"""Helpers shared by the tests: hand-driven providers, funded clients, sample inputs,
the books checks and the cheater processes. Test modules import from here, never from
each other.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.client import keys
from deai.client.audit import client_audit
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import admission, leases
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import auth, ledger, wire
from deai.core.clock import ManualClock
from deai.core.errors import DeAIError
from deai.core.wire_leases import HostIn
from deai.store import journal as db_journal
from deai.store import migrate
from deai.store.models import JournalEntry, Provider
from tests.netutil import Network, Proc

ROOT = Path(__file__).resolve().parents[1]

MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600,
        "shard_size": 2}
CHAT = "SmolLM2-135M-Instruct"

T = TypeVar("T")


def lines(n: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"model": MODEL, "input": f"sentence {i}"}}).encode()
                    + b"\n" for i in range(start, start + n))


def register(c: Coordinator, address: str = "", *, model: str = MODEL,
             price: int = 1000, workload: str = "embeddings", cpu: str = "cpu",
             ident: Identity | None = None) -> str:
    """A provider (``ident``, else a new key) registered straight into ``c`` (one thread,
    an offer of ``model`` for ``workload`` at ``price``), from the network ``address``,
    its hardware's fingerprint told by its ``cpu``; its id."""
    pid = (ident or Identity.generate()).id
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model=cpu, cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=5.0, mem_gbps=4.0), threads=1,
        offers=[wire.OfferIn(workload=workload, model=model, price=price)]),
        address=address)
    return pid


class HandProvider:
    """A provider whose every move the test makes itself."""

    def __init__(self, net: Network, price: int = 1000, memory_mb: int = 4096,
                 stake: int = 10_000_000, *, ident: Identity | None = None,
                 slots: int = 1, offer: tuple[str, str] = ("embeddings", MODEL),
                 extra_offers: Sequence[tuple[str, str]] = ()) -> None:
        """``offer`` (and any ``extra_offers``, a (workload, model) each), all at ``price``."""
        self.ident = ident or Identity.generate()
        self.c = Client(net.url, self.ident)
        self.c.faucet(50_000_000)
        self.c.register(wire.RegisterIn(
            hardware=wire.Hardware(cpu_model="test cpu", cores=2, memory_mb=memory_mb),
            benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=slots,
            offers=[wire.OfferIn(workload=w, model=m, price=price)
                    for w, m in (offer, *extra_offers)]))
        if stake:
            self.c.bond(stake)

    @property
    def id(self) -> str:
        return self.ident.id

    def take(self, wait: float = 5.0) -> list[wire.AssignmentOut]:
        # A poll is not a sign of life (liveness is the heartbeat's): beat as an agent does.
        if time.time() - getattr(self, "_beat", 0.0) > 0.5:
            self._beat = time.time()
            self.c.heartbeat([])
        return self.c.poll(wait=wait).assignments

    def take_one(self, within: float = 120.0) -> wire.AssignmentOut:
        """The first lease offered within ``within`` seconds (the request the test sent)."""
        end = time.time() + within
        while True:
            assert time.time() < end, "the request never reached the provider"
            got = self.take(wait=1.0)
            if got:
                return got[0]

    def answer(self, a: wire.AssignmentOut, dims: int = 384) -> wire.ResultOut:
        # Inline when small, as the agent reads it: a download needs a live lease.
        raw = (base64.b64decode(a.input_b64) if a.input_b64 is not None
               else self.c.download(a.input_digest))
        rows = [json.loads(x) for x in raw.splitlines()]
        out = b"".join(json.dumps({"custom_id": r["custom_id"],
                                   "embeddings": [[0.25] * dims for _ in r["input"]],
                                   "prompt_tokens": 4}).encode() + b"\n" for r in rows)
        digest = self.c.upload(out).digest
        sig = self.ident.sign(auth.result_message(a.id, digest, a.units))
        return self.c.submit_result(a.id, wire.ResultIn(output_digest=digest, units=a.units,
                                                        signature=sig))

    def record_chat(self, a: wire.AssignmentOut, lines: list[bytes]) -> wire.ResultOut:
        """Submit, inline, ``lines`` as the result of the chat lease ``a``: one line per
        choice, ``%(cid)s`` standing for the request's custom_id (see ``chat_line``)."""
        shard = base64.b64decode(a.input_b64 or "").splitlines()
        cids = [json.loads(x)["custom_id"].encode() for x in shard]
        assert len(cids) == len(lines)
        out = b"".join(line.replace(b"%(cid)s", cid) + b"\n"
                       for line, cid in zip(lines, cids, strict=True))
        units = 20 * len(lines) + len(lines)
        digest = hashlib.sha256(out).hexdigest()
        return self.c.submit_result(a.id, wire.ResultIn(
            output_digest=digest, units=units, output_b64=base64.b64encode(out).decode(),
            signature=self.ident.sign(auth.result_message(a.id, digest, units))))

    def quit(self) -> None:
        """Go silent: stop heartbeating so the coordinator takes the leases back."""
        self.c.close()


@dataclass
class AuditedJob:
    """What ``audited_job`` made: the network, its two workers, its verifier, the job's
    owner and the job."""

    net: Network
    workers: tuple[HandProvider, HandProvider]
    verifier: HandProvider
    owner: Client
    job: str


@contextlib.contextmanager
def audited_job(root: Path, *, heartbeat_timeout: float, lease_ttl: float,
                challenge_window: float) -> Iterator[AuditedJob]:
    """A coordinator that audits every task and draws no canaries, with one trusted
    verifier (a ``HandProvider`` of no price or stake) and two workers (prices 900 and
    950); a funded owner's two-line embeddings job, answered by the workers until it
    completes (within a minute). The network is closed afterwards."""
    verifier = Identity.generate()
    net = Network(root, heartbeat_timeout=heartbeat_timeout, lease_ttl=lease_ttl,
                  challenge_window=challenge_window,
                  extra=("--canary-share", "0", "--audit-share", "1.0",
                         "--verifier-key", verifier.id))
    net.start_coordinator()
    try:
        a, b = HandProvider(net, price=900), HandProvider(net, price=950)
        v = HandProvider(net, price=0, stake=0, ident=verifier)
        c = funded(net)
        job = c.submit_job({**SPEC, "shard_size": 2}, c.upload(lines(2)).digest).id
        end = time.time() + 60
        while c.job(job).status != "completed":
            assert time.time() < end, f"the job never completed: {c.job(job)}"
            for p in (a, b):
                for lease in p.take(wait=0.2):
                    p.answer(lease)
        yield AuditedJob(net, (a, b), v, c, job)
    finally:
        net.close()


def chat_line(text: str) -> bytes:
    """An honest-looking chat output line for ``HandProvider.record_chat``: ``text`` in one
    token, after a 20-token prompt."""
    return json.dumps({"custom_id": "%(cid)s", "token_ids": [19556], "text": text,
                       "finish_reason": "stop", "prompt_tokens": 20,
                       "completion_tokens": 1}).encode()


def running(net: Network) -> Iterator[Network]:
    """``net`` with its coordinator started, closed afterwards: for a fixture to yield from."""
    net.start_coordinator()
    try:
        yield net
    finally:
        net.close()


def api_key(owner: Client, name: str) -> str:
    """The secret of a new API key of ``owner``'s."""
    key = owner.create_api_key(name).key
    assert key is not None
    return key


def in_background(fn: Callable[[], T]) -> Callable[[float], T]:
    """Start ``fn`` in a thread now; the function returned waits up to its argument in
    seconds for ``fn`` to finish, and gives what it returned."""
    got: list[T] = []
    thread = threading.Thread(target=lambda: got.append(fn()))
    thread.start()

    def result(join_s: float) -> T:
        thread.join(join_s)
        assert got, "the call never returned (still running, or it raised)"
        return got[0]
    return result


@dataclass
class Pause:
    """Where ``paused`` holds a writer: ``reached`` is set when it gets there, and it goes
    on once ``go`` is set."""

    reached: threading.Event
    go: threading.Event

    def go_after(self, seconds: float) -> None:
        """Set ``go`` in ``seconds``, from a timer: time for the other writer, sent
        meanwhile, to come to the lock it must wait on."""
        threading.Timer(seconds, self.go.set).start()


@contextlib.contextmanager
def paused(owner: object, name: str, hold: float) -> Iterator[Pause]:
    """While the block runs, ``owner.name`` (a function a writer calls inside its
    transaction, its locks taken) sets ``reached``, waits for ``go`` (at most ``hold``
    seconds), then calls the real one: a writer held with its locks while the test sends
    another, which must wait for them rather than run before or after it by luck. Every
    call waits so until ``go`` is set; leaving the block sets it and puts the real one
    back."""
    real = getattr(owner, name)
    pause = Pause(threading.Event(), threading.Event())

    def held(*args: Any, **kw: Any) -> Any:
        pause.reached.set()
        pause.go.wait(hold)
        return real(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owner, name, held)
        try:
            yield pause
        finally:
            pause.go.set()  # a writer the block left held goes on


def served_embedding(net: Network, hand: HandProvider, key: str
                     ) -> tuple[wire.AssignmentOut, wire.ResultOut, httpx.Response]:
    """A /v1 embeddings request under ``key``, its caller in a thread: the lease ``hand``
    took for it (within a minute), ``hand``'s answer to it, and the caller's response,
    served (200, one vector of 384)."""
    response = in_background(lambda: httpx.post(
        f"{net.url}/v1/embeddings", json={"model": MODEL, "input": "hi"},
        headers={"authorization": f"Bearer {key}"}, timeout=120))
    lease = hand.take_one(within=60)
    result = hand.answer(lease)
    r = response(60)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    return lease, result, r


@contextlib.contextmanager
def chat_stream(net: Network, hand: HandProvider, key: str, max_tokens: int, *,
                content: str = "Say hello", n: int | None = None
                ) -> Iterator[tuple[httpx.Response, wire.AssignmentOut]]:
    """A streamed chat request (one user message, ``content``; ``n`` choices if given)
    under ``key``, open, and the lease ``hand`` took for it."""
    req = {"model": CHAT, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "stream": True, **({} if n is None else {"n": n})}
    with httpx.Client(base_url=net.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as h, \
            h.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        yield r, hand.take_one(within=120)


def put_blob(net: Network, me: Identity, data: bytes) -> httpx.Response:
    """``PUT /api/blobs`` of ``data``, signed by ``me``: the raw response."""
    headers = {"content-type": "application/octet-stream",
               **me.headers("PUT", "/api/blobs", data, network=net.network_id)}
    return httpx.put(f"{net.url}/api/blobs", content=data, headers=headers, timeout=30)


def blob_on_disk(net: Network, digest: str) -> bool:
    """Whether ``net``'s coordinator holds the blob ``digest`` in its store on disk."""
    return os.path.exists(net.root / "coordinator" / "blobs" / digest[:2] / digest[2:])


def billed_once_text_was_sent(owner: Client, hand: HandProvider, a: wire.AssignmentOut,
                              result: list[bytes], before: int) -> wire.JobOut:
    """After text of the lease ``a``'s stream reached its caller: ``owner``'s cancel is
    refused (409), ``hand``'s recorded ``result`` (see ``record_chat``) is accepted, and
    the job completes (within two minutes) billed: ``owner``'s balance is ``before`` less
    its cost, a payout for it is in the journal, and the books audit. The completed job."""
    with pytest.raises(DeAIError) as refused:
        owner.cancel_job(a.job_id)
    assert refused.value.status == 409, refused.value
    assert hand.record_chat(a, result).status == "accepted"
    end = time.time() + 120
    while (job := owner.job(a.job_id)).status != "completed":
        assert time.time() < end, job
        time.sleep(0.3)
    assert job.cost > 0 and owner.balance().available == before - job.cost
    assert [e for e in journal(owner) if e.kind == "payout" and e.body["job"] == a.job_id]
    audit_ok(owner)
    return job


def admit_one(c: Coordinator, s: Session, *, owner: str, digest: str, price: int,
              escrow: int, key: admission.KeyUse | None) -> str:
    """In ``s``, the escrowing transaction of a one-task embeddings request of ``owner``'s
    (input ``digest``, spent through ``key`` if given): the new job's id."""
    job, _ = admission.create(
        c, s, owner=owner, kind="embeddings", model=MODEL,
        spec={"kind": "embeddings", "model": MODEL, "max_price": price},
        input_digest=digest, max_price=price, shards=[admission.ShardIn(digest, 1, 1)],
        escrow=escrow, deadline=3600.0, key=key)
    return job.id


def audit_ok(c: Client) -> ledger.AuditReport:
    """The client-side replay of the whole journal, each balance page compared at the
    journal head it was read at (the network may keep moving money while we read)."""
    rep = client_audit(c).report
    assert rep.ok, rep.problems
    return rep


def db_balance(c: Coordinator, account: str) -> int:
    """``account``'s balance in the in-process coordinator ``c``'s journal."""
    with c.db.read() as s:
        return db_journal.balance(s, account)


def db_audit(c: Coordinator) -> None:
    """The in-process coordinator ``c``'s whole journal audits, its claimed balances
    read in the same transaction."""
    with c.db.read() as s:
        rows = s.scalars(select(JournalEntry).order_by(JournalEntry.seq)).all()
        claimed = db_journal.balances(s, {a for r in rows for a, _ in r.postings})
        rep = ledger.audit([db_journal.to_entry(r) for r in rows], claimed)
    assert rep.ok, rep.problems


def seed_lease_hosts(c: Coordinator, cfg: leases.LeaseConfig, hosts: Sequence[str],
                     stake: int, owner: str, owner_funds: int) -> None:
    """In the in-process coordinator ``c``: ``hosts`` registered (sandbox capable), each
    funded and bonded ``stake`` and offering 2 CPUs, 8 GiB and the network for leases
    under ``cfg``; ``owner`` given ``owner_funds``."""
    with c.db.write() as s:
        for h in hosts:
            s.add(Provider(id=h, name=h[-4:], hardware={}, benchmark={}, registered_at=0.0,
                           last_seen=c.now(), capabilities={"sandbox": True}))
        s.flush()
        for h in hosts:
            c.settlement.post(s, ledger.faucet(h, stake))
            c.settlement.post(s, ledger.bond(h, stake))
        c.settlement.post(s, ledger.faucet(owner, owner_funds))
    for h in hosts:
        leases.set_host(c, cfg, h, HostIn(cpus=2, memory_mb=8192, network=True,
                                          prices={"cpu": 360_000, "memory_gb": 36_000}))


def funded(net: Network, amount: int = 100_000_000) -> Client:
    c = Client(net.url, Identity.generate())
    c.faucet(amount)
    return c


def head(c: Client) -> int:
    return c.journal(after=0, limit=1).head_seq


def sample(n: int) -> bytes:
    lines = (ROOT / "examples" / "sentences.jsonl").read_bytes().splitlines()[:n]
    assert len(lines) == n
    return b"\n".join(lines) + b"\n"


def journal(c: Client) -> list[ledger.Entry]:
    entries: list[ledger.Entry] = []
    while True:
        page = c.journal(after=entries[-1].seq if entries else 0, limit=1000)
        if not page.entries:
            return entries
        entries += [ledger.Entry.from_dict(e) for e in page.entries]


def check_books(c: Client, job_id: str) -> None:
    """Audit holds; each task was paid, each assignment at most once (a job's escrow pays
    the replicas its owner chose too: ``policy.owner_pays_check``); cost + refund = escrow."""
    got = client_audit(c)
    rep, entries = got.report, got.entries
    assert rep.ok, rep.problems
    job = c.job(job_id)
    payouts = [e.body for e in entries if e.kind == "payout" and e.body["job"] == job_id]
    paid = {b["task"] for b in payouts}
    assert len(paid) == sum(job.tasks.values())
    assigned = [b["assignment"] for b in payouts]
    assert len(assigned) == len(set(assigned))
    assert job.cost + job.refunded == job.escrow
    assert rep.balances.get(ledger.escrow(job_id), 0) == 0


def stake_lost(entries: list[ledger.Entry], provider: str) -> int:
    """What ``provider`` lost of the stake it had bonded before its first slash, by the
    journal ``entries`` alone. Bonds after that slash do not count: the agent re-bonds
    from its balance once a slash leaves it under the minimum (``Agent._keep_stake``), so
    its stake alone may be back where it was. Nor is the API's stake read beside the
    journal as a baseline: a re-bond the stopped agent had in flight can commit between
    the two reads, and a cheater can be slashed (as a look-back audit's or a replica's
    runner, for an earlier case's job) before the test reads anything (CI saw both)."""
    first = min(e.seq for e in entries if e.kind == "slash" and e.body["provider"] == provider)
    acct = ledger.stake(provider)
    bonded = sum(amount for e in entries if e.kind == "bond" and e.seq < first
                 for a, amount in e.postings if a == acct)
    kept = sum(amount for e in entries for a, amount in e.postings
               if a == acct and not (e.kind == "bond" and e.seq > first))
    return bonded - kept


def start_cheater(net: Network, name: str, mode: str, models: str) -> Proc:
    proc = net.start_provider(name, 500, "--models", models,
                              env={"DEAI_PROVIDER_CHEAT": mode})
    pid = keys.load(name).id
    end = time.time() + 180
    while not any(p.id == pid and p.online and p.stake > 0 for p in net.client().providers()):
        assert proc.alive() and time.time() < end, proc.tail()
        time.sleep(0.5)
    return proc


def honest_vectors(data: bytes) -> dict[str, np.ndarray]:
    shard = b"".join(json.dumps({"custom_id": json.loads(x)["custom_id"],
                                 "input": [json.loads(x)["body"]["input"]]}).encode() + b"\n"
                     for x in data.splitlines())
    from deai.workloads import embeddings  # loads torch: only where vectors are needed

    out, _ = embeddings.WORKLOAD.run("all-MiniLM-L6-v2", shard)
    return {o["custom_id"]: np.array(o["embeddings"][0]) for o in map(json.loads,
                                                                      out.splitlines())}


# --- the browser (Debian's Chromium, driven by Playwright) ------------------------------

SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


# --- hardware challenges in tests --------------------------------------------------------

# Production margins and slashing, for the hardware tests (a devnet is lenient).
HW_ENV = {"DEAI_HW_TARGET_S": "1.5", "DEAI_HW_LATENCY_S": "0.25", "DEAI_HW_PERIOD_S": "1.0",
          "DEAI_HW_RETRY_S": "0.3", "DEAI_HW_MEM_FRACTION": "0.1", "DEAI_HW_POLL_S": "0.3",
          "DEAI_HW_MEM_CAP_MB": "4096", "DEAI_PROVIDER_MEMORY_MB": "512",
          # production's margin and slashing, not a devnet's lenient defaults
          "DEAI_HW_MARGIN": "1.5", "DEAI_HW_SLASH_AFTER": "3"}
# For tests that are not about hardware, on a loaded machine.
LENIENT_HW = {"DEAI_HW_MARGIN": "50", "DEAI_HW_LATENCY_S": "30", "DEAI_HW_SLASH_AFTER": "1000"}


def ctrl_c_works() -> None:
    """``preexec_fn`` for a child the test stops with Ctrl-C (SIGINT): a suite started as a
    background job (``make test &``) ignores SIGINT, and an ignored signal stays ignored
    across exec, so the child would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def small_challenges(tmp_path: Path, database_url: str, heartbeat_timeout: float
                     ) -> Iterator[Coordinator]:
    """A coordinator on a manual clock whose hardware challenges are tiny (the caller sets
    ``DEAI_HW_TARGET_S`` and ``DEAI_HW_MEM_FRACTION`` first), its database migrated."""
    c = Coordinator(Settings(data_dir=tmp_path, database_url=database_url, devnet=True,
                             heartbeat_timeout=heartbeat_timeout), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    try:
        yield c
    finally:
        c.db.dispose()
