"""Storage keys: order-preserving, prefix-closed, and reversible (property-based)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from statekeeper_server.domain.model import NodeAddress
from statekeeper_server.storage import keys

ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,6}", fullmatch=True)
addresses = st.builds(NodeAddress, ids, st.lists(st.tuples(names, ids), max_size=4).map(tuple))


@given(addresses)
def test_node_key_round_trips(a: NodeAddress) -> None:
    assert keys.node_address(keys.node_key(a)) == a


@given(addresses, addresses)
def test_subtree_is_one_key_range(a: NodeAddress, b: NodeAddress) -> None:
    ka, kb = keys.node_key(a), keys.node_key(b)
    in_range = ka + keys.SUBTREE_START <= kb < ka + keys.SUBTREE_END
    assert in_range == (b != a and b.is_within(a))


@given(addresses, names, ids, ids)
def test_a_childs_subtree_sorts_before_its_next_sibling(parent: NodeAddress, t: str, i: str, j: str) -> None:
    if i == j:
        return
    lo, hi = sorted([i, j], key=lambda s: s.encode())
    first, second = keys.node_key(parent.child((t, lo))), keys.node_key(parent.child((t, hi)))
    assert first + keys.SUBTREE_END <= second


@given(st.integers(0, 2**63), st.integers(0, 2**31), st.integers(0, 2**63), st.integers(0, 2**31))
def test_sequence_keys_sort_numerically(r1: int, i1: int, r2: int, i2: int) -> None:
    assert (keys.seq_key(r1, i1) < keys.seq_key(r2, i2)) == ((r1, i1) < (r2, i2))
    assert keys.task_key(f"{r1}-{i1}") == keys.seq_key(r1, i1)
