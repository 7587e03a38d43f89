"""ExecuteStream in cluster mode: a call sent over the stream to a server that does not own its
tree's shard is forwarded to the owner, exactly as its unary call would be."""

from __future__ import annotations

import json
import time
import zlib

import grpc
import pytest

import statekeeper as sk
from statekeeper.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster.conftest import SHARDS, StartCluster
from tests.conftest import ORDER
from tests.support import ServerProcess


def _served(proc: ServerProcess, method: str) -> int:
    """How many calls of `method` the server answered (its DEBUG log of every call)."""
    count = 0
    for line in proc.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("method") == f"/statekeeper.v1.NodeService/{method}" and record.get("code") == "OK":
            count += 1
    return count


def _shards_of(proc: ServerProcess) -> set[int]:
    """The shards proc owns, once it owns some (the second server takes its share after starting)."""
    deadline = time.monotonic() + 30
    while True:
        with grpc.insecure_channel(proc.address) as channel:
            info = admin_pb2_grpc.AdminServiceStub(channel).GetServerInfo(admin_pb2.GetServerInfoRequest())
        owned = {s for m in info.cluster_members if m.self for s in m.owned_shards}
        if owned or time.monotonic() > deadline:
            return owned
        time.sleep(0.2)


def test_calls_over_the_stream_are_forwarded_to_the_owner_of_their_shard(start_cluster: StartCluster) -> None:
    a, b = start_cluster(2, "--log-level", "DEBUG")
    with (
        sk.SyncClient.connect(a.address, pipeline=True, timeout=20) as via_a,
        sk.SyncClient.connect(b.address, timeout=20) as via_b,
    ):
        via_a.register_machine_type(ORDER)
        owned_by_b = _shards_of(b)
        assert owned_by_b and len(owned_by_b) < int(SHARDS), owned_by_b  # each owns some
        roots = [f"p-{i}" for i in range(24)]
        on_b = [r for r in roots if zlib.crc32(r.encode()) % int(SHARDS) in owned_by_b]
        assert on_b and len(on_b) < len(roots)
        for root in roots:
            assert via_a.create_root("order", root).state == "new"
        results = {r: via_a.transition(r, "pay", request_id=f"pay-{r}") for r in roots}
        # Every call was applied once, wherever its shard lives; a retry on b gets the first outcome.
        for root in roots:
            assert via_b.transition(root, "pay", request_id=f"pay-{root}") == results[root]
            assert via_b.get_node(root).transition_count == 1
        # b served (forwarded) the calls of its shards, although the client only spoke to a.
        assert _served(b, "CreateRoot") >= len(on_b) and _served(b, "ApplyTransition") >= len(on_b)
        assert _served(a, "CreateRoot") == len(roots)  # a saw each of them (and forwarded some)
        # A batch across shards is refused over the stream as it is unary.
        batch = sk.Batch()
        for root in roots:
            batch.transition(root, "ship")
        with pytest.raises(sk.FailedPreconditionError) as streamed:
            via_a.execute(batch)
        with sk.SyncClient.connect(a.address) as unary, pytest.raises(sk.FailedPreconditionError) as direct:
            unary.execute(batch)
        assert (streamed.value.reason, streamed.value.message) == (direct.value.reason, direct.value.message)
        assert streamed.value.reason == "CROSS_SHARD_REQUEST"
