"""The benchmark's workload: machine types, trees, and the requests that drive them.

A store of N nodes is N / tree_size trees: a root of type `bench_root` ("r0000042") with
tree_size - 1 children of type `bench_item` ("i1", "i2", ...). Both types have states a and b
and transitions `to_a` and `to_b`, each allowed from both states, so any node can take either at
any time; requests pick one at random, so about half of them change the node's state (and its
state index entry). Every transition is a real one: validated, count bumped, an event stored,
fsynced.
"""

from __future__ import annotations

import random
import time
from typing import Any

from statekeeper.v1 import common_pb2, node_pb2

APPLY_TRANSITION = "/statekeeper.v1.NodeService/ApplyTransition"
EXECUTE_BATCH = "/statekeeper.v1.NodeService/ExecuteBatch"
ROOT_TYPE = "bench_root"
ITEM_TYPE = "bench_item"


def machine_types() -> list[Any]:
    import statekeeper as sk

    return [
        sk.MachineType(
            name=name,
            version=1,
            states=["a", "b"],
            initial_state="a",
            transitions=[sk.Transition("to_a", ["a", "b"], "a"), sk.Transition("to_b", ["a", "b"], "b")],
        )
        for name in (ROOT_TYPE, ITEM_TYPE)
    ]


def root_id(tree: int) -> str:
    return f"r{tree:07d}"


def node_ref(index: int, tree_size: int) -> common_pb2.NodeRef:
    """Node `index` of the store: tree index // tree_size, the root or one of its items."""
    tree, child = divmod(index, tree_size)
    if child == 0:
        return common_pb2.NodeRef(root_id=root_id(tree))
    return common_pb2.NodeRef(
        root_id=root_id(tree), path=[common_pb2.NodeKey(type=ITEM_TYPE, id=f"i{child}")]
    )


def data(index: int, size: int) -> common_pb2.Data:
    head = f'{{"n":{index},"pad":"'.encode()
    return common_pb2.Data(
        value=head + b"x" * max(0, size - len(head) - 2) + b'"}', content_type="application/json"
    )


def create_trees_request(lo: int, hi: int, tree_size: int, data_bytes: int) -> bytes:
    """One ExecuteBatch creating trees [lo, hi): each root, then its items."""
    ops = []
    for tree in range(lo, hi):
        rid = root_id(tree)
        ops.append(
            node_pb2.BatchOperation(
                create_root=node_pb2.CreateRootRequest(
                    type=ROOT_TYPE, id=rid, data=data(tree * tree_size, data_bytes)
                )
            )
        )
        parent = common_pb2.NodeRef(root_id=rid)
        for child in range(1, tree_size):
            ops.append(
                node_pb2.BatchOperation(
                    add_child=node_pb2.AddChildRequest(
                        parent=parent,
                        key=common_pb2.NodeKey(type=ITEM_TYPE, id=f"i{child}"),
                        data=data(tree * tree_size + child, data_bytes),
                    )
                )
            )
    return node_pb2.ExecuteBatchRequest(operations=ops).SerializeToString()


def transition_request(index: int, tree_size: int, to: str = "b") -> node_pb2.ApplyTransitionRequest:
    return node_pb2.ApplyTransitionRequest(node=node_ref(index, tree_size), transition=f"to_{to}")


def node_text(index: int, tree_size: int) -> str:
    """Node `index` in the SDK's text form ("r0000004/bench_item:i2"): the PostgreSQL reference's id."""
    tree, child = divmod(index, tree_size)
    return root_id(tree) if child == 0 else f"{root_id(tree)}/{ITEM_TYPE}:i{child}"


def transition_picks(nodes: int, count: int, seed: int) -> list[tuple[int, str]]:
    """`count` (node index, destination state) pairs drawn at random: what each unary call does,
    the same for statekeeper and the PostgreSQL reference."""
    rng = random.Random(seed)
    return [(rng.randrange(nodes), rng.choice("ab")) for _ in range(count)]


def transition_requests(nodes: int, tree_size: int, count: int, seed: int) -> list[bytes]:
    """`count` serialized ApplyTransition requests on nodes drawn at random from the store."""
    return [
        transition_request(i, tree_size, to).SerializeToString()
        for i, to in transition_picks(nodes, count, seed)
    ]


