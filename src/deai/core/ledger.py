"""Double-entry journal: balanced postings, a hash chain, and a replaying audit.

Accounts are strings:

    mint              the devnet faucet's source; the only account allowed below zero
    acct:<id>         an account's spendable balance (id = Ed25519 public key, hex)
    escrow:<job>      a job's escrowed maximum cost
    pending:<id>      a provider's earnings inside the challenge window
    stake:<id>        a provider's bonded stake
    fee               the network's fees

Every entry's postings sum to zero, so the sum of all balances is always zero
and total supply is ``-balance(mint)``. Entry ``n`` carries the hash of entry
``n-1``; the hash covers seq, previous hash, time, kind, body and postings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deai.core.errors import InsufficientFunds, InvalidInput

GENESIS = "0" * 64
MINT = "mint"
FEE = "fee"


def acct(owner: str) -> str:
    return f"acct:{owner}"


def escrow(job_id: str) -> str:
    return f"escrow:{job_id}"


def pending(provider: str) -> str:
    return f"pending:{provider}"


def stake(provider: str) -> str:
    return f"stake:{provider}"


@dataclass(frozen=True)
class Draft:
    """An entry before it is chained: what happened and how money moved."""

    kind: str
    body: dict[str, Any]
    postings: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if sum(d for _, d in self.postings) != 0:
            raise ValueError(f"unbalanced postings in {self.kind}: {self.postings}")
        for account, delta in self.postings:
            if not isinstance(delta, int) or isinstance(delta, bool):
                raise TypeError(f"amount for {account} is not an int")


@dataclass(frozen=True)
class Entry:
    seq: int
    prev_hash: str
    ts_ms: int
    kind: str
    body: dict[str, Any]
    postings: tuple[tuple[str, int], ...]
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "prev_hash": self.prev_hash, "ts_ms": self.ts_ms,
            "kind": self.kind, "body": self.body,
            "postings": [[a, d] for a, d in self.postings], "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entry:
        return cls(
            seq=int(d["seq"]), prev_hash=str(d["prev_hash"]), ts_ms=int(d["ts_ms"]),
            kind=str(d["kind"]), body=dict(d["body"]),
            postings=tuple((str(a), int(v)) for a, v in d["postings"]), hash=str(d["hash"]),
        )


def entry_hash(seq: int, prev_hash: str, ts_ms: int, kind: str, body: Mapping[str, Any],
               postings: Iterable[tuple[str, int]]) -> str:
    payload = json.dumps(
        [seq, prev_hash, ts_ms, kind, body, [[a, d] for a, d in postings]],
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def chain(draft: Draft, seq: int, prev_hash: str, ts_ms: int) -> Entry:
    h = entry_hash(seq, prev_hash, ts_ms, draft.kind, draft.body, draft.postings)
    return Entry(seq, prev_hash, ts_ms, draft.kind, draft.body, draft.postings, h)


def check_funds(draft: Draft, balances: Mapping[str, int]) -> None:
    """Refuse a draft that would take any account but the mint below zero."""
    net: dict[str, int] = {}
    for account, delta in draft.postings:
        net[account] = net.get(account, 0) + delta
    for account, delta in net.items():
        have = balances.get(account, 0)
        if account != MINT and have + delta < 0:
            raise InsufficientFunds(
                f"{account} holds {have} µ, {draft.kind} needs {-delta} µ",
                account=account, balance=have, needed=-delta,
            )


# --- the movements of money --------------------------------------------------------------

def _positive(amount: int, what: str) -> None:
    if amount <= 0:
        raise InvalidInput(f"{what} must be a positive amount of micro-units", field="amount")


def faucet(owner: str, amount: int) -> Draft:
    _positive(amount, "faucet amount")
    return Draft("faucet", {"account": owner, "amount": amount},
                 ((MINT, -amount), (acct(owner), amount)))


def bond(provider: str, amount: int) -> Draft:
    _positive(amount, "stake")
    return Draft("bond", {"provider": provider, "amount": amount},
                 ((acct(provider), -amount), (stake(provider), amount)))


def unbond(provider: str, amount: int) -> Draft:
    _positive(amount, "stake")
    return Draft("unbond", {"provider": provider, "amount": amount},
                 ((stake(provider), -amount), (acct(provider), amount)))


def escrow_job(owner: str, job_id: str, amount: int) -> Draft:
    _positive(amount, "escrow")
    return Draft("escrow", {"job": job_id, "owner": owner, "amount": amount},
                 ((acct(owner), -amount), (escrow(job_id), amount)))


def payout(job_id: str, task_id: str, assignment_id: str, provider: str, cost: int,
           fee_amount: int) -> Draft:
    """Pay an accepted task from escrow: the provider's share into pending, the fee aside."""
    if not 0 <= fee_amount <= cost or cost <= 0:
        raise ValueError("cost must be positive and the fee between 0 and the cost")
    return Draft(
        "payout",
        {"job": job_id, "task": task_id, "assignment": assignment_id, "provider": provider,
         "cost": cost, "fee": fee_amount},
        ((escrow(job_id), -cost), (pending(provider), cost - fee_amount), (FEE, fee_amount)),
    )


