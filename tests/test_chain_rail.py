"""The chain rail against a real database (SQLite and PostgreSQL) and web3's in-process
EVM: deposits credited once and only when confirmed, bonds and slashes mirrored once
through the settlement port, epochs whose proofs pay on chain once, and an audit that
holds until the books and the chain disagree."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from sqlalchemy import select, update
from web3.exceptions import Web3RPCError

from deai.chain import adapter, books, merkle, rail
from deai.chain.adapter import Chain, ChainError
from deai.chain.audit import audit_chain
from deai.coordinator.settlement import Settlement
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.store import journal, migrate
from deai.store.db import Database
from deai.store.models import ChainDeposit, ChainEpoch, ChainOutbox, JournalEntry
from tests.chainutil import LocalChain, local_chain

ALICE = "a1" * 32
MALLORY = "c3" * 32
PROV = "b2" * 32


class World:
    def __init__(self, url: str) -> None:
        self.lc: LocalChain = local_chain(challenge_delay=600, unbond_delay=600)
        self.chain = self.lc.chain
        self.db = Database(url)
        migrate.upgrade(self.db.engine)
        self.clock = ManualClock()
        self.port = Settlement(self.clock, 500, rails=[rail.ChainRail(self.clock.now)])
        c, s = self.chain, self.lc.settler
        c.send(self.lc.deployer, c.token.functions.transfer(s.address, 10**12))
        c.send(s, c.token.functions.approve(c.dep.vault, 10**12))

    def post(self, draft: ledger.Draft) -> ledger.Entry:
        with self.db.write() as s:
            return self.port.post(s, draft)

    def entries(self) -> list[ledger.Entry]:
        with self.db.read() as s:
            return [journal.to_entry(r) for r in
                    s.scalars(select(JournalEntry).order_by(JournalEntry.seq))]

    def tick(self) -> dict[str, object]:
        return rail.tick(self.db, self.chain, self.port.post, self.clock.now())

    def deposit(self, who: LocalAccount, account: str, amount: int) -> None:
        c = self.chain
        c.send(who, c.token.functions.approve(c.dep.settlement, amount))
        c.send(who, c.settlement.functions.deposit(bytes.fromhex(account), amount))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    url = f"sqlite:///{tmp_path_factory.mktemp('rail') / 'deai.sqlite3'}" \
        if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    w = World(url)
    yield w
    w.db.dispose()


def credited(w: World) -> list[int]:
    with w.db.read() as s:
        return [d.amount for d in s.scalars(select(ChainDeposit))]


def test_deposit_is_credited_once_after_its_confirmations(world: World) -> None:
    w = world
    object.__setattr__(w.chain, "dep", w.chain.dep.__class__(
        **{**w.chain.dep.__dict__, "confirmations": 2}))
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 3_000_000)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 0
    w.lc.tester.mine_blocks(2)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 1
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 0
    # Even with the cursor wound back, the unique (tx, log index) credits it only once.
    with w.db.write() as s:
        rail.set_cursor(s, "deposit_block", 0)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 0
    with w.db.read() as s:
        assert journal.balance(s, ledger.acct(ALICE)) == 3_000_000
    assert credited(w) == [3_000_000]


def test_a_backlog_is_read_in_ranges_the_node_serves(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage, more blocks wait than a node serves in one ``eth_getLogs`` (many
    cap the range). The rail asks for a range at a time, halves one the node refuses,
    and credits every deposit once, in order. Before, it asked for the whole backlog
    in one call, and a node that refused it stopped deposits for good."""
    w = world
    before = credited(w)
    payer = w.lc.account("backlog", tokens=1_000_000)
    for i in range(4):
        w.deposit(payer, ALICE, 1_000 + i)
    w.lc.tester.mine_blocks(6)
    asked: list[tuple[int, int]] = []
    real = Chain._get_logs

    def limited(contract: Any, name: str, first: int, last: int) -> list[Any]:
        asked.append((first, last))
        if last - first + 1 > 3:
            raise Web3RPCError("query exceeds max block range 3")
        return real(contract, name, first, last)

    monkeypatch.setattr(Chain, "_get_logs", staticmethod(limited))
    monkeypatch.setattr(adapter, "LOG_RANGE", 16)
    n = rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now())
    assert n == 4 and credited(w) == before + [1_000, 1_001, 1_002, 1_003]
    served = [(a, b) for a, b in asked if b - a + 1 <= 3]
    assert [b - a + 1 for a, b in asked][:3] == [16, 8, 4]  # halved until it answers
    refused = len(asked) - len(served)  # then kept at what it answered: not one a range
    assert refused <= 2 + len(served) // adapter.GROW_AFTER
    assert all(b + 1 == a2 for (_, b), (a2, _) in itertools.pairwise(served))  # no gap
    assert served[-1][1] == w.chain.block_number() - w.chain.dep.confirmations
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 0
    # The audit reads the whole chain the same way.
    deposited = w.chain.events(w.chain.settlement, "Deposited", w.chain.dep.start_block)
    assert [int(ev.args.amount) for ev in deposited] == credited(w)


