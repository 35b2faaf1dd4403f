"""Every signed request signs its coordinator's network id (``core.auth.message``): a
request signed for one deployment is refused by every other, and every replica of one
deployment shares the id. Before, the signature named no coordinator: a request sent to
one (seen by its operator, or a proxy) could be replayed within two minutes to another
where the same key has an account, a new API key for it included."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from deai.client.keys import Identity
from deai.coordinator.app import create_app
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import auth


def app(data_dir: Path) -> tuple[Coordinator, TestClient]:
    settings = Settings(data_dir=data_dir, devnet=True)
    c = Coordinator(settings)
    return c, TestClient(create_app(settings, c))


def test_a_request_signed_for_one_coordinator_is_refused_by_another(tmp_path: Path) -> None:
    me = Identity.generate()
    (a, ha), (b, hb) = app(tmp_path / "a"), app(tmp_path / "b")
    with ha, hb:
        ids = [h.get("/api/network").json()["network_id"] for h in (ha, hb)]
        assert ids == [a.network_id, b.network_id] and ids[0] != ids[1]
        assert all(auth.is_network_id(i) for i in ids)
        body = json.dumps({"amount": 5}).encode()
        for_a = {**me.headers("POST", "/api/faucet", body, network=a.network_id),
                 "content-type": "application/json"}
        r = hb.post("/api/faucet", content=body, headers=for_a)  # carried to B first
        assert r.status_code == 401 and "signature" in r.json()["error"]["message"]
        assert ha.post("/api/faucet", content=body, headers=for_a).status_code == 200
        for_b = {**me.headers("POST", "/api/faucet", body, network=b.network_id),
                 "content-type": "application/json"}
        assert hb.post("/api/faucet", content=body, headers=for_b).status_code == 200


def test_replicas_of_one_deployment_share_its_network_id(tmp_path: Path) -> None:
    (a, ha), (b, hb) = app(tmp_path), app(tmp_path)  # one database, two processes' worth
    with ha, hb:
        assert a.network_id == b.network_id
        me = Identity.generate()
        body = json.dumps({"amount": 5}).encode()
        hdr = {**me.headers("POST", "/api/faucet", body, network=a.network_id),
               "content-type": "application/json"}
        assert hb.post("/api/faucet", content=body, headers=hdr).status_code == 200
