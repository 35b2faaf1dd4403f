"""The /v1 batch sealed option against a real coordinator and provider, through the
``openai`` SDK: the client seals the requests (``deai.client.sealed_batches``), uploads
envelopes and a manifest as files, and creates the batch with DeAI's extra field
``sealed``. The batch completes; its output file is ciphertext that the owner decrypts
into the usual OpenAI batch output lines; the coordinator's database and blob store
hold neither the texts nor the vectors; bad sealed batches get a 400 naming the field
and create nothing.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from deai.client import keys, sealed_batches
from deai.client import sealed as sealing
from deai.client.sdk import Client
from deai.core import specs
from tests.helpers import audit_ok, honest_vectors, sample
from tests.netutil import Network
from tests.test_sealed_e2e import scan

pytestmark = pytest.mark.slow
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("sealed-batch"), verify=False, challenge_window=1.0)
    try:
        n.start_coordinator()
    except TimeoutError:  # a heavily loaded machine is slow to start it, not broken
        n.wait_ready(timeout=900)
    n.start_provider("worker", 1000)
    try:
        n.wait_providers(1, timeout=900)
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def client(net: Network) -> Client:
    c = net.client("batcher")
    c.faucet(10_000_000_000)
    return c


@pytest.fixture(scope="module")
def api(net: Network, client: Client) -> Iterator[openai.OpenAI]:
    key = client.create_api_key("sealed").key
    assert key is not None
    with openai.OpenAI(base_url=f"{net.url}/v1", api_key=key, max_retries=0) as a:
        yield a


def wait(api: openai.OpenAI, batch_id: str, timeout: float = 600) -> openai.types.Batch:
    end = time.time() + timeout
    while time.time() < end:
        b = api.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} still running")


def test_a_sealed_batch_runs_and_only_its_owner_reads_the_output(
        net: Network, api: openai.OpenAI) -> None:
    me = keys.load("batcher")
    worker = keys.load("worker").id
    data = sample(6)
    b = sealed_batches.create(api, me, data, sealed_for=[worker], metadata={"run": "sealed"})
    assert b.metadata == {"run": "sealed"} and b.request_counts is not None
    assert b.request_counts.total == 6
    done = wait(api, b.id)
    assert done.status == "completed", net.logs()
    assert done.output_file_id and done.model == MODEL

    raw = api.files.content(done.output_file_id).read()
    assert b"embedding" not in raw and b"custom_id" not in raw
    lines = [json.loads(x) for x in sealed_batches.output(api, me, done).splitlines()]
    want = honest_vectors(data)
    assert [x["custom_id"] for x in lines] == list(want)
    for line in lines:
        got = np.array(line["response"]["body"]["data"][0]["embedding"])
        assert float(got @ want[line["custom_id"]]) > 0.999
    with pytest.raises(sealing.SealError):  # not the owner, not in the set
        sealed_batches.output(api, net.key("stranger"), done)

    texts = [json.loads(x)["body"]["input"].encode() for x in data.splitlines()]
    numbers = [repr(float(v)).encode() for vec in list(want.values())[:2] for v in vec[:4]]
    numbers = [n for n in numbers if len(n) >= 12]
    root = net.root / "coordinator"
    assert texts and numbers
    assert scan(root, texts + numbers, [re.compile(rb'"custom_id"\s*:\s*"s-00')]) == []
    marker = b"control plaintext that the scan must find 9b1e"
    api.files.create(file=("m.jsonl", io.BytesIO(marker)), purpose="batch")
    assert scan(root, [marker], []) != []


def _refused(api: openai.OpenAI, **kw: object) -> openai.BadRequestError:
    before = [x.id for x in api.batches.list(limit=100)]
    with pytest.raises(openai.BadRequestError) as exc:
        api.batches.create(completion_window="24h", **kw)  # type: ignore[arg-type]
    assert [x.id for x in api.batches.list(limit=100)] == before  # nothing was created
    return exc.value


def test_bad_sealed_batches_are_refused_naming_the_field(
        net: Network, api: openai.OpenAI) -> None:
    worker = keys.load("worker").id
    me = keys.load("batcher")
    plain = api.files.create(file=("p.jsonl", io.BytesIO(sample(2))), purpose="batch")
    sealed = {"model": MODEL, "sealed_for": [worker]}
    err = _refused(api, input_file_id=plain.id, endpoint="/v1/embeddings",
                   extra_body={"sealed": sealed})
    assert err.body["param"] == "input_digest", err.body  # type: ignore[index]

    # A manifest whose key is wrapped to the owner only, not to the party it names.
    si = sealing.seal_input(specs.parse_spec(
        {"kind": "embeddings", "model": MODEL, "max_price": 0, "sealed": True,
         "sealed_for": [me.id]}), sample(2), me.id)
    for i, (blob, _, _) in enumerate(si.shards):
        api.files.create(file=(f"s{i}.json", io.BytesIO(blob)), purpose="batch")
    manifest = api.files.create(file=("m.json", io.BytesIO(si.manifest().to_bytes())),
                                purpose="batch")
    err = _refused(api, input_file_id=manifest.id, endpoint="/v1/embeddings",
                   extra_body={"sealed": sealed})
    assert err.body["param"] == "input_digest.keys", err.body  # type: ignore[index]

    err = _refused(api, input_file_id=manifest.id, endpoint="/v1/embeddings",
                   extra_body={"sealed": {"model": MODEL, "sealed_for": []}})
    assert "sealed" in str(err.body["param"]), err.body  # type: ignore[index]
    err = _refused(api, input_file_id=manifest.id, endpoint="/v1/embeddings",
                   extra_body={"sealed": {"model": MODEL, "sealed_for": ["nothex"]}})
    assert "sealed_for" in str(err.body["param"]), err.body  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        api.batches.create(input_file_id=manifest.id, endpoint="/v1/embeddings",
                           completion_window="24h",
                           extra_body={"sealed": {"model": "no-such-model",
                                                  "sealed_for": [worker]}})
    audit_ok(net.client("batcher"))
