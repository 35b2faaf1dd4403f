# pragma version 0.4.3
"""
@title DeAI stake vault
@notice Providers' stake, keyed by the provider's account id (its Ed25519 public
        key). Stake is bonded, unbonding (for `unbond_delay` seconds, during which
        it can still be slashed), or withdrawn to the address that bonded it.
        Only the settlement key can slash, and only once per evidence hash; the
        bounty goes to the reporter, the rest to the treasury.
        The settlement key also mirrors the journal's bonds and unbonds
        (`mirror_*`, each applied once per journal entry hash `ref`).
        An id's owner is set by the settlement key only: its first mirrored bond, or
        `assign` (a provider bonding natively from an address of its own). An open
        first `bond` let anyone claim a provider's id before its first mirror, after
        which every mirror of that provider reverted.
"""
from ethereum.ercs import IERC20

event Bonded:
    provider: indexed(bytes32)
    owner: address
    amount: uint256
    ref: bytes32

event UnbondRequested:
    provider: indexed(bytes32)
    amount: uint256
    available_at: uint256
    ref: bytes32

event Unbonded:
    provider: indexed(bytes32)
    owner: address
    amount: uint256

event Assigned:
    provider: indexed(bytes32)
    owner: address

event Slashed:
    provider: indexed(bytes32)
    amount: uint256
    bounty: uint256
    reporter: address
    evidence: bytes32

token: public(IERC20)
settler: public(address)
treasury: public(address)
unbond_delay: public(uint256)

owner: public(HashMap[bytes32, address])
stake: public(HashMap[bytes32, uint256])
unbonding: public(HashMap[bytes32, uint256])
unbond_at: public(HashMap[bytes32, uint256])
applied: public(HashMap[bytes32, bool])
total_bonded: public(uint256)
total_slashed: public(uint256)
total_unbonded: public(uint256)


@deploy
def __init__(token: address, settler: address, treasury: address, unbond_delay: uint256):
    self.token = IERC20(token)
    self.settler = settler
    self.treasury = treasury
    self.unbond_delay = unbond_delay


@internal
def _bond(provider: bytes32, amount: uint256, ref: bytes32):
    assert amount > 0, "amount must be positive"
    assert provider != empty(bytes32), "provider must be set"
    owner: address = self.owner[provider]
    if owner == empty(address):
        self.owner[provider] = msg.sender
    else:
        assert owner == msg.sender, "stake belongs to another address"
    assert extcall self.token.transferFrom(msg.sender, self, amount), "transfer failed"
    self.stake[provider] += amount
    self.total_bonded += amount
    log Bonded(provider=provider, owner=msg.sender, amount=amount, ref=ref)


@internal
def _request_unbond(provider: bytes32, amount: uint256, ref: bytes32):
    assert msg.sender == self.owner[provider], "only the stake's owner"
    assert amount > 0, "amount must be positive"
    assert amount <= self.stake[provider], "more than the bonded stake"
    self.stake[provider] -= amount
    self.unbonding[provider] += amount
    # A new request restarts the clock for everything unbonding.
    self.unbond_at[provider] = block.timestamp + self.unbond_delay
    log UnbondRequested(provider=provider, amount=amount,
                        available_at=self.unbond_at[provider], ref=ref)


@external
def bond(provider: bytes32, amount: uint256):
    assert self.owner[provider] != empty(address), "the id has no owner: the settlement key assigns it"
    self._bond(provider, amount, empty(bytes32))


@external
def assign(provider: bytes32, owner: address):
    assert msg.sender == self.settler, "only the settlement key"
    assert provider != empty(bytes32), "provider must be set"
    assert owner != empty(address), "owner must be set"
    assert self.owner[provider] == empty(address), "the id already has an owner"
    self.owner[provider] = owner
    log Assigned(provider=provider, owner=owner)


@external
def request_unbond(provider: bytes32, amount: uint256):
    self._request_unbond(provider, amount, empty(bytes32))


@external
def mirror_bond(provider: bytes32, amount: uint256, ref: bytes32):
    assert msg.sender == self.settler, "only the settlement key"
    assert not self.applied[ref], "already applied"
    self.applied[ref] = True
    self._bond(provider, amount, ref)


@external
def mirror_unbond(provider: bytes32, amount: uint256, ref: bytes32):
    assert msg.sender == self.settler, "only the settlement key"
    assert not self.applied[ref], "already applied"
    self.applied[ref] = True
    self._request_unbond(provider, amount, ref)


@external
def withdraw_unbonded(provider: bytes32):
    owner: address = self.owner[provider]
    assert msg.sender == owner, "only the stake's owner"
    amount: uint256 = self.unbonding[provider]
    assert amount > 0, "nothing unbonding"
    assert block.timestamp >= self.unbond_at[provider], "unbond delay not over"
    self.unbonding[provider] = 0
    self.total_unbonded += amount
    assert extcall self.token.transfer(owner, amount), "transfer failed"
    log Unbonded(provider=provider, owner=owner, amount=amount)


@external
def slash(provider: bytes32, amount: uint256, bounty: uint256, reporter: address,
          evidence: bytes32):
    assert msg.sender == self.settler, "only the settlement key"
    assert evidence != empty(bytes32), "evidence hash must be set"
    assert not self.applied[evidence], "already applied"
    assert amount > 0, "amount must be positive"
    assert bounty <= amount, "bounty above the slash"
    assert bounty == 0 or reporter != empty(address), "bounty without a reporter"
    bonded: uint256 = self.stake[provider]
    pending: uint256 = self.unbonding[provider]
    assert amount <= bonded + pending, "more than the provider's stake"
    self.applied[evidence] = True
    # Bonded stake first; unbonding stake is still at risk until its delay ends.
    from_bonded: uint256 = min(amount, bonded)
    self.stake[provider] = bonded - from_bonded
    self.unbonding[provider] = pending - (amount - from_bonded)
    self.total_slashed += amount
    if bounty > 0:
        assert extcall self.token.transfer(reporter, bounty), "transfer failed"
    if amount > bounty:
        assert extcall self.token.transfer(self.treasury, amount - bounty), "transfer failed"
    log Slashed(provider=provider, amount=amount, bounty=bounty, reporter=reporter,
                evidence=evidence)
