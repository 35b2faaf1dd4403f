"""A chat job end to end through real processes: one provider offering two models at two
prices runs a chat job and an embeddings job; the chat results are the greedy completions
the model gives when called directly, billed per 1,000 tokens, and the books audit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.core.kinds.chat import ChatKind
from deai.workloads import chat
from tests.helpers import check_books, sample
from tests.netutil import Network

pytestmark = pytest.mark.slow
CHAT = "SmolLM2-135M-Instruct"
CHAT_PRICE, EMB_PRICE = 300, 900
QUESTIONS = ["What is the capital of France?", "Say hello in Spanish.",
             "What colour is the sky?", "Count to three."]
SPEC = {"kind": "chat", "model": CHAT, "max_price": 1000, "deadline": 900, "shard_size": 2}


def chat_input() -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": CHAT, "messages": [{"role": "user", "content": q}],
                 "max_tokens": 8, "temperature": 0}}).encode() + b"\n"
        for i, q in enumerate(QUESTIONS))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    # Checking chat results (canaries, replicas) is the verifier's: its tests cover it.
    n = Network(tmp_path, heartbeat_timeout=4.0, lease_ttl=60.0, challenge_window=1.0,
                verify=False)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def test_chat_job_on_a_two_model_provider(net: Network) -> None:
    net.start_provider("duo", EMB_PRICE, "--models", f"all-MiniLM-L6-v2,{CHAT}",
                       "--price-for", f"{CHAT}={CHAT_PRICE}")
    net.wait_providers(1)
    c = net.client("client")
    (prov,) = c.providers()
    assert {(o.workload, o.model, o.price) for o in prov.offers} == {
        ("embeddings", "all-MiniLM-L6-v2", EMB_PRICE), ("chat", CHAT, CHAT_PRICE)}

    c.faucet(1_000_000_000)
    data = chat_input()
    job = c.submit_job(SPEC, c.upload(data).digest)
    emb = c.submit_job({"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 2000,
                        "shard_size": 10}, c.upload(sample(20)).digest)
    assert net.wait_job(c, job.id) == "completed", net.logs()
    assert net.wait_job(c, emb.id) == "completed", net.logs()

    out = [json.loads(x) for x in c.results(job.id).splitlines()]
    assert [o["custom_id"] for o in out] == [f"q{i}" for i in range(len(QUESTIONS))]
    bodies = [o["response"]["body"] for o in out]
    assert all(b["object"] == "chat.completion" and b["model"] == CHAT for b in bodies)
    # The provider's greedy completions are the ones this process gets from the same model.
    spec = ChatKind().parse_spec(SPEC)
    direct = [json.loads(x) for sh in ChatKind().split(spec, data)
              for x in chat.complete(CHAT, sh.payload)[0].splitlines()]
    assert [b["choices"][0]["message"]["content"] for b in bodies] == [d["text"] for d in direct]
    assert [b["usage"]["completion_tokens"] for b in bodies] == [
        d["completion_tokens"] for d in direct]
    assert "Paris" in bodies[0]["choices"][0]["message"]["content"]

    # Billed per 1,000 tokens (prompt + completion) at the chat offer's price, per task.
    tokens = [b["usage"]["total_tokens"] for b in bodies]
    per_task = [sum(tokens[i:i + 2]) for i in range(0, len(tokens), 2)]
    assert c.job(job.id).cost == sum(math.ceil(t * CHAT_PRICE / 1000) for t in per_task)
    check_books(c, job.id)
    check_books(c, emb.id)
