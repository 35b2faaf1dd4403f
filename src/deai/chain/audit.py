"""``deai ledger audit --chain``: compare a journal, replayed here, with what the chain holds.

``audit_chain(entries, chain)`` trusts neither the coordinator nor its database:
given the journal entries (fetched and replayed by the caller) and a read-only
connection to the chain, it checks that

- no money entered the journal from the mint but by a deposit (unless the auditor says
  the network is a devnet, whose faucet mints: ``devnet``);
- every ``deposit`` and ``withdrawal`` entry moves what its body says
  (``ledger.postings_problem``: the bodies are what the checks below read),
  every withdrawal names a valid address and amount (``books.unpayable``), the
  journal credits no more deposits than the contract counts, and it never sent
  more to the chain than was deposited there;
- the deployment it was given holds together: both contracts use its token, and
  the events read from its start block add up to the contracts' own counters
  (deposits, claims, epochs, slashes), so a start block set too late hides no
  event; its ``confirmations`` count only up to ``max_confirmations``, so a
  coordinator that reports a huge number hides no deposit it never credited;
- every committed epoch names a journal entry by seq whose hash is the
  committed head, and its root and total recompute from the journal's
  ``withdrawal`` entries up to that head (a revoked epoch is only reported);
- every confirmed Deposited event is credited by exactly one ``deposit`` entry
  with the same account and amount, and no ``deposit`` entry credits an event
  the chain does not hold;
- no address has claimed more than the journal sent it, and the settlement
  contract holds at least what was deposited less what was claimed (anyone can
  send it tokens: a surplus is only reported, as ``facts["surplus"]``);
- each provider's stake in the vault equals its stake in the journal, and the
  vault's slashes are exactly the journal's, evidence hash for evidence hash.

Every read of the chain is of one block (the latest when the audit starts), so
events and counters agree even while the network runs. Mirroring runs behind the
journal by a few seconds; audit a quiet network (or expect the last moments'
entries to show as not yet mirrored).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address

from deai.chain import books, merkle
from deai.chain.adapter import Chain
from deai.core import ledger
from deai.core.ledger import Entry

MAX_CONFIRMATIONS = 64  # blocks: deeper than any reorg a deployment should wait out
STARTS = "(is the start block the deployment's?)"


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


@dataclass(frozen=True)
class _At:
    """The chain as of one block."""

    chain: Chain
    block: int

    def call(self, fn: Any) -> Any:
        return fn.call(block_identifier=self.block)

    def events(self, contract: Any, name: str) -> list[Any]:
        return self.chain.events(contract, name, self.chain.dep.start_block, self.block)


def audit_chain(entries: list[Entry], chain: Chain, *,
                max_confirmations: int = MAX_CONFIRMATIONS, devnet: bool = False) -> ChainAudit:
    """``devnet``: the auditor knows the network mints money without deposits (a devnet's
    faucet and genesis grant); else any such money fails the audit (``_unbacked``)."""
    rep = ChainAudit()
    at = _At(chain, chain.block_number())
    rep.facts["block"] = at.block
    _money_entries(rep, entries)
    _unbacked(rep, entries, devnet)
    _deployment(rep, at)
    _epochs(rep, entries, at)
    _deposits(rep, entries, at, max_confirmations)
    _claims(rep, entries, at)
    _stake(rep, entries, at)
    return rep


def _money_entries(rep: ChainAudit, entries: list[Entry]) -> None:
    """What the other checks read from bodies must be what the postings did."""
    for e in entries:
        if e.kind in ("deposit", "withdrawal"):
            problem = ledger.postings_problem(e.seq, e.kind, e.body, e.postings)
            if problem is not None:
                rep.fail(problem)
    for problem in books.unpayable(entries):
        rep.fail(problem)
    for seq in books.malformed_deposits(entries):
        rep.fail(f"entry {seq}: a deposit whose body names no chain event")


def _unbacked(rep: ChainAudit, entries: list[Entry], devnet: bool) -> None:
    """Money the journal made from the mint with no deposit behind it (a faucet, a grant:
    any entry but a deposit or a withdrawal that moves the mint). The contract holds only
    deposits, so such money, once withdrawn, is paid out of other people's deposits, and
    every other check still holds: roots recompute, claims stay under deposits, the
    contract holds deposits less claims. On a network settling on a real chain only
    deposits mint; a devnet's faucet mints too, which its auditor says (``devnet``)."""
    made, entries_ = 0, 0
    for e in entries:
        if e.kind in ("deposit", "withdrawal"):
            continue
        out = -sum(delta for account, delta in e.postings if account == ledger.MINT)
        if out:
            made += out
            entries_ += 1
    rep.facts["unbacked"] = made
    if made > 0 and not devnet:
        rep.fail(f"{made} µ entered the journal from the mint without a deposit ({entries_} "
                 "entries: faucet, grants); withdrawals can pay it out of others' deposits "
                 "(a devnet's faucet does this: audit one with --devnet)")


