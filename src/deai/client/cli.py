"""The ``deai`` command line: keys, the coordinator, providers, a devnet, jobs, market, ledger.

Every command that talks to a network takes ``--coordinator URL`` (default
``$DEAI_COORDINATOR``, then ``http://127.0.0.1:8000``) and, where it signs,
``--key NAME`` (default ``$DEAI_KEY``, then ``client``: the key a devnet funds).
Amounts of money are typed and shown in DEAI as decimals (``core.money``);
prices are integer micro-units per 1,000 units, as in a job spec.

Errors are handled in one place (``handled``): a ``DeAIError`` prints
``error: <message> (field: X)`` on stderr and exits 1; an unreachable
coordinator prints where we tried; running out of money says how to fund a
key. No input prints a traceback: anything unexpected is one ``error:`` line
(``DEAI_DEBUG=1`` shows the traceback). A coordinator URL without a scheme
gets ``http://``.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, ParamSpec, TypeVar

import click
import httpx
import pydantic
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deai.client import keys, sealed, training
from deai.client.sdk import Client, retrying
from deai.core import auth, kinds, money, specs, wire
from deai.core.errors import DeAIError, InsufficientFunds, InvalidInput
from deai.core.ledger import AuditReport, Entry

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_COORDINATOR = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
POLL = 0.5
POLL_ATTEMPTS = 10

console = Console(highlight=False, soft_wrap=True)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="DeAI: an open, verified marketplace for AI compute.")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 keys under $DEAI_HOME/keys.")
provider_app = typer.Typer(no_args_is_help=True, help="Sell compute.")
devnet_app = typer.Typer(no_args_is_help=True, help="A local network on loopback.")
verifier_app = typer.Typer(no_args_is_help=True,
                          help="Run the network's trusted verifier (its key listed by the "
                               "coordinator).")
job_app = typer.Typer(no_args_is_help=True, help="Submit and follow jobs.")
market_app = typer.Typer(no_args_is_help=True, help="Prices and who could run a job.")
ledger_app = typer.Typer(no_args_is_help=True, help="Balances and the journal's audit.")
for _name, _sub in (("keys", keys_app), ("provider", provider_app), ("verifier", verifier_app),
                    ("devnet", devnet_app),
                    ("job", job_app), ("market", market_app), ("ledger", ledger_app)):
    app.add_typer(_sub, name=_name)

def coordinator_url(value: str) -> str:
    """``127.0.0.1:8000`` means ``http://127.0.0.1:8000``; a URL must have a host."""
    url = value.strip()
    if "://" not in url:
        url = f"http://{url}"
    url = url.rstrip("/")
    try:
        ok = bool(httpx.URL(url).host) and httpx.URL(url).scheme in ("http", "https")
    except (httpx.InvalidURL, TypeError, ValueError):
        ok = False
    if not ok:
        raise typer.BadParameter(f"{value!r} is not a coordinator URL such as "
                                 "http://127.0.0.1:8000")
    return url


Coordinator = Annotated[str, typer.Option("--coordinator", envvar="DEAI_COORDINATOR",
                                          callback=coordinator_url, help="Coordinator URL.")]
Key = Annotated[str, typer.Option("--key", envvar="DEAI_KEY", help="Key name to sign with.")]


# --- errors, in one place ------------------------------------------------------------------

def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DeAIError as exc:
            where = f" (field: {exc.field})" if exc.field else ""
            hint = ("\nfund the key on a devnet with `deai faucet --key NAME --amount 100`"
                    if isinstance(exc, InsufficientFunds) else "")
            raise fail(f"{exc.message}{where}{hint}") from None
        except httpx.TransportError as exc:
            url = "the coordinator"
            if _has_request(exc):
                u = exc.request.url
                url = f"{u.scheme}://{u.netloc.decode()}"
            raise fail(f"cannot reach {url}: {exc}") from None
        except OSError as exc:  # a file we were told to read or write
            raise fail(str(exc)) from None
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ()))
            raise fail(f"{field}: {err.get('msg')}" if field else str(err.get("msg"))) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort,
                click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("DEAI_DEBUG"):
                raise
            raise fail(f"unexpected {type(exc).__name__}: {exc} (DEAI_DEBUG=1 shows the "
                       "traceback)") from None
    return wrapper


