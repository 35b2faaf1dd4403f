"""Chain cost of settlement: one epoch commitment plus Merkle withdrawals, against one
token transfer per payment.

On web3's in-process EVM (gas is deterministic, the same as on any EVM node with the
same rules), for N accounts that each received ``--payments`` payments in an epoch:

- ``commit``: gas of ``Settlement.commit`` (journal head + Merkle root): independent of N;
- ``withdraw``: gas of one ``Settlement.withdraw`` with a proof of depth ceil(log2 N),
  measured on a few sampled accounts (first claim: a zero-to-nonzero slot);
- epoch cost if every account also withdraws once: commit + N x withdraw;
- per payment on chain: N x payments ERC-20 transfers (to holders that already hold DEAI);
- the ratios of the two, per epoch.

    .venv/bin/python bench/bench_chain.py            # writes bench/results/chain.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

from eth_account import Account
from web3 import Web3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chainutil import local_chain  # noqa: E402

from deai.chain import merkle  # noqa: E402


def measure(sizes: list[int], payments: int, samples: int) -> dict[str, object]:
    lc = local_chain(challenge_delay=60, unbond_delay=60)
    c = lc.chain
    payer = lc.account("payer", tokens=10**14)
    c.send(payer, c.token.functions.approve(c.dep.settlement, 10**14))
    c.send(payer, c.settlement.functions.deposit(b"\x01" * 32, 10**14))
    # One ERC-20 payment to an address that already holds DEAI: a payment on chain.
    holder = lc.account("holder", tokens=1)
    transfer = int(c.send(payer := lc.account("spender", tokens=10**9),
                          c.token.functions.transfer(holder.address, 1_000))["gasUsed"])
    rows = []
    for head_seq, n in enumerate(sizes, start=1):
        accounts = [Account.from_key(Web3.keccak(text=f"bench/{n}/{i}")).address
                    for i in range(n)]
        t0 = time.perf_counter()
        tree = merkle.Tree(c.dep.settlement, {a: 1_000 + i for i, a in enumerate(accounts)})
        build = time.perf_counter() - t0
        receipt = c.send(lc.settler, c.settlement.functions.commit(
            head_seq, Web3.keccak(text=f"head {n}"), tree.root, tree.total))
        commit = int(receipt["gasUsed"])
        (ev,) = c.logs(c.settlement, "EpochCommitted", receipt)
        lc.skip(60)
        gas = []
        for a in accounts[:: max(1, n // samples)][:samples]:
            r = c.send(payer, c.settlement.functions.withdraw(
                int(ev.args.epoch), a, tree.amounts[a], tree.proof(a)))
            gas.append(int(r["gasUsed"]))
        withdraw = round(sum(gas) / len(gas))
        per_payment = n * payments * transfer
        epoch_all = commit + n * withdraw
        rows.append({"accounts": n, "depth": math.ceil(math.log2(n)) if n > 1 else 0,
                     "commit_gas": commit, "withdraw_gas": withdraw,
                     "epoch_gas_all_withdraw": epoch_all,
                     "per_payment_gas": per_payment,
                     "ratio_commit_only": commit / per_payment,
                     "ratio_all_withdraw": epoch_all / per_payment,
                     "tree_build_s": round(build, 4)})
    return {"transfer_gas": transfer, "payments_per_account": payments, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,10,100,1000,10000")
    ap.add_argument("--payments", type=int, default=10,
                    help="payments each account receives per epoch")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chain.json")
    args = ap.parse_args()
    res = measure([int(x) for x in args.sizes.split(",")], args.payments, args.samples)
    print(f"one ERC-20 payment: {res['transfer_gas']} gas; "
          f"{args.payments} payments per account per epoch")
    print(f"{'accounts':>8} {'depth':>5} {'commit':>8} {'withdraw':>9} {'epoch+all w/d':>14} "
          f"{'per payment':>13} {'commit/pay':>11} {'all/pay':>8}")
    for r in res["rows"]:  # type: ignore[attr-defined]
        print(f"{r['accounts']:>8} {r['depth']:>5} {r['commit_gas']:>8} {r['withdraw_gas']:>9} "
              f"{r['epoch_gas_all_withdraw']:>14} {r['per_payment_gas']:>13} "
              f"{r['ratio_commit_only']:>11.2e} {r['ratio_all_withdraw']:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    res["machine"] = platform.platform()
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
