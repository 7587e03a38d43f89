"""Savepoints and tree snapshots in cluster mode work as on one server, whichever server is asked:
a run's saves go to its shard's owner and its savepoints load anywhere; a tree snapshot forks
into a tree of another shard."""

from __future__ import annotations

import zlib

import statekeeper as sk
from tests.cluster.conftest import SHARDS, StartCluster
from tests.conftest import ITEM, ORDER


def _shard(key: str) -> int:
    return zlib.crc32(key.encode()) % int(SHARDS)


def test_runs_and_savepoints_across_servers(start_cluster: StartCluster) -> None:
    a, b, c = (sk.SyncClient.connect(p.address) for p in start_cluster(3))
    try:
        for i in range(6):
            run = f"job-{i}"
            [a, b, c][i % 3].create_run(
                run, {"counter": b"0", "window": b"[]"}, start_ms=0, schedule_ms=60_000
            )
            [b, c, a][i % 3].save_entity_states(
                [
                    sk.EntitySave(run, "counter", 190_000, b"42"),
                    sk.EntitySave(run, "window", 130_000, b"[1,2]"),
                ]
            )
        for i in range(6):
            loaded = [c, a, b][i % 3].load_latest_savepoint(f"job-{i}")
            assert (loaded.timestamp_ms, loaded.states) == (120_000, {"counter": b"42", "window": b"[1,2]"})
    finally:
        for client in (a, b, c):
            client.close()


def test_a_tree_snapshot_restores_and_forks_into_another_shard(start_cluster: StartCluster) -> None:
    a, b, c = (sk.SyncClient.connect(p.address) for p in start_cluster(3))
    try:
        a.register_machine_type(ORDER)
        a.register_machine_type(ITEM)
        b.create_root("order", "src", b"v0")
        c.add_child("src", "item", "i1")
        a.create_tree_snapshot("src", "s1")
        b.transition("src", "pay", b"paid")
        c.restore_tree_snapshot("src", "s1")
        node = a.get_node("src")
        assert (node.state, node.data) == ("new", b"v0")
        target = next(f"copy-{i}" for i in range(100) if _shard(f"copy-{i}") != _shard("src"))
        forked = b.fork_tree_snapshot("src", "s1", target)
        assert forked.root.ref.root_id == target
        assert {n.ref for n in c.walk(target)} == {sk.Ref(target), sk.Ref(target, (("item", "i1"),))}
    finally:
        for client in (a, b, c):
            client.close()


def test_a_batch_of_many_nodes_not_in_memory_commits_after_a_restart(start_cluster: StartCluster) -> None:
    """A restarted server holds none of the nodes in memory: a batch touching 120 of them loads
    them together (before: one load and one rebuild per node, refused after 50)."""
    (proc,) = start_cluster(1)
    children = [f"i{i}" for i in range(120)]
    with sk.SyncClient.connect(proc.address) as c:
        c.register_machine_type(ORDER)
        c.register_machine_type(ITEM)
        c.create_root("order", "big")
        for lo in range(0, len(children), 40):
            batch = sk.Batch()
            for child in children[lo : lo + 40]:
                batch.add_child("big", "item", child)
            c.execute(batch)
    proc.restart()
    with sk.SyncClient.connect(proc.address, timeout=30) as c:
        batch = sk.Batch()
        for child in children:
            batch.transition(f"big/item:{child}", "pack")
        batch.transition("big", "pay")
        c.execute(batch)
        assert {n.state for n in c.list_children("big", "item")} == {"packed"}
        assert c.get_node("big").state == "paid"