def parse_amount(text: str, field: str) -> int:
    """A positive amount of DEAI (``2.5``, or ``1500000µ``) in micro-units."""
    try:
        micro = money.parse(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not an amount of DEAI such as 100 or 2.5",
                           field=field) from None
    if micro <= 0:
        raise InvalidInput(f"{field} must be above 0", field=field)
    if micro > wire.MAX_MONEY:
        raise InvalidInput(f"{field} must be at most {money.fmt(wire.MAX_MONEY)} DEAI",
                           field=field)
    return micro


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        return False
    return True


def command(group: typer.Typer, name: str | None = None) -> Callable[[Callable[P, R]],
                                                                      Callable[P, R]]:
    def register(fn: Callable[P, R]) -> Callable[P, R]:
        group.command(name)(handled(fn))
        return fn
    return register


def sigterm_as_interrupt() -> None:
    """Let ``kill PID`` stop a long-running command as cleanly as Ctrl-C does."""
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, raise_interrupt)


# --- helpers shared with the demo ----------------------------------------------------------

def load_spec(path: Path) -> specs.JobSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read spec {path}: {exc.strerror}", field="spec") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {exc}", field="spec") from None
    return specs.parse_spec(data)


def read_input(path: Path, spec: specs.JobSpec) -> tuple[bytes, list[specs.Shard]]:
    """The input's bytes and the shards the coordinator will cut (any kind's checks)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read input {path}: {exc.strerror}", field="input") from None
    return data, specs.split(spec, data)


def signer(coordinator: str, key: str | keys.Identity) -> Client:
    """A client signing with ``key`` (a name in the keys folder) for the coordinator's
    network: pinned by ``DEAI_NETWORK_ID``, else asked, and then signed for at the
    address this home first met it at only (``keys.bind_network``)."""
    me = keys.load(key) if isinstance(key, str) else key
    pinned = os.environ.get("DEAI_NETWORK_ID") or None
    return Client(coordinator, me, network_id=pinned, bind=pinned is None)


def usable_cores() -> int:
    """The cores this process may run on, as the provider's own default counts them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_account(name_or_id: str) -> str:
    if re.fullmatch(r"[0-9a-f]{64}", name_or_id):
        return name_or_id
    return keys.load(name_or_id).id


def task_counts(job: wire.JobOut) -> tuple[int, int]:
    """(accepted, total) tasks of a job, whatever other states the coordinator counts."""
    t = job.tasks
    total = t.get("total", sum(v for k, v in t.items() if k != "total"))
    return t.get("done", 0), total


def follow_job(client: Client, job_id: str, out: Console = console) -> wire.JobOut:
    """Poll a job with a progress bar of accepted tasks until it ends; returns its last state.

    Polls ride out a coordinator restart (back-off on transport errors and 5xx)
    for a minute or two before giving up.
    """
    def poll() -> wire.JobOut:
        return retrying(lambda: client.job(job_id), attempts=POLL_ATTEMPTS)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("tasks  {task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as bar:
        job = poll()
        done, total = task_counts(job)
        tid = bar.add_task(job_id, total=total or None, completed=done, status=job.status)
        while job.status not in TERMINAL:
            time.sleep(POLL)
            job = poll()
            done, total = task_counts(job)
            bar.update(tid, total=total or None, completed=done, status=job.status)
    return job


def job_table(job: wire.JobOut, names: dict[str, str] | None = None) -> Table:
    """A job's state; ``names`` maps provider ids to display names where known."""
    names = names or {}
    done, total = task_counts(job)
    t = Table(show_header=False, box=None)
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("job", job.id), ("status", job.status), ("owner", job.owner),
        ("model", str(job.spec.get("model", ""))), ("inputs", f"{job.items} lines, "
                                                    f"{job.units} units"),
        ("tasks", f"{done}/{total} accepted  " + "  ".join(
            f"{k}={v}" for k, v in sorted(job.tasks.items()) if k != "total")),
        ("escrow", money.fmt(job.escrow)), ("cost", money.fmt(job.cost)),
        ("refunded", money.fmt(job.refunded)),
    ]
    rows += [(f"  by {names.get(pid) or pid[:12] + '…'}", plural(n, "task"))
             for pid, n in sorted(job.providers.items(), key=lambda kv: names.get(kv[0], kv[0]))]
    if job.error:
        rows.append(("error", job.error))
    if job.output_digest:
        rows.append(("output", job.output_digest))
    for k, v in rows:
        t.add_row(k, v)
    return t


