// The local chain for DeAI's devnet: contracts are compiled by Vyper in Python, so no
// Solidity compiler is configured (and none is downloaded).
module.exports = {
  networks: {
    hardhat: { chainId: 31337, mining: { auto: true } },
  },
};
