"""A host takes its lease offer back over HTTP (``DELETE /api/provider/leases/host``,
``deai provider withdraw-leases``): signed by the host only; from then on a lease
request finds no capacity there while the lease it runs goes on, not extended; the
CLI says what still runs. The rules themselves, on both engines:
``tests/test_lease_service.py::test_a_withdrawn_host_drains_its_leases_and_takes_no_new_one``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deai.client import keys
from deai.client.cli import app
from deai.client.keys import Identity
from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.core.errors import DeAIError
from deai.core.wire_leases import HostIn
from tests.helpers import HandProvider
from tests.netutil import Network

ASK = {"cpus": 1, "memory_mb": 512, "hours": 1, "max_price_hour": 10**6}


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    monkeypatch.setenv("DEAI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEAI_KEY", raising=False)
    (tmp_path / "net").mkdir()
    n = Network(tmp_path / "net", heartbeat_timeout=30.0)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def refused(call: object, status: int, code: str) -> DeAIError:
    with pytest.raises(DeAIError) as e:
        call()  # type: ignore[operator]
    assert (e.value.status, e.value.code) == (status, code), e.value.to_dict()
    return e.value


def test_the_host_withdraws_its_offer_and_drains(net: Network) -> None:
    ident = keys.create("host")
    host = HandProvider(net, ident=ident)
    mine = Leases(host.c)
    mine.set_host(HostIn(cpus=2, memory_mb=2048, prices={"cpu": 360_000, "memory_gb": 36_000}))
    owner = Client(net.url, Identity.generate())
    owner.faucet(10_000_000)
    lease = Leases(owner).create(**ASK)
    assert lease.provider_id == host.id
    # Another key cannot take the host's offer back: it withdraws its own (none).
    stranger = HandProvider(net)
    assert Leases(stranger.c).withdraw_host().withdrawn is False
    refused(lambda: Client(net.url).request("DELETE", "/api/provider/leases/host",
                                                   signed=False), 401,
            "unauthorized")

    result = CliRunner().invoke(app, ["provider", "withdraw-leases", "--key", "host",
                                      "--coordinator", net.url])
    assert result.exit_code == 0, result.output
    assert "1 lease(s) still running" in result.output and lease.id in result.output

    refused(lambda: Leases(owner).create(**ASK), 409, "no_capacity")
    err = refused(lambda: Leases(owner).extend(lease.id, hours=1), 409, "conflict")
    assert err.details.get("status") == "host_withdrawn"
    assert Leases(owner).show(lease.id).status in ("pending", "active")  # it goes on
    market = Client(net.url).request("GET", "/api/market/leases").json()
    assert host.id not in [h["provider_id"] for h in market["hosts"]]

    Leases(owner).end(lease.id)
    result = CliRunner().invoke(app, ["provider", "withdraw-leases", "--key", "host",
                                      "--coordinator", net.url])
    assert result.exit_code == 0, result.output
    assert "no lease offer to withdraw" in result.output
    assert "the agent can stop now" in result.output
