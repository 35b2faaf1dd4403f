"""``deai lease``: rent a machine by the hour, get a shell, copy files, forward ports.

    deai lease create --cpus 2 --memory 4G --hours 1 --max-price-hour 0.5
    deai lease exec LEASE -- python3 -c 'print(6*7)'      # exits with the command's status
    deai lease cp data.csv LEASE:in/data.csv              # and LEASE:out.txt out.txt
    deai lease shell LEASE                                # a real terminal; exit to leave
    deai lease forward LEASE 8888                         # or 9000:8888 (LOCALPORT:PORT)
    deai lease extend LEASE --hours 1 | --amount 0.2
    deai lease list | show LEASE | end LEASE
    deai lease run-resumable -- --steps 400             # training that survives preemption

Amounts and prices are DEAI decimals (``--max-price-hour 0.5`` is 0.5 DEAI an
hour); memory takes ``512M``, ``4G`` or MiB. ``create`` waits until the
provider has started the lease (``--no-wait`` returns at once). Registered in
``cli.py``; errors go through its ``handled``.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from deai.client import lease_resume, lease_tty
from deai.client.cli import (
    DEFAULT_COORDINATOR,
    Coordinator,
    Key,
    command,
    console,
    signer,
    sigterm_as_interrupt,
)
from deai.client.leases import Leases
from deai.core import money
from deai.core.errors import InvalidInput
from deai.core.wire_leases import LeaseOut

lease_app = typer.Typer(no_args_is_help=True, help="Rent machines by the hour.")

_MEM = re.compile(r"^(\d+)\s*([MmGg]i?[Bb]?)?$")
_REMOTE = re.compile(r"^(lease_[0-9a-f]{16}):(.+)$")


def parse_memory(text: str) -> int:
    """``4G`` / ``512M`` / ``2048`` (MiB) -> MiB."""
    m = _MEM.match(text.strip())
    if not m:
        raise InvalidInput(f"memory {text!r}: use e.g. 512M or 4G", field="memory")
    n, unit = int(m.group(1)), (m.group(2) or "M")[0].upper()
    return n * 1024 if unit == "G" else n


def _amount(text: str, field: str) -> int:
    try:
        return money.parse(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field) from None


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S") if ts else "-"


def show_lease(lease: LeaseOut) -> None:
    state = lease.status + (f" ({lease.end_reason})" if lease.end_reason else "")
    console.print(
        f"lease      {lease.id}\nstatus     {state}\nprovider   {lease.provider_id}\n"
        f"resources  {lease.cpus} CPU, {lease.memory_mb} MiB"
        f"{f', {lease.gpus} GPU' if lease.gpus else ''}"
        f"{', network' if lease.network else ''}\n"
        f"price      {money.fmt(lease.price_hour)} DEAI/hour\n"
        f"escrow     {money.fmt(lease.escrow)} DEAI; charged {money.fmt(lease.charged)}, "
        f"refunded {money.fmt(lease.refunded)}"
        f"{f', provider penalty {money.fmt(lease.penalty)}' if lease.penalty else ''}\n"
        f"started    {_when(lease.started_at)}   ends {_when(lease.ends_at)}"
        f"{f' ({lease.ends_by})' if lease.ends_by else ''}")
    if lease.volume:
        console.print(f"volume     {lease.volume} at /work")
    if lease.detail:
        console.print(f"detail     {lease.detail}")
    if lease.preempt_at and lease.status != "ended":
        console.print(f"[yellow]preemption notice: this spot lease ends at "
                      f"{_when(lease.preempt_at)}[/]")
    for e in lease.events:
        if e.get("kind") == "lease_warning":
            console.print(f"[yellow]warning {_when(e.get('ts'))}: {e.get('message')}[/]")


@command(lease_app, "create")
def create(
    cpus: Annotated[int, typer.Option(min=1)] = 1,
    memory: Annotated[str, typer.Option(help="e.g. 512M or 4G")] = "1G",
    gpus: Annotated[int, typer.Option(min=0)] = 0,
    gpu_model: Annotated[str | None, typer.Option()] = None,
    hours: Annotated[float | None, typer.Option(help="The term; the escrow pays for it.")
                     ] = None,
    deposit: Annotated[str | None, typer.Option(help="Escrow in DEAI instead of (or "
                                                "beyond) hours x price.")] = None,
    max_price_hour: Annotated[str, typer.Option(help="DEAI per hour at most.")] = "1",
    network: Annotated[bool, typer.Option(help="Ask for network access.")] = False,
    spot: bool = False,
    volume: Annotated[str | None, typer.Option(help="A volume (id or name) to mount at "
                                               "the home; saved when the lease ends.")
                      ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the lease is active.")] = True,
    coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
) -> None:
    """Place a lease on the cheapest provider that has the resources."""
    with signer(coordinator, key) as c:
        leases = Leases(c)
        lease = leases.create(
            cpus=cpus, memory_mb=parse_memory(memory), gpus=gpus, gpu_model=gpu_model,
            hours=hours, deposit=_amount(deposit, "deposit") if deposit else None,
            max_price_hour=_amount(max_price_hour, "max_price_hour"), network=network,
            spot=spot, volume=volume)
        if wait:
            lease = leases.wait_active(lease.id)
        show_lease(lease)


@command(lease_app, "list")
def listing(coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Your leases, newest first."""
    with signer(coordinator, key) as c:
        for x in Leases(c).list():
            console.print(f"{x.id}  {x.status:<7} {x.end_reason or '':<17} {x.cpus} CPU "
                          f"{x.memory_mb:>6} MiB  {money.fmt(x.price_hour)}/h  charged "
                          f"{money.fmt(x.charged)}")


