"""``deai demo``: the whole network on loopback, narrated, in a few minutes.

Starts a ``Devnet`` (a coordinator, N provider processes, one of them a
cheater with a faulty executor, the network's verifier, and a funded ``client``
key), then:

1. submits ``examples/embeddings.yaml`` over ``examples/sentences.jsonl`` with a
   progress bar, writes the results and shows what the job cost;
2. shows verification at work: the replicas that disagreed, the referee's
   verdicts and the cheater's slash, from the journal;
3. runs a chat job (``examples/chat.yaml``) and a deterministic training job
   (``examples/train.yaml``), prints their answers and accuracy, plots the loss;
4. calls the OpenAI-compatible API with the official ``openai`` client
   (``examples/openai_client.py``) using a freshly minted API key;
5. rents a machine for a moment: a lease on the devnet's lease host, a command run
   in it, a file copied in and one copied out, then ended with the unused escrow
   refunded (skipped, saying why, where bubblewrap is not installed);
6. waits out the devnet's challenge window, prints what each provider earned,
   replays the ledger on the client side, and shuts everything down.

Returns 0 when every job completed, the cheater was caught, no honest provider
was slashed and the audit passed; 1 otherwise. Inputs are validated before any
process starts, so a bad spec costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deai.client import training
from deai.client.audit import client_audit
from deai.client.cli import (
    follow_job,
    job_table,
    load_spec,
    print_audit,
    read_input,
    write_results,
)
from deai.client.devnet import LEASE_PRICES, Devnet
from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.core import money
from deai.core.errors import DeAIError, InvalidInput
from deai.core.money import MICRO

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example(name: str) -> Path:
    """``examples/NAME`` under the working directory, else beside the source checkout."""
    for base in (Path("examples"), EXAMPLES):
        if (base / name).is_file():
            return base / name
    raise InvalidInput(f"cannot find examples/{name}; pass it explicitly", field=name)


def run_demo(providers: int, spec_file: Path | None, input_file: Path | None,
             out: Console, *, cheaters: int = 1, extras: bool = True) -> int:
    spec_path = spec_file or example("embeddings.yaml")
    input_path = input_file or example("sentences.jsonl")
    spec = load_spec(spec_path)
    data, shards = read_input(input_path, spec)
    jobs = [(load_spec(example(s)), *read_input(example(i), load_spec(example(s))), label)
            for s, i, label in (("chat.yaml", "chat.jsonl", "chat"),
                                ("train.yaml", "digits.json", "training"))] if extras else []

    out.rule("DeAI demo")
    t0 = time.monotonic()
    checks: dict[str, bool] = {}
    try:
        with Devnet(providers, cheaters=cheaters,
                    log=lambda m: out.print(f"[dim]{m}[/]")) as net:
            names = {k.id: k.name for k in [*net.provider_keys, *net.verifier_keys]}
            cheats = {k.id for k in net.provider_keys[:cheaters]}
            out.print(f"coordinator {net.url}   explorer {net.explorer_line()}")
            for v in net.verifier_keys:
                out.print(f"verifier {v.name} ({v.id[:12]}…): the network's trusted referee")
            if cheats:
                out.print(f"[yellow]{', '.join(names[c] for c in cheats)} runs a faulty "
                          "executor: it returns made-up vectors and will have to be caught[/]")
            c = net.client

            out.rule("1. batch embeddings")
            job = c.submit_job(spec.model_dump(), c.upload(data).digest)
            out.print(f"submitted job [bold]{job.id}[/]: {sum(sh.items for sh in shards)} "
                      f"sentences from {input_path}, {len(shards)} tasks, escrowed "
                      f"{money.fmt(job.escrow)} DEAI")
            job = follow_job(c, job.id, out)
            out.print(job_table(job, names))
            checks["embeddings"] = job.status == "completed"
            if job.status == "completed":
                path, lines = write_results(c, job.id, None)
                out.print(f"results: [bold]{path}[/] ({lines} lines)")
            out.print(f"job cost {money.fmt(job.cost)} DEAI, refunded "
                      f"{money.fmt(job.refunded)} DEAI of the escrow")

            out.rule("2. verification: replicas, referees, slashing")
            slashed = verification_report(c, names, out)
            if cheats:
                checks["cheater caught"] = bool(slashed & cheats)
            checks["no honest provider slashed"] = not (slashed - cheats)

            for jspec, jdata, _shards, label in jobs:
                out.rule(f"3. {label}")
                checks[label] = run_extra(c, label, jspec.model_dump(), jdata, names, out)

            if extras:
                out.rule("4. the OpenAI API, with the official openai client")
                checks["openai client"] = openai_example(c, net.url, out)

            out.rule("5. a lease: a machine by the hour")
            try:
                leased = lease_example(c, net, out)
            except DeAIError as exc:
                out.print(f"[red]the lease failed: {exc}[/]")
                leased = False
            if leased is not None:
                checks["lease"] = leased

            out.rule("6. earnings and the ledger")
            wait_for_release(c, [k.id for k in net.provider_keys], out)
            result = client_audit(c)
            earnings_table(c, net, result.earnings(), cheats, out)
            out.rule("ledger audit (replayed here, trusting nothing)")
            print_audit(result.report, result.entries, last=6, out=out)
            checks["ledger audit"] = result.ok
            out.print("[dim]stopping the network…[/]")
    except KeyboardInterrupt:
        out.print("interrupted; network stopped")
        return 130
    ok = all(checks.values())
    summary = "  ".join(f"{k}: {'[green]ok[/]' if v else '[red]FAILED[/]'}"
                        for k, v in checks.items())
    out.print(summary)
    out.print(f"network stopped. demo {'[bold green]passed' if ok else '[bold red]failed'}[/] "
              f"in {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


def verification_report(c: Client, names: dict[str, str], out: Console) -> set[str]:
    """The journal's verdicts and slashes; returns the providers slashed."""
    entries = c.journal(after=0, limit=5000).entries
    verdicts = [e for e in entries if e["kind"] == "verdict"]
    slashes = [e for e in entries if e["kind"] == "slash"]
    checks = c.request("GET", "/api/events", params={
        "kind": ["check_passed", "check_failed"], "limit": 500}).json().get("events", [])
    passed = sum(1 for e in checks if e["kind"] == "check_passed")
    failed = len(checks) - passed
    out.print(f"{passed} checks agreed, {failed} disagreed and went to a referee; "
              f"{len(verdicts)} verdicts, {len(slashes)} slashes")

    def who(pid: str | None) -> str:
        return names.get(pid or "", (pid or "network")[:10])

    if verdicts:
        t = Table("task", "checked", "checker", "referee", "at fault", title="referee verdicts")
        for e in verdicts[:8]:
            b = e["body"]
            t.add_row(b["task"][-10:], who(b["subject"]), who(b.get("checker")),
                      who(b["referee"]), b["fault"])
        out.print(t)
    for e in slashes:
        b = e["body"]
        out.print(f"[red]slashed {who(b['provider'])}[/]: {money.fmt(b['amount'])} DEAI of its "
                  f"stake ({money.fmt(b['bounty'])} to {who(b.get('bounty_to'))} for raising "
                  f"the mismatch), entry #{e['seq']} {e['hash'][:16]}…")
    return {e["body"]["provider"] for e in slashes}


