"""``deai ledger audit --chain``: compare a journal, replayed here, with what the chain holds.

``audit_chain(entries, chain)`` trusts neither the coordinator nor its database:
given the journal entries (fetched and replayed by the caller) and a read-only
connection to the chain, it checks that

- every committed epoch names a journal entry by seq whose hash is the
  committed head, and its root and total recompute from the journal's
  ``withdrawal`` entries up to that head (a revoked epoch is only reported);
- every confirmed Deposited event is credited by exactly one ``deposit`` entry
  with the same account and amount, and no ``deposit`` entry credits an event
  the chain does not hold;
- no address has claimed more than the journal sent it, and the settlement
  contract holds exactly what was deposited less what was claimed;
- each provider's stake in the vault equals its stake in the journal, and the
  vault's slashes are exactly the journal's, evidence hash for evidence hash.

Mirroring runs behind the journal by a few seconds; audit a quiet network (or
expect the last moments' entries to show as not yet mirrored).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address

from deai.chain import books, merkle
from deai.chain.adapter import Chain
from deai.core.ledger import Entry


@dataclass
class ChainAudit:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    epochs: int = 0
    deposits: int = 0
    claims: int = 0
    providers: int = 0
    slashes: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 50:
            self.problems.append(problem)


def audit_chain(entries: list[Entry], chain: Chain) -> ChainAudit:
    rep = ChainAudit()
    start = chain.dep.start_block
    st, vault = chain.settlement.functions, chain.vault.functions
    by_seq = {e.seq: e for e in entries}
    _epochs(rep, entries, by_seq, chain, start)
    _deposits(rep, entries, chain, start)

    sent = books.withdrawable(entries)
    claimed: dict[str, int] = {}
    for ev in chain.events(chain.settlement, "Withdrawn", start):
        addr = str(to_checksum_address(ev.args.recipient))
        claimed[addr] = max(claimed.get(addr, 0), int(ev.args.cumulative))
        rep.claims += 1
    for addr, cum in sorted(claimed.items()):
        if cum > sent.get(addr, 0):
            rep.fail(f"{addr} claimed {cum} µ on chain; the journal sent it {sent.get(addr, 0)}")
    deposited, withdrawn = int(st.total_deposited().call()), int(st.total_withdrawn().call())
    held = chain.token_balance(chain.dep.settlement)
    if held != deposited - withdrawn:
        rep.fail(f"settlement contract holds {held} µ, deposits less claims are "
                 f"{deposited - withdrawn} µ")
    rep.facts.update(deposited=deposited, withdrawn=withdrawn, held=held,
                     sent_to_chain=sum(sent.values()))

    stake: dict[str, int] = {}
    expected_slashes: Counter[str] = Counter()
    for e in entries:
        for pid, delta in books.stake_moves(e).items():
            stake[pid] = stake.get(pid, 0) + delta
        for op, args in books.mirror_ops(e):
            if op == "slash":
                expected_slashes[args["evidence"]] += 1
    for pid, amount in sorted(stake.items()):
        on_chain = int(vault.stake(bytes.fromhex(pid)).call())
        rep.providers += 1
        if on_chain != amount:
            rep.fail(f"provider {pid[:16]}…: stake {amount} µ in the journal, "
                     f"{on_chain} µ in the vault")
    seen: Counter[str] = Counter()
    for ev in chain.events(chain.vault, "Slashed", start):
        seen["0x" + bytes(ev.args.evidence).hex()] += 1
        rep.slashes += 1
    for h in sorted(set(seen) | set(expected_slashes)):
        if seen[h] != expected_slashes[h]:
            rep.fail(f"slash with evidence {h[:18]}…: {expected_slashes[h]} in the journal, "
                     f"{seen[h]} in the vault")
    return rep


def _epochs(rep: ChainAudit, entries: list[Entry], by_seq: dict[int, Entry], chain: Chain,
            start: int) -> None:
    for ev in chain.events(chain.settlement, "EpochCommitted", start):
        n, head_seq = int(ev.args.epoch), int(ev.args.head_seq)
        head, root = bytes(ev.args.head).hex(), bytes(ev.args.root)
        rep.epochs += 1
        revoked = bool(chain.settlement.functions.epochs(n).call()[5])
        tag = f"epoch {n}" + (" (revoked)" if revoked else "")
        e = by_seq.get(head_seq)
        if e is None:
            rep.fail(f"{tag} commits journal entry {head_seq}, which the journal lacks")
            continue
        if e.hash != head:
            rep.fail(f"{tag}: head {head[:16]}… is not the hash of journal entry {head_seq} "
                     f"({e.hash[:16]}…)")
        tree = merkle.Tree(chain.dep.settlement, books.withdrawable(entries, head_seq))
        if tree.root != root:
            rep.fail(f"{tag}: root {root.hex()[:16]}… does not recompute from the journal "
                     f"({tree.root.hex()[:16]}…)")
        if tree.total != int(ev.args.total):
            rep.fail(f"{tag}: total {int(ev.args.total)} µ, the journal says {tree.total} µ")


def _deposits(rep: ChainAudit, entries: list[Entry], chain: Chain, start: int) -> None:
    safe = chain.block_number() - chain.dep.confirmations
    on_chain = {}
    for ev in chain.events(chain.settlement, "Deposited", start):
        key = ("0x" + bytes(ev.transactionHash).hex(), int(ev.logIndex))
        on_chain[key] = (bytes(ev.args.account).hex(), int(ev.args.amount),
                         int(ev.blockNumber))
    credited = books.deposits(entries)
    counts = Counter(k for k, *_ in credited)
    for (key, account, amount, seq) in credited:
        rep.deposits += 1
        if counts[key] > 1:
            rep.fail(f"entry {seq}: deposit {key[0][:18]}…#{key[1]} credited {counts[key]} times")
        got = on_chain.get(key)
        if got is None:
            rep.fail(f"entry {seq} credits a deposit the chain does not hold "
                     f"({key[0][:18]}…#{key[1]})")
        elif got[:2] != (account, amount):
            rep.fail(f"entry {seq} credits {amount} µ to {account[:16]}…; the chain's deposit "
                     f"is {got[1]} µ to {got[0][:16]}…")
    for key, (_account, amount, block) in sorted(on_chain.items()):
        if block <= safe and key not in counts:
            rep.fail(f"deposit {key[0][:18]}…#{key[1]} of {amount} µ (block {block}) "
                     "is not credited in the journal")
