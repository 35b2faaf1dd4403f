"""The ``deai`` CLI: keys, local validation and error reporting, then one live devnet run.

Most tests need no network: a spec or input error must be reported, naming its
field, before anything is uploaded, so they point ``--coordinator`` at a port
nobody listens on and check that the error is the validation error, not a
connection failure. The last test (marked slow) runs the real thing: a devnet
of two provider processes, ``job submit --wait``, ``job results``, ``ledger audit``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deai.client import keys
from deai.client.cli import app, shard_units
from deai.client.devnet import free_port
from deai.core import specs, wire
from tests.helpers import ctrl_c_works

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "embeddings.yaml"
SENTENCES = ROOT / "examples" / "sentences.jsonl"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEAI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEAI_COORDINATOR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("DEAI_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def deai(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- keys ----------------------------------------------------------------------------------

def test_keys_new_list_show(home: Path) -> None:
    code, out = deai("keys", "new", "alice")
    assert code == 0, out
    account = keys.load("alice").id
    assert account in out
    assert (home / "keys" / "alice.key").stat().st_mode & 0o777 == 0o600

    assert deai("keys", "new", "bob")[0] == 0
    code, out = deai("keys", "list")
    assert code == 0 and "alice" in out and "bob" in out

    code, out = deai("keys", "show", "alice")
    assert (code, out.strip()) == (0, account)


def test_keys_errors_name_the_field() -> None:
    assert deai("keys", "new", "alice")[0] == 0
    code, out = deai("keys", "new", "alice")
    assert code == 1 and out.startswith("error: ") and "(field: name)" in out
    code, out = deai("keys", "new", "no/slash")
    assert code == 1 and "(field: name)" in out
    code, out = deai("keys", "show", "nobody")
    assert code == 1 and "deai keys new nobody" in out and "(field: key)" in out


def test_keys_list_empty() -> None:
    code, out = deai("keys", "list")
    assert code == 0 and "no keys" in out


# --- local validation before any upload ----------------------------------------------------

@pytest.mark.parametrize(("spec", "field"), [
    ("kind: embeddings\nmodel: all-MiniLM-L6-v2\nmax_price: -1\n", "spec.max_price"),
    ("kind: embeddings\nmodel: gpt-17\nmax_price: 10\n", "spec.model"),
    ("kind: mining\nmodel: all-MiniLM-L6-v2\nmax_price: 10\n", "spec.kind"),
    ("kind: chat\nmodel: all-MiniLM-L6-v2\nmax_price: 10\n", "spec.model"),
    ("kind: embeddings\nmodel: all-MiniLM-L6-v2\nmax_price: 10\nshard_size: 0\n",
     "spec.shard_size"),
    ("kind: embeddings\nmodel: all-MiniLM-L6-v2\nmax_price: 10\ncolour: red\n",
     "spec.colour"),
    ("kind: embeddings\nmodel: all-MiniLM-L6-v2\n", "spec.max_price"),
    ("- just\n- a list\n", "spec"),
    ("kind: [unclosed\n", "spec"),
])
def test_job_submit_rejects_bad_spec_before_upload(tmp_path: Path, spec: str, field: str) -> None:
    keys.create("client")
    code, out = deai("job", "submit", str(write(tmp_path / "s.yaml", spec)),
                     "--input", str(SENTENCES))
    assert code == 1
    assert out.startswith("error: ") and f"(field: {field})" in out, out
    assert "cannot reach" not in out


@pytest.mark.parametrize(("line", "field"), [
    ('{"custom_id": "a", "body": {"input": "fine"}}\nnot json\n', "input[line 2]"),
    ('{"custom_id": "a", "body": {"input": ""}}\n', "input[line 1].body.input"),
    ('{"custom_id": "a", "body": {"input": "x"}}\n{"custom_id": "a", "body": {"input": "y"}}\n',
     "input[line 2].custom_id"),
    ('{"custom_id": "a", "url": "/v1/chat/completions", "body": {"input": "x"}}\n',
     "input[line 1].url"),
    ('{"custom_id": "a", "body": {"model": "other", "input": "x"}}\n',
     "input[line 1].body.model"),
    ("\n\n", "input"),
])
def test_job_submit_rejects_bad_input_line(tmp_path: Path, line: str, field: str) -> None:
    keys.create("client")
    data = write(tmp_path / "in.jsonl", line)
    code, out = deai("job", "submit", str(SPEC), "--input", str(data))
    assert code == 1 and f"(field: {field})" in out, out


def test_missing_files_and_keys_are_reported(tmp_path: Path) -> None:
    code, out = deai("job", "submit", str(tmp_path / "nope.yaml"), "--input", str(SENTENCES))
    assert code == 1 and "(field: spec)" in out
    code, out = deai("job", "submit", str(SPEC), "--input", str(tmp_path / "nope.jsonl"))
    assert code == 1 and "(field: input)" in out
    code, out = deai("job", "submit", str(SPEC), "--input", str(SENTENCES), "--key", "ghost")
    assert code == 1 and "no key named 'ghost'" in out


def test_unreachable_coordinator_is_one_line() -> None:
    keys.create("client")
    code, out = deai("job", "submit", str(SPEC), "--input", str(SENTENCES))
    assert code == 1 and out.startswith("error: cannot reach http://127.0.0.1:")
    code, out = deai("ledger", "audit")
    assert code == 1 and "cannot reach" in out


def test_faucet_amount_is_validated() -> None:
    keys.create("client")
    code, out = deai("faucet", "--amount", "1.2345678")
    assert code == 1 and "(field: amount)" in out
    code, out = deai("faucet", "--amount", "lots")
    assert code == 1 and "(field: amount)" in out


def test_quote_needs_input_or_units() -> None:
    code, out = deai("market", "quote", str(SPEC))
    assert code == 1 and "(field: input)" in out


def test_shard_units_from_input_and_count() -> None:
    spec = specs.parse_spec({"kind": "embeddings", "model": "all-MiniLM-L6-v2",
                             "max_price": 2000, "shard_size": 25})
    assert shard_units(spec, None, 60) == [25, 25, 10]
    assert shard_units(spec, SENTENCES, None) == [25] * 12


def test_bundled_examples_are_valid() -> None:
    spec = specs.parse_spec(__import__("yaml").safe_load(SPEC.read_text()))
    assert (spec.model, spec.max_price, spec.deadline, spec.shard_size) == (
        "all-MiniLM-L6-v2", 2000, 600, 25)
    items = specs.parse_input(SENTENCES.read_bytes(), spec)
    assert 250 <= len(items) <= 400
    texts = [it.inputs[0] for it in items]
    assert len(set(texts)) == len(texts)
    assert all(re.fullmatch(r"s-\d{4}", it.custom_id) for it in items)


def job_out(status: str, done: int) -> wire.JobOut:
    return wire.JobOut(id="job_1", owner="o" * 64, status=status, spec={}, created_at=0.0,
                       deadline_at=1.0, items=4, units=4, tasks={"done": done, "queued": 4 - done},
                       escrow=8, cost=done, refunded=0, providers={})


def test_follow_job_rides_out_a_coordinator_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from deai.client import cli, sdk

    monkeypatch.setattr(cli.time, "sleep", lambda _s: None)
    monkeypatch.setattr(sdk.time, "sleep", lambda _s: None)
    down = httpx.ConnectError("refused")
    script: list[wire.JobOut | Exception] = [
        job_out("running", 1), down, down, job_out("running", 3), job_out("completed", 4)]

    class Scripted:
        def job(self, job_id: str) -> wire.JobOut:
            step = script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step

    final = cli.follow_job(Scripted(), "job_1")  # type: ignore[arg-type]
    assert (final.status, cli.task_counts(final)) == ("completed", (4, 4))
    assert not script


# --- the real network ----------------------------------------------------------------------

@pytest.mark.slow
def test_devnet_job_results_and_audit(tmp_path: Path) -> None:
    from deai.client.devnet import Devnet

    sentences = SENTENCES.read_text().splitlines()[:60]
    data = write(tmp_path / "small.jsonl", "\n".join(sentences) + "\n")
    with Devnet(providers=2, online_timeout=240) as net:
        children = net.children
        url = ["--coordinator", net.url]
        code, out = deai("job", "submit", str(SPEC), "--input", str(data), "--wait", *url)
        assert code == 0, out
        job_id = re.search(r"submitted job (\S+):", out).group(1)  # type: ignore[union-attr]
        code, out = deai("job", "results", job_id, "-o", str(tmp_path / "out.jsonl"), *url)
        assert code == 0, out
        lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [x["custom_id"] for x in lines] == [json.loads(s)["custom_id"] for s in sentences]
        code, out = deai("job", "list", *url)
        assert code == 0 and job_id in out
        code, out = deai("market", "quote", str(SPEC), "--units", "100", *url)
        assert code == 0 and "estimated cost" in out, out
        code, out = deai("ledger", "balance", "provider-1", *url)
        assert code == 0, out
        code, out = deai("ledger", "audit", *url)
        assert code == 0 and "audit OK" in out, out
    assert children and all(not c.alive() for c in children)


@pytest.mark.slow
def test_devnet_up_stops_cleanly_on_ctrl_c(home: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deai.client.cli", "devnet", "up", "--providers", "1",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_works)
    try:
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert f"coordinator  http://127.0.0.1:{port}" in "".join(seen), "".join(seen)
        code, out = deai("ledger", "audit", "--coordinator", f"http://127.0.0.1:{port}")
        assert code == 0 and "audit OK" in out, out
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "exit codes: provider-1 (0)" in rest and "stopped" in rest
    with pytest.raises(OSError):
        __import__("socket").create_connection(("127.0.0.1", port), timeout=1)
