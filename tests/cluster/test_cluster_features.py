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
