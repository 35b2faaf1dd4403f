"""A served /v1 answer whose required check could not be placed by the job's deadline is
accepted unverified and paid, not refunded: before, the deadline failed the job and
refunded the whole escrow, so the caller kept the answer free and the provider that made
it was never paid (its check had been waiting since nobody could be placed).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from deai.client.keys import Identity
from deai.coordinator import jobs
from deai.coordinator.openai import gateway, keys
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import auth, wire
from deai.core.clock import ManualClock
from deai.core.errors import DeAIError
from deai.store import migrate
from tests.helpers import MODEL

CLIENT = "d" * 64


def test_a_served_answer_still_unchecked_at_the_deadline_is_paid_not_refunded(
        tmp_path: Path) -> None:
    clock = ManualClock()
    c = Coordinator(Settings(data_dir=tmp_path, devnet=True, heartbeat_timeout=10_000.0,
                             lease_ttl=10_000.0, verify_timeout=5.0, verify_seed=5),
                    clock=clock)
    migrate.upgrade(c.db.engine)
    ident = Identity.generate()
    pid = ident.id
    c.faucet(pid, 50_000_000)
    c.register(pid, wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="cpu", cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1, slots=4,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=100)]),
        address="10.4.0.1")
    c.bond(pid, 10_000_000)
    c.faucet(CLIENT, 1_000_000)
    before = c.balance(CLIENT).available
    key = keys.authenticate(c, keys.create(c, CLIENT, wire.ApiKeyIn(name="t")).key or "")
    st = gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})
    assert st.provider == pid
    (a,) = jobs.deliver(c, pid)
    rows = [json.loads(x) for x in base64.b64decode(a.input_b64 or "").splitlines()]
    out = b"".join(json.dumps({"custom_id": r["custom_id"],
                               "embeddings": [[0.25] * 384 for _ in r["input"]],
                               "prompt_tokens": 4}).encode() + b"\n" for r in rows)
    digest = hashlib.sha256(out).hexdigest()
    res = jobs.submit_result(c, pid, a.id, wire.ResultIn(
        output_digest=digest, units=a.units, output_b64=base64.b64encode(out).decode(),
        signature=ident.sign(auth.result_message(a.id, digest, a.units))))
    assert res.status == "submitted"  # held for the replica a new provider needs
    served = gateway.primary_output(c, st.job_id, st.task_id)
    assert served == out  # the caller is answered now
    with pytest.raises(DeAIError) as held:
        jobs.cancel(c, CLIENT, st.job_id)
    assert held.value.status == 409
    clock.advance(10.0)
    assert jobs.give_up_checks(c) == 1  # no replica anywhere: the served result waits
    assert jobs.view(c, st.job_id).status == "verifying"
    clock.advance(gateway.DEADLINE)
    assert jobs.enforce_deadlines(c) == 1
    job = jobs.view(c, st.job_id)
    assert job.status == "completed" and job.cost > 0  # paid, marked unverified
    assert before - c.balance(CLIENT).available == job.cost
    assert c.balance(pid).pending > 0
