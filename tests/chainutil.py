"""Helpers for the chain tests: an in-process EVM with the contracts deployed."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3

from deai.chain import adapter

ETH = 10**18


@dataclass
class LocalChain:
    tester: EthereumTester
    chain: adapter.Chain
    deployer: LocalAccount
    settler: LocalAccount
    guardian: LocalAccount

    def account(self, tag: str, *, tokens: int = 0) -> LocalAccount:
        """A fresh funded account: 10 ETH for gas and ``tokens`` DEAI micro-units."""
        key = Account.from_key(Web3.keccak(text=f"deai-test/{tag}"))
        self.chain.transfer_eth(self.deployer, key.address, 10 * ETH)
        if tokens:
            self.chain.send(self.deployer,
                            self.chain.token.functions.transfer(key.address, tokens))
        return key

    def skip(self, seconds: int) -> None:
        """Move the chain's clock forward (and mine a block at the new time)."""
        self.tester.time_travel(self.chain.now() + seconds)


def local_chain(challenge_delay: int = 3600, unbond_delay: int = 7200) -> LocalChain:
    t = EthereumTester()
    w3 = Web3(EthereumTesterProvider(t))
    # The tester's first accounts are the private keys 1, 2, 3 … with ETH to spend.
    deployer, settler, guardian = (Account.from_key(i.to_bytes(32, "big")) for i in (1, 2, 3))
    chain = adapter.deploy(w3, deployer, rpc="tester", settler=settler, guardian=guardian,
                           challenge_delay=challenge_delay, unbond_delay=unbond_delay,
                           confirmations=0)
    return LocalChain(t, chain, deployer, settler, guardian)