def test_bonds_and_slashes_are_mirrored_once_with_their_evidence(world: World) -> None:
    w = world
    w.post(ledger.faucet(PROV, 50_000_000))
    w.post(ledger.bond(PROV, 20_000_000))
    slash = w.post(ledger.slash(PROV, 5_000_000, ALICE, 1_000_000,
                                {"task": "t1", "verdict": "wrong output"}))
    with w.db.read() as s:
        ops = [(r.op, r.journal_seq) for r in s.scalars(select(ChainOutbox))]
    assert [op for op, _ in ops] == ["bond", "slash"]
    assert rail.scan_journal(w.db, w.clock.now()) == 0  # the port already enqueued them
    assert rail.send_outbox(w.db, w.chain, w.clock.now()) == 2
    v = w.chain.vault.functions
    assert v.stake(bytes.fromhex(PROV)).call() == 15_000_000
    (ev,) = w.chain.events(w.chain.vault, "Slashed", 0)
    assert "0x" + bytes(ev.args.evidence).hex() == books.evidence_hash(slash.body)
    # A row sent but not recorded (a crash in between) is found applied, not resent.
    with w.db.write() as s:
        s.execute(update(ChainOutbox).values(status="pending"))
    assert rail.send_outbox(w.db, w.chain, w.clock.now()) == 2
    assert v.stake(bytes.fromhex(PROV)).call() == 15_000_000
    assert len(w.chain.events(w.chain.vault, "Slashed", 0)) == 1


def test_withdrawal_by_proof_after_the_epoch_matures(world: World) -> None:
    w = world
    payee = w.lc.account("payee")
    w.post(ledger.withdrawal(ALICE, 1_200_000, payee.address))
    epoch = rail.commit_epoch(w.db, w.chain, w.clock.now(), force=True)
    assert epoch == 1
    assert rail.commit_epoch(w.db, w.chain, w.clock.now(), force=True) is None  # no news
    with w.db.read() as s:
        e = rail.latest_epoch(s)
        assert e is not None
        leaves = dict(e.leaves)
    assert leaves == {payee.address: 1_200_000}
    tree = merkle.Tree(w.chain.dep.settlement, leaves)
    fn = w.chain.settlement.functions.withdraw
    with pytest.raises(ChainError, match="challenge delay"):
        w.chain.send(payee, fn(epoch, payee.address, 1_200_000, tree.proof(payee.address)))
    w.lc.skip(600)
    w.chain.send(payee, fn(epoch, payee.address, 1_200_000, tree.proof(payee.address)))
    assert w.chain.token_balance(payee.address) == 1_200_000
    with pytest.raises(ChainError, match="already withdrawn"):
        w.chain.send(payee, fn(epoch, payee.address, 1_200_000, tree.proof(payee.address)))


def test_audit_holds_then_reports_a_tampered_root_and_journal(world: World) -> None:
    w = world
    w.lc.tester.mine_blocks(2)
    w.tick()
    rep = audit_chain(w.entries(), w.chain, devnet=True)  # its providers bond faucet money
    assert rep.ok, rep.problems
    assert (rep.epochs, rep.deposits, rep.claims, rep.slashes) == (1, len(credited(w)), 1, 1)
    # The settlement key commits a root the journal does not support.
    thief = w.lc.account("thief")

    bad = merkle.Tree(w.chain.dep.settlement, {thief.address: 1_000_000})
    head = w.entries()[-1]
    w.chain.send(w.lc.settler, w.chain.settlement.functions.commit(
        head.seq, bytes.fromhex(head.hash), bad.root, bad.total))
    rep = audit_chain(w.entries(), w.chain, devnet=True)
    assert not rep.ok
    assert any("epoch 2: root" in p for p in rep.problems), rep.problems
    # A journal whose deposit was edited no longer matches the chain either.
    entries = w.entries()
    forged = [e if e.kind != "deposit" else ledger.Entry(
        e.seq, e.prev_hash, e.ts_ms, e.kind, {**e.body, "amount": 9_000_000},
        ((ledger.MINT, -9_000_000), (ledger.acct(ALICE), 9_000_000)), e.hash)
        for e in entries]
    rep = audit_chain(forged, w.chain, devnet=True)
    assert any("credits 9000000 µ" in p for p in rep.problems), rep.problems


