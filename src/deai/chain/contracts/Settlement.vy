# pragma version 0.4.3
"""
@title DeAI settlement
@notice Deposits into DeAI accounts; per-epoch commitments of the journal's head
        hash and a Merkle root of cumulative withdrawable amounts; withdrawals
        by Merkle proof once an epoch's challenge delay has passed.
        A leaf is keccak256(abi.encode(this contract, recipient, cumulative)):
        what `recipient` may have taken in all, ever. Each withdrawal pays
        `cumulative - withdrawn[recipient]`, so a proof pays at most once.
        Only the settlement key commits; only the guardian revokes an epoch,
        and only before it matures. No root may promise more than was deposited.
        A commit may not take the journal head back past the latest epoch that
        stands; one the guardian revoked sets no floor.
"""
from ethereum.ercs import IERC20

struct Epoch:
    head_seq: uint256
    head: bytes32
    root: bytes32
    total: uint256
    posted_at: uint256
    revoked: bool

event Deposited:
    account: indexed(bytes32)
    sender: indexed(address)
    amount: uint256

event EpochCommitted:
    epoch: indexed(uint256)
    head_seq: uint256
    head: bytes32
    root: bytes32
    total: uint256

event EpochRevoked:
    epoch: indexed(uint256)

event Withdrawn:
    recipient: indexed(address)
    epoch: uint256
    amount: uint256
    cumulative: uint256

MAX_DEPTH: constant(uint256) = 32
FLOOR_LOOKBACK: constant(uint256) = 64  # revoked epochs passed over to find the floor

token: public(IERC20)
settler: public(address)
guardian: public(address)
challenge_delay: public(uint256)

epochs: public(HashMap[uint256, Epoch])
epoch_count: public(uint256)
withdrawn: public(HashMap[address, uint256])
total_deposited: public(uint256)
total_withdrawn: public(uint256)


@deploy
def __init__(token: address, settler: address, guardian: address, challenge_delay: uint256):
    self.token = IERC20(token)
    self.settler = settler
    self.guardian = guardian
    self.challenge_delay = challenge_delay


@external
def deposit(account: bytes32, amount: uint256):
    assert amount > 0, "amount must be positive"
    assert account != empty(bytes32), "account must be set"
    assert extcall self.token.transferFrom(msg.sender, self, amount), "transfer failed"
    self.total_deposited += amount
    log Deposited(account=account, sender=msg.sender, amount=amount)


@external
def commit(head_seq: uint256, head: bytes32, root: bytes32, total: uint256) -> uint256:
    assert msg.sender == self.settler, "only the settlement key"
    assert total <= self.total_deposited, "root promises more than was deposited"
    last: uint256 = self.epoch_count
    # The head may not go back past the latest epoch that stands (of the last
    # FLOOR_LOOKBACK). One the guardian revoked sets no floor: a settlement key that
    # committed a head no journal will reach (2**256 - 1) would otherwise, once
    # revoked, refuse every commit after it.
    i: uint256 = last
    for _: uint256 in range(FLOOR_LOOKBACK):
        if i == 0:
            break
        if not self.epochs[i].revoked:
            assert head_seq >= self.epochs[i].head_seq, "journal head went backwards"
            break
        i -= 1
    n: uint256 = last + 1
    self.epochs[n] = Epoch(head_seq=head_seq, head=head, root=root, total=total,
                           posted_at=block.timestamp, revoked=False)
    self.epoch_count = n
    log EpochCommitted(epoch=n, head_seq=head_seq, head=head, root=root, total=total)
    return n


@external
def revoke(epoch: uint256):
    assert msg.sender == self.guardian, "only the guardian"
    e: Epoch = self.epochs[epoch]
    assert e.posted_at != 0, "no such epoch"
    assert block.timestamp < e.posted_at + self.challenge_delay, "epoch already matured"
    self.epochs[epoch].revoked = True
    log EpochRevoked(epoch=epoch)


@internal
@pure
def _root(leaf: bytes32, proof: DynArray[bytes32, MAX_DEPTH]) -> bytes32:
    h: bytes32 = leaf
    for p: bytes32 in proof:
        if convert(h, uint256) < convert(p, uint256):
            h = keccak256(concat(h, p))
        else:
            h = keccak256(concat(p, h))
    return h


@external
def withdraw(epoch: uint256, recipient: address, cumulative: uint256,
             proof: DynArray[bytes32, MAX_DEPTH]) -> uint256:
    e: Epoch = self.epochs[epoch]
    assert e.posted_at != 0, "no such epoch"
    assert not e.revoked, "epoch revoked"
    assert block.timestamp >= e.posted_at + self.challenge_delay, "challenge delay not over"
    leaf: bytes32 = keccak256(abi_encode(self, recipient, cumulative))
    assert self._root(leaf, proof) == e.root, "proof does not match the epoch's root"
    done: uint256 = self.withdrawn[recipient]
    assert cumulative > done, "already withdrawn"
    amount: uint256 = cumulative - done
    self.withdrawn[recipient] = cumulative
    self.total_withdrawn += amount
    assert extcall self.token.transfer(recipient, amount), "transfer failed"
    log Withdrawn(recipient=recipient, epoch=epoch, amount=amount, cumulative=cumulative)
    return amount