def provider_names(c: Client) -> dict[str, str]:
    return {p.id: p.name for p in c.providers() if p.name}


def write_results(client: Client, job_id: str, path: Path | None) -> tuple[Path, int]:
    data = sealed.results(client, job_id)  # a sealed job's, decrypted with the owner's key
    path = path or Path("results") / f"{job_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, data.count(b"\n")


# --- keys ----------------------------------------------------------------------------------

@command(keys_app, "new")
def keys_new(name: str) -> None:
    """Create an Ed25519 key; its public key is the account id."""
    ident = keys.create(name)
    console.print(f"created key [bold]{name}[/]: {ident.id}")
    console.print(f"stored in {keys.keys_dir() / (name + '.key')}")


@command(keys_app, "list")
def keys_list() -> None:
    """Every key under $DEAI_HOME/keys."""
    names = keys.names()
    if not names:
        console.print(f"no keys in {keys.keys_dir()}; create one with `deai keys new NAME`")
        return
    t = Table("name", "account id")
    for n in names:
        t.add_row(n, keys.load(n).id)
    console.print(t)


@command(keys_app, "show")
def keys_show(name: str) -> None:
    """Print a key's account id (nothing else, so scripts can use it)."""
    typer.echo(keys.load(name).id)


# API keys for the OpenAI-compatible API: bearer secrets bound to the account of --key.
api_key_app = typer.Typer(no_args_is_help=True,
                          help="Bearer keys for the OpenAI-compatible API under /v1.")
keys_app.add_typer(api_key_app, name="api-key")


@command(api_key_app, "create")
def api_key_create(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
                   name: Annotated[str, typer.Option(help="A label for the key.")] = "",
                   spend_cap: Annotated[str | None, typer.Option(
                       help="Most DEAI the key may commit, e.g. 5; default no cap.")] = None
                   ) -> None:
    """Mint an API key that spends from --key's account; the secret is printed once."""
    cap = parse_amount(spend_cap, "spend_cap") if spend_cap is not None else None
    with signer(coordinator, key) as c:
        out = c.create_api_key(name, cap)
    console.print(f"created API key [bold]{out.id}[/] for {key} ({out.account[:12]}…)"
                  + (f", spend cap {money.fmt(cap)} DEAI" if cap is not None else ""))
    console.print("use it as OPENAI_API_KEY with base URL "
                  f"{coordinator.rstrip('/')}/v1; it is not shown again:")
    typer.echo(out.key)


