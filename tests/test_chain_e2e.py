"""A devnet that settles on a real local chain (a hardhat node over JSON-RPC), end to end:
a client deposits on chain and is credited once, runs a job, the cheater among the
providers is slashed on chain with its verdict's evidence hash, an honest provider
withdraws its released earnings by Merkle proof after the challenge delay, ``deai ledger audit
--chain`` holds, and a root or a journal entry tampered with afterwards is reported.

Needs hardhat (``make hardhat``); without it the devnet fails to start (no skip).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deai.chain import books, merkle
from deai.chain.devnet import ChainDevnet, evm_account
from deai.client import keys
from deai.client.audit import client_audit
from deai.client.cli import app
from deai.client.sdk import Client
from deai.core import money
from deai.core.errors import DeAIError
from deai.core.ledger import Entry

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "embeddings.yaml"
SENTENCES = ROOT / "examples" / "sentences.jsonl"
runner = CliRunner()


def deai(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def wait_for(what: str, check, timeout: float = 240.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)
    return got


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainDevnet]:
    mp = pytest.MonkeyPatch()
    mp.setenv("DEAI_HOME", str(tmp_path_factory.mktemp("chain-home")))
    mp.delenv("DEAI_KEY", raising=False)
    try:
        with ChainDevnet(3, cheaters=1, online_timeout=300) as n:
            yield n
    finally:
        mp.undo()


def entries_of(net: ChainDevnet, kind: str) -> list[Entry]:
    return [e for e in client_audit(net.client).entries if e.kind == kind]


def test_deposit_job_slash_withdraw_and_audit_on_a_real_chain(net: ChainDevnet,
                                                               tmp_path: Path) -> None:
    url = ["--coordinator", net.url]
    chain = net.chain
    assert chain is not None
    client = keys.load("client")
    before = net.client.balance(client.id).available

    # 1. A deposit on chain is credited once, after its confirmations.
    code, out = deai("deposit", "50", *url)
    assert code == 0 and "credited" in out, out
    assert net.client.balance(client.id).available == before + 50 * money.MICRO
    time.sleep(3)  # more ticks of the watcher: still credited once
    (dep,) = entries_of(net, "deposit")
    assert dep.body["amount"] == 50 * money.MICRO and dep.body["account"] == client.id

    # 2. A job runs; the cheater's work is caught, and the slash is mirrored on chain.
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(SENTENCES.read_text().splitlines()[:100]) + "\n")
    code, out = deai("job", "submit", str(SPEC), "--input", str(data), *url)
    assert code == 0 and "submitted job" in out, out
    cheater = net.provider_keys[0].id
    slash = wait_for("the cheater's slash", lambda: [
        e for e in entries_of(net, "slash") if e.body["provider"] == cheater])[0]
    evidence = books.evidence_hash(slash.body)

    def mirrored() -> bool:
        return any("0x" + bytes(ev.args.evidence).hex() == evidence
                   for ev in chain.events(chain.vault, "Slashed", chain.dep.start_block))

    wait_for("the slash on chain", mirrored)
    wait_for("the vault's stake to equal the journal's", lambda: chain.vault.functions.stake(
        bytes.fromhex(cheater)).call() == net.client.provider(cheater).stake, 60)

    # 3. An honest provider withdraws its earnings by proof once the delay has passed
    # (earnings released from their challenge window; the job itself may still be
    # finishing its checks).
    def released() -> dict[str, int]:
        out: dict[str, int] = {}
        for e in entries_of(net, "release"):
            out[e.body["provider"]] = out.get(e.body["provider"], 0) + e.body["amount"]
        return {k.id: out[k.id] for k in net.provider_keys[1:] if out.get(k.id)}

    earned = wait_for("an honest provider's released earnings", released)
    honest = next(k for k in net.provider_keys[1:] if k.id in earned)
    amount = earned[honest.id]
    code, out = deai("withdraw", money.fmt(amount), "--key", honest.name, *url)
    assert code == 0 and "claimed" in out, out
    assert chain.token_balance(evm_account(honest).address) == amount
    code, out = deai("withdraw", "--key", honest.name, *url)  # the same proof again
    assert code == 0 and "claimed 0.000000" in out, out

    # Bad withdrawals are refused with the field named, and change nothing.
    head_before = net.client.journal(limit=1).head_seq
    poor = Client(net.url, keys.create("poor"))
    rich = Client(net.url, client)
    addr = evm_account(client).address
    for who, body, status, field in (
            (rich, {"amount": 1, "address": "0x12"}, 422, "address"),
            (rich, {"amount": 0, "address": addr}, 422, "amount"),
            (rich, {"amount": 1, "address": addr, "memo": "x"}, 422, "memo"),
            (rich, {"amount": 60 * money.MICRO, "address": addr}, 409, "amount"),  # > reserve
            (poor, {"amount": 1, "address": addr}, 402, None)):
        with pytest.raises(DeAIError) as err:
            who.request("POST", "/api/chain/withdraw", json_body=body)
        assert err.value.status == status, (body, err.value.to_dict())
        assert field is None or field in (err.value.field or ""), err.value.to_dict()
    poor.close()
    rich.close()
    assert net.client.journal(limit=1).head_seq == head_before

    # 4. Anyone can check it all against the chain.
    def quiet() -> bool:
        info = net.client.request("GET", "/api/chain", signed=False).json()
        return "pending" not in info["outbox"] and \
            info["latest_epoch"]["head_seq"] == net.client.journal(limit=1).head_seq

    wait_for("the outbox and the epochs to catch up", quiet, 120)
    code, out = deai("ledger", "audit", "--chain", *url)  # the devnet's faucet money
    assert code == 1 and "entered the journal from the mint without a deposit" in out, out
    code, out = deai("ledger", "audit", "--chain", "--devnet", *url)
    assert code == 0 and "chain audit OK" in out, out
    assert "without a deposit (faucet, grants): no deposit backs it" in out, out

    # 5. A root the journal does not support is reported...
    head = client_audit(net.client).entries[-1]
    thief = evm_account(keys.create("thief"))
    bad = merkle.Tree(chain.dep.settlement, {thief.address: amount})
    chain.send(chain.settler, chain.settlement.functions.commit(
        head.seq, bytes.fromhex(head.hash), bad.root, bad.total))
    code, out = deai("chain", "audit", "--devnet", *url)
    assert code == 1 and "does not recompute from the journal" in out, out
    assert "audit one with --devnet" not in out, out  # reported, not a failure

    # 6. ...and so is a journal edited behind the chain's back.
    db = net.dir / "coordinator" / "deai.sqlite3"
    with sqlite3.connect(db) as conn:
        (seq, body), = conn.execute(
            "SELECT seq, body FROM journal WHERE kind = 'withdrawal'").fetchall()
        forged = {**json.loads(body), "address": thief.address}
        conn.execute("UPDATE journal SET body = ? WHERE seq = ?", (json.dumps(forged), seq))
    conn.close()
    code, out = deai("ledger", "audit", "--chain", "--devnet", *url)
    assert code == 1, out
    assert f"entry {seq}: hash does not recompute" in out, out
    assert "claimed" in out and "the journal sent it 0" in out, out


def test_the_explorer_shows_the_chain(net: ChainDevnet) -> None:
    from playwright.sync_api import sync_playwright

    from tests.helpers import ARGS, CHROMIUM, SHOTS

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{net.url}/explorer/#/chain")
        latest = page.get_by_test_id("chain-latest")
        latest.wait_for()
        assert "Epoch" in latest.inner_text() or "No epoch" in latest.inner_text()
        page.get_by_test_id("chain-deposits").wait_for()
        page.get_by_test_id("chain-withdrawals").wait_for()
        rows = page.get_by_test_id("chain-stake").locator("tbody tr")
        rows.first.wait_for()
        assert rows.count() == len(net.provider_keys)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "chain-laptop.png"), full_page=True)
        browser.close()
    assert not errors, errors
