"""The chain's commands: ``deai chain up|fund|status|audit``, ``deai deposit``, ``deai withdraw``.

They read the deployment (RPC URL, chain id, contract addresses, delays) from the
coordinator's ``GET /api/chain``, or ``--rpc`` to reach the node another way, and
sign on chain with the EVM key derived from the ``--key`` identity
(``deai.chain.adapter.evm_key``), so a DeAI key needs no second secret.

- ``deposit AMOUNT``: approve and deposit DEAI into the settlement contract for
  the key's account, then wait until the coordinator has credited it.
- ``withdraw [AMOUNT]``: move AMOUNT out of the account to an address (default
  the key's own), wait for an epoch that commits it and for its challenge delay,
  then claim it on chain by Merkle proof. Without AMOUNT: only claim.
- ``chain audit`` (or ``ledger audit --chain``): replay the journal here and
  compare it with the chain (``deai.chain.audit``); exit 1 on any difference.
  The audited coordinator names the deployment, so the auditor may pin what it
  knows itself (``--settlement``, ``--vault``, ``--token``, ``--start-block``,
  or ``$DEAI_AUDIT_*`` for ``ledger audit --chain``), and counts at most
  ``--max-confirmations`` (64) of the confirmations it reports.
- ``chain up``: a local hardhat node with the contracts deployed, for
  ``DEAI_CHAIN=… deai coordinator``; ``chain fund`` gives a key's address ETH
  and DEAI on such a devnet chain.

Registered by ``deai.client.cli`` (imported at its end).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from deai.client import keys
from deai.client.cli import (
    DEFAULT_COORDINATOR,
    Coordinator,
    Key,
    app,
    command,
    console,
    signer,
    sigterm_as_interrupt,
)
from deai.client.sdk import Client
from deai.core import money
from deai.core.errors import Conflict, DeAIError, InvalidInput, NotFound
from deai.core.ledger import Entry

if TYPE_CHECKING:  # web3 loads in about a second: only the chain's commands pay for it
    from deai.chain import adapter
    from deai.chain.audit import ChainAudit

chain_app = typer.Typer(no_args_is_help=True, help="Settlement on an EVM chain.")
app.add_typer(chain_app, name="chain")
Rpc = Annotated[str, typer.Option("--rpc", envvar="DEAI_CHAIN_RPC",
                                  help="JSON-RPC URL; default the one the coordinator names.")]
WAIT = 300.0


def amount_of(text: str) -> int:
    try:
        return money.parse(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="amount") from None


@dataclass(frozen=True)
class Pins:
    """What an auditor knows of the deployment without asking the audited coordinator:
    each field set replaces what ``GET /api/chain`` reports."""

    settlement: str = ""
    vault: str = ""
    token: str = ""
    start_block: int | None = None
    max_confirmations: int = 64
    devnet: bool = False  # the network mints without deposits (a faucet): not a failure

    @classmethod
    def from_env(cls) -> Pins:
        """``$DEAI_AUDIT_SETTLEMENT``, ``_VAULT``, ``_TOKEN``, ``_START_BLOCK``,
        ``_MAX_CONFIRMATIONS``, ``_DEVNET`` (what ``deai ledger audit --chain`` reads)."""
        env = os.environ.get
        start, most = env("DEAI_AUDIT_START_BLOCK", ""), env("DEAI_AUDIT_MAX_CONFIRMATIONS", "")
        try:
            return cls(settlement=env("DEAI_AUDIT_SETTLEMENT", ""),
                       vault=env("DEAI_AUDIT_VAULT", ""), token=env("DEAI_AUDIT_TOKEN", ""),
                       start_block=int(start) if start else None,
                       max_confirmations=int(most) if most else 64,
                       devnet=env("DEAI_AUDIT_DEVNET", "").strip().lower()
                       in ("1", "true", "yes", "on", "t", "y"))  # as Click reads a flag
        except ValueError:
            raise InvalidInput("DEAI_AUDIT_START_BLOCK and DEAI_AUDIT_MAX_CONFIRMATIONS: "
                               "whole numbers of blocks", field="env") from None

    def apply(self, public: dict[str, Any]) -> dict[str, Any]:
        from deai.chain import books

        out = dict(public)
        for name in ("settlement", "vault", "token"):
            value = getattr(self, name)
            if value:
                if not books.is_address(value):
                    raise InvalidInput(f"{name}: an EVM address, 0x and 40 hex digits",
                                       field=name)
                out[name] = value
        if self.start_block is not None:
            out["start_block"] = self.start_block
        return out


def connect(c: Client, rpc: str = "", pins: Pins | None = None) -> adapter.Chain:
    from deai.chain import adapter

    info = c.request("GET", "/api/chain", signed=False).json()
    if not info.get("enabled"):
        raise NotFound(f"the coordinator at {c.base_url} settles on no chain", field="chain")
    public = dict(info["deployment"])
    if pins is not None:
        public = pins.apply(public)
    if rpc:
        public["rpc"] = rpc
    return adapter.Chain.connect(adapter.Deployment(**public))


def evm_account(name: str) -> Any:
    from deai.chain import adapter

    return adapter.evm_key(keys.load(name).signing_key.encode())


def wait_until(what: str, check: Any, timeout: float = WAIT, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise Conflict(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(every)


# --- deposit and withdraw ------------------------------------------------------------------

@command(app, "deposit")
def deposit(amount: Annotated[str, typer.Argument(help="DEAI, e.g. 25 or 2.5")],
            coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
            rpc: Rpc = "", wait: Annotated[bool, typer.Option(
                help="Wait until the coordinator credits it.")] = True) -> None:
    """Deposit DEAI from the key's EVM address into its DeAI account."""
    from deai.chain import adapter

    micro = amount_of(amount)
    ident = keys.load(key)
    me = evm_account(key)
    with Client(coordinator) as c:
        chain = connect(c, rpc)
        held = chain.token_balance(me.address)
        if held < micro:
            raise InvalidInput(f"amount: {me.address} holds {money.fmt(held)} DEAI on chain",
                               field="amount")
        chain.send(me, chain.token.functions.approve(chain.dep.settlement, micro))
        receipt = chain.send(me, chain.settlement.functions.deposit(
            adapter.account_id(ident.id), micro))
        tx = "0x" + bytes(receipt["transactionHash"]).hex()
        console.print(f"deposited {money.fmt(micro)} DEAI for {key} in block "
                      f"{receipt['blockNumber']} (tx {tx})")
        if not wait:
            return

        def credited() -> bool:
            info = c.request("GET", "/api/chain", signed=False).json()
            return any(d["tx"] == tx for d in info["deposits"]["recent"])

        wait_until(f"{chain.dep.confirmations} confirmations and the credit", credited)
        bal = c.balance(ident.id)
    console.print(f"credited after {chain.dep.confirmations} confirmations; available "
                  f"{money.fmt(bal.available)} DEAI")


