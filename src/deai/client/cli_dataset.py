"""``deai dataset``: publish data under terms, use it, release its key, see where it went.

    deai dataset publish rows.csv --price-per-use 0.5 --allow train [--expires 2027-01-01]
    deai dataset list | show ID | revoke ID | delete ID
    deai dataset providers ID FILE | --anyone   # the only providers its jobs run on
    deai dataset train ID spec.yaml [--accept-price P] [--wait]   # another account's job
    deai dataset serve [--once]      # the owner releases the key to leased providers
    deai dataset uses ID             # each use: job, status, model and chain head

Registered in ``cli.py``; errors go through its ``handled``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from deai.client import datasets
from deai.client.cli import (
    DEFAULT_COORDINATOR,
    Coordinator,
    Key,
    command,
    console,
    follow_job,
    load_spec,
    signer,
    sigterm_as_interrupt,
)
from deai.client.cli_lease import _amount, _when
from deai.client.sdk import Client
from deai.core import datasets as D
from deai.core import money
from deai.core import wire_datasets as W
from deai.core.errors import InvalidInput

dataset_app = typer.Typer(no_args_is_help=True,
                          help="Datasets under terms: royalties per use, key release, uses.")


def _expiry(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"expires: {text!r} is not a date (YYYY-MM-DD[THH:MM])",
                           field="expires") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _allow(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in D.ALLOWABLE]
    if not kinds or bad:
        raise InvalidInput(f"allow: a comma-separated list of {', '.join(D.ALLOWABLE)}",
                           field="allow")
    return kinds


def show_dataset(ds: W.DatasetOut) -> None:
    t = ds.terms
    state = (f"deleted {_when(ds.deleted_at)}" if ds.deleted_at
             else f"revoked {_when(ds.revoked_at)}" if ds.revoked_at else "active")
    console.print(f"dataset    {ds.id}  [bold]{ds.name}[/]  ({state})\n"
                  f"owner      {ds.owner}\n"
                  f"size       {ds.size} bytes"
                  + (f"; {ds.train['n']} rows × {ds.train['features']} features, "
                     f"{ds.train['classes']} classes" if ds.train else "") + "\n"
                  f"terms      {money.fmt(t.price_per_use)} DEAI per use; allow "
                  f"{','.join(t.allow)}; expires {_when(t.expires_at)}; max uses "
                  f"{t.max_uses or '-'}"
                  + (" (a use held by a job no provider has taken costs the price per "
                     "day, pro rata, if the job ends without a model)" if t.max_uses else "")
                  + "\n"
                  f"uses       {ds.uses}; royalties paid {money.fmt(ds.royalties)} DEAI\n"
                  f"providers  " + ("any" if ds.providers is None else
                                    f"{len(ds.providers)} named by the owner"))


@command(dataset_app, "publish")
def publish(path: Path,
            price_per_use: Annotated[str, typer.Option(help="DEAI per job that uses it.")],
            allow: Annotated[str, typer.Option(help="Kinds of jobs allowed: train[,embeddings]")]
            = "train",
            expires: Annotated[str | None, typer.Option(help="No new use after this date.")]
            = None,
            max_uses: Annotated[int | None, typer.Option(min=1)] = None,
            name: Annotated[str | None, typer.Option()] = None,
            providers: Annotated[Path | None, typer.Option(
                exists=True, dir_okay=False,
                help="A file of provider ids, one a line: its jobs run on these only.")]
            = None,
            coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Encrypt PATH under a fresh key, upload it, and offer it under these terms."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="path") from None
    terms = D.Terms(price_per_use=_amount(price_per_use, "price_per_use"),
                    allow=_allow(allow),  # type: ignore[arg-type]
                    expires_at=_expiry(expires), max_uses=max_uses)
    trusted = datasets.read_trust(providers) if providers is not None else None
    with signer(coordinator, key) as c:
        ds = datasets.publish(c, data, name or path.name, terms, trusted)
    console.print(f"published dataset [bold]{ds.id}[/]")
    show_dataset(ds)


@command(dataset_app, "list")
def listing(owner: Annotated[str | None, typer.Option()] = None,
            coordinator: Coordinator = DEFAULT_COORDINATOR) -> None:
    """Every dataset's public metadata (never its content)."""
    with Client(coordinator) as c:
        for ds in datasets.listing(c, owner):
            state = "revoked" if ds.revoked_at else "active"
            console.print(f"{ds.id}  {ds.name[:30]:30}  {money.fmt(ds.terms.price_per_use)} "
                          f"DEAI/use  {','.join(ds.terms.allow):16} uses {ds.uses:<5} "
                          f"{state}  owner {ds.owner[:16]}")


