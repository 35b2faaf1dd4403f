"""A local EVM node (hardhat, from npm) and a devnet deployment on it.

``HardhatNode(port, log_path)`` starts ``hardhat node`` on loopback from the
gitignored ``node/node_modules`` (``make hardhat`` installs it) and waits for
its JSON-RPC; ``stop()`` ends it by its pid. ``deploy_devnet(rpc, ...)`` funds
fresh deployer, settlement and guardian keys with ETH (``hardhat_setBalance``),
deploys the contracts, gives the settlement key a float of DEAI to back the
stake it mirrors, and returns the ``Chain``. ``fund(chain, address, ...)`` gives
a devnet address ETH for gas and DEAI from the deployer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

import httpx
from eth_account import Account
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.types import RPCEndpoint

from deai.chain import adapter
from deai.core.errors import DeAIError

NODE_DIR = Path(__file__).parent / "node"
HARDHAT = NODE_DIR / "node_modules" / ".bin" / "hardhat"
ETH = 10**18
SETTLER_FLOAT = 100_000_000 * 10**6  # DEAI the settlement key holds to back mirrored stake


class NodeError(DeAIError):
    """The local chain would not start."""


def installed() -> bool:
    return HARDHAT.exists()


def rpc_ready(rpc: str) -> bool:
    try:
        r = httpx.post(rpc, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
                                  "params": []}, timeout=2)
        return r.status_code == 200 and "result" in r.json()
    except (httpx.HTTPError, ValueError):
        return False


class HardhatNode:
    def __init__(self, port: int, log_path: Path, host: str = "127.0.0.1") -> None:
        self.rpc = f"http://{host}:{port}"
        self.log_path = log_path
        if not installed():
            raise NodeError(f"hardhat is not installed under {NODE_DIR}; run `make hardhat`")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}
        self.proc = subprocess.Popen(
            [str(HARDHAT), "--config", str(NODE_DIR / "hardhat.config.js"), "node",
             "--hostname", host, "--port", str(port)],
            cwd=NODE_DIR, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not rpc_ready(self.rpc):
            if not self.alive():
                raise NodeError(f"hardhat exited ({self.proc.returncode}); "
                                f"see {self.log_path}")
            if time.monotonic() > deadline:
                raise NodeError(f"hardhat did not answer on {self.rpc} in {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def set_eth(w3: Web3, address: str, wei: int) -> None:
    w3.provider.make_request(RPCEndpoint("hardhat_setBalance"),
                             [to_checksum_address(address), hex(wei)])


def deploy_devnet(rpc: str, *, challenge_delay: int = 5, unbond_delay: int = 10,
                  confirmations: int = 2, epoch_interval: float = 3.0) -> adapter.Chain:
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 30}))
    deployer, settler, guardian = (Account.create() for _ in range(3))
    for a in (deployer, settler, guardian):
        set_eth(w3, a.address, 1_000 * ETH)
    chain = adapter.deploy(w3, deployer, rpc=rpc, settler=settler, guardian=guardian,
                           challenge_delay=challenge_delay, unbond_delay=unbond_delay,
                           confirmations=confirmations, epoch_interval=epoch_interval)
    chain.send(deployer, chain.token.functions.transfer(settler.address, SETTLER_FLOAT))
    chain.send(settler, chain.token.functions.approve(chain.dep.vault, 2**256 - 1))
    return chain


def fund(chain: adapter.Chain, address: str, tokens: int, eth: int = 10 * ETH) -> None:
    """Devnet only: ETH for gas (hardhat_setBalance) and ``tokens`` DEAI from the deployer."""
    set_eth(chain.w3, address, eth)
    if tokens:
        chain.send(chain.deployer, chain.token.functions.transfer(
            to_checksum_address(address), tokens))
