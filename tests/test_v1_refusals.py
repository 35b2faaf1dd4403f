"""What a /v1 request may not get away with: a refund by cancelling once it has its
answer (the caller holds a submitted primary's output, ``gateway.primary_output``: a
cancel refunded the whole escrow and left the provider who did the work unpaid), and
bytes left in the store when it is refused (up to 64 MiB a request, recorded nowhere)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core.errors import DeAIError
from tests.helpers import MODEL, HandProvider, api_key, funded, journal, served_embedding
from tests.netutil import Network


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=120.0, lease_ttl=300.0)  # a new provider's
    n.start_coordinator()  # work is replicated: the request stays verifying once answered
    yield n
    n.close()


def test_an_answered_request_is_not_refunded_by_a_cancel(net: Network) -> None:
    hand = HandProvider(net)
    owner = funded(net)
    _, _, r = served_embedding(net, hand, api_key(owner, "k"))
    job_id = r.headers["x-deai-job"]
    assert owner.job(job_id).status == "verifying"
    with pytest.raises(DeAIError) as refused:
        owner.cancel_job(job_id)
    assert refused.value.status == 409
    job = owner.job(job_id)
    assert job.status == "verifying" and job.refunded == 0
    assert not [e for e in journal(owner) if e.kind == "refund" and e.body.get("job") == job_id]


def blob_files(net: Network) -> set[str]:
    return {f for _, _, fs in os.walk(net.root / "coordinator" / "blobs") for f in fs}


def test_a_refused_request_leaves_no_bytes_behind(net: Network) -> None:
    poor = Client(net.url, Identity.generate())  # never funded
    key = poor.create_api_key("k").key
    before = blob_files(net)
    with httpx.Client(base_url=net.url, headers={"authorization": f"Bearer {key}"},
                      timeout=60) as h:
        big = [f"{j} " + "y" * 2_000 for j in range(16)]
        r = h.post("/v1/embeddings", json={"model": MODEL, "input": big})
        assert r.status_code == 404, r.text  # nobody serves the model yet
        HandProvider(net)
        r = h.post("/v1/embeddings", json={"model": MODEL, "input": big})
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert blob_files(net) == before