@command(dataset_app, "show")
def show(dataset_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR) -> None:
    with Client(coordinator) as c:
        show_dataset(datasets.show(c, dataset_id))


@command(dataset_app, "revoke")
def revoke(dataset_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
           key: Key = "client") -> None:
    """No new job may use it, and its key is released to nobody any more."""
    with signer(coordinator, key) as c:
        show_dataset(datasets.revoke(c, dataset_id))


@command(dataset_app, "providers")
def providers(dataset_id: str,
              file: Annotated[Path | None, typer.Argument(
                  exists=True, dir_okay=False,
                  help="Provider ids, one a line; leave out with --anyone.")] = None,
              anyone: Annotated[bool, typer.Option(
                  help="Let any provider run the dataset's jobs again.")] = False,
              coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Name the only providers your dataset's jobs run on from now on: their primaries
    and replicas, who read the rows (audits stay the network's verifiers')."""
    if (file is None) == (not anyone):
        raise InvalidInput("file: give a file of provider ids, or --anyone", field="file")
    trusted = None if anyone else datasets.read_trust(file)  # type: ignore[arg-type]
    with signer(coordinator, key) as c:
        show_dataset(datasets.set_providers(c, dataset_id, trusted))


@command(dataset_app, "delete")
def delete(dataset_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
           key: Key = "client") -> None:
    """Revoke it and let its content go (once no job using it runs): it no longer counts
    against this account's storage quota nor its number of datasets."""
    with signer(coordinator, key) as c:
        show_dataset(datasets.delete(c, dataset_id))


@command(dataset_app, "train")
def train(dataset_id: str, spec_file: Annotated[Path, typer.Argument(metavar="SPEC.yaml")],
          accept_price: Annotated[str | None, typer.Option(
              help="The price per use this job accepts (default: the current one).")] = None,
          wait: Annotated[bool, typer.Option(help="Follow until the job ends.")] = False,
          coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Submit a training job on a dataset; the terms it accepts are part of its spec."""
    spec = load_spec(spec_file).model_dump(mode="json")
    price = None if accept_price is None else _amount(accept_price, "accept_price")
    with signer(coordinator, key) as c:
        job = datasets.submit(c, spec, dataset_id, price)
        console.print(f"submitted job [bold]{job.id}[/] on {dataset_id}: escrowed "
                      f"{money.fmt(job.escrow)} DEAI (royalty included)")
        if wait:
            job = follow_job(c, job.id)
            console.print(f"job {job.id}: {job.status}")
    if wait and job.status != "completed":
        raise typer.Exit(1)


@command(dataset_app, "serve")
def serve(once: Annotated[bool, typer.Option(help="One pass, then exit.")] = False,
          interval: Annotated[float, typer.Option(min=0.1)] = 1.0,
          trust: Annotated[Path | None, typer.Option(
              exists=True, dir_okay=False,
              help="A file of provider ids, one a line: release the key to these only and "
                   "refuse the others (their leases fail, the job goes to another).")] = None,
          coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Release your datasets' key to the providers leased for jobs within their terms."""
    trusted = datasets.read_trust(trust) if trust is not None else None
    with signer(coordinator, key) as c:
        if once:
            done = datasets.serve_pass(c, trust=trusted)
            for job_id, to in done.released:
                console.print(f"released to {len(to)} provider(s) for job {job_id}")
            for job_id, to in done.refused:
                console.print(f"refused {len(to)} provider(s) for job {job_id}")
            for job_id, why in done.failed:
                console.print(f"[red]job {job_id}: {why}[/]")
            if done.failed:
                raise typer.Exit(1)
            return
        sigterm_as_interrupt()
        stop = threading.Event()
        console.print("serving key releases; Ctrl-C stops")
        try:
            datasets.serve(c, stop, interval, trusted)
        except KeyboardInterrupt:
            stop.set()


@command(dataset_app, "refuse")
def refuse(dataset_id: str, job_id: str, providers: list[str],
           coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Turn away providers leased for a job on your dataset, before releasing them the
    key: their leases fail and the job is placed on others."""
    with signer(coordinator, key) as c:
        got = datasets.refuse(c, dataset_id, job_id, providers)
        console.print(f"refused {len(got)} provider(s) for job {job_id}")


@command(dataset_app, "uses")
def uses(dataset_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
         key: Key = "client") -> None:
    """Each use of your dataset: job, payer, royalty entry, model and its chain head."""
    with signer(coordinator, key) as c:
        for u in datasets.uses(c, dataset_id):
            console.print(f"{u.job_id}  {u.kind:6} {u.job_status:10} by {u.job_owner[:16]}  "
                          f"{money.fmt(u.price)} DEAI (entry {u.royalty_seq or '-'})  "
                          f"model {u.model_digest or '-'}  chain_head {u.chain_head or '-'}")
