"""``deai demo``: the whole loop on loopback, narrated, in about a minute.

Starts a ``Devnet`` (coordinator + N providers as processes, funded ``client``
key), submits ``examples/embeddings.yaml`` over ``examples/sentences.jsonl``
with a progress bar, writes the results, prints the job's cost and what each
provider earned, waits out the devnet's short challenge window so earnings are
released, replays the ledger on the client side, and shuts everything down.

Returns 0 when the job completed and the audit passed, 1 otherwise. Input is
validated before any process starts, so a bad spec costs nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deai.client.audit import client_audit
from deai.client.cli import follow_job, job_table, load_spec, print_audit, read_input, write_results
from deai.client.devnet import Devnet
from deai.client.sdk import Client
from deai.core import money
from deai.core.errors import InvalidInput

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example(name: str) -> Path:
    """``examples/NAME`` under the working directory, else beside the source checkout."""
    for base in (Path("examples"), EXAMPLES):
        if (base / name).is_file():
            return base / name
    raise InvalidInput(f"cannot find examples/{name}; pass it explicitly", field=name)


def run_demo(providers: int, spec_file: Path | None, input_file: Path | None,
             out: Console) -> int:
    spec_path = spec_file or example("embeddings.yaml")
    input_path = input_file or example("sentences.jsonl")
    spec = load_spec(spec_path)
    data, items = read_input(input_path, spec)

    out.rule("DeAI demo")
    t0 = time.monotonic()
    try:
        with Devnet(providers, log=lambda m: out.print(f"[dim]{m}[/]")) as net:
            out.print(f"coordinator {net.url}   explorer {net.explorer_line()}")
            c = net.client
            job = c.submit_job(spec.model_dump(), c.upload(data).digest)
            out.print(f"submitted job [bold]{job.id}[/]: {sum(sh.items for sh in items)} "
                      f"sentences from {input_path} in shards of {spec.shard_size}, escrowed "
                      f"{money.fmt(job.escrow)} DEAI")
            job = follow_job(c, job.id, out)
            out.print(job_table(job, {k.id: k.name for k in net.provider_keys}))
            if job.status == "completed":
                path, lines = write_results(c, job.id, None)
                out.print(f"results: [bold]{path}[/] ({lines} lines)")
            out.print(f"job cost {money.fmt(job.cost)} DEAI, refunded "
                      f"{money.fmt(job.refunded)} DEAI of the escrow")
            wait_for_release(c, [k.id for k in net.provider_keys], out)
            result = client_audit(c)
            earnings_table(c, net, result.earnings(), out)
            out.rule("ledger audit (replayed here, trusting nothing)")
            print_audit(result.report, result.entries, last=6, out=out)
            out.print("[dim]stopping the network…[/]")
    except KeyboardInterrupt:
        out.print("interrupted; network stopped")
        return 130
    ok = job.status == "completed" and result.ok
    out.print(f"network stopped. demo {'[bold green]passed' if ok else '[bold red]failed'}[/] "
              f"in {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


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


def earnings_table(c: Client, net: Devnet, earned: dict[str, int], out: Console) -> None:
    by_id = {p.id: p for p in c.providers()}
    t = Table("provider", "price", "tasks", "earned", "pending", "available", "stake",
              title="what each provider earned (DEAI; price in µ per 1,000 inputs; "
                    "earned = payouts in the journal)")
    for k in net.provider_keys:
        p = by_id.get(k.id)
        bal = c.balance(k.id)
        price = str(p.offers[0].price) if p and p.offers else "?"
        t.add_row(k.name, price, str(p.tasks_done if p else 0), money.fmt(earned.get(k.id, 0)),
                  money.fmt(bal.pending), money.fmt(bal.available), money.fmt(bal.stake))
    out.print(t)
