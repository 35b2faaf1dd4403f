// The local chain for DeAI's devnet: contracts are compiled by Vyper in Python, so no
// Solidity compiler is configured (and none is downloaded). Transactions are mined at
// once, and an empty block every second keeps block time and confirmations moving.
module.exports = {
  networks: {
    hardhat: { chainId: 31337, mining: { auto: true, interval: 1000 } },
  },
};
