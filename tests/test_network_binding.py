"""The CLI signs for a network id only at the address it first met that network at.

Every signed request signs the network id its coordinator reports. Before, a
coordinator that reported another deployment's id was sent signatures that deployment
accepts (a request replayed there within two minutes). The CLI's keys now remember
the address of each network they signed for (``keys.bind_network``) and refuse the same
id from another address, unless the user pins it (``DEAI_NETWORK_ID``).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deai.client import keys
from deai.client.cli import app
from deai.core import auth
from deai.core.errors import InvalidInput


class StandIn:
    """A coordinator stand-in on loopback: reports ``network_id`` and funds anyone,
    recording every request's path and whether it was signed."""

    def __init__(self, network_id: str) -> None:
        self.network_id, self.seen = network_id, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._answer({"network_id": outer.network_id})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._answer({"account": "a", "available": 5, "pending": 0, "stake": 0})

            def _answer(self, body: dict[str, object]) -> None:
                outer.seen.append((self.command, self.path,
                                   auth.HEADER_SIG.lower() in {k.lower() for k in self.headers}))
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signed(self) -> list[str]:
        return [path for _, path, sig in self.seen if sig]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DEAI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEAI_NETWORK_ID", raising=False)
    monkeypatch.delenv("DEAI_KEY", raising=False)
    keys.create("client")
    yield tmp_path / "home"


def faucet(url: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["faucet", "--coordinator", url, "--amount", "1"])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_a_coordinator_reporting_another_networks_id_gets_no_signature(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = secrets.token_hex(16)
    honest, impostor = StandIn(network), StandIn(network)
    try:
        assert faucet(honest.url)[0] == 0
        assert honest.signed() == ["/api/faucet"]
        code, out = faucet(impostor.url)
        assert code != 0 and network in out and "DEAI_NETWORK_ID" in out
        assert impostor.signed() == []  # asked for its id, sent nothing signed
        assert json.loads((home / "networks.json").read_text()) == {network: honest.url}
        assert faucet(honest.url)[0] == 0  # the first address still works

        other = StandIn(secrets.token_hex(16))  # a network of its own: signed for
        assert faucet(other.url)[0] == 0 and other.signed() == ["/api/faucet"]
        other.server.shutdown()

        monkeypatch.setenv("DEAI_NETWORK_ID", network)  # pinned by hand: trusted
        assert faucet(impostor.url)[0] == 0 and impostor.signed() == ["/api/faucet"]
    finally:
        honest.server.shutdown()
        impostor.server.shutdown()


def test_an_unreadable_bindings_file_is_a_clear_error(home: Path) -> None:
    keys.bind_network("ab" * 16, "http://127.0.0.1:1")
    assert (home / "networks.json").stat().st_mode & 0o777 == 0o600
    keys.bind_network("ab" * 16, "http://127.0.0.1:1")  # again: nothing to refuse
    with pytest.raises(InvalidInput) as exc:
        keys.bind_network("ab" * 16, "http://127.0.0.1:2")
    assert exc.value.field == "network"
    (home / "networks.json").write_text("[1, 2")
    with pytest.raises(InvalidInput) as exc:
        keys.bind_network("cd" * 16, "http://127.0.0.1:1")
    assert "remove it" in str(exc.value)