def _deployment(rep: ChainAudit, at: _At) -> None:
    """The contracts the deployment names belong together."""
    token = to_checksum_address(at.chain.dep.token)
    for name, contract in (("settlement", at.chain.settlement), ("vault", at.chain.vault)):
        used = to_checksum_address(at.call(contract.functions.token()))
        if used != token:
            rep.fail(f"the {name} contract holds token {used}, not the deployment's {token}")


def _epochs(rep: ChainAudit, entries: list[Entry], at: _At) -> None:
    st = at.chain.settlement
    by_seq = {e.seq: e for e in entries}
    events = at.events(st, "EpochCommitted")
    count = int(at.call(st.functions.epoch_count()))
    if len(events) != count:
        rep.fail(f"{len(events)} EpochCommitted events from block {at.chain.dep.start_block}; "
                 f"the contract counts {count} epochs {STARTS}")
    for ev in events:
        n, head_seq = int(ev.args.epoch), int(ev.args.head_seq)
        head, root = bytes(ev.args.head).hex(), bytes(ev.args.root)
        rep.epochs += 1
        revoked = bool(at.call(st.functions.epochs(n))[5])
        tag = f"epoch {n}" + (" (revoked)" if revoked else "")
        e = by_seq.get(head_seq)
        if e is None:
            rep.fail(f"{tag} commits journal entry {head_seq}, which the journal lacks")
            continue
        if e.hash != head:
            rep.fail(f"{tag}: head {head[:16]}… is not the hash of journal entry {head_seq} "
                     f"({e.hash[:16]}…)")
        tree = merkle.Tree(at.chain.dep.settlement, books.withdrawable(entries, head_seq))
        if tree.root != root:
            rep.fail(f"{tag}: root {root.hex()[:16]}… does not recompute from the journal "
                     f"({tree.root.hex()[:16]}…)")
        if tree.total != int(ev.args.total):
            rep.fail(f"{tag}: total {int(ev.args.total)} µ, the journal says {tree.total} µ")


def _deposits(rep: ChainAudit, entries: list[Entry], at: _At, max_confirmations: int) -> None:
    reported = at.chain.dep.confirmations
    confirmations = min(max(reported, 0), max_confirmations)
    if confirmations != reported:
        rep.facts["confirmations"] = f"{reported} reported, {confirmations} used"
    safe = at.block - confirmations
    on_chain = {}
    for ev in at.events(at.chain.settlement, "Deposited"):
        key = ("0x" + bytes(ev.transactionHash).hex(), int(ev.logIndex))
        on_chain[key] = (bytes(ev.args.account).hex(), int(ev.args.amount),
                         int(ev.blockNumber))
    events_total = sum(amount for _, amount, _ in on_chain.values())
    counted = int(at.call(at.chain.settlement.functions.total_deposited()))
    if events_total != counted:
        rep.fail(f"Deposited events from block {at.chain.dep.start_block} add up to "
                 f"{events_total} µ; the contract counts {counted} µ {STARTS}")
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
    # A deployment that waits more blocks than the cap fails here for deposits it may still
    # be waiting for: the auditor who accepts that depth says so (``max_confirmations``);
    # taking the depth from the audited coordinator would let it hide any deposit.
    deeper = (f" (the coordinator waits {reported} blocks; the audit {confirmations}: "
              "raise the audit's max confirmations to accept that)"
              if reported > confirmations else "")
    for key, (_account, amount, block) in sorted(on_chain.items()):
        if block <= safe and key not in counts:
            rep.fail(f"deposit {key[0][:18]}…#{key[1]} of {amount} µ (block {block}) "
                     f"is not credited in the journal{deeper}")