@command(lease_app, "show")
def show(lease_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
         key: Key = "client") -> None:
    """A lease's state, money and warnings."""
    with signer(coordinator, key) as c:
        show_lease(Leases(c).show(lease_id))


@command(lease_app, "end")
def end(lease_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
        key: Key = "client") -> None:
    """End a lease now; the unused escrow is refunded."""
    with signer(coordinator, key) as c:
        show_lease(Leases(c).end(lease_id))


@command(lease_app, "extend")
def extend(lease_id: str, hours: Annotated[float | None, typer.Option()] = None,
           amount: Annotated[str | None, typer.Option(help="DEAI to add.")] = None,
           coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Add hours to the term (and their cost to the escrow), or top up the escrow."""
    with signer(coordinator, key) as c:
        show_lease(Leases(c).extend(lease_id, hours=hours,
                                    amount=_amount(amount, "amount") if amount else None))


@command(lease_app, "exec")
def exec_(lease_id: str, cmd: Annotated[list[str], typer.Argument(help="-- CMD ARGS...")],
          coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Run a command in the lease (stdin is passed on when it is not a terminal)."""
    stdin = None if sys.stdin.isatty() else sys.stdin.buffer.read()
    with signer(coordinator, key) as c:
        code = Leases(c).exec(lease_id, cmd, stdin=stdin, stdout=sys.stdout.buffer,
                              stderr=sys.stderr.buffer)
    sys.stdout.flush()
    raise SystemExit(code)  # not typer.Exit: it must pass any wrapper unchanged


@command(lease_app, "cp")
def cp(src: str, dst: str, coordinator: Coordinator = DEFAULT_COORDINATOR,
       key: Key = "client") -> None:
    """Copy a file into (``cp FILE LEASE:PATH``) or out of (``cp LEASE:PATH FILE``) a lease."""
    up, down = _REMOTE.match(dst), _REMOTE.match(src)
    if bool(up) == bool(down):
        raise InvalidInput("exactly one of SRC and DST must be LEASE:PATH", field="dst")
    t0 = time.monotonic()
    with signer(coordinator, key) as c:
        leases = Leases(c)
        if up:
            with open(src, "rb") as f:
                size = leases.put(up.group(1), f, up.group(2), mode=Path(src).stat().st_mode
                                  & 0o777)
        else:
            assert down
            with open(dst, "wb") as f:
                leases.get(down.group(1), down.group(2), out=f)
            size = Path(dst).stat().st_size
    console.print(f"copied {size} bytes in {time.monotonic() - t0:.2f} s")


@command(lease_app, "shell")
def shell(lease_id: str, cmd: Annotated[list[str] | None, typer.Argument(
              help="Program to run instead of bash.")] = None,
          coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """An interactive terminal in the lease; exits with the shell's status."""
    with signer(coordinator, key) as c:
        code = lease_tty.shell(Leases(c), lease_id, cmd or None)
    raise SystemExit(code)  # not typer.Exit: it must pass any wrapper unchanged


@command(lease_app, "forward")
def forward(lease_id: str, ports: Annotated[str, typer.Argument(
                metavar="[LOCALPORT:]PORT", help="e.g. 8888 or 9000:8888")],
            coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client") -> None:
    """Forward a local TCP port (127.0.0.1) to a port inside the lease until Ctrl-C."""
    local, _, remote = ports.rpartition(":")
    if not remote.isdigit() or (local and not local.isdigit()):
        raise InvalidInput(f"ports {ports!r}: want PORT or LOCALPORT:PORT", field="ports")
    port = int(remote)
    sigterm_as_interrupt()
    with signer(coordinator, key) as c:
        bound, stop = lease_tty.serve_forward(Leases(c), lease_id, port,
                                              int(local) if local else port)
        console.print(f"forwarding 127.0.0.1:{bound} -> {lease_id}:{port} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            stop()


@command(lease_app, "run-resumable")
def run_resumable(
    args: Annotated[list[str] | None, typer.Argument(help="-- ARGS for the script")] = None,
    script: Annotated[Path | None, typer.Option(help="A script that keeps the contract of "
                                                "deai.client.lease_train (default: that "
                                                "example trainer).")] = None,
    checkpoint: Annotated[str, typer.Option(help="The script's checkpoint, in the lease's "
                                            "home.")] = "ckpt.pt",
    output: Annotated[str, typer.Option(help="What the script leaves when done.")
                      ] = "final.pt",
    workdir: Annotated[Path, typer.Option(help="Where checkpoints and the output land.")
                       ] = Path("."),
    cpus: Annotated[int, typer.Option(min=1)] = 1,
    memory: Annotated[str, typer.Option(help="e.g. 512M or 4G")] = "1G",
    hours: float = 1.0,
    max_price_hour: Annotated[str, typer.Option(help="DEAI per hour at most.")] = "1",
    spot: Annotated[bool, typer.Option(help="Spot leases (half price, preemptible).")
                    ] = True,
    coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
) -> None:
    """Run a checkpointing training script on spot leases; on a preemption notice its
    checkpoint is copied out and the run resumes on a new lease, until it finishes."""
    source = script or Path(lease_resume.__file__).with_name("lease_train.py")
    if not source.is_file():
        raise InvalidInput(f"no script at {source}", field="script")
    sigterm_as_interrupt()
    fields = {"cpus": cpus, "memory_mb": parse_memory(memory), "hours": hours, "spot": spot,
              "max_price_hour": _amount(max_price_hour, "max_price_hour")}
    with signer(coordinator, key) as c:
        result = lease_resume.run_resumable(
            Leases(c), source, args or [], lease=fields, checkpoint=checkpoint,
            output=output, workdir=workdir, log=lambda m: console.print(m, highlight=False))
    for i, r in enumerate(result.rounds, 1):
        console.print(f"round {i}: {r.lease_id} on {r.provider_id[:12]}  exit "
                      f"{'-' if r.exit_code is None else r.exit_code}"
                      f"{'  preempted' if r.noticed else ''}")
    console.print(f"output: {result.output}")