@command(api_key_app, "list")
def api_key_list(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """The API keys of --key's account."""
    with signer(coordinator, key) as c:
        rows = c.api_keys()
    t = Table("id", "name", "prefix", "spent (DEAI)", "cap (DEAI)", "status")
    for k in rows:
        t.add_row(k.id, k.name, k.prefix + "…", money.fmt(k.spent),
                  money.fmt(k.spend_cap) if k.spend_cap is not None else "-",
                  "revoked" if k.revoked_at is not None else "active")
    console.print(t)


@command(api_key_app, "revoke")
def api_key_revoke(key_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
                   key: Key = "client") -> None:
    """Revoke an API key: requests with it fail with 401 from now on."""
    with signer(coordinator, key) as c:
        out = c.revoke_api_key(key_id)
    console.print(f"revoked {out.id} ({out.prefix}…)")


# --- processes ---------------------------------------------------------------------------

def public_keys(values: list[str] | None) -> list[str]:
    """Each value a public key (64 hex digits), lower-cased."""
    out = [v.strip().lower() for v in values or []]
    bad = [v for v in out if not auth.is_account_id(v)]
    if bad:
        raise typer.BadParameter(f"not a public key (64 hex digits): {bad[0]!r}")
    return out


@command(app, "coordinator")
def coordinator_cmd(
    database_url: Annotated[str, typer.Option(help="SQLAlchemy URL; SQLite under "
                                              "--data-dir when empty.")] = "",
    host: str = "127.0.0.1", port: int = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Default $DEAI_HOME/coordinator.")] = None,
    devnet: Annotated[bool, typer.Option(help="Faucet on, short windows.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Replica processes on this port "
                                         "(PostgreSQL only).")] = 1,
    verifier_key: Annotated[list[str] | None, typer.Option(
        callback=public_keys, help="A trusted verifier's public key (repeatable; also "
        "DEAI_VERIFIER_KEYS, comma-separated).")] = None,
    trust_forwarded_for: Annotated[bool, typer.Option(
        help="Behind a reverse proxy: a provider's address is X-Forwarded-For's last hop.")]
    = False,
) -> None:
    """Run the coordinator (blocks until stopped)."""
    from deai.coordinator.server import serve
    from deai.coordinator.settings import Settings, default_data_dir

    env = os.environ.get("DEAI_VERIFIER_KEYS", "").split(",")
    trusted = auth.key_list([*(verifier_key or []), *env], "DEAI_VERIFIER_KEYS")
    settings = Settings(data_dir=(data_dir or default_data_dir()).resolve(),
                        database_url=database_url, verifiers=trusted,
                        trust_forwarded_for=trust_forwarded_for)
    serve(settings.for_devnet() if devnet else settings, host, port, workers=workers)


@command(provider_app, "start")
def provider_start(
    key: Key, coordinator: Coordinator = DEFAULT_COORDINATOR,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads to offer; "
                                                "default every usable core.")] = None,
    slots: Annotated[int, typer.Option(min=1, help="Tasks run at once.")] = 1,
    price: Annotated[int, typer.Option(min=0, help="µ per 1,000 inputs.")] = 1000,
    stake: Annotated[str | None, typer.Option(help="DEAI to bond, e.g. 25; default the "
                                              "network's minimum.")] = None,
    name: str = "",
    operator: Annotated[str | None, typer.Option(help="The operator key (from `deai keys`) "
                                                 "that claims this provider.")] = None,
) -> None:
    """Run a provider agent: probe, benchmark, bond, offer, then serve work until stopped."""
    from deai.provider.agent import start

    threads = threads or usable_cores()
    bond = parse_amount(stake, "stake") if stake is not None else None
    raise typer.Exit(start(coordinator, key, threads, slots, price, bond, name,
                           operator=operator))


@command(provider_app, "withdraw-leases")
def provider_withdraw_leases(key: Key, coordinator: Coordinator = DEFAULT_COORDINATOR) -> None:
    """Take this host's lease offer back: no new lease is placed on it, and the leases it
    runs go on to their end (not extended); stop the agent once none is left."""
    from deai.client.leases import Leases

    with signer(coordinator, key) as c:
        out = Leases(c).withdraw_host()
    if not out.withdrawn:
        console.print("no lease offer to withdraw")
    if out.live:
        until = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(out.until))
                 if out.until is not None else "an end not known yet (one has not started)")
        console.print(f"{len(out.live)} lease(s) still running, until {until}: "
                      + ", ".join(out.live))
    if out.saving:
        console.print(f"{len(out.saving)} ended lease(s) still saving their volume: "
                      + ", ".join(out.saving))
    if not out.live and not out.saving:
        console.print("no lease running: the agent can stop now")


