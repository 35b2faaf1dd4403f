"""Settlement on an EVM chain: Vyper contracts, the web3 adapter and the chain rail.

The journal stays the source of detail; the chain holds what must not depend on
trusting the coordinator: the tokens (``contracts/Token.vy``), providers'
stake and its slashes (``contracts/StakeVault.vy``), deposits, per-epoch
commitments of the journal's head and of a Merkle root of what each address may
withdraw, and withdrawals by proof (``contracts/Settlement.vy``).

Modules: ``compile`` (Vyper to ABI and bytecode), ``merkle`` (the tree the
contract checks), ``books`` (what the journal says the chain should hold),
``adapter`` (web3: deploy, transact, read events), ``rail`` (the coordinator's
side: outbox, deposit watcher, epochs), ``api`` (``/api/chain``), ``audit``
(``deai ledger audit --chain``), ``node`` (a local hardhat node), ``devnet``.
See docs/chain.md for the trust model.
"""