@command(app, "withdraw")
def withdraw(amount: Annotated[str | None, typer.Argument(
                 help="DEAI to withdraw; omit to only claim what is already committed.")
             ] = None,
             to: Annotated[str | None, typer.Option(help="EVM address; default the key's.")]
             = None, coordinator: Coordinator = DEFAULT_COORDINATOR, key: Key = "client",
             rpc: Rpc = "", wait: Annotated[bool, typer.Option(
                 help="Wait for the epoch and its delay, then claim on chain.")] = True) -> None:
    """Withdraw DEAI to the chain: by Merkle proof, after the next epoch's challenge delay."""
    me = evm_account(key)
    address = to or me.address
    with signer(coordinator, key) as c:
        chain = connect(c, rpc)
        after = 0
        if amount is not None:
            out = c.request("POST", "/api/chain/withdraw",
                            json_body={"amount": amount_of(amount), "address": address}).json()
            after = int(out["journal_seq"])
            console.print(f"withdrew {money.fmt(out['amount'])} DEAI from {key} to {address} "
                          f"(journal entry {after}); available {money.fmt(out['available'])}")
        if not wait:
            return
        got = claim(c, chain, me, address, after)
    console.print(f"claimed {money.fmt(got)} DEAI on chain to {address}; it holds "
                  f"{money.fmt(chain.token_balance(address))} DEAI")