@command(verifier_app, "start")
def verifier_start(
    key: Key, coordinator: Coordinator = DEFAULT_COORDINATOR,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads to use; "
                                                "default every usable core.")] = None,
    slots: Annotated[int, typer.Option(min=1, help="Checks run at once.")] = 1,
    name: str = "",
) -> None:
    """Run the network's own verifier: a provider agent whose key the coordinator lists
    (``--verifier-key``); it offers every model it can run at price 0 and bonds no stake."""
    from deai.provider.agent import start

    raise typer.Exit(start(coordinator, key, threads or usable_cores(), slots, 0, None, name,
                           verifier=True))


@command(provider_app, "verify")
def provider_verify(
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads; default every "
                                                "usable core.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    target: Annotated[float, typer.Option(min=0.05, help="Seconds of products.")] = 3.0,
) -> None:
    """Run the hardware challenge the network would issue here; print what it would see."""
    from deai.provider import challenge as hwchallenge  # body: provider/challenge.py

    raise SystemExit(hwchallenge.verify_command(threads or usable_cores(), as_json, target))


@command(devnet_app, "up")
def devnet_up(
    providers: Annotated[int, typer.Option(min=0)] = 3,
    port: Annotated[int, typer.Option(help="0 picks a free port.")] = 0,
    cheaters: Annotated[int, typer.Option(min=0, help="Providers that return bad work.")] = 0,
    chain: Annotated[bool, typer.Option("--chain", help="Settle on a local hardhat chain.")]
    = False,
) -> None:
    """Start a coordinator and N providers on loopback; stay up until Ctrl-C."""
    from deai.client.devnet import Devnet

    sigterm_as_interrupt()
    kind: type[Devnet] = Devnet
    if chain:
        from deai.chain.devnet import ChainDevnet
        kind = ChainDevnet
    net = kind(providers, port=port, cheaters=cheaters,
               log=lambda m: console.print(f"[dim]{m}[/]"))
    try:
        with net:
            for v in net.verifier_keys:
                console.print(f"verifier     {v.name} {v.id}")
            console.print(f"coordinator  {net.url}\nexplorer     {net.explorer_line()}\n"
                          f"logs         {net.dir / 'logs'}\n"
                          f"export DEAI_COORDINATOR={net.url}   # then: deai job submit ...\n"
                          "this terminal stays with the devnet: run commands in another "
                          "one; Ctrl-C here stops it")
            while True:
                time.sleep(1)
                for child in net.children:
                    if not child.alive():
                        raise DeAIError(f"{child.name} exited ({child.proc.returncode}); "
                                        f"see {child.log_path}")
    except KeyboardInterrupt:
        console.print("stopped")


# --- money -------------------------------------------------------------------------------

@command(app, "faucet")
def faucet(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
           amount: Annotated[str, typer.Option(help="DEAI, e.g. 100 or 2.5")] = "100") -> None:
    """Fund a key from the devnet's faucet."""
    micro = parse_amount(amount, "amount")
    with signer(coordinator, key) as c:
        bal = c.faucet(micro)
    console.print(f"funded {key} with {money.fmt(micro)} DEAI; available "
                  f"{money.fmt(bal.available)} DEAI")


