"""The web3 adapter: deploy the contracts, send signed transactions, read events.

``Chain`` wraps a ``Web3`` connection (a JSON-RPC node such as hardhat, or the
in-process EVM of ``web3[tester]``) and one ``Deployment``: the addresses of the
three contracts and the parameters they were deployed with. Every transaction
is signed here with a local private key and sent raw, so the same code runs on
any node. A reverted call raises ``ChainError`` carrying the contract's reason.

EVM keys for DeAI identities are derived from their Ed25519 seeds
(``evm_key``), so every ``deai`` key has an address without a second secret.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.logs import DISCARD

from deai.chain.compile import artifact
from deai.core.errors import Conflict

log = logging.getLogger("deai.chain")

LOG_RANGE = 2_000  # blocks asked for in one eth_getLogs: within what public nodes serve
# (many cap a range at 1,000-10,000 blocks, or its results at 10,000)
GROW_AFTER = 8  # ranges served in a row before a range the node refused is tried again
SUPPLY = 1_000_000_000 * 10**6  # one billion DEAI, in micro-units
CHAIN_ENV = "DEAI_CHAIN"  # names the deployment file a coordinator settles with


class ChainError(Conflict):
    """A chain call failed: reverted (with the contract's reason) or not mined."""


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live and how the coordinator talks to them."""

    rpc: str
    chain_id: int
    token: str
    vault: str
    settlement: str
    start_block: int
    challenge_delay: int
    unbond_delay: int
    settler_key: str = ""  # hex; only the coordinator's copy holds it
    guardian_key: str = ""
    deployer_key: str = ""
    confirmations: int = 2
    epoch_interval: float = 10.0

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_key")}

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        return path

    @classmethod
    def load(cls, path: Path) -> Deployment:
        data = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _account(key: bytes | str) -> LocalAccount:
    acct: LocalAccount = Account.from_key(key)
    return acct


def evm_key(seed: bytes) -> LocalAccount:
    """The secp256k1 account that belongs to an Ed25519 seed (domain-separated hash)."""
    return _account(keccak(b"deai/evm-key/v1" + seed))


def account_id(pubkey_hex: str) -> bytes:
    """A DeAI account id (64 hex chars) as the contracts' bytes32."""
    raw = bytes.fromhex(pubkey_hex)
    if len(raw) != 32:
        raise ValueError("an account id is 32 bytes of hex")
    return raw


def reason(exc: Exception) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return str(msg).removeprefix("execution reverted: ")


class Chain:
    def __init__(self, w3: Web3, dep: Deployment) -> None:
        self.w3 = w3
        self.dep = dep
        self.token = self.contract("Token", dep.token)
        self.vault = self.contract("StakeVault", dep.vault)
        self.settlement = self.contract("Settlement", dep.settlement)

    @classmethod
    def connect(cls, dep: Deployment, timeout: float = 30.0) -> Chain:
        w3 = Web3(Web3.HTTPProvider(dep.rpc, request_kwargs={"timeout": timeout}))
        return cls(w3, dep)

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=to_checksum_address(address),
                                    abi=artifact(name).abi)

    # --- keys -----------------------------------------------------------------------------

    @property
    def settler(self) -> LocalAccount:
        if not self.dep.settler_key:
            raise ChainError("this deployment carries no settlement key")
        return _account(self.dep.settler_key)

    @property
    def guardian(self) -> LocalAccount:
        return _account(self.dep.guardian_key)

    @property
    def deployer(self) -> LocalAccount:
        return _account(self.dep.deployer_key)

    # --- transactions ---------------------------------------------------------------------

    def send(self, key: LocalAccount, fn: Any, *, value: int = 0,
             timeout: float = 60.0) -> Any:
        """Sign and send ``fn`` (a bound contract function) from ``key``; the receipt."""
        try:
            tx = fn.build_transaction({"from": key.address, "value": value,
                                       "nonce": self.w3.eth.get_transaction_count(
                                           key.address, "pending"),
                                       "chainId": self.dep.chain_id})
        except Exception as exc:  # web3 raises ContractLogicError, its tester TransactionFailed
            if not isinstance(exc, ContractLogicError) and "revert" not in str(exc).lower():
                raise
            raise ChainError(f"reverted: {reason(exc)}") from None
        return self._submit(key, tx, timeout)

    def _submit(self, key: LocalAccount, tx: dict[str, Any], timeout: float) -> Any:
        signed = key.sign_transaction(tx)
        h = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(h, timeout=timeout,
                                                               poll_latency=0.05)
        except TimeExhausted:
            raise ChainError(f"transaction {h.hex()} not mined in {timeout:.0f} s") from None
        if receipt["status"] != 1:
            raise ChainError(f"transaction {h.hex()} reverted")
        return receipt

    def transfer_eth(self, key: LocalAccount, to: str, wei: int) -> Any:
        tx = {"from": key.address, "to": to_checksum_address(to), "value": wei, "gas": 21000,
              "nonce": self.w3.eth.get_transaction_count(key.address, "pending"),
              "chainId": self.dep.chain_id, "gasPrice": self.w3.eth.gas_price * 2}
        return self._submit(key, tx, 60.0)

    def deploy_contract(self, key: LocalAccount, name: str, *args: Any) -> str:
        a = artifact(name)
        factory = self.w3.eth.contract(abi=a.abi, bytecode=a.bytecode)
        receipt = self.send(key, factory.constructor(*args))
        return str(receipt["contractAddress"])

    # --- reads ----------------------------------------------------------------------------

    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def events(self, contract: Contract, name: str, from_block: int,
               to_block: int | None = None) -> list[Any]:
        """``contract``'s ``name`` logs in blocks ``from_block``..``to_block`` (None: the
        latest), in order, read a range at a time (``event_pages``)."""
        return [ev for _, _, got in self.event_pages(contract, name, from_block, to_block)
                for ev in got]

    def event_pages(self, contract: Contract, name: str, from_block: int,
                    to_block: int | None = None, span: int | None = None
                    ) -> Iterator[tuple[int, int, list[Any]]]:
        """``(first, last, logs)`` for consecutive ranges of blocks from ``from_block`` to
        ``to_block`` (None: the latest now), at most ``span`` (``LOG_RANGE``) blocks
        each. A range the node refuses (many cap ``eth_getLogs`` at a few thousand blocks
        or ten thousand results) is halved until it answers, down to one block; the size
        it answered at is kept, and tried doubled after ``GROW_AFTER`` ranges in a row
        served (a dense stretch of logs is not the rule). A long backlog is read whatever
        the node's limits, in few calls where they allow, without a refusal per range."""
        last = self.block_number() if to_block is None else to_block
        first, span = from_block, span or LOG_RANGE
        top, served = span, 0
        while first <= last:
            end = min(last, first + span - 1)
            try:
                got = self._get_logs(contract, name, first, end)
            except Web3RPCError as exc:
                if span == 1:
                    raise
                span, served = max(1, span // 2), 0
                log.info("the node refused %s logs of blocks %d-%d (%s); asking for %d "
                         "blocks at a time", name, first, end, exc, span)
                continue
            yield first, end, got
            first, served = end + 1, served + 1
            if served >= GROW_AFTER and span < top:
                span, served = min(span * 2, top), 0

    @staticmethod
    def _get_logs(contract: Contract, name: str, first: int, last: int) -> list[Any]:
        """One ``eth_getLogs``, as the node answers it."""
        return list(getattr(contract.events, name).get_logs(from_block=first, to_block=last))

    @staticmethod
    def logs(contract: Contract, name: str, receipt: Any) -> list[Any]:
        """The ``name`` events ``contract`` emitted in one receipt (others are skipped)."""
        return list(getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD))

    def token_balance(self, address: str) -> int:
        return int(self.token.functions.balanceOf(to_checksum_address(address)).call())

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])