def release(provider: str, amount: int, payouts: list[int]) -> Draft:
    """Pending earnings whose challenge window has passed become spendable."""
    _positive(amount, "release")
    return Draft("release", {"provider": provider, "amount": amount, "payouts": payouts},
                 ((pending(provider), -amount), (acct(provider), amount)))


def treasury_grant(amount: int, reason: str) -> Draft:
    """Seed the network treasury (the ``fee`` account), which pays for verification work."""
    _positive(amount, "grant")
    return Draft("treasury_grant", {"amount": amount, "reason": reason},
                 ((MINT, -amount), (FEE, amount)))


def check_fee(provider: str, amount: int, assignment_id: str, role: str) -> Draft:
    """The treasury pays a replica, referee or canary run into pending earnings."""
    _positive(amount, "check fee")
    return Draft("check_fee", {"provider": provider, "amount": amount,
                               "assignment": assignment_id, "role": role},
                 ((FEE, -amount), (pending(provider), amount)))


def verdict(task_id: str, evidence: dict[str, Any]) -> Draft:
    """A referee's decision, kept in the journal as evidence; it moves no money."""
    return Draft("verdict", {"task": task_id, **evidence}, ())


def slash(provider: str, amount: int, bounty_to: str | None, bounty: int,
          evidence: dict[str, Any]) -> Draft:
    """Take ``amount`` of a faulty provider's stake: a bounty to the reporter, the rest
    to the treasury."""
    _positive(amount, "slash")
    if not 0 <= bounty <= amount or (bounty and bounty_to is None):
        raise ValueError("bounty must lie between 0 and the slash, with a recipient")
    postings: list[tuple[str, int]] = [(stake(provider), -amount), (FEE, amount - bounty)]
    if bounty:
        assert bounty_to is not None
        postings.append((acct(bounty_to), bounty))
    return Draft("slash", {"provider": provider, "amount": amount, "bounty": bounty,
                           "bounty_to": bounty_to, **evidence}, tuple(postings))


def forfeit(provider: str, job_id: str, amount: int, fee_back: int, to_account: str) -> Draft:
    """A faulty provider's unreleased earnings for a job, and the fee the network took on
    them, go back to the job's payer: the client pays nothing for rejected work."""
    _positive(amount + fee_back, "forfeit")
    if amount < 0 or fee_back < 0:
        raise ValueError("forfeit amounts must not be negative")
    postings = [(pending(provider), -amount), (to_account, amount + fee_back)]
    if fee_back:
        postings.append((FEE, -fee_back))
    return Draft("forfeit", {"provider": provider, "job": job_id, "amount": amount,
                             "fee_back": fee_back, "to": to_account}, tuple(postings))


