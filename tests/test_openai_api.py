"""The OpenAI-compatible API (/v1), driven by the official ``openai`` package, unmodified,
against a live local network: a real coordinator and a real provider process that serves
all-MiniLM-L6-v2 and SmolLM2-135M-Instruct.

Verification is off for this network (these tests are about the API); the
gateway's behaviour under verification is in ``test_gateway_verifies_afterwards``.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from deai.client.sdk import Client
from deai.core.errors import AuthError
from tests.netutil import Network

pytestmark = pytest.mark.slow
EMB, CHAT = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]



_OPEN: list[openai.OpenAI] = []


def _oa(**kw: Any) -> openai.OpenAI:
    """An openai client that is closed when the test ends (no leaked sockets)."""
    client = openai.OpenAI(**kw)
    _OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()

@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("openai"), verify=False, challenge_window=1.0)
    n.start_coordinator()
    n.start_provider("duo", 1000, "--models", f"{EMB},{CHAT}", "--price-for", f"{CHAT}=300")
    try:
        n.wait_providers(1)
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def account(net: Network) -> Client:
    c = net.client("oai-client")
    c.faucet(10_000_000_000)
    return c


@pytest.fixture(scope="module")
def api(net: Network, account: Client) -> Iterator[openai.OpenAI]:
    key = account.create_api_key("tests").key
    assert key is not None and key.startswith("sk-deai-")
    with openai.OpenAI(base_url=f"{net.url}/v1", api_key=key, max_retries=0) as client:
        yield client


def test_models_lists_what_online_providers_serve(api: openai.OpenAI) -> None:
    ids = [m.id for m in api.models.list()]
    assert set(ids) == {EMB, CHAT}
    assert api.models.retrieve(CHAT).id == CHAT
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("mlp-digits")


def test_embeddings(api: openai.OpenAI, account: Client) -> None:
    before = account.balance().available
    r = api.embeddings.create(model=EMB, input=["hello world", "bonjour le monde"])  # base64
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in r.data)
    assert all(abs(math.sqrt(sum(x * x for x in d.embedding)) - 1) < 1e-3 for d in r.data)
    f = api.embeddings.create(model=EMB, input="hello world", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    assert r.usage.prompt_tokens > 0 and r.model == EMB
    # billed like batch work: 2 + 1 inputs at 1,000 µ per 1,000 inputs, rounded up per task
    time.sleep(0.5)
    assert before - account.balance().available == 2 + 1


def test_chat_completion(api: openai.OpenAI) -> None:
    r = api.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=8,
                                    temperature=0)
    assert r.object == "chat.completion" and r.model == CHAT
    text = r.choices[0].message.content or ""
    assert "Paris" in text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_completion(api: openai.OpenAI) -> None:
    whole = api.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=8,
                                        temperature=0)
    stream = api.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=8,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]


def _batch_file(n: int, max_tokens: int = 4) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": CHAT, "messages": [{"role": "user", "content": f"Say {i}."}],
                 "max_tokens": max_tokens, "temperature": 0}}).encode() + b"\n"
        for i in range(n))


def _wait_batch(api: openai.OpenAI, batch_id: str, timeout: float = 300) -> str:
    end = time.time() + timeout
    while time.time() < end:
        b = api.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b.status
        time.sleep(0.5)
    raise TimeoutError(batch_id)


def test_batch_from_upload_to_output_file(api: openai.OpenAI) -> None:
    f = api.files.create(file=("requests.jsonl", io.BytesIO(_batch_file(3))), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    assert api.files.retrieve(f.id).filename == "requests.jsonl"
    b = api.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                           completion_window="24h", metadata={"run": "test"})
    assert b.status == "in_progress" and b.metadata == {"run": "test"}
    assert _wait_batch(api, b.id) == "completed"
    b = api.batches.retrieve(b.id)
    assert b.request_counts is not None and b.request_counts.completed == 3
    assert b.output_file_id and b.error_file_id is None
    lines = [json.loads(x) for x in api.files.content(b.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in lines] == ["r0", "r1", "r2"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in lines)
    assert lines[0]["response"]["body"]["object"] == "chat.completion"
    assert b.id in [x.id for x in api.batches.list(limit=100)]


def test_cancelled_batch(api: openai.OpenAI) -> None:
    f = api.files.create(file=("long.jsonl", io.BytesIO(_batch_file(40, max_tokens=64))),
                         purpose="batch")
    b = api.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                           completion_window="24h")
    c = api.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled")
    assert _wait_batch(api, b.id) == "cancelled"
    b = api.batches.retrieve(b.id)
    assert b.request_counts is not None and b.request_counts.failed > 0
    assert b.error_file_id is not None
    errs = [json.loads(x) for x in api.files.content(b.error_file_id).text.splitlines()]
    assert errs and all(e["error"]["code"] == "batch_cancelled" for e in errs)
    with pytest.raises(openai.ConflictError):
        api.batches.cancel(b.id)


def test_revoked_key(net: Network, account: Client) -> None:
    made = account.create_api_key("short-lived")
    assert made.key is not None
    client = _oa(base_url=f"{net.url}/v1", api_key=made.key, max_retries=0)
    assert client.models.list().data
    account.revoke_api_key(made.id)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert [k.revoked_at is not None for k in account.api_keys() if k.id == made.id] == [True]
    with pytest.raises(openai.AuthenticationError):
        _oa(base_url=f"{net.url}/v1", api_key="sk-deai-nope",
                      max_retries=0).models.list()


def test_exhausted_balance_and_spend_cap(net: Network, account: Client) -> None:
    poor = net.client("oai-poor")
    poor.faucet(1)  # one µ: not enough for a chat request's escrow
    key = poor.create_api_key().key
    assert key is not None
    client = _oa(base_url=f"{net.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=4)
    assert exc.value.code == "insufficient_quota"
    assert poor.balance().available == 1  # nothing was taken

    capped = account.create_api_key("capped", spend_cap=3)
    assert capped.key is not None
    client = _oa(base_url=f"{net.url}/v1", api_key=capped.key, max_retries=0)
    client.embeddings.create(model=EMB, input=["a", "b"])  # 2 µ of a 3 µ cap
    with pytest.raises(openai.RateLimitError) as exc:
        client.embeddings.create(model=EMB, input=["c", "d"])
    assert exc.value.code == "spend_cap_exceeded"


def test_unknown_model_and_bad_input(api: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.NotFoundError):
        api.embeddings.create(model=CHAT, input="a chat model cannot embed")
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=100_000)
    assert exc.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=CHAT, messages=QUESTION, n=99)
    assert exc.value.param == "n" and "Invalid value for 'n'" in exc.value.message


def test_error_shapes_are_per_api(net: Network, account: Client) -> None:
    v1 = httpx.get(f"{net.url}/v1/nothing").json()
    assert set(v1["error"]) == {"message", "type", "param", "code"}
    native = httpx.get(f"{net.url}/api/nothing").json()
    assert native == {"error": {"code": "not_found", "message": "Not Found"}}
    with pytest.raises(AuthError):  # minting a key is a signed request
        Client(net.url).request("POST", "/api/api-keys", json_body={}, signed=False)


def test_gateway_verifies_afterwards(tmp_path: Path) -> None:
    """With verification on, a new provider's work is always replicated: the caller gets
    the primary's answer at once, and the job completes once the replica agrees."""
    n = Network(tmp_path, challenge_window=1.0)
    n.start_coordinator()
    try:
        n.start_provider("v1")
        n.start_provider("v2")
        n.wait_providers(2)
        c = n.client("verifier-client")
        c.faucet(1_000_000_000)
        key = c.create_api_key().key
        assert key is not None
        client = _oa(base_url=f"{n.url}/v1", api_key=key, max_retries=0)
        raw = client.embeddings.with_raw_response.create(model=EMB, input="checked later")
        assert len(raw.parse().data[0].embedding) == 384
        job_id = raw.headers["x-deai-job"]
        assert n.wait_job(c, job_id, timeout=120) == "completed"
        job = c.job(job_id)
        # Both the primary and its replica were accepted; the client paid for one run.
        assert len(job.providers) == 2 and job.cost == 1
    finally:
        n.close()


def test_example_script_runs(net: Network, account: Client) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "openai_client.py"
    spec = importlib.util.spec_from_file_location("openai_client_example", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    key = account.create_api_key("example").key
    assert key is not None
    assert mod.main(f"{net.url}/v1", key) == 0