def batch_picks(nodes: int, tree_size: int, ops: int, count: int, seed: int) -> list[list[tuple[int, str]]]:
    """`count` batches of `ops` (node index, destination state) pairs on distinct random nodes of
    distinct trees where the store has enough trees (spread over many trees)."""
    rng = random.Random(seed)
    trees = max(1, nodes // tree_size)
    out = []
    for _ in range(count):
        if ops <= trees:
            picked = [t * tree_size + rng.randrange(tree_size) for t in rng.sample(range(trees), ops)]
        else:
            picked = rng.sample(range(nodes), min(ops, nodes))
        out.append([(i, rng.choice("ab")) for i in picked])
    return out


def batch_requests_of(batches: list[list[tuple[int, str]]], tree_size: int) -> list[bytes]:
    """Batches of (node index, destination state) as serialized ExecuteBatch requests."""
    return [
        node_pb2.ExecuteBatchRequest(
            operations=[
                node_pb2.BatchOperation(apply_transition=transition_request(i, tree_size, to))
                for i, to in batch
            ]
        ).SerializeToString()
        for batch in batches
    ]


def batch_requests(nodes: int, tree_size: int, ops: int, count: int, seed: int) -> list[bytes]:
    """batch_picks as serialized ExecuteBatch requests of transitions."""
    return batch_requests_of(batch_picks(nodes, tree_size, ops, count, seed), tree_size)


def unary_picks(nodes: int, callers: int) -> list[tuple[int, str]]:
    """What `callers` concurrent unary writers do in (c), (f) and the PostgreSQL reference."""
    return transition_picks(nodes, max(2048, callers * 64), seed=callers)


def batch_sets(nodes: int, tree_size: int, ops: int) -> list[list[tuple[int, str]]]:
    """The batches of `ops` transitions sent in (d), (f) and the PostgreSQL reference, cycled."""
    return batch_picks(nodes, tree_size, ops, max(4, min(64, 64_000 // ops)), seed=ops)


def sample_transition_response(data_bytes: int) -> bytes:
    """An ApplyTransitionResponse as the server sends it for this workload (for the echo ceiling)."""
    node = node_pb2.Node(
        ref=node_ref(4_321_001, 10),
        type=ITEM_TYPE,
        type_version=1,
        state="b",
        data=data(4_321_001, data_bytes),
        transition_count=1234,
        create_revision=123_456,
        update_revision=1_234_567,
    )
    return node_pb2.ApplyTransitionResponse(node=node, revision=1_234_567, from_state="a").SerializeToString()


# -- (b): raw rocksdict, in the load process -------------------------------------------------


def raw_rocks_writes(
    path: str, units: int, seconds: float, warmup: float, key_space: int, data_bytes: int
) -> dict[str, float]:
    """Synced WriteBatches straight into rocksdict, each holding `units` transitions' worth of
    what statekeeper writes for one (a node record, an event record; one revision key per
    batch), with the store's options and column families. Batch building is timed too."""
    import rocksdict

    from statekeeper_server.domain.model import Event, EventKind, NodeAddress, NodeRecord
    from statekeeper_server.storage import codec, keys

    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_max_background_jobs(2)
    opts.set_bytes_per_sync(1 << 20)
    families = {name: rocksdict.Options(raw_mode=True) for name in ("nodes", "events", "meta")}
    db = rocksdict.Rdict(path, opts, column_families=families)
    try:
        nodes_cf = db.get_column_family_handle("nodes")
        events_cf = db.get_column_family_handle("events")
        meta_cf = db.get_column_family_handle("meta")
        sync = rocksdict.WriteOptions()
        sync.sync = True
        address = NodeAddress(root_id(1), ((ITEM_TYPE, "i1"),))
        record = NodeRecord(ITEM_TYPE, 1, "b", b"x" * data_bytes, "application/json", 7, 100, 200, False, {})
        node_value = codec.encode_node(record)
        event_value = codec.encode_event(
            Event(200, 0, EventKind.NODE_TRANSITIONED, 1, address, ITEM_TYPE, "a", "b", "to_b", 8)
        )
        node_keys = [keys.node_key(NodeAddress(root_id(i), ((ITEM_TYPE, "i1"),))) for i in range(key_space)]
        revision = 0
        clock = time.perf_counter
        start = clock() + warmup
        end = start + seconds
        writes = 0
        while True:
            now = clock()
            if now >= end:
                break
            revision += 1
            batch = rocksdict.WriteBatch(raw_mode=True)
            for u in range(units):
                batch.put(node_keys[(revision * units + u) % key_space], node_value, nodes_cf)
                batch.put(keys.seq_key(revision, u), event_value, events_cf)
            batch.put(keys.META_REVISION, keys.u64(revision), meta_cf)
            db.write(batch, sync)
            if now >= start:
                writes += 1
    finally:
        db.close()
    return {
        "writes_per_s": writes / seconds,
        "transitions_per_s": writes * units / seconds,
        "keys_per_s": writes * (2 * units + 1) / seconds,
    }