def test_money_no_deposit_backs_fails_the_audit_unless_it_is_a_devnet(fresh: World) -> None:
    """A faucet entry (or any entry minting but a deposit) makes money the contract does
    not hold: withdrawn, it is paid out of someone else's deposit, and every other check
    still holds (roots recompute, claims stay under deposits, the contract holds deposits
    less claims). A coordinator doing that on a real chain fails the audit; an auditor of
    a devnet says so (``devnet``) and sees the amount reported."""
    w, mallory = fresh, fresh.lc.account("mallory")
    alice = w.lc.account("alice", tokens=10_000_000)
    w.deposit(alice, ALICE, 3_000_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 1
    w.post(ledger.faucet(MALLORY, 3_000_000))
    w.post(ledger.withdrawal(MALLORY, 3_000_000, mallory.address))
    epoch = rail.commit_epoch(w.db, w.chain, w.clock.now())
    assert epoch == 1
    with w.db.read() as s:
        made = rail.latest_epoch(s)
        assert made is not None
        tree = merkle.Tree(w.chain.dep.settlement, made.leaves)
    w.lc.skip(600)
    w.chain.send(mallory, w.chain.settlement.functions.withdraw(
        epoch, mallory.address, 3_000_000, tree.proof(mallory.address)))
    assert w.chain.token_balance(mallory.address) == 3_000_000  # Alice's tokens
    rep = audit_chain(w.entries(), w.chain)
    assert not rep.ok and rep.facts["unbacked"] == 3_000_000
    assert any("3000000 µ entered the journal from the mint without a deposit" in p
               for p in rep.problems), rep.problems
    devnet = audit_chain(w.entries(), w.chain, devnet=True)
    assert devnet.ok, devnet.problems
    assert devnet.facts["unbacked"] == 3_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'deai.sqlite3'}" if request.param == "sqlite" \
        else request.getfixturevalue("fresh_pg_url")
    w = World(url)
    yield w
    w.db.dispose()