@command(ledger_app, "balance")
def ledger_balance(account: Annotated[str | None, typer.Argument(
                       help="Account id or key name; default --key.")] = None,
                   coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """An account's available, pending and staked DEAI."""
    with Client(coordinator) as c:
        bal = c.balance(resolve_account(account or key))
    console.print(f"account    {bal.account}\n"
                  f"available  {money.fmt(bal.available)} DEAI\n"
                  f"pending    {money.fmt(bal.pending)} DEAI\n"
                  f"stake      {money.fmt(bal.stake)} DEAI")


@command(ledger_app, "audit")
def ledger_audit(coordinator: Coordinator = DEFAULT_COORDINATOR,
                 last: Annotated[int, typer.Option(help="Entries to list; 0 lists all.")] = 20,
                 chain: Annotated[bool, typer.Option(
                     "--chain", help="Also compare with the chain it settles on.")] = False,
                 devnet: Annotated[bool, typer.Option(
                     "--devnet", envvar="DEAI_AUDIT_DEVNET",
                     help="With --chain: the network is a devnet, whose faucet mints money "
                          "no deposit backs; report it, do not fail on it.")] = False,
                 ) -> None:
    """Fetch the whole journal and replay it here; exit 1 if any invariant fails."""
    from dataclasses import replace

    from deai.client.audit import client_audit
    from deai.client.cli_chain import Pins, check_chain

    pins = replace(Pins.from_env(), devnet=True) if devnet else Pins.from_env()
    with Client(coordinator) as c:
        # Entries are streamed, not held, unless the chain check needs them all.
        result = client_audit(c, keep_entries=chain or last <= 0, tail=max(last, 1))
        print_audit(result.report, result.entries, last)
        chain_ok = check_chain(c, result.entries, pins=pins) if chain else True
    if not result.ok or not chain_ok:
        raise typer.Exit(1)


def print_audit(report: AuditReport, entries: list[Entry], last: int = 20,
                out: Console = console) -> None:
    shown = entries if last <= 0 else entries[-last:]
    if shown:
        t = Table("seq", "kind", "postings", "hash",
                  title=f"journal (last {len(shown)} of {report.entries} entries)")
        for e in shown:
            postings = ", ".join(f"{a[:20]} {'+' if d >= 0 else ''}{money.fmt(d)}"
                                 for a, d in e.postings)
            t.add_row(str(e.seq), e.kind, postings, e.hash[:12])
        out.print(t)
    kinds: dict[str, int] = {}
    for e in entries:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    out.print("by kind " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    out.print(f"entries {report.entries}   accounts {report.accounts}   "
              f"supply {money.fmt(report.supply)} DEAI\nhead    {report.head}")
    if report.ok:
        out.print("[bold green]audit OK[/]: hash chain intact, every balance equals its "
                  "postings, supply conserved")
    else:
        out.print("[bold red]audit FAILED[/]")
        for p in report.problems:
            out.print(f"  - {p}", markup=False)


# --- jobs ----------------------------------------------------------------------------------

@command(job_app, "submit")
def job_submit(spec_file: Annotated[Path, typer.Argument(metavar="SPEC.yaml")],
               input_file: Annotated[Path, typer.Option("--input", help="OpenAI Batch JSONL.")],
               wait: Annotated[bool, typer.Option(help="Follow until the job ends.")] = False,
               seal: Annotated[bool, typer.Option(
                   "--sealed", help="Encrypt the input to the quote's best providers and the "
                                    "network's verifiers only (docs/sealed.md).")] = False,
               coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Validate locally, upload the input, submit; with --wait exit 0 only if it completes."""
    spec = load_spec(spec_file)
    data, shards = read_input(input_file, spec)
    with signer(coordinator, key) as c:
        if seal or spec.sealed:  # split and encrypted here; the coordinator gets ciphertext
            job = sealed.submit(c, spec.model_dump(mode="json"), data,
                                sealed_for=list(spec.sealed_for) or None)
        else:
            job = c.submit_job(spec.model_dump(), c.upload(data).digest)
        console.print(f"submitted job [bold]{job.id}[/]: {sum(sh.items for sh in shards)} "
                      f"items, {job.units} units, escrowed {money.fmt(job.escrow)} DEAI")
        if not wait:
            return
        try:
            job = follow_job(c, job.id)
        except KeyboardInterrupt:
            console.print(f"still running; follow with `deai job status {job.id}`")
            raise typer.Exit(130) from None
        console.print(job_table(job, provider_names(c)))
    if job.status != "completed":
        raise typer.Exit(1)
    console.print(f"fetch the output with `deai job results {job.id}`")


@command(job_app, "status")
def job_status(job_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
               key: Key = "client") -> None:
    """A job's state, tasks and money (jobs are private: the owner's --key reads them)."""
    with signer(coordinator, key) as c:
        console.print(job_table(c.job(job_id), provider_names(c)))


@command(job_app, "list")
def job_list(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
             all_owners: Annotated[bool, typer.Option("--all", help="Ignored: jobs are private.")]
             = False, limit: int = 50) -> None:
    """Your jobs (the --key's), newest first; --all is kept for old scripts (jobs are private:
    every owner's jobs are on the explorer, without their specs)."""
    me = keys.load(key)
    with signer(coordinator, me) as c:
        jobs = c.jobs(owner=me.id, limit=limit)
    t = Table("job", "status", "tasks", "inputs", "cost", "created")
    t.columns[0].no_wrap = t.columns[5].no_wrap = True
    for j in jobs:
        done, total = task_counts(j)
        t.add_row(j.id, j.status, f"{done}/{total}", str(j.items), money.fmt(j.cost),
                  time.strftime("%m-%d %H:%M:%S", time.localtime(j.created_at)))
    console.print(t)


@command(job_app, "results")
def job_results(job_id: str, output: Annotated[Path | None, typer.Option(
                    "-o", "--output", help="Default results/<job id>.jsonl.")] = None,
                coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Write a completed job's output (one line per input line, in input order)."""
    with signer(coordinator, key) as c:
        path, lines = write_results(c, job_id, output)
        result = training.parse(path.read_bytes())
        extra = (training.save(c, result, path, model=sealed.model(c, job_id, result))
                 if result else [])
    console.print(f"wrote {lines} lines to {path}")
    for p in extra:
        console.print(f"wrote {p}")


@command(job_app, "plot")
def job_plot(job_id: str, output: Annotated[Path, typer.Option(
                 "-o", "--output", help="PNG file to write.")] = Path("loss.png"),
             coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Draw a completed training job's loss curve and test accuracy to a PNG."""
    with signer(coordinator, key) as c:
        result = training.parse(c.results(job_id))
    if result is None:
        raise InvalidInput(f"job {job_id} is not a training job", field="job")
    console.print(f"wrote {training.plot(result, output)}")


@command(job_app, "cancel")
def job_cancel(job_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
               key: Key = "client") -> None:
    """Cancel a job; the unused escrow comes back."""
    with signer(coordinator, key) as c:
        job = c.cancel_job(job_id)
    console.print(f"job {job.id} {job.status}; refunded {money.fmt(job.refunded)} DEAI")


# --- market --------------------------------------------------------------------------------

def shard_units(spec: specs.JobSpec, input_file: Path | None, units: int | None) -> list[int]:
    if input_file is not None:
        return [sh.max_units for sh in read_input(input_file, spec)[1]]
    if units is None or units < 1:
        raise InvalidInput("give --input FILE or --units N (N >= 1)", field="input")
    return kinds.get(spec.kind).quote_shards(spec, units)


@command(market_app, "quote")
def market_quote(spec_file: Annotated[Path, typer.Argument(metavar="SPEC.yaml")],
                 input_file: Annotated[Path | None, typer.Option("--input")] = None,
                 units: Annotated[int | None, typer.Option(help="How many inputs, if no --input.")]
                 = None, coordinator: Coordinator = DEFAULT_COORDINATOR) -> None:
    """What the job would cost, who could run it, and why every other provider cannot."""
    spec = load_spec(spec_file)
    su = shard_units(spec, input_file, units)
    with Client(coordinator) as c:
        q = c.quote(spec.model_dump(), su)
        names = {p.id: p.name for p in c.providers()}

    def who(d: dict[str, Any]) -> tuple[str, str]:
        pid = str(d.get("provider") or d.get("provider_id") or d.get("id") or "?")
        return pid[:16], str(d.get("name") or names.get(pid, ""))

    t = Table("provider", "name", "price µ/1,000",
              title=f"eligible ({q.eligible_count or len(q.eligible)})")
    for d in q.eligible:
        t.add_row(*who(d), str(d.get("price", "")))
    console.print(t)
    if q.ineligible:
        t = Table("provider", "name", "why not",
                  title=f"ineligible ({q.ineligible_count or len(q.ineligible)})")
        for d in q.ineligible:
            t.add_row(*who(d), "; ".join(str(r) for r in d.get("reasons", [])))
        console.print(t)
    est = f"{money.fmt(q.estimated_cost)} DEAI at {q.best_price} µ/1,000" \
        if q.estimated_cost is not None else "no provider can run this job"
    console.print(f"{q.units} units in {len(su)} shards\nestimated cost {est}\n"
                  f"maximum cost   {money.fmt(q.max_cost)} DEAI (escrowed on submit)")


# --- demo ----------------------------------------------------------------------------------

@command(app, "demo")
def demo(providers: Annotated[int, typer.Option(min=1)] = 4,
         cheaters: Annotated[int, typer.Option(min=0, help="Providers with a faulty "
                                                         "executor, to be caught.")] = 1,
         spec_file: Annotated[Path | None, typer.Option("--spec")] = None,
         input_file: Annotated[Path | None, typer.Option("--input")] = None,
         extras: Annotated[bool, typer.Option(help="Also run chat, training and the "
                                                   "OpenAI API.")] = True) -> None:
    """Start a devnet with a cheater; run embeddings (the cheater is caught), chat and
    training jobs and the OpenAI API; audit the ledger; shut down."""
    from deai.client.demo import run_demo

    sigterm_as_interrupt()
    raise typer.Exit(run_demo(providers, spec_file, input_file, console, cheaters=cheaters,
                              extras=extras))


# --- simulator -----------------------------------------------------------------------------

sim_app = typer.Typer(no_args_is_help=True, help="Simulate the network's policies at scale.")
app.add_typer(sim_app, name="sim")


@command(sim_app, "verify")
def sim_verify(
        providers: Annotated[int, typer.Option(min=2)] = 10_000,
        tasks: Annotated[int, typer.Option(min=1)] = 1_000_000,
        seed: int = 0,
        out: Annotated[Path, typer.Option(help="Where report.json and the PNG go.")] = Path(
            "sim-verify"),
        fast: Annotated[bool, typer.Option(help="Small sizes everywhere (seconds); reports "
                                              "the targets without failing.")] = False,
        referee_error: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
        churn: Annotated[bool, typer.Option(help="Slashed cheaters return as new identities.")
                         ] = True) -> None:
    """Drive core's verification policies over a simulated network; check the targets."""
    from dataclasses import replace

    from deai.sim import report, run
    from deai.sim.engine import World

    plan = run.Plan.fast() if fast else run.Plan()
    if not fast or providers != 10_000 or tasks != 1_000_000:
        plan = replace(plan, providers=providers, tasks=tasks)
    world = World(referee_error=referee_error, churn=churn)
    r = run.verify(plan, seed, world, progress=lambda name: console.print(f"running {name}…"))
    report.show(r, console)
    for path in report.write(r, out):
        console.print(f"wrote {path}")
    missed = [t for t in r["targets"] if not t["pass"]]
    if missed and plan.tasks < run.Plan().tasks:
        # A small run cannot reach full-size targets (they are set for 10⁶ tasks): report.
        console.print(f"note: this run has {plan.tasks:,} tasks and {plan.providers:,} "
                      f"providers; {plural(len(missed), 'target')} set for the full size "
                      f"({run.Plan().tasks:,} tasks) cannot be met by a run this small, so "
                      "it does not fail. Run without --fast to check them.")
    elif missed:
        raise typer.Exit(1)


from deai.client import cli_chain  # noqa: E402, F401 - registers chain, deposit and withdraw
from deai.client.cli_lease import lease_app  # noqa: E402 - it uses the helpers above

app.add_typer(lease_app, name="lease")
from deai.client.cli_volume import lease_snapshot, volume_app  # noqa: E402

command(lease_app, "snapshot")(lease_snapshot)
app.add_typer(volume_app, name="volume")
from deai.client.cli_cluster import cluster_app  # noqa: E402 - it uses the helpers above

app.add_typer(cluster_app, name="cluster")
from deai.client.cli_dataset import dataset_app  # noqa: E402 - it uses the helpers above

app.add_typer(dataset_app, name="dataset")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
