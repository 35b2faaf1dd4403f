"""The settlement port: the one door every movement of money goes through.

``Settlement.post`` appends a balanced entry to the hash-chained journal (the
first rail, always present and the source of truth) inside the caller's
transaction, then hands the chained entry to every other registered rail in the
same transaction. A rail mirrors what it needs elsewhere, typically by writing
an outbox row that a background sender delivers (an EVM chain: bonds, slashes,
epoch roots). Adding a rail touches no job or verification code:

    class Rail(Protocol):
        name: str
        def on_posted(self, s: Session, entry: ledger.Entry) -> None: ...

    Settlement(clock, rails=[ChainRail(...)])

The named operations below (escrow, pay, check fee, slash, forfeit, refund,
royalty, release, bond, faucet, grant) are the effects the lifecycle asks for, each
turned into one journal entry here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy.orm import Session

from deai.coordinator import touch
from deai.core import ledger
from deai.core.clock import Clock
from deai.core.money import fee_of
from deai.store import journal

_STAKE = ledger.stake("")


class Rail(Protocol):
    name: str

    def on_posted(self, s: Session, entry: ledger.Entry) -> None:
        """Called inside the posting transaction, after the journal holds ``entry``."""
        ...


class Settlement:
    def __init__(self, clock: Clock, fee_bps: int, rails: Sequence[Rail] = ()) -> None:
        self.clock = clock
        self.fee_bps = fee_bps
        self.rails: list[Rail] = list(rails)

    def add_rail(self, rail: Rail) -> None:
        self.rails.append(rail)

    # --- the port -------------------------------------------------------------------------

    def post(self, s: Session, draft: ledger.Draft) -> ledger.Entry:
        entry = journal.append(s, draft, self.clock)
        # A stake moved: matching's index reads the provider again (``touch``).
        touch.touched(s, [a[len(_STAKE):] for a, _ in draft.postings if a.startswith(_STAKE)])
        for rail in self.rails:
            rail.on_posted(s, entry)
        return entry

    def balance(self, s: Session, account: str) -> int:
        return journal.balance(s, account)

    def balances(self, s: Session, accounts: Iterable[str]) -> dict[str, int]:
        return journal.balances(s, accounts)

    def _held(self, s: Session, accounts: Iterable[str]) -> dict[str, int]:
        """Balances an operation clamps an amount to, read with the journal's head locked:
        no other posting moves them before this transaction's own. Read unlocked, two
        checks paid at once from an almost empty treasury each saw all of it, and the
        second payment was refused (PostgreSQL; on SQLite writes run one at a time)."""
        journal.head(s, lock=True)
        return journal.balances(s, accounts)

    def fee(self, cost: int) -> int:
        """The network's cut of a payment: the one fee rule."""
        return fee_of(cost, self.fee_bps)

    # --- the operations ---------------------------------------------------------------------

    def escrow(self, s: Session, owner: str, job_id: str, amount: int) -> None:
        if amount > 0:
            self.post(s, ledger.escrow_job(owner, job_id, amount))

    def pay_task(self, s: Session, job_id: str, task_id: str, assignment_id: str,
                 provider: str, cost: int) -> tuple[ledger.Entry, int, int]:
        """Pay accepted work from the job's escrow; returns (entry, to provider, fee)."""
        fee = self.fee(cost)
        entry = self.post(s, ledger.payout(job_id, task_id, assignment_id, provider, cost, fee))
        return entry, cost - fee, fee

    def pay_check(self, s: Session, provider: str, cost: int, assignment_id: str,
                  role: str) -> tuple[ledger.Entry | None, int]:
        """The treasury pays a check, as far as it can; returns (entry, amount)."""
        amount = min(cost, self._held(s, [ledger.FEE]).get(ledger.FEE, 0))
        if amount <= 0:
            return None, 0
        return self.post(s, ledger.check_fee(provider, amount, assignment_id, role)), amount

    def slash(self, s: Session, provider: str, amount: int, bounty_to: str | None,
              bounty: int, evidence: dict[str, Any]) -> int:
        """Take ``amount`` of the provider's stake (the bounty to ``bounty_to``); returns
        the amount taken. Callers size it from the stake they read, unlocked: another
        slash or penalty committed since may have left less, so it is clamped to what the
        stake holds now (head locked) and the bounty with it. Unclamped, three verdicts
        on one provider at once each took half of the stake they had read, and the
        journal refused the third: its verdict failed and was asked again."""
        held = max(0, self._held(s, [ledger.stake(provider)]).get(ledger.stake(provider), 0))
        amount = min(amount, held)
        if amount > 0:
            self.post(s, ledger.slash(provider, amount, bounty_to, min(bounty, amount),
                                      evidence))
        return max(0, amount)

    def penalize(self, s: Session, provider: str, lease_id: str, amount: int,
                 downtime: float) -> int:
        """A lost lease's downtime penalty from the provider's stake, clamped like
        ``slash``; returns the amount taken."""
        held = max(0, self._held(s, [ledger.stake(provider)]).get(ledger.stake(provider), 0))
        amount = min(amount, held)
        if amount > 0:
            self.post(s, ledger.downtime_penalty(provider, lease_id, amount, downtime))
        return max(0, amount)

    def forfeit(self, s: Session, provider: str, job_id: str, amount: int, fee_back: int,
                to_account: str) -> int:
        """Unreleased earnings back to the payer; returns the fee actually returned."""
        fee_back = min(fee_back, self._held(s, [ledger.FEE]).get(ledger.FEE, 0))
        if amount + fee_back > 0:
            self.post(s, ledger.forfeit(provider, job_id, amount, fee_back, to_account))
        return fee_back

    def claw_back(self, s: Session, provider: str, job_id: str, task_id: str, owed: int,
                  fee_back: int, to_account: str) -> int:
        """Released earnings (``owed``) and the fee on them back to the payer, from the
        provider's balance, then its stake, the treasury covering the fee and any
        shortfall as far as it holds; returns the amount returned."""
        have = self._held(s, [ledger.acct(provider), ledger.stake(provider), ledger.FEE])
        from_balance = min(owed, max(0, have.get(ledger.acct(provider), 0)))
        from_stake = min(owed - from_balance, max(0, have.get(ledger.stake(provider), 0)))
        want = fee_back + owed - from_balance - from_stake
        treasury = max(0, have.get(ledger.FEE, 0))
        from_treasury = 0 if to_account == ledger.FEE else min(want, treasury)
        total = from_balance + from_stake + from_treasury
        if total > 0:
            self.post(s, ledger.clawback(provider, job_id, task_id, from_balance, from_stake,
                                         from_treasury, to_account))
        return total

    def refund(self, s: Session, owner: str, job_id: str, why: str) -> int:
        """Return what is left in a job's escrow to its owner; returns the amount."""
        left = self.balance(s, ledger.escrow(job_id))
        if left > 0:
            self.post(s, ledger.refund(owner, job_id, left, why))
        return max(0, left)

    def royalty(self, s: Session, dataset_id: str, job_id: str, owner: str, payer: str,
                amount: int) -> ledger.Entry | None:
        """Pay a dataset's owner its price per use from the using job's escrow, as far as
        the escrow holds it (it does while the job is active: its payouts are bounded by
        the rest)."""
        amount = min(amount, self._held(s, [ledger.escrow(job_id)]).get(ledger.escrow(job_id), 0))
        if amount <= 0:
            return None
        return self.post(s, ledger.royalty(dataset_id, job_id, owner, payer, amount))

    def hold_fee(self, s: Session, dataset_id: str, job_id: str, payer: str, amount: int,
                 seconds: int) -> ledger.Entry | None:
        """A held scarce use's fee (``datasets.end_use``), from the job's escrow to the
        network, as far as the escrow holds it."""
        amount = min(amount, self._held(s, [ledger.escrow(job_id)]).get(ledger.escrow(job_id), 0))
        if amount <= 0:
            return None
        return self.post(s, ledger.hold_fee(dataset_id, job_id, payer, amount, seconds))

    def release(self, s: Session, provider: str, amount: int, payout_ids: list[int]) -> None:
        if amount > 0:
            self.post(s, ledger.release(provider, amount, payout_ids))

    def record(self, s: Session, task_id: str, evidence: dict[str, Any]) -> None:
        """A verdict: evidence in the journal, no money moves."""
        self.post(s, ledger.verdict(task_id, evidence))

    def bond(self, s: Session, provider: str, amount: int) -> None:
        self.post(s, ledger.bond(provider, amount))

    def faucet(self, s: Session, account: str, amount: int) -> None:
        self.post(s, ledger.faucet(account, amount))

    def grant(self, s: Session, amount: int, reason: str) -> None:
        self.post(s, ledger.treasury_grant(amount, reason))