def test_an_epoch_the_contract_refuses_is_counted_backed_off_and_made_again(
        fresh: World) -> None:
    """The journal sends more to the chain than was deposited there (a faucet's money on
    a network that later took a chain): the contract refuses the epoch. The refusal is
    counted with its reason and tried again only after a doubling back-off, not every
    tick; once deposits cover it, the epoch is made again at the journal's new head and
    posted. Before, the same commit was sent every second, forever, and nothing said so."""
    w, interval = fresh, fresh.chain.dep.epoch_interval
    payee = w.lc.account("early-payee")
    w.post(ledger.faucet(ALICE, 2_000_000))
    w.post(ledger.withdrawal(ALICE, 500_000, payee.address))
    with pytest.raises(ChainError, match="promises more than was deposited"):
        rail.commit_epoch(w.db, w.chain, w.clock.now())

    def pending() -> dict[str, Any]:
        with w.db.read() as s:
            (e,) = s.scalars(select(ChainEpoch).where(ChainEpoch.status == "pending")).all()
            return {"attempts": e.attempts, "error": e.error, "retry_at": e.retry_at,
                    "head_seq": e.head_seq}

    first = pending()
    assert first["attempts"] == 1 and "promises more" in first["error"]
    assert first["retry_at"] == w.clock.now() + interval
    w.clock.advance(interval / 2)
    assert rail.commit_epoch(w.db, w.chain, w.clock.now()) is None  # waits: no send
    assert pending()["attempts"] == 1
    w.clock.advance(interval / 2)
    with pytest.raises(ChainError):
        rail.commit_epoch(w.db, w.chain, w.clock.now())
    assert pending()["attempts"] == 2
    assert pending()["retry_at"] == w.clock.now() + 2 * interval  # doubled
    payer = w.lc.account("late-payer", tokens=1_000_000)
    w.deposit(payer, ALICE, 600_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 1
    w.clock.advance(2 * interval)
    epoch = rail.commit_epoch(w.db, w.chain, w.clock.now())
    assert epoch == 1
    with w.db.read() as s:
        e = rail.latest_epoch(s)
        assert e is not None and e.attempts == 2 and e.retry_at is None
        assert e.head_seq == journal.head(s).seq > first["head_seq"]  # made again
        assert e.leaves == {payee.address: 500_000}
    assert audit_chain(w.entries(), w.chain, devnet=True).ok
    assert audit_chain(w.entries(), w.chain).facts["unbacked"] == 2_000_000


def test_a_revoked_epoch_is_passed_over_and_the_head_committed_again(fresh: World) -> None:
    """The guardian revokes the latest epoch (a root it found wrong, or one it could not
    check in time). It pays nothing, so the coordinator stops serving its proofs and
    commits the journal's head again in a new epoch, though the head has not moved: a
    quiet network's payees were left with the revoked epoch's proofs, which the contract
    refuses, until someone else's payment moved the head."""
    w = fresh
    payer = w.lc.account("payer", tokens=5_000_000)
    w.deposit(payer, ALICE, 2_000_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 1
    payee = w.lc.account("payee")
    w.post(ledger.withdrawal(ALICE, 1_500_000, payee.address))
    first = rail.commit_epoch(w.db, w.chain, w.clock.now())
    assert first == 1
    assert rail.watch_revocation(w.db, w.chain, w.clock.now()) is None  # it stands
    w.chain.send(w.lc.guardian, w.chain.settlement.functions.revoke(first))
    w.clock.advance(1)
    assert w.tick()["revoked"] == first
    with w.db.read() as s:
        assert rail.latest_epoch(s) is None  # no proof is served from the revoked one
    w.clock.advance(w.chain.dep.epoch_interval)
    w.tick()
    with w.db.read() as s:
        again = rail.latest_epoch(s)
        assert again is not None and again.epoch == 2
        assert again.head_seq == journal.head(s).seq  # the same head, committed again
        leaves = dict(again.leaves)
    assert rail.watch_revocation(w.db, w.chain, w.clock.now()) is None
    w.lc.skip(600)
    tree = merkle.Tree(w.chain.dep.settlement, leaves)
    w.chain.send(payee, w.chain.settlement.functions.withdraw(
        2, payee.address, 1_500_000, tree.proof(payee.address)))
    assert w.chain.token_balance(payee.address) == 1_500_000
    rep = audit_chain(w.entries(), w.chain)
    assert rep.ok, rep.problems


def test_every_revoked_epoch_still_revocable_is_passed_over(fresh: World) -> None:
    """Two epochs revoked: both are marked in one look (asked about the latest alone, the
    one before it was served again once the latest was marked)."""
    w = fresh
    payer = w.lc.account("payer2", tokens=5_000_000)
    w.deposit(payer, ALICE, 3_000_000)
    w.lc.tester.mine_blocks(w.chain.dep.confirmations)
    assert rail.watch_deposits(w.db, w.chain, w.port.post, w.clock.now()) == 1
    for k in (1, 2):
        w.post(ledger.withdrawal(ALICE, 1_000_000, w.lc.account(f"payee{k}").address))
        w.clock.advance(w.chain.dep.epoch_interval)
        assert rail.commit_epoch(w.db, w.chain, w.clock.now()) == k
    for k in (1, 2):
        w.chain.send(w.lc.guardian, w.chain.settlement.functions.revoke(k))
    assert rail.watch_revocation(w.db, w.chain, w.clock.now()) == 2
    with w.db.read() as s:
        assert rail.latest_epoch(s) is None
        assert all(e.revoked_at is not None for e in s.scalars(select(ChainEpoch)))


def test_withdrawals_are_summed_by_the_database_past_32_bits(fresh: World) -> None:
    """The chain page and the withdrawal's reserve check sum withdrawals in the database
    (not every row loaded), in 64 bits: a µ amount passes 2³¹ at 2,148 DEAI."""
    w, payee = fresh, fresh.lc.account("big-payee")
    w.post(ledger.faucet(ALICE, 6 * 10**12))
    w.post(ledger.withdrawal(ALICE, 5 * 10**12, payee.address))
    w.post(ledger.withdrawal(ALICE, 7, payee.address))
    with w.db.read() as s:
        assert rail.withdrawn(s) == (2, 5 * 10**12 + 7)
        assert rail.reserve(s) == -(5 * 10**12 + 7)  # nothing deposited on this chain


@pytest.mark.parametrize(("raw", "devnet"), [("", False), ("0", False), ("false", False),
                                             ("off", False), ("1", True), ("TRUE", True)])
def test_the_auditors_devnet_flag_reads_as_a_flag(monkeypatch: pytest.MonkeyPatch, raw: str,
                                                  devnet: bool) -> None:
    """``DEAI_AUDIT_DEVNET=false`` turned the unbacked-money check off (anything but "" or
    "0" read as true)."""
    from deai.client.cli_chain import Pins

    monkeypatch.setenv("DEAI_AUDIT_DEVNET", raw)
    assert Pins.from_env().devnet is devnet