def claim(c: Client, chain: adapter.Chain, payer: Any, address: str, after: int) -> int:
    """Wait for an epoch committing journal entry ``after``, then its delay; claim."""
    from deai.chain import adapter

    def proof() -> dict[str, Any] | None:
        try:
            p: dict[str, Any] = c.request("GET", f"/api/chain/proof/{address}",
                                          signed=False).json()
        except NotFound:
            return None
        return p if p["head_seq"] >= after else None

    p = wait_until("an epoch that commits the withdrawal", proof)
    posted = int(chain.settlement.functions.epochs(p["epoch"]).call()[4])
    matures = posted + chain.dep.challenge_delay
    console.print(f"epoch {p['epoch']} commits {money.fmt(p['cumulative'])} DEAI in all to "
                  f"{address}; claimable once the chain's clock passes {matures}")
    wait_until("the challenge delay", lambda: chain.now() >= matures)
    try:
        receipt = chain.send(payer, chain.settlement.functions.withdraw(
            p["epoch"], p["address"], p["cumulative"],
            [bytes.fromhex(h[2:]) for h in p["proof"]]))
    except adapter.ChainError as exc:
        if "already withdrawn" in exc.message:
            return 0
        raise
    (ev,) = chain.logs(chain.settlement, "Withdrawn", receipt)
    return int(ev.args.amount)


# --- audit -----------------------------------------------------------------------------------

def print_chain_audit(rep: ChainAudit) -> None:
    f = rep.facts
    console.print(f"chain: {rep.epochs} epochs, {rep.deposits} deposits, {rep.claims} claims, "
                  f"{rep.providers} providers' stake, {rep.slashes} slashes checked; contract "
                  f"holds {money.fmt(f.get('held', 0))} DEAI")
    if f.get("unbacked"):
        console.print(f"{money.fmt(f['unbacked'])} DEAI entered the journal from the mint "
                      "without a deposit (faucet, grants): no deposit backs it")
    if f.get("surplus"):
        console.print(f"the contract holds {money.fmt(f['surplus'])} DEAI more than deposits "
                      "less claims (tokens sent to it directly)")
    if f.get("confirmations"):
        console.print(f"confirmations: {f['confirmations']}")
    if rep.ok:
        console.print("[bold green]chain audit OK[/]: every root recomputes from the "
                      "journal, deposits credited once, claims covered, stake and slashes "
                      "mirrored")
    else:
        console.print("[bold red]chain audit FAILED[/]")
        for p in rep.problems:
            console.print(f"  - {p}", markup=False)


def check_chain(c: Client, entries: list[Entry], rpc: str = "",
                pins: Pins | None = None) -> bool:
    """Compare a journal replayed here with the chain the coordinator names (less what
    ``pins``, default ``Pins.from_env()``, fixes); print why not."""
    from deai.chain.audit import audit_chain

    pins = pins if pins is not None else Pins.from_env()
    chain = connect(c, rpc, pins)
    rep = audit_chain(entries, chain, max_confirmations=pins.max_confirmations,
                      devnet=pins.devnet)
    print_chain_audit(rep)
    return rep.ok


def chain_audit(coordinator: str, rpc: str = "", pins: Pins | None = None) -> bool:
    """Replay the journal here and compare it with the chain; True when both hold."""
    from deai.client.audit import client_audit
    from deai.client.cli import print_audit

    with Client(coordinator) as c:
        result = client_audit(c)
        print_audit(result.report, result.entries, last=5)
        return check_chain(c, result.entries, rpc, pins) and result.ok


Devnet = Annotated[bool, typer.Option(
    "--devnet", envvar="DEAI_AUDIT_DEVNET",
    help="The network is a devnet, whose faucet mints money no deposit backs: report it, "
         "do not fail on it.")]


def _pin(name: str, what: str) -> Any:
    return typer.Option(f"--{name}", envvar=f"DEAI_AUDIT_{name.upper().replace('-', '_')}",
                        help=f"{what}; default what the coordinator reports.")


@command(chain_app, "audit")
def chain_audit_cmd(coordinator: Coordinator = DEFAULT_COORDINATOR, rpc: Rpc = "",
                    settlement: Annotated[str, _pin("settlement", "Settlement address")] = "",
                    vault: Annotated[str, _pin("vault", "StakeVault address")] = "",
                    token: Annotated[str, _pin("token", "Token address")] = "",
                    start_block: Annotated[int | None, _pin(
                        "start-block", "Block the contracts were deployed in")] = None,
                    max_confirmations: Annotated[int, typer.Option(
                        envvar="DEAI_AUDIT_MAX_CONFIRMATIONS", min=0,
                        help="Count at most this many of the confirmations the coordinator "
                             "reports before a deposit must be credited.")] = 64,
                    devnet: Devnet = False) -> None:
    """Replay the journal and compare every epoch, deposit, claim, stake and slash with
    the chain; exit 1 if anything differs."""
    pins = Pins(settlement, vault, token, start_block, max_confirmations, devnet)
    if not chain_audit(coordinator, rpc, pins):
        raise typer.Exit(1)


