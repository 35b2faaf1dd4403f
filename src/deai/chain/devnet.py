"""A devnet that settles on a local chain: ``deai devnet up --chain``.

``ChainDevnet`` is a ``Devnet`` that first starts a hardhat node on a free port
and deploys the contracts (``node.deploy_devnet``), writes the deployment (with
the settlement key) to ``$DEAI_HOME/devnet/chain/deployment.json`` and starts
the coordinator with ``$DEAI_CHAIN`` naming it. Once the network is up it gives
the ``client`` key's EVM address ETH for gas and ``client_tokens`` DEAI on chain,
and every provider's EVM address ETH for gas. It stops the node after the rest.
"""

from __future__ import annotations

import os
from typing import Any

from deai.chain import adapter, node
from deai.client import keys
from deai.client.devnet import Devnet, free_port
from deai.core.money import MICRO


def evm_account(ident: keys.Identity) -> Any:
    return adapter.evm_key(ident.signing_key.encode())


class ChainDevnet(Devnet):
    def __init__(self, *args: Any, client_tokens: int = 1000 * MICRO, challenge_delay: int = 5,
                 unbond_delay: int = 10, epoch_interval: float = 3.0, confirmations: int = 2,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_tokens = client_tokens
        self.chain_params = {"challenge_delay": challenge_delay, "unbond_delay": unbond_delay,
                             "epoch_interval": epoch_interval, "confirmations": confirmations}
        self.node: node.HardhatNode | None = None
        self.chain: adapter.Chain | None = None
        self.deployment_path = self.dir / "chain" / "deployment.json"

    def start(self) -> None:
        logs = self.dir / "logs"
        self.node = node.HardhatNode(free_port(self.host), logs / "hardhat.log", self.host)
        self.log(f"starting a hardhat node on {self.node.rpc}")
        self.node.wait_ready()
        self.chain = node.deploy_devnet(self.node.rpc, **self.chain_params)  # type: ignore[arg-type]
        self.chain.dep.save(self.deployment_path)
        self.log(f"deployed DEAI {self.chain.dep.token}, vault {self.chain.dep.vault}, "
                 f"settlement {self.chain.dep.settlement}")
        before = os.environ.get(adapter.CHAIN_ENV)
        os.environ[adapter.CHAIN_ENV] = str(self.deployment_path)  # the coordinator inherits it
        try:
            super().start()
        finally:
            if before is None:
                os.environ.pop(adapter.CHAIN_ENV, None)
            else:
                os.environ[adapter.CHAIN_ENV] = before
        node.fund(self.chain, evm_account(keys.load("client")).address, self.client_tokens)
        for ident in self.provider_keys:
            node.fund(self.chain, evm_account(ident).address, 0)

    def node_alive(self) -> bool:
        return self.node is not None and self.node.alive()

    def stop(self) -> None:
        super().stop()
        if self.node is not None:
            self.node.stop()
            self.log("stopped the hardhat node")
            self.node = None