def run_extra(c: Client, label: str, spec: dict[str, Any], data: bytes,
              names: dict[str, str], out: Console) -> bool:
    job = c.submit_job(spec, c.upload(data).digest)
    out.print(f"submitted {label} job [bold]{job.id}[/], escrowed {money.fmt(job.escrow)} DEAI")
    job = follow_job(c, job.id, out)
    if job.status != "completed":
        out.print(job_table(job, names))
        return False
    path, _ = write_results(c, job.id, None)
    raw = c.results(job.id)
    show: Callable[[bytes, Path, Console], None] = (show_chat if label == "chat"
                                                     else show_training)
    try:
        show(raw, path, out)
    except (DeAIError, KeyError, ValueError) as exc:
        out.print(f"[red]could not read the {label} result: {exc}[/]")
        return False
    out.print(f"cost {money.fmt(job.cost)} DEAI; results in [bold]{path}[/]")
    return True


def show_chat(raw: bytes, path: Path, out: Console) -> None:
    t = Table("id", "completion", title="chat completions (greedy, SmolLM2-135M-Instruct)")
    for line in raw.splitlines()[:4]:
        o = json.loads(line)
        body = o["response"]["body"]
        t.add_row(o["custom_id"], body["choices"][0]["message"]["content"].strip())
    out.print(t)


def show_training(raw: bytes, path: Path, out: Console) -> None:
    result = training.parse(raw)
    if result is None:
        raise ValueError("not a training result")
    metrics = result.get("metrics", {})
    acc = metrics.get("final_test_accuracy")
    out.print(f"trained {result.get('model')} for {result.get('steps')} steps; test accuracy "
              f"[bold]{acc}[/]; {len(result.get('chain', []))} checkpoints in the hash chain")
    png = path.with_suffix(".loss.png")
    training.plot(result, png)
    out.print(f"loss curve: [bold]{png}[/]")


