"""Trusted verifiers (issue 10, item 3, the process side).

The coordinator trusts a key as a verifier only if its settings list it
(``--verifier-key HEX``, repeatable, or ``DEAI_VERIFIER_KEYS``); a key that
merely claims ``capabilities["verifier"]`` is an ordinary provider. Tested
against a real coordinator process over loopback; the slow test runs real
verifier agents (``python -m deai.provider --verifier``, what ``deai verifier
start`` runs): a listed one comes online with no stake and price-0 offers, an
unlisted one is told so and exits 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from deai.client import keys
from deai.client.cli import app
from deai.client.keys import Identity
from deai.coordinator.__main__ import verifier_keys
from tests.netutil import Network, Proc
from tests.test_operators import register, registration

LISTED = Identity.generate("listed")
FROM_ENV = Identity.generate("from-env")


def test_verifier_keys_from_flags_and_environment() -> None:
    a, b = "a" * 64, "B" * 64
    assert verifier_keys([a], env=f" {b}, ,") == frozenset({a, b.lower()})
    assert verifier_keys([], env="") == frozenset()
    with pytest.raises(SystemExit, match="DEAI_VERIFIER_KEYS"):
        verifier_keys([], env="not-a-key")


def test_cli_has_verifier_start_and_coordinator_flag() -> None:
    r = CliRunner().invoke(app, ["verifier", "start", "--help"])
    assert r.exit_code == 0 and "--key" in r.output, r.output
    r = CliRunner().invoke(app, ["coordinator", "--verifier-key", "zz"])
    assert r.exit_code == 2 and "verifier-key" in r.output, r.output


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("verifier"), extra=("--verifier-key", LISTED.id))
    n.env["DEAI_VERIFIER_KEYS"] = FROM_ENV.id
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def capabilities(net: Network, pid: str) -> dict[str, object]:
    r = httpx.get(f"{net.url}/api/providers/{pid}", timeout=10)
    assert r.status_code == 200, r.text
    caps: dict[str, object] = r.json()["capabilities"]
    return caps


def test_a_listed_verifier_is_trusted(net: Network) -> None:
    claim = {"capabilities": {"verifier": True}}
    assert register(net.url, LISTED, registration(**claim), "127.0.0.2").status_code == 200
    assert register(net.url, FROM_ENV, registration(**claim), "127.0.0.3").status_code == 200
    assert capabilities(net, LISTED.id)["verifier"] is True
    assert capabilities(net, FROM_ENV.id)["verifier"] is True


def test_an_unlisted_key_claiming_to_verify_is_an_ordinary_provider(net: Network) -> None:
    pretender = Identity.generate("pretender")
    r = register(net.url, pretender, registration(capabilities={"verifier": True,
                                                                "sandbox": False}), "127.0.0.4")
    assert r.status_code == 200, r.text
    caps = capabilities(net, pretender.id)
    assert "verifier" not in caps and caps["sandbox"] is False


def wait_online(net: Network, pid: str, proc: Proc, timeout: float = 240.0) -> dict[str, object]:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.alive(), proc.tail()
        r = httpx.get(f"{net.url}/api/providers/{pid}", timeout=10)
        if r.status_code == 200 and r.json()["online"]:
            body: dict[str, object] = r.json()
            return body
        time.sleep(0.5)
    raise TimeoutError(proc.tail())


@pytest.mark.slow
def test_verifier_agents(tmp_path: Path) -> None:
    n = Network(tmp_path)
    listed = keys.create("verifier-1", exist_ok=True)
    n.flags += ["--verifier-key", listed.id]
    n.start_coordinator()
    try:
        proc = n.start_provider("verifier-1", 1000, "--verifier", "--source-address",
                                "127.0.0.5")
        got = wait_online(n, listed.id, proc)
        assert got["capabilities"]["verifier"] is True  # type: ignore[index]
        assert got["stake"] == 0  # the network pays its verifiers; they bond nothing
        assert got["offers"] and all(o["price"] == 0 for o in got["offers"])  # type: ignore[union-attr]
        assert "as verifier" in proc.tail()
        # A key the coordinator does not list is told so, and stops.
        stray = n.start_provider("verifier-2", 1000, "--verifier")
        end = time.time() + 240
        while stray.alive() and time.time() < end:
            time.sleep(0.5)
        assert stray.p.returncode == 1, stray.tail()
        assert "does not list" in stray.tail()
        stray_out = httpx.get(f"{n.url}/api/providers/{keys.load('verifier-2').id}",
                              timeout=10).json()
        assert "verifier" not in stray_out["capabilities"] and stray_out["stake"] == 0
    finally:
        n.close()