def clawback(provider: str, job_id: str, task_id: str, from_balance: int, from_stake: int,
             from_treasury: int, to_account: str) -> Draft:
    """Earnings already released for a result a look-back proved wrong go back to the
    payer: from the provider's balance, then its stake; the treasury (which the slash
    funded) adds the fee it took and any shortfall. No account goes below zero."""
    parts = {acct(provider): from_balance, stake(provider): from_stake, FEE: from_treasury}
    if any(v < 0 for v in parts.values()):
        raise ValueError("clawback amounts must not be negative")
    total = sum(parts.values())
    _positive(total, "clawback")
    postings = [(a, -v) for a, v in parts.items() if v] + [(to_account, total)]
    return Draft("clawback", {"provider": provider, "job": job_id, "task": task_id,
                              "from_balance": from_balance, "from_stake": from_stake,
                              "from_treasury": from_treasury, "to": to_account},
                 tuple(postings))


def refund(owner: str, job_id: str, amount: int, reason: str) -> Draft:
    _positive(amount, "refund")
    return Draft("refund", {"job": job_id, "owner": owner, "amount": amount, "reason": reason},
                 ((escrow(job_id), -amount), (acct(owner), amount)))


def royalty(dataset_id: str, job_id: str, owner: str, payer: str, amount: int) -> Draft:
    """A dataset's price per use, from the using job's escrow to the dataset's owner; the
    body names the dataset and the job, so anyone can trace a model's data from here."""
    _positive(amount, "royalty")
    return Draft("royalty", {"dataset": dataset_id, "job": job_id, "owner": owner,
                             "payer": payer, "amount": amount},
                 ((escrow(job_id), -amount), (acct(owner), amount)))


def hold_fee(dataset_id: str, job_id: str, payer: str, amount: int, seconds: int) -> Draft:
    """A job that held one of a dataset's scarce uses (``max_uses``) idle for ``seconds``
    (queued, no provider on it) and ended without a model: the fee for that holding, from
    the job's escrow to the network (``coordinator.datasets.hold_fee``), not to the owner,
    whose refusals could leave a job idle."""
    _positive(amount, "hold fee")
    return Draft("hold_fee", {"dataset": dataset_id, "job": job_id, "payer": payer,
                              "amount": amount, "seconds": seconds},
                 ((escrow(job_id), -amount), (FEE, amount)))


# --- the audit ---------------------------------------------------------------------------

def _slash_of(b: Mapping[str, Any]) -> Draft:
    evidence = {k: v for k, v in b.items()
                if k not in ("provider", "amount", "bounty", "bounty_to")}
    return slash(b["provider"], b["amount"], b["bounty_to"], b["bounty"], evidence)


# Each kind that a builder above makes, and that builder called with the entry's body:
# the postings an honest entry of that kind carries. Functions because the lease builders
# are defined further down. The journal keeps every entry ever made, so a builder must
# go on making the same postings from an old body: a new shape of entry is a new kind.
CANONICAL: dict[str, Callable[[Mapping[str, Any]], Draft]] = {
    "faucet": lambda b: faucet(b["account"], b["amount"]),
    "bond": lambda b: bond(b["provider"], b["amount"]),
    "unbond": lambda b: unbond(b["provider"], b["amount"]),
    "escrow": lambda b: escrow_job(b["owner"], b["job"], b["amount"]),
    "payout": lambda b: payout(b["job"], b["task"], b["assignment"], b["provider"], b["cost"],
                               b["fee"]),
    "release": lambda b: release(b["provider"], b["amount"], b["payouts"]),
    "treasury_grant": lambda b: treasury_grant(b["amount"], b["reason"]),
    "check_fee": lambda b: check_fee(b["provider"], b["amount"], b["assignment"], b["role"]),
    "verdict": lambda b: Draft("verdict", dict(b), ()),
    "slash": _slash_of,
    "forfeit": lambda b: forfeit(b["provider"], b["job"], b["amount"], b["fee_back"], b["to"]),
    "clawback": lambda b: clawback(b["provider"], b["job"], b["task"], b["from_balance"],
                                   b["from_stake"], b["from_treasury"], b["to"]),
    "refund": lambda b: refund(b["owner"], b["job"], b["amount"], b["reason"]),
    "royalty": lambda b: royalty(b["dataset"], b["job"], b["owner"], b["payer"], b["amount"]),
    "hold_fee": lambda b: hold_fee(b["dataset"], b["job"], b["payer"], b["amount"],
                                   b["seconds"]),
    "lease_escrow": lambda b: escrow_lease(b["owner"], b["lease"], b["amount"]),
    "lease_charge": lambda b: lease_charge(b["lease"], b["provider"], b["cost"], b["fee"],
                                           b["seconds"]),
    "lease_refund": lambda b: lease_refund(b["owner"], b["lease"], b["amount"], b["reason"]),
    "lease_penalty": lambda b: downtime_penalty(b["provider"], b["lease"], b["amount"],
                                                b["downtime"]),
    "deposit": lambda b: deposit(b["account"], b["amount"], b["chain_id"], b["tx"],
                                 b["log_index"], b["block"]),
    "withdrawal": lambda b: withdrawal(b["account"], b["amount"], b["address"]),
}


