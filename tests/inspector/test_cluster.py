"""The inspector in cluster mode: GetServerInfo lists the servers and their shards, the server
page shows them, and a dead letter retried from a server's inspector is pending again (the call
goes through that server's routing like any gRPC call)."""

from __future__ import annotations

import json
import time

import grpc

import statekeeper as sk
from statekeeper.v1 import admin_pb2, admin_pb2_grpc
from statekeeper_server.core.shards import shard_of
from tests.cluster.conftest import SHARDS, StartCluster, dsn, postgres, start_cluster  # noqa: F401
from tests.conftest import ORDER
from tests.inspector.seed import dead_letter
from tests.inspector.web_client import Http


def _info(address: str) -> admin_pb2.GetServerInfoResponse:
    with grpc.insecure_channel(address) as ch:
        return admin_pb2_grpc.AdminServiceStub(ch).GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=10)


def test_cluster_members_and_shards_on_the_server_page(start_cluster: StartCluster) -> None:  # noqa: F811
    a, b = start_cluster(2, "--http-listen", "127.0.0.1:0")
    deadline = time.monotonic() + 60
    while True:  # until both servers hold their share and each knows the other's
        info = _info(a.address)
        members = {m.server_id: m for m in info.cluster_members}
        shards = sorted(s for m in members.values() for s in m.owned_shards)
        if len(members) == 2 and shards == list(range(int(SHARDS))):
            break
        assert time.monotonic() < deadline, f"members {members}"
        time.sleep(0.2)
    assert info.store == "postgresql" and "postgresql://" in info.store_location
    assert ":" not in info.store_location.split("@")[0].removeprefix("postgresql://")  # no password
    assert info.shard_count == int(SHARDS)
    assert [m.self for m in members.values()].count(True) == 1
    owned_by_b = set(next(m for m in members.values() if m.address == b.address).owned_shards)
    assert {m.address for m in members.values()} == {a.address, b.address}

    ready = json.loads((a.data_dir.parent / f"{a.data_dir.name}.ready").read_text())
    page = Http("http://" + ready["http_address"]).get("/").text
    for m in members.values():
        assert m.server_id in page
    assert "this server" in page and f"{SHARDS} shards" in page

    # A retry from a's inspector of a task in a shard that b owns: a's routing forwards it.
    root = next(
        f"cluster-dead-{n}" for n in range(1000) if shard_of(f"cluster-dead-{n}", int(SHARDS)) in owned_by_b
    )
    with sk.SyncClient.connect(b.address) as c:
        c.register_machine_type(ORDER)
        dead = dead_letter(c, root)  # leased and failed on the owner
    http = Http("http://" + ready["http_address"])
    csrf = http.csrf("/tasks")
    assert dead in http.get("/tasks").text
    assert http.post(f"/tasks/{dead}/retry", {"csrf": csrf}).status == 303
    assert f"task {dead} is pending again" in http.get("/tasks").text
    with sk.SyncClient.connect(b.address) as c:
        assert c.get_task(dead).status in ("pending", "leased")
