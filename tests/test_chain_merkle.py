"""The Merkle tree of cumulative withdrawals (pure): every member's proof verifies, no
other amount, address or sibling list does, and the root does not depend on the order
the amounts were given in. The contract's side of the same check is in
test_chain_contracts.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from deai.chain import merkle

SETTLEMENT = "0x" + "5e" * 20
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
books = st.dictionaries(addresses, st.integers(min_value=1, max_value=2**63), max_size=40)


@settings(max_examples=60, deadline=None)
@given(books)
def test_every_proof_verifies_and_nothing_else_does(amounts: dict[str, int]) -> None:
    tree = merkle.Tree(SETTLEMENT, amounts)
    assert tree.total == sum(amounts.values())
    assert (tree.root == merkle.ZERO) == (not amounts)
    for addr, value in tree.amounts.items():
        proof = tree.proof(addr)
        assert merkle.verify(tree.root, merkle.leaf(SETTLEMENT, addr, value), proof)
        assert not merkle.verify(tree.root, merkle.leaf(SETTLEMENT, addr, value + 1), proof)
        assert not merkle.verify(tree.root, merkle.leaf("0x" + "00" * 20, addr, value), proof)
        assert len(proof) <= max(1, len(amounts) - 1).bit_length()


@settings(max_examples=30, deadline=None)
@given(books)
def test_the_root_does_not_depend_on_insertion_order(amounts: dict[str, int]) -> None:
    backwards = dict(reversed(list(amounts.items())))
    assert merkle.Tree(SETTLEMENT, amounts).root == merkle.Tree(SETTLEMENT, backwards).root
