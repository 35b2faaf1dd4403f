"""``python -m deai.provider --coordinator URL --key NAME``: run a provider agent.

Exits 0 after SIGTERM/SIGINT once running tasks are done, 1 if the agent stops
on an error it cannot ride out (such as stake it cannot bond), 2 on bad
arguments (an unknown model, a price for a model not offered).

    --models all-MiniLM-L6-v2,SmolLM2-135M-Instruct   (default: every available model)
    --price 1000 --price-for SmolLM2-135M-Instruct=300
    --operator ops            (the operator key that claims this provider)
    --verifier                (the network's verifier: price 0, no stake)
"""

from __future__ import annotations

import argparse
import sys

from deai.core import catalog
from deai.core.errors import InvalidInput
from deai.provider import hardware
from deai.provider.agent import offer_prices, start


def model_list(value: str) -> tuple[str, ...]:
    """``a,b`` -> catalog names; an unknown name is an argument error."""
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one model")
    try:
        return tuple(catalog.lookup(n).name for n in names)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def model_price(value: str) -> tuple[str, int]:
    """``MODEL=PRICE`` -> (catalog name, micro-units per 1,000 units)."""
    model, sep, price = value.rpartition("=")
    if not sep or not model or not price.isdigit():
        raise argparse.ArgumentTypeError(f"want MODEL=PRICE, got {value!r}")
    try:
        return catalog.lookup(model).name, int(price)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deai.provider", description=__doc__)
    p.add_argument("--coordinator", required=True,
                   help="coordinator URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--key", required=True,
                   help="key name under $DEAI_HOME/keys (created if missing)")
    p.add_argument("--threads", type=int, default=hardware.cores(),
                   help="CPU threads to offer (default: every core this process may use)")
    p.add_argument("--slots", type=int, default=1, help="assignments run at once")
    p.add_argument("--price", type=int, default=1000,
                   help="default price: micro-units per 1,000 units (inputs for embeddings, "
                        "tokens for chat)")
    p.add_argument("--models", type=model_list, default=None,
                   help="comma-separated catalog models to offer (default: every model "
                        "whose workload is available on this machine)")
    p.add_argument("--price-for", type=model_price, action="append", default=[],
                   metavar="MODEL=PRICE", help="a model's own price (repeatable)")
    p.add_argument("--stake", type=int, default=None,
                   help="stake to bond in micro-units (default: the network's minimum)")
    p.add_argument("--name", default="", help="display name (default: host name)")
    p.add_argument("--lease-prices", type=lease_prices, default=None,
                   metavar="cpu=P,memory_gb=P[,gpu=P]",
                   help="host leases by the hour at these µ per hour per resource class")
    p.add_argument("--lease-cpus", type=int, default=None,
                   help="CPUs to lease out (default --threads)")
    p.add_argument("--lease-memory-mb", type=int, default=None,
                   help="memory to lease out in MiB (default half of this machine's)")
    p.add_argument("--lease-network", action="store_true",
                   help="let leases that ask for it use this machine's network")
    p.add_argument("--lease-netns", default=None, metavar="NAME",
                   help="with --lease-network: run lease sandboxes in the network namespace "
                        "NAME (`ip netns`), e.g. a private network for a cluster's members")
    p.add_argument("--operator", default=None, metavar="KEYNAME",
                   help="the operator key (from `deai keys`) that claims this provider; "
                        "default: the provider is its own operator")
    p.add_argument("--verifier", action="store_true",
                   help="run as the network's verifier: every model at price 0, no stake "
                        "(the coordinator must list this key with --verifier-key)")
    p.add_argument("--machine-id", default=None, metavar="TEXT",
                   help="report a digest of TEXT instead of /etc/machine-id (several test "
                        "agents on one machine)")
    p.add_argument("--source-address", default=None, metavar="ADDR",
                   help="connect to the coordinator from this local address")
    return p


def lease_prices(value: str) -> dict[str, int]:
    """``cpu=100000,memory_gb=20000`` -> {class: µ per hour}."""
    out = {}
    for part in value.split(","):
        name, sep, price = part.strip().partition("=")
        if not sep or not price.isdigit():
            raise argparse.ArgumentTypeError(f"want CLASS=PRICE, got {part!r}")
        out[name] = int(price)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    prices = dict(args.price_for)
    if args.models is not None:
        try:
            offer_prices(args.models, args.price, prices)
        except InvalidInput as exc:
            p.error(exc.message)
    offer = None
    if args.lease_prices is not None:
        from deai.provider.lease_runner import HostOffer

        offer = HostOffer(cpus=args.lease_cpus or args.threads,
                          memory_mb=args.lease_memory_mb or hardware.memory_mb() // 2,
                          prices=args.lease_prices, network=args.lease_network,
                          netns=args.lease_netns)
    return start(args.coordinator, args.key, threads=args.threads, slots=args.slots,
                 price=args.price, stake=args.stake, name=args.name, models=args.models,
                 prices=prices, lease_offer=offer, operator=args.operator,
                 verifier=args.verifier, machine_id=args.machine_id,
                 source_address=args.source_address)


if __name__ == "__main__":
    sys.exit(main())
