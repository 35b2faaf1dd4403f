"""``deai cluster``: a gang of leases on distinct providers, running Ray.

    deai cluster up --nodes 3 --cpus 1 --memory 4G --hours 1 --max-price-hour 0.5
    deai cluster submit CLUSTER -- python script.py     # exits with the job's status
    deai cluster status CLUSTER | list
    deai cluster down CLUSTER                           # stops its Ray, ends its leases

Registered in ``cli.py``; errors go through its ``handled``. The cluster's Ray token is
kept in ``$DEAI_HOME/clusters/<id>.json`` (0600) where ``up`` ran.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from deai.client.cli import DEFAULT_COORDINATOR, Coordinator, Key, command, console, signer
from deai.client.cli_lease import _amount, _when, parse_memory
from deai.client.clusters import Clusters, state_dir
from deai.core import money
from deai.core.wire_clusters import ClusterOut

cluster_app = typer.Typer(no_args_is_help=True, help="Ray clusters on leased machines.")


def show_cluster(cl: ClusterOut, events: bool = False) -> None:
    state = cl.status + (f" ({cl.end_reason})" if cl.end_reason else "")
    console.print(f"cluster    {cl.id}\nstatus     {state}"
                  f"{f' - {cl.detail}' if cl.detail else ''}\n"
                  f"nodes      {cl.nodes}; lost {len(cl.lost)}\n"
                  f"price      {money.fmt(cl.price_hour)} DEAI/hour (live members)\n"
                  f"money      escrow {money.fmt(cl.escrow)}, charged {money.fmt(cl.charged)}, "
                  f"refunded {money.fmt(cl.refunded)} DEAI\n"
                  f"formed     {_when(cl.ready_at)}   ended {_when(cl.ended_at)}")
    ray = cl.ray or {}
    for m in cl.members:
        node = (ray.get("nodes") or {}).get(m.id, {})
        role = node.get("role", "head" if m.id == cl.head_lease else "worker")
        ended = f" ({m.end_reason})" if m.end_reason else ""
        console.print(f"  {m.id}  {role:6}  {m.status}{ended}"
                      f"  provider {m.provider_id[:16]}  {node.get('ip', '-')}")
    if events:
        for e in cl.events[-20:]:
            console.print(f"  {_when(e.get('ts'))}  {e.get('kind')}"
                          f"{'  ' + str(e['reason']) if e.get('reason') else ''}")


@command(cluster_app, "up")
def up(
    nodes: Annotated[int, typer.Option(min=1, help="Machines, each a lease on its own provider.")],
    cpus: Annotated[int, typer.Option(min=1, help="CPUs per node.")] = 1,
    memory: Annotated[str, typer.Option(help="Memory per node, e.g. 4G.")] = "4G",
    gpus: Annotated[int, typer.Option(min=0, help="GPUs per node.")] = 0,
    hours: Annotated[float | None, typer.Option(help="The term of every lease.")] = None,
    deposit: Annotated[str | None, typer.Option(help="Escrow per node in DEAI.")] = None,
    max_price_hour: Annotated[str, typer.Option(help="DEAI per hour per node at most.")] = "1",
    form_timeout: Annotated[float | None, typer.Option(
        help="Seconds for every member to start (all or nothing).")] = None,
    coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
) -> None:
    """Lease NODES providers all or nothing and start Ray on them."""
    with signer(coordinator, key) as c:
        cl = Clusters(c).up(say=lambda m: console.print(m), nodes=nodes, cpus=cpus,
                            memory_mb=parse_memory(memory), gpus=gpus, hours=hours,
                            deposit=_amount(deposit, "deposit") if deposit else None,
                            max_price_hour=_amount(max_price_hour, "max_price_hour"),
                            form_timeout=form_timeout)
        show_cluster(cl)
        console.print(
            f"\nRay is up (token auth on; token in {state_dir() / (cl.id + '.json')}).\n"
            f"  deai cluster submit {cl.id} -- python script.py\n"
            f"or, by hand: deai lease forward {cl.head_lease} 8265, then\n"
            f"  RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token> "
            f"ray job submit --address http://127.0.0.1:8265 -- python script.py",
            soft_wrap=True)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@command(cluster_app, "submit")
def submit(
    cluster_id: str,
    entrypoint: Annotated[list[str], typer.Argument(help="The command, after --.")],
    working_dir: Annotated[str | None, typer.Option(
        help="Folder uploaded with the job (default: the current one).")] = ".",
    coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
) -> None:
    """Run a Ray job on the cluster; stream its logs; exit with its status."""
    with signer(coordinator, key) as c:
        code = Clusters(c).submit(cluster_id, entrypoint, working_dir=working_dir or None,
                                  out=_write)
    raise typer.Exit(code)


@command(cluster_app, "status")
def status(cluster_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
           key: Key = "client") -> None:
    """A cluster, its members, money and recent events."""
    with signer(coordinator, key) as c:
        show_cluster(Clusters(c).show(cluster_id), events=True)


@command(cluster_app, "list")
def listing(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Your clusters, newest first."""
    with signer(coordinator, key) as c:
        for cl in Clusters(c).list():
            console.print(f"{cl.id}  {cl.status:8} {cl.end_reason or '':14} "
                          f"{cl.nodes} nodes  charged {money.fmt(cl.charged)} DEAI")


@command(cluster_app, "down")
def down(cluster_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
         key: Key = "client") -> None:
    """Stop the cluster's own Ray processes (by pid) and end its leases."""
    with signer(coordinator, key) as c:
        show_cluster(Clusters(c).down(cluster_id))
