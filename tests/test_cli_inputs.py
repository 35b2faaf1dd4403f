"""The real ``deai`` executable fed bad input: one ``error:`` line, never a traceback.

Each case runs ``.venv/bin/deai`` as its own process (as a user would), against a
real devnet-mode coordinator where it needs one, and checks the exit status, that
stderr holds no traceback, and that the message says what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netutil import Network, free_port

ROOT = Path(__file__).resolve().parents[1]
DEAI = str(Path(sys.executable).parent / "deai")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("cli-inputs"), verify=False)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def deai(net: Network, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    env = {**net.env, "DEAI_COORDINATOR": net.url}
    env.pop("DEAI_DEBUG", None)
    p = subprocess.run([DEAI, *args], capture_output=True, text=True, env=env, timeout=120,
                       cwd=cwd or ROOT)
    out = p.stdout + p.stderr
    assert "Traceback" not in out and 'File "' not in out, out
    return p.returncode, out


@pytest.fixture(scope="module")
def alice(net: Network) -> str:
    code, out = deai(net, "keys", "new", "alice")
    assert code == 0, out
    return "alice"


@pytest.mark.parametrize(("amount", "words"), [
    ("-5", "must be above 0"), ("0", "must be above 0"), ("1e30", "not an amount"),
    ("99999999999999999", "at most"), ("abc", "not an amount"), ("1.1234567", "not an amount")])
def test_faucet_amounts(net: Network, alice: str, amount: str, words: str) -> None:
    code, out = deai(net, "faucet", "--key", alice, "--amount", amount)
    assert code == 1 and out.startswith("error: ") and words in out and "(field: amount)" in out


def test_coordinator_url_without_scheme_works(net: Network, alice: str) -> None:
    code, out = deai(net, "faucet", "--key", alice, "--amount", "5",
                     "--coordinator", f"127.0.0.1:{net.port}")
    assert code == 0 and "funded alice" in out, out


def test_unreachable_coordinator(net: Network, alice: str) -> None:
    port = free_port()
    code, out = deai(net, "ledger", "balance", alice, "--coordinator", f"127.0.0.1:{port}")
    assert code == 1 and f"cannot reach http://127.0.0.1:{port}" in out


def test_bad_coordinator_url(net: Network, alice: str) -> None:
    code, out = deai(net, "ledger", "balance", alice, "--coordinator", "http://")
    assert code == 2 and "is not a coordinator URL" in out


def test_spec_and_input_files(net: Network, alice: str, tmp_path: Path) -> None:
    spec = ROOT / "examples" / "embeddings.yaml"
    sentences = ROOT / "examples" / "sentences.jsonl"
    code, out = deai(net, "job", "submit", str(tmp_path / "nope.yaml"), "--input",
                     str(sentences), "--key", alice)
    assert code == 1 and "cannot read spec" in out and "(field: spec)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [embeddings\n")
    code, out = deai(net, "job", "submit", str(bad), "--input", str(sentences), "--key", alice)
    assert code == 1 and "not valid YAML" in out
    code, out = deai(net, "job", "submit", str(spec), "--input", str(tmp_path / "no.jsonl"),
                     "--key", alice)
    assert code == 1 and "cannot read input" in out
    weird = tmp_path / "weird.yaml"
    weird.write_text("kind: embeddings\nmodel: all-MiniLM-L6-v2\nmax_price: lots\n")
    code, out = deai(net, "job", "submit", str(weird), "--input", str(sentences), "--key",
                     alice)
    assert code == 1 and "max_price" in out


def test_unknown_job_and_key(net: Network, alice: str) -> None:
    for args in (("job", "status", "job-nope", "--key", alice),
                 ("job", "results", "job-nope", "--key", alice),
                 ("job", "cancel", "job-nope", "--key", alice)):
        code, out = deai(net, *args)
        assert code == 1 and out.startswith("error: ") and "job-nope" in out, out
    code, out = deai(net, "ledger", "balance", "nobody")
    assert code == 1 and "deai keys new nobody" in out


def test_spend_cap_and_stake_amounts(net: Network, alice: str) -> None:
    code, out = deai(net, "keys", "api-key", "create", "--key", alice, "--spend-cap", "-1")
    assert code == 1 and "(field: spend_cap)" in out
    code, out = deai(net, "provider", "start", "--key", alice, "--stake", "x")
    assert code == 1 and "(field: stake)" in out


def test_sim_verify_fast_reports_without_failing(net: Network, tmp_path: Path) -> None:
    code, out = deai(net, "sim", "verify", "--fast", "--out", str(tmp_path / "sim"))
    assert code == 0, out
    assert "wrote" in out
    if "FAIL" in out:
        assert "cannot be met by a run this small" in out


def test_second_devnet_in_one_home_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A devnet holds $DEAI_HOME/devnet/devnet.lock; a second one leaves its data alone."""
    import httpx

    from deai.client.devnet import Devnet, DevnetRunning

    home = tmp_path / "home"
    monkeypatch.setenv("DEAI_HOME", str(home))
    lock = home / "devnet" / "devnet.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("999999999\nhttp://127.0.0.1:1\n")  # a stale lock of a dead devnet
    with Devnet(providers=0) as first:
        assert lock.read_text().split() == [str(os.getpid()), first.url]
        db = home / "devnet" / "coordinator" / "deai.sqlite3"
        assert db.exists()
        env = {**os.environ, "DEAI_HOME": str(home)}
        p = subprocess.run([DEAI, "devnet", "up", "--providers", "0"], capture_output=True,
                           text=True, env=env, timeout=120)
        out = p.stdout + p.stderr
        assert p.returncode == 1 and "Traceback" not in out, out
        assert "already running" in out and f"pid {os.getpid()}" in out and first.url in out
        assert db.exists()
        assert httpx.get(f"{first.url}/api/network", timeout=5).status_code == 200
        with pytest.raises(DevnetRunning):
            Devnet(providers=0).start()
    with Devnet(providers=0) as again:  # released on stop
        assert httpx.get(f"{again.url}/api/network", timeout=5).status_code == 200