def deploy(w3: Web3, deployer: LocalAccount, *, rpc: str, settler: LocalAccount,
           guardian: LocalAccount, challenge_delay: int, unbond_delay: int,
           confirmations: int = 2, epoch_interval: float = 10.0,
           supply: int = SUPPLY) -> Chain:
    """Deploy token, vault and settlement; the treasury (slashed stake) is the deployer."""
    start = int(w3.eth.block_number)
    base = Deployment(rpc=rpc, chain_id=int(w3.eth.chain_id), token="0x" + "0" * 40,
                      vault="0x" + "0" * 40, settlement="0x" + "0" * 40, start_block=start,
                      challenge_delay=challenge_delay, unbond_delay=unbond_delay,
                      settler_key=settler.key.hex(), guardian_key=guardian.key.hex(),
                      deployer_key=deployer.key.hex(), confirmations=confirmations,
                      epoch_interval=epoch_interval)
    tmp = Chain(w3, base)
    token = tmp.deploy_contract(deployer, "Token", supply)
    vault = tmp.deploy_contract(deployer, "StakeVault", token, settler.address,
                                deployer.address, unbond_delay)
    settlement = tmp.deploy_contract(deployer, "Settlement", token, settler.address,
                                     guardian.address, challenge_delay)
    dep = Deployment(**{**asdict(base), "token": token, "vault": vault,
                        "settlement": settlement})
    return Chain(w3, dep)