# --- a local chain -----------------------------------------------------------------------------

@command(chain_app, "up")
def chain_up(port: Annotated[int, typer.Option(help="JSON-RPC port.")] = 8545,
             challenge_delay: Annotated[int, typer.Option(min=0, help="Seconds.")] = 60,
             unbond_delay: Annotated[int, typer.Option(min=0, help="Seconds.")] = 120,
             epoch_interval: Annotated[float, typer.Option(min=0.5, help="Seconds.")] = 10.0
             ) -> None:
    """Start a local hardhat node, deploy the contracts, stay up until Ctrl-C."""
    from deai.chain import node

    sigterm_as_interrupt()
    home = keys.home() / "chain"
    hh = node.HardhatNode(port, home / "hardhat.log")
    try:
        hh.wait_ready()
        chain = node.deploy_devnet(hh.rpc, challenge_delay=challenge_delay,
                                   unbond_delay=unbond_delay, epoch_interval=epoch_interval)
        path = chain.dep.save(home / "deployment.json")
        d = chain.dep
        console.print(f"chain        {hh.rpc} (chain id {d.chain_id})\ntoken        {d.token}\n"
                      f"vault        {d.vault}\nsettlement   {d.settlement}\n"
                      f"deployment   {path} (holds the settlement key)\n"
                      f"export DEAI_CHAIN={path}   # then: deai coordinator --devnet\n"
                      "Ctrl-C to stop")
        while hh.alive():
            time.sleep(1)
        raise DeAIError(f"hardhat exited ({hh.proc.returncode}); see {hh.log_path}")
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        hh.stop()


@command(chain_app, "fund")
def chain_fund(amount: Annotated[str, typer.Argument(help="DEAI to send on chain.")] = "100",
               key: Key = "client", deployment: Annotated[str, typer.Option(
                   envvar="DEAI_CHAIN", help="Deployment file (holds the deployer key).")]
               = "") -> None:
    """Devnet only: give a key's EVM address ETH for gas and DEAI from the deployer."""
    from pathlib import Path

    from deai.chain import adapter, node

    path = Path(deployment) if deployment else keys.home() / "chain" / "deployment.json"
    if not path.exists():
        raise NotFound(f"no deployment at {path}; start one with `deai chain up`",
                       field="deployment")
    chain = adapter.Chain.connect(adapter.Deployment.load(path))
    me = evm_account(key)
    node.fund(chain, me.address, amount_of(amount))
    console.print(f"{key}'s address {me.address} holds "
                  f"{money.fmt(chain.token_balance(me.address))} DEAI")


@command(chain_app, "status")
def chain_status(coordinator: Coordinator = DEFAULT_COORDINATOR) -> None:
    """The chain as the coordinator sees it: epochs, deposits, withdrawals, stake."""
    with Client(coordinator) as c:
        info = c.request("GET", "/api/chain", signed=False).json()
    if not info.get("enabled"):
        console.print("this coordinator settles on no chain")
        return
    d, ch = info["deployment"], info.get("chain", {})
    e = info.get("latest_epoch") or {}
    t = Table(show_header=False, box=None)
    for k, v in (("rpc", d["rpc"]), ("settlement", d["settlement"]), ("block", ch.get("block")),
                 ("latest epoch", f"{e.get('epoch')} at journal entry {e.get('head_seq')}, "
                                  f"root {str(e.get('root'))[:18]}…" if e else "none yet"),
                 ("deposits", f"{info['deposits']['count']}, "
                              f"{money.fmt(info['deposits']['total'])} DEAI"),
                 ("withdrawals", f"{info['withdrawals']['count']}, "
                                 f"{money.fmt(info['withdrawals']['total'])} DEAI"),
                 ("contract holds", money.fmt(ch.get("held", 0)) + " DEAI"),
                 ("staked on chain", money.fmt(ch.get("staked", 0)) + " DEAI"),
                 ("outbox", ", ".join(f"{k} {v}" for k, v in info["outbox"].items()))):
        t.add_row(k, str(v))
    console.print(t)

