"""The server as generic gRPC tools see it: health, reflection."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.support import ServerProcess


def test_health_reports_serving(server: ServerProcess) -> None:
    assert server.health() == 1  # SERVING


def test_reflection_lists_and_describes_the_api(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {
            "statekeeper.v1.NodeService",
            "statekeeper.v1.MachineTypeService",
            "grpc.health.v1.Health",
        } <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        method = pool.FindServiceByName("statekeeper.v1.NodeService").methods_by_name["ApplyTransition"]
        assert method.input_type.fields_by_name["expected_transition_count"].number == 4
