"""``python -m deai.provider --coordinator URL --key NAME``: run a provider agent.

Exits 0 after SIGTERM/SIGINT once running tasks are done, 1 if the agent stops
on an error it cannot ride out (such as stake it cannot bond).
"""

from __future__ import annotations

import argparse
import sys

from deai.provider import hardware
from deai.provider.agent import start


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deai.provider", description=__doc__)
    p.add_argument("--coordinator", required=True,
                   help="coordinator URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--key", required=True,
                   help="key name under $DEAI_HOME/keys (created if missing)")
    p.add_argument("--threads", type=int, default=hardware.cores(),
                   help="CPU threads to offer (default: every core this process may use)")
    p.add_argument("--slots", type=int, default=1, help="assignments run at once")
    p.add_argument("--price", type=int, default=1000, help="micro-units per 1,000 inputs")
    p.add_argument("--stake", type=int, default=None,
                   help="stake to bond in micro-units (default: the network's minimum)")
    p.add_argument("--name", default="", help="display name (default: host name)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return start(args.coordinator, args.key, threads=args.threads, slots=args.slots,
                 price=args.price, stake=args.stake, name=args.name)


if __name__ == "__main__":
    sys.exit(main())
