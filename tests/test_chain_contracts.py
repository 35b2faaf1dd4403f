"""The Vyper contracts on web3's in-process EVM: the stake vault's delay and its slash
rights, withdrawals by Merkle proof (wrong, reused, early, revoked), and conservation
of tokens across every contract and account."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from deai.chain import merkle
from deai.chain.adapter import ChainError
from tests.chainutil import LocalChain, local_chain

PROVIDER = bytes.fromhex("ab" * 32)
ACCOUNT = bytes.fromhex("cd" * 32)
EVIDENCE = keccak(b"verdict evidence")


@pytest.fixture(scope="module")
def tc() -> LocalChain:
    return local_chain(challenge_delay=3600, unbond_delay=7200)


def test_token_has_six_decimals_and_a_fixed_supply(tc: LocalChain) -> None:
    t = tc.chain.token.functions
    assert t.decimals().call() == 6
    assert t.symbol().call() == "DEAI"
    assert t.totalSupply().call() == tc.chain.token_balance(tc.deployer.address) + sum(
        tc.chain.token_balance(a) for a in (tc.chain.dep.vault, tc.chain.dep.settlement))


def test_bond_unbond_waits_for_the_delay_and_stays_slashable(tc: LocalChain) -> None:
    c = tc.chain
    owner = tc.account("bonder", tokens=1_000)
    other = tc.account("stranger", tokens=10)
    c.send(owner, c.token.functions.approve(c.dep.vault, 1_000))
    c.send(tc.settler, c.vault.functions.assign(PROVIDER, owner.address))
    c.send(owner, c.vault.functions.bond(PROVIDER, 600))
    assert c.vault.functions.stake(PROVIDER).call() == 600
    with pytest.raises(ChainError, match="only the stake's owner"):
        c.send(other, c.vault.functions.request_unbond(PROVIDER, 100))
    with pytest.raises(ChainError, match="more than the bonded stake"):
        c.send(owner, c.vault.functions.request_unbond(PROVIDER, 601))
    c.send(owner, c.vault.functions.request_unbond(PROVIDER, 400))
    assert c.vault.functions.stake(PROVIDER).call() == 200
    assert c.vault.functions.unbonding(PROVIDER).call() == 400
    with pytest.raises(ChainError, match="unbond delay not over"):
        c.send(owner, c.vault.functions.withdraw_unbonded(PROVIDER))
    # Unbonding stake can still be slashed: leaving does not outrun a verdict.
    c.send(tc.settler, c.vault.functions.slash(PROVIDER, 300, 0, "0x" + "0" * 40,
                                               keccak(b"late verdict")))
    assert c.vault.functions.stake(PROVIDER).call() == 0
    assert c.vault.functions.unbonding(PROVIDER).call() == 300
    tc.skip(7200)
    before = c.token_balance(owner.address)
    c.send(owner, c.vault.functions.withdraw_unbonded(PROVIDER))
    assert c.token_balance(owner.address) == before + 300
    with pytest.raises(ChainError, match="nothing unbonding"):
        c.send(owner, c.vault.functions.withdraw_unbonded(PROVIDER))


def test_only_the_settlement_key_gives_an_id_its_owner(tc: LocalChain) -> None:
    """Before, the first ``bond`` to an id made its caller the owner: anyone could claim a
    provider's id before the coordinator mirrored its first bond, and every mirror of
    that provider then reverted ("stake belongs to another address")."""
    c = tc.chain
    pid, ref = bytes.fromhex("9a" * 32), keccak(b"first mirrored bond")
    squatter = tc.account("would-be squatter", tokens=10)
    c.send(squatter, c.token.functions.approve(c.dep.vault, 10))
    with pytest.raises(ChainError, match="the id has no owner"):
        c.send(squatter, c.vault.functions.bond(pid, 1))
    for who in (squatter, tc.guardian, tc.deployer):
        with pytest.raises(ChainError, match="only the settlement key"):
            c.send(who, c.vault.functions.assign(pid, squatter.address))
    c.send(tc.deployer, c.token.functions.transfer(tc.settler.address, 50))
    c.send(tc.settler, c.token.functions.approve(c.dep.vault, 50))
    c.send(tc.settler, c.vault.functions.mirror_bond(pid, 50, ref))
    assert (c.vault.functions.owner(pid).call(), c.vault.functions.stake(pid).call()) == (
        tc.settler.address, 50)
    with pytest.raises(ChainError, match="stake belongs to another address"):
        c.send(squatter, c.vault.functions.bond(pid, 1))
    with pytest.raises(ChainError, match="the id already has an owner"):
        c.send(tc.settler, c.vault.functions.assign(pid, squatter.address))


def test_slash_only_by_the_settlement_key_once_per_evidence(tc: LocalChain) -> None:
    c = tc.chain
    pid = bytes.fromhex("ef" * 32)
    owner = tc.account("slashed", tokens=500)
    reporter = tc.account("reporter")
    c.send(owner, c.token.functions.approve(c.dep.vault, 500))
    c.send(tc.settler, c.vault.functions.assign(pid, owner.address))
    c.send(owner, c.vault.functions.bond(pid, 500))
    for who in (owner, reporter, tc.guardian, tc.deployer):
        with pytest.raises(ChainError, match="only the settlement key"):
            c.send(who, c.vault.functions.slash(pid, 100, 10, reporter.address, EVIDENCE))
    with pytest.raises(ChainError, match="evidence hash must be set"):
        c.send(tc.settler, c.vault.functions.slash(pid, 100, 10, reporter.address, b"\0" * 32))
    with pytest.raises(ChainError, match="more than the provider's stake"):
        c.send(tc.settler, c.vault.functions.slash(pid, 501, 0, reporter.address, EVIDENCE))
    treasury = c.token_balance(tc.deployer.address)
    receipt = c.send(tc.settler, c.vault.functions.slash(pid, 100, 10, reporter.address,
                                                         EVIDENCE))
    (ev,) = c.logs(c.vault, "Slashed", receipt)
    assert ev.args.evidence == EVIDENCE and ev.args.provider == pid
    assert c.token_balance(reporter.address) == 10
    assert c.token_balance(tc.deployer.address) == treasury + 90
    assert c.vault.functions.stake(pid).call() == 400
    with pytest.raises(ChainError, match="already applied"):
        c.send(tc.settler, c.vault.functions.slash(pid, 100, 10, reporter.address, EVIDENCE))


def test_mirrored_bonds_apply_once_per_journal_entry(tc: LocalChain) -> None:
    c = tc.chain
    pid = bytes.fromhex("12" * 32)
    ref = keccak(b"journal entry 7")
    c.send(tc.deployer, c.token.functions.transfer(tc.settler.address, 1_000))
    c.send(tc.settler, c.token.functions.approve(c.dep.vault, 1_000))
    c.send(tc.settler, c.vault.functions.mirror_bond(pid, 250, ref))
    with pytest.raises(ChainError, match="already applied"):
        c.send(tc.settler, c.vault.functions.mirror_bond(pid, 250, ref))
    with pytest.raises(ChainError, match="only the settlement key"):
        c.send(tc.guardian, c.vault.functions.mirror_bond(pid, 250, keccak(b"other")))
    assert c.vault.functions.stake(pid).call() == 250


def deposit(tc: LocalChain, tag: str, amount: int) -> None:
    c = tc.chain
    who = tc.account(tag, tokens=amount)
    c.send(who, c.token.functions.approve(c.dep.settlement, amount))
    c.send(who, c.settlement.functions.deposit(ACCOUNT, amount))


def commit(tc: LocalChain, tree: merkle.Tree, head_seq: int) -> int:
    c = tc.chain
    receipt = c.send(tc.settler, c.settlement.functions.commit(
        head_seq, keccak(b"head %d" % head_seq), tree.root, tree.total))
    (ev,) = c.logs(c.settlement, "EpochCommitted", receipt)
    return int(ev.args.epoch)


def test_withdrawal_by_proof_after_the_delay_once(tc: LocalChain) -> None:
    c = tc.chain
    deposit(tc, "depositor", 10_000)
    alice, bob, carol = (tc.account(n) for n in ("alice", "bob", "carol"))
    tree = merkle.Tree(c.dep.settlement, {alice.address: 700, bob.address: 300,
                                          carol.address: 50})
    with pytest.raises(ChainError, match="only the settlement key"):
        c.send(tc.guardian, c.settlement.functions.commit(1, b"\1" * 32, tree.root, tree.total))
    with pytest.raises(ChainError, match="more than was deposited"):
        c.send(tc.settler, c.settlement.functions.commit(1, b"\1" * 32, tree.root, 10**12))
    epoch = commit(tc, tree, 10)
    w = c.settlement.functions.withdraw
    with pytest.raises(ChainError, match="challenge delay not over"):
        c.send(alice, w(epoch, alice.address, 700, tree.proof(alice.address)))
    tc.skip(3600)
    with pytest.raises(ChainError, match="proof does not match"):  # a wrong amount
        c.send(alice, w(epoch, alice.address, 701, tree.proof(alice.address)))
    with pytest.raises(ChainError, match="proof does not match"):  # someone else's proof
        c.send(alice, w(epoch, alice.address, 700, tree.proof(bob.address)))
    with pytest.raises(ChainError, match="proof does not match"):  # a proof for another
        c.send(alice, w(epoch, carol.address, 700, tree.proof(alice.address)))
    c.send(bob, w(epoch, alice.address, 700, tree.proof(alice.address)))  # anyone may relay
    assert c.token_balance(alice.address) == 700
    with pytest.raises(ChainError, match="already withdrawn"):  # the same proof again
        c.send(alice, w(epoch, alice.address, 700, tree.proof(alice.address)))
    # The next epoch raises alice's cumulative amount: she gets only the difference.
    tree2 = merkle.Tree(c.dep.settlement, {alice.address: 900, bob.address: 300})
    epoch2 = commit(tc, tree2, 20)
    tc.skip(3600)
    c.send(alice, w(epoch2, alice.address, 900, tree2.proof(alice.address)))
    assert c.token_balance(alice.address) == 900
    with pytest.raises(ChainError, match="already withdrawn"):  # an older, smaller proof
        c.send(alice, w(epoch, alice.address, 700, tree.proof(alice.address)))
    with pytest.raises(ChainError, match="journal head went backwards"):
        c.send(tc.settler, c.settlement.functions.commit(5, b"\1" * 32, tree.root, 1))


def test_guardian_revokes_a_bad_root_only_before_it_matures(tc: LocalChain) -> None:
    c = tc.chain
    thief = tc.account("thief")
    bad = merkle.Tree(c.dep.settlement, {thief.address: 5_000})
    epoch = commit(tc, bad, 30)
    with pytest.raises(ChainError, match="only the guardian"):
        c.send(tc.settler, c.settlement.functions.revoke(epoch))
    c.send(tc.guardian, c.settlement.functions.revoke(epoch))
    tc.skip(3600)
    with pytest.raises(ChainError, match="epoch revoked"):
        c.send(thief, c.settlement.functions.withdraw(epoch, thief.address, 5_000,
                                                      bad.proof(thief.address)))
    late = commit(tc, merkle.Tree(c.dep.settlement, {}), 31)
    tc.skip(3600)
    with pytest.raises(ChainError, match="already matured"):
        c.send(tc.guardian, c.settlement.functions.revoke(late))


def test_a_revoked_head_no_journal_reaches_blocks_no_later_commit(tc: LocalChain) -> None:
    """A settlement key (stolen) commits the head 2**256 - 1; the guardian revokes it.
    The head may not go back past the latest epoch that stands, and a revoked one does
    not stand: the honest commit after it goes through. Before, every later commit was
    refused as going backwards, for good."""
    c = tc.chain
    st = c.settlement.functions
    empty = merkle.Tree(c.dep.settlement, {})
    before = int(st.epoch_count().call())
    last_head = int(st.epochs(before).call()[0]) if before else 0
    poisoned = commit(tc, empty, 2**256 - 1)
    with pytest.raises(ChainError, match="journal head went backwards"):
        c.send(tc.settler, st.commit(last_head + 1, b"\2" * 32, empty.root, 0))
    c.send(tc.guardian, st.revoke(poisoned))
    standing = commit(tc, empty, last_head + 10)
    poisoned = commit(tc, empty, 2**256 - 1)
    c.send(tc.guardian, st.revoke(poisoned))
    with pytest.raises(ChainError, match="journal head went backwards"):  # the floor:
        c.send(tc.settler, st.commit(last_head + 9, b"\2" * 32, empty.root, 0))  # it stands
    honest = commit(tc, empty, last_head + 10)
    assert honest == poisoned + 1 and standing == poisoned - 1


def test_totals_are_conserved(tc: LocalChain) -> None:
    """Every token is somewhere: no contract creates or loses any, whatever ran above."""
    c = tc.chain
    holders = {tc.deployer.address, tc.settler.address, tc.guardian.address,
               c.dep.vault, c.dep.settlement}
    for ev in c.events(c.token, "Transfer", 0):
        holders.add(ev.args.receiver)
    supply = c.token.functions.totalSupply().call()
    assert sum(c.token_balance(a) for a in holders) == supply
    s, v = c.settlement.functions, c.vault.functions
    assert c.token_balance(c.dep.settlement) == s.total_deposited().call() - \
        s.total_withdrawn().call()
    staked = sum(v.stake(p).call() + v.unbonding(p).call()
                 for p in {ev.args.provider for ev in c.events(c.vault, "Bonded", 0)})
    assert c.token_balance(c.dep.vault) == staked == v.total_bonded().call() - \
        v.total_slashed().call() - v.total_unbonded().call()
