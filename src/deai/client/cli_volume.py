"""``deai volume``: a lease's home that outlives the lease, saved as snapshots.

    deai volume create data --size-gb 2
    deai lease create --cpus 1 --memory 1G --hours 1 --volume data   # restored into /work
    deai lease snapshot LEASE                                         # save it now
    deai volume list | show data | rm data

``lease_snapshot`` is ``deai lease snapshot``. Both are registered in ``cli.py``;
errors go through its ``handled``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from deai.client.cli import DEFAULT_COORDINATOR, Coordinator, Key, command, console, signer
from deai.client.volumes import Volumes
from deai.core.wire_volumes import VolumeOut

volume_app = typer.Typer(no_args_is_help=True,
                         help="Volumes: a lease's home that outlives it (free for now).")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def show_volume(v: VolumeOut) -> None:
    console.print(f"volume     {v.id} ({v.name})\nsize       {_size(v.size_bytes)}\n"
                  f"head       {v.head or '(empty)'} {_size(v.head_size)}\n"
                  f"mounted by {v.mounted_by or '-'}", highlight=False)
    for x in v.snapshots:
        console.print(f"  {_when(x.created_at)}  {x.digest[:16]}  {_size(x.size):>10}  "
                      f"{x.kind:<5} {x.lease_id}", highlight=False)


@command(volume_app, "create")
def create(name: str,
           size_gb: Annotated[float, typer.Option(help="The cap, in GiB.")] = 1.0,
           coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Create an empty volume."""
    with signer(coordinator, key) as c:
        show_volume(Volumes(c).create(name, size_gb))


@command(volume_app, "list")
def listing(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Your volumes."""
    with signer(coordinator, key) as c:
        for v in Volumes(c).list():
            console.print(f"{v.id}  {v.name:<20} {_size(v.size_bytes):>10}  head "
                          f"{(v.head or '-')[:16]:<16} {_size(v.head_size):>10}  "
                          f"{v.mounted_by or ''}", highlight=False)


@command(volume_app, "show")
def show(volume: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
         key: Key = "client") -> None:
    """A volume and its snapshots, newest first."""
    with signer(coordinator, key) as c:
        show_volume(Volumes(c).show(volume))


@command(volume_app, "rm")
def rm(volume: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
       key: Key = "client") -> None:
    """Remove a volume and its snapshots (not while a lease holds it)."""
    with signer(coordinator, key) as c:
        v = Volumes(c).remove(volume)
        console.print(f"removed {v.id} ({v.name})", highlight=False)


def lease_snapshot(lease_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
             key: Key = "client") -> None:
    """Save the lease's home to its volume now (and wait until it is saved)."""
    with signer(coordinator, key) as c:
        show_volume(Volumes(c).snapshot(lease_id))