def _claims(rep: ChainAudit, entries: list[Entry], at: _At) -> None:
    """Claims against what the journal sent; the contract's tokens against its counters."""
    c, st = at.chain, at.chain.settlement.functions
    sent = books.withdrawable(entries)
    claimed: dict[str, int] = {}
    paid = 0
    for ev in at.events(c.settlement, "Withdrawn"):
        addr = str(to_checksum_address(ev.args.recipient))
        claimed[addr] = max(claimed.get(addr, 0), int(ev.args.cumulative))
        paid += int(ev.args.amount)
        rep.claims += 1
    for addr, cum in sorted(claimed.items()):
        if cum > sent.get(addr, 0):
            rep.fail(f"{addr} claimed {cum} µ on chain; the journal sent it {sent.get(addr, 0)}")
    deposited, withdrawn = int(at.call(st.total_deposited())), int(at.call(st.total_withdrawn()))
    if paid != withdrawn:
        rep.fail(f"Withdrawn events from block {c.dep.start_block} pay {paid} µ; the contract "
                 f"counts {withdrawn} µ claimed {STARTS}")
    held = int(at.call(c.token.functions.balanceOf(to_checksum_address(c.dep.settlement))))
    if held < deposited - withdrawn:
        rep.fail(f"settlement contract holds {held} µ, deposits less claims are "
                 f"{deposited - withdrawn} µ")
    journal_in = sum(amount for _key, _account, amount, _seq in books.deposits(entries))
    journal_out = sum(e.body["amount"] for e in entries
                      if e.kind == "withdrawal" and type(e.body.get("amount")) is int)
    if journal_in > deposited:
        rep.fail(f"the journal credits {journal_in} µ of deposits; the contract counts "
                 f"{deposited} µ deposited")
    if journal_out > journal_in:
        rep.fail(f"the journal sent {journal_out} µ to the chain; only {journal_in} µ was "
                 "deposited there")
    rep.facts.update(deposited=deposited, withdrawn=withdrawn, held=held,
                     surplus=max(held - (deposited - withdrawn), 0),
                     journal_deposits=journal_in, journal_withdrawals=journal_out,
                     sent_to_chain=sum(sent.values()))


def _stake(rep: ChainAudit, entries: list[Entry], at: _At) -> None:
    vault = at.chain.vault
    stake: dict[str, int] = {}
    expected_slashes: Counter[str] = Counter()
    for e in entries:
        for pid, delta in books.stake_moves(e).items():
            stake[pid] = stake.get(pid, 0) + delta
        for op, args in books.mirror_ops(e):
            if op == "slash":
                expected_slashes[args["evidence"]] += 1
    for pid, amount in sorted(stake.items()):
        on_chain = int(at.call(vault.functions.stake(bytes.fromhex(pid))))
        rep.providers += 1
        if on_chain != amount:
            rep.fail(f"provider {pid[:16]}…: stake {amount} µ in the journal, "
                     f"{on_chain} µ in the vault")
    seen: Counter[str] = Counter()
    taken = 0
    for ev in at.events(vault, "Slashed"):
        seen["0x" + bytes(ev.args.evidence).hex()] += 1
        taken += int(ev.args.amount)
        rep.slashes += 1
    counted = int(at.call(vault.functions.total_slashed()))
    if taken != counted:
        rep.fail(f"Slashed events from block {at.chain.dep.start_block} take {taken} µ; the "
                 f"vault counts {counted} µ slashed {STARTS}")
    for h in sorted(set(seen) | set(expected_slashes)):
        if seen[h] != expected_slashes[h]:
            rep.fail(f"slash with evidence {h[:18]}…: {expected_slashes[h]} in the journal, "
                     f"{seen[h]} in the vault")