def _net(postings: Iterable[Sequence[Any]]) -> dict[str, int]:
    net: dict[str, int] = {}
    for account, delta in postings:
        net[account] = net.get(account, 0) + delta
    return {a: d for a, d in net.items() if d}


def postings_problem(seq: int, kind: str, body: Mapping[str, Any],
                     postings: Sequence[Sequence[Any]]) -> str | None:
    """Why an entry does not move the money its body describes, or None.

    An entry of a kind in ``CANONICAL`` must move, account by account, what its builder
    makes of its body: otherwise a body could say one thing (the deposit credited to
    Alice, the withdrawal that took 3 DEAI out) while the postings did another, and
    everything that reads bodies (the chain's epochs and deposits, the explorer) would
    believe it. Kinds without a builder are not judged."""
    make = CANONICAL.get(kind)
    if make is None:
        return None
    try:
        want = make(body).postings
    except Exception as exc:  # noqa: BLE001 - a body no builder accepts is the finding
        return f"entry {seq}: its body is not a valid {kind} ({type(exc).__name__}: " \
               f"{str(exc)[:80]})"
    if len(want) == len(postings) and all(  # the usual case: the builder's own postings
            a == p[0] and d == p[1] for (a, d), p in zip(want, postings, strict=True)):
        return None
    if _net(want) != _net(postings):
        return f"entry {seq}: postings do not move what its {kind} body says"
    return None


@dataclass
class AuditReport:
    ok: bool = True
    entries: int = 0
    head: str = GENESIS
    supply: int = 0
    accounts: int = 0
    problems: list[str] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 50:
            self.problems.append(problem)

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "head": self.head,
                "supply": self.supply, "accounts": self.accounts, "problems": self.problems}


def audit(entries: Iterable[Entry], claimed: Mapping[str, int] | None = None) -> AuditReport:
    """Replay the journal from genesis and check every invariant.

    The chain is unbroken and every hash recomputes; every entry balances, and one of
    a kind with a builder moves what its body says (``postings_problem``); no
    account but the mint ever dips below zero; the balances the operator claims
    equal the replayed ones; and the sum of all balances is zero, so the only
    source of money is the mint.
    """
    rep = AuditReport()
    prev, expect = GENESIS, 1
    bal = rep.balances
    for e in entries:
        if e.seq != expect:
            rep.fail(f"entry {e.seq}: expected seq {expect}")
        if e.prev_hash != prev:
            rep.fail(f"entry {e.seq}: prev_hash does not match entry {e.seq - 1}")
        if entry_hash(e.seq, e.prev_hash, e.ts_ms, e.kind, e.body, e.postings) != e.hash:
            rep.fail(f"entry {e.seq}: hash does not recompute")
        if sum(d for _, d in e.postings) != 0:
            rep.fail(f"entry {e.seq}: postings do not balance")
        mismatch = postings_problem(e.seq, e.kind, e.body, e.postings)
        if mismatch is not None:
            rep.fail(mismatch)
        for account, delta in e.postings:
            bal[account] = bal.get(account, 0) + delta
        # An entry is atomic: judge balances after all its postings, as check_funds does.
        for account in dict.fromkeys(a for a, _ in e.postings):
            if account != MINT and bal[account] < 0:
                rep.fail(f"entry {e.seq}: {account} went negative ({bal[account]})")
        prev, expect = e.hash, e.seq + 1
        rep.entries += 1
    rep.head = prev
    if sum(bal.values()) != 0:
        rep.fail(f"supply not conserved: balances sum to {sum(bal.values())}")
    rep.supply = -bal.get(MINT, 0)
    rep.accounts = len(bal)
    if claimed is not None:
        for account in sorted(set(claimed) | set(bal)):
            if claimed.get(account, 0) != bal.get(account, 0):
                rep.fail(f"{account}: claimed {claimed.get(account, 0)}, "
                         f"journal says {bal.get(account, 0)}")
    return rep


