"""What a provider may read only through a live lease (a client's shard) it can never
make its own: not publish it as a dataset, name it as a job's input, or submit it as an
output (all three are then kept, and readable, past the lease).

Before, these checked "may this key read the blob", which a live lease answers yes: a
provider published a dataset over a client's shard and read it for ever through the
dataset's content (the bytes kept from every sweep), after its lease had ended.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client import datasets
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import auth, wire
from deai.core import datasets as D
from deai.core import wire_datasets as W
from deai.core.errors import DeAIError
from tests.helpers import MODEL, HandProvider, running
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from running(Network(Path(tmp_path_factory.mktemp("leased-reads")), "",
                               heartbeat_timeout=30.0, lease_ttl=120.0, verify=False))


def refused_404(call: object, field: str) -> None:
    with pytest.raises(DeAIError) as exc:
        call()  # type: ignore[operator]
    assert exc.value.status == 404 and exc.value.field == field, exc.value


def test_a_leased_shard_never_becomes_the_providers_own(net: Network) -> None:
    client = Client(net.url, Identity.generate())
    client.faucet(100_000_000)
    secret = json.dumps({"custom_id": "c0", "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": MODEL, "input": "PATIENT 4711 has HIV"}}).encode()
    prov = HandProvider(net, price=500)
    job = client.submit_job({"kind": "embeddings", "model": MODEL, "max_price": 2000},
                            client.upload(secret + b"\n").digest)
    leases: list[wire.AssignmentOut] = []
    while not leases:
        leases = prov.take()
    a = leases[0]
    shard = a.input_digest
    if a.input_b64 is None:  # the lease reads it: the very right this must not extend
        assert b"PATIENT 4711" in prov.c.download(shard)
    else:
        assert b"PATIENT 4711" in base64.b64decode(a.input_b64)

    refused_404(lambda: prov.c._post("/api/datasets", W.DatasetIn(
        id=datasets.new_id(), name="totally mine", blob_digest=shard, size=1,
        owner_key="AAAA", terms=D.Terms(price_per_use=1, allow=("embeddings",))),
        W.DatasetPrivateOut), "blob_digest")
    refused_404(lambda: prov.c.submit_job({"kind": "embeddings", "model": MODEL,
                                           "max_price": 2000}, shard), "input_digest")
    sig = prov.ident.sign(auth.result_message(a.id, shard, a.units))
    refused_404(lambda: prov.c.submit_result(a.id, wire.ResultIn(
        output_digest=shard, units=a.units, signature=sig)), "output_digest")

    prov.answer(a)  # an honest answer, its own upload, is taken as before
    assert client.job(job.id).status in ("completed", "verifying", "running")
