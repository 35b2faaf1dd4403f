"""The Merkle tree of cumulative withdrawable amounts, exactly as Settlement.vy checks it.

A leaf is ``keccak256(abi.encode(settlement, recipient, cumulative))``; a parent is
the keccak256 of its two children in ascending byte order, so a proof is just
the list of siblings. Leaves are ordered by recipient; an odd node at the end of
a level moves up unchanged. The empty tree's root is 32 zero bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from eth_abi.abi import encode
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

ZERO = b"\x00" * 32


def leaf(settlement: str, recipient: str, cumulative: int) -> bytes:
    return keccak(encode(["address", "address", "uint256"],
                         [to_checksum_address(settlement), to_checksum_address(recipient),
                          cumulative]))


def parent(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class Tree:
    """Built from ``{recipient: cumulative}``; gives the root and each recipient's proof."""

    def __init__(self, settlement: str, amounts: Mapping[str, int]) -> None:
        self.settlement = to_checksum_address(settlement)
        self.amounts = {to_checksum_address(a): int(v) for a, v in amounts.items()}
        self.order = sorted(self.amounts, key=lambda a: bytes.fromhex(a[2:]))
        self._at = {a: i for i, a in enumerate(self.order)}
        self._lower = {a.lower(): a for a in self.order}
        level = [leaf(self.settlement, a, self.amounts[a]) for a in self.order]
        self.levels = [level]
        while len(level) > 1:
            level = [parent(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.levels[0] else ZERO

    @property
    def total(self) -> int:
        return sum(self.amounts.values())

    def address(self, address: str) -> ChecksumAddress | None:
        """The leaf's address as the tree spells it (checksummed), any case given."""
        return self._lower.get(address.lower())

    def proof(self, recipient: str) -> list[bytes]:
        i = self._at[to_checksum_address(recipient)]
        out = []
        for level in self.levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            i //= 2
        return out


def verify(root: bytes, leaf_hash: bytes, proof: list[bytes]) -> bool:
    h = leaf_hash
    for p in proof:
        h = parent(h, p)
    return h == root