# --- leases of machines by the hour (core.leases) -----------------------------------------
# A lease's escrow is ``escrow:<lease id>`` (lease ids start with ``lease_``, so they never
# meet a job's). Charges go to the provider's pending earnings, less the network fee.

def escrow_lease(owner: str, lease_id: str, amount: int) -> Draft:
    """The owner funds (or tops up) a lease's escrow."""
    _positive(amount, "escrow")
    return Draft("lease_escrow", {"lease": lease_id, "owner": owner, "amount": amount},
                 ((acct(owner), -amount), (escrow(lease_id), amount)))


def lease_charge(lease_id: str, provider: str, cost: int, fee_amount: int,
                 seconds: int) -> Draft:
    """Pay the seconds used since the last charge: the provider's share into pending."""
    if not 0 <= fee_amount <= cost or cost <= 0:
        raise ValueError("cost must be positive and the fee between 0 and the cost")
    postings = [(escrow(lease_id), -cost), (pending(provider), cost - fee_amount)]
    if fee_amount:
        postings.append((FEE, fee_amount))
    return Draft("lease_charge", {"lease": lease_id, "provider": provider, "cost": cost,
                                  "fee": fee_amount, "seconds": seconds}, tuple(postings))


def lease_refund(owner: str, lease_id: str, amount: int, reason: str) -> Draft:
    """What is left of a lease's escrow at its end goes back to the owner."""
    _positive(amount, "refund")
    return Draft("lease_refund", {"lease": lease_id, "owner": owner, "amount": amount,
                                  "reason": reason},
                 ((escrow(lease_id), -amount), (acct(owner), amount)))


def downtime_penalty(provider: str, lease_id: str, amount: int, downtime: float) -> Draft:
    """A provider that lost a lease forfeits a small part of its stake to the treasury."""
    _positive(amount, "penalty")
    return Draft("lease_penalty", {"provider": provider, "lease": lease_id, "amount": amount,
                                   "downtime": round(downtime, 3)},
                 ((stake(provider), -amount), (FEE, amount)))


# --- settlement on an EVM chain (deai.chain) ------------------------------------------------
# Tokens deposited into the settlement contract enter the journal from the mint, and
# tokens withdrawn to the chain leave through it, so ``supply`` counts what the chain
# holds for DeAI accounts (plus, on a devnet, what the faucet made). A withdrawal moves
# an account's money out at once; the address may claim it on chain, by Merkle proof,
# after the next epoch commitment's challenge delay.

def deposit(owner: str, amount: int, chain_id: int, tx_hash: str, log_index: int,
            block: int) -> Draft:
    """Tokens deposited on chain for ``owner``, credited once per (tx hash, log index)."""
    _positive(amount, "deposit")
    return Draft("deposit", {"account": owner, "amount": amount, "chain_id": chain_id,
                             "tx": tx_hash, "log_index": log_index, "block": block},
                 ((MINT, -amount), (acct(owner), amount)))


def withdrawal(owner: str, amount: int, address: str) -> Draft:
    """``owner`` sends ``amount`` to ``address`` on chain (claimable by Merkle proof)."""
    _positive(amount, "withdrawal")
    return Draft("withdrawal", {"account": owner, "amount": amount, "address": address},
                 ((acct(owner), -amount), (MINT, amount)))
