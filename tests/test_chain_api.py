"""``/api/chain`` on a coordinator without a chain (a real uvicorn process): it says so,
refuses withdrawals with a 404 naming the chain, and nothing else changes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from deai.chain.adapter import CHAIN_ENV
from deai.core.errors import NotFound
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("nochain"))
    n.env.pop(CHAIN_ENV, None)
    n.start_coordinator()
    yield n
    n.close()


def test_a_coordinator_without_a_chain_says_so(net: Network) -> None:
    r = httpx.get(f"{net.url}/api/chain", timeout=10)
    assert r.status_code == 200 and r.json() == {"enabled": False}
    c = net.client("client")
    c.faucet(5_000_000)
    with pytest.raises(NotFound, match="settles on no chain"):
        c.request("POST", "/api/chain/withdraw",
                  json_body={"amount": 1_000_000, "address": "0x" + "ab" * 20})
    with pytest.raises(NotFound):
        c.request("GET", "/api/chain/proof/0x" + "ab" * 20)
    assert c.balance().available == 5_000_000
    kinds = [e["kind"] for e in c.journal().entries]
    assert "withdrawal" not in kinds