def openai_example(c: Client, url: str, out: Console) -> bool:
    key = c.create_api_key(name="demo")
    assert key.key is not None  # shown once, at creation
    out.print(f"minted API key {key.key[:14]}… for the client's account")
    spec = importlib.util.spec_from_file_location("openai_client", example("openai_client.py"))
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(f"{url}/v1", key.key)) == 0


def wait_for_release(c: Client, provider_ids: list[str], out: Console) -> None:
    """Give the devnet's challenge window a chance to pass so earnings become available."""
    window = c.network().challenge_window
    if window > 30:
        return
    out.print(f"[dim]waiting up to {window + 5:.0f} s for the challenge window to release "
              "pending earnings…[/]")
    deadline = time.monotonic() + window + 5
    while time.monotonic() < deadline:
        if all(c.balance(pid).pending == 0 for pid in provider_ids):
            return
        time.sleep(0.5)


def earnings_table(c: Client, net: Devnet, earned: dict[str, int], cheats: set[str],
                   out: Console) -> None:
    by_id = {p.id: p for p in c.providers()}
    t = Table("provider", "price", "tasks", "reputation", "earned", "available", "stake",
              title="what each provider earned (DEAI; price in µ per 1,000 inputs)")
    for k in net.provider_keys:
        p = by_id.get(k.id)
        bal = c.balance(k.id)
        price = str(p.offers[0].price) if p and p.offers else "?"
        name = k.name + (" [red](cheater)[/]" if k.id in cheats else "")
        t.add_row(name, price, str(p.tasks_done if p else 0),
                  f"{p.reputation:.2f}" if p else "?", money.fmt(earned.get(k.id, 0)),
                  money.fmt(bal.available), money.fmt(bal.stake))
    out.print(t)


def lease_example(c: Client, net: Devnet, out: Console) -> bool | None:
    """Create a lease, exec in it, copy a file both ways, end it; None when skipped."""
    if net.lease_host is None:
        why = ("bubblewrap (bwrap) is not installed" if shutil.which("bwrap") is None
               else "no honest provider to host it")
        out.print(f"[yellow]lease skipped: {why}; leases run only inside bubblewrap "
                  "(`make bwrap` installs it)[/]")
        return None
    t0 = time.monotonic()
    leases = Leases(c)
    lease = leases.create(cpus=1, memory_mb=512, hours=0.25, max_price_hour=MICRO)
    out.print(f"$ deai lease create --cpus 1 --memory 512M --hours 0.25\nlease [bold]"
              f"{lease.id}[/] on {net.provider_keys[net.lease_host].name} ({LEASE_PRICES} µ "
              f"an hour per class): {money.fmt(lease.price_hour)} DEAI/hour, escrowed "
              f"{money.fmt(lease.escrow)} DEAI")
    lease = leases.wait_active(lease.id, timeout=120)
    buf = io.BytesIO()
    code = leases.exec(lease.id, ["sh", "-c", "echo \"uid $(id -u) in $HOME on $(nproc) CPU\"; "
                                  "python3 -c 'print(6 * 7)'"], stdout=buf, stderr=buf)
    out.print(f"$ deai lease exec {lease.id} -- sh -c '…'\n{buf.getvalue().decode().strip()}"
              f"\n(exit {code})")
    data = example("sentences.jsonl").read_bytes()
    leases.put(lease.id, data, "in/sentences.jsonl")
    counted = leases.exec(lease.id, ["sh", "-c", "wc -l < in/sentences.jsonl > lines.txt"])
    back = leases.get(lease.id, "in/sentences.jsonl")
    lines = leases.get(lease.id, "lines.txt").decode().strip()
    out.print(f"$ deai lease cp examples/sentences.jsonl {lease.id}:in/sentences.jsonl\n"
              f"$ deai lease cp {lease.id}:in/sentences.jsonl copy.jsonl   # sha256 "
              f"{hashlib.sha256(back).hexdigest()[:16]}…, {lines} lines")
    ended = leases.end(lease.id)
    out.print(f"$ deai lease end {lease.id}\nended ({ended.end_reason}): charged "
              f"{money.fmt(ended.charged)} DEAI for the seconds used, refunded "
              f"[bold]{money.fmt(ended.refunded)}[/] DEAI of the escrow "
              f"({time.monotonic() - t0:.1f} s from create to end)")
    return (code == 0 and counted == 0 and back == data and ended.end_reason == "owner ended"
            and ended.refunded > 0 and ended.charged + ended.refunded == ended.escrow)
