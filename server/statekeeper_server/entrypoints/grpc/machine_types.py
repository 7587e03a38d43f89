"""MachineTypeService."""

from __future__ import annotations

from typing import Any

from statekeeper.v1 import machine_type_pb2 as pb
from statekeeper_server.core.engine import Engine
from statekeeper_server.domain import diagram
from statekeeper_server.domain.errors import InvalidArgument, NotFound
from statekeeper_server.domain.model import MachineType
from statekeeper_server.domain.transaction import Transaction
from statekeeper_server.domain.validation import check_name, check_page_size
from statekeeper_server.entrypoints.grpc import convert

Context = Any


class MachineTypeServicer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def RegisterMachineType(
        self, request: pb.RegisterMachineTypeRequest, context: Context
    ) -> pb.RegisterMachineTypeResponse:
        if not request.HasField("machine_type"):
            raise InvalidArgument("FIELD_REQUIRED", "machine_type must be set", field="machine_type")
        definition = convert.machine_type(request.machine_type)

        def body(txn: Transaction) -> tuple[MachineType, bool]:
            return txn.register_type(definition)

        def respond(result: tuple[MachineType, bool], revision: int) -> pb.RegisterMachineTypeResponse:
            mt, created = result
            return pb.RegisterMachineTypeResponse(
                machine_type=convert.machine_type_pb(mt), created=created, revision=revision if created else 0
            )

        return await self.engine.submit(body, respond)

    def _get(self, name: str, version: int) -> MachineType:
        check_name(name, "name", self.engine.limits)
        mt = self.engine.catalog.get(name, version)
        if mt is None:
            what = f"machine type {name!r}" + (f" version {version}" if version else "")
            raise NotFound(
                "MACHINE_TYPE_NOT_FOUND", f"{what} is not registered", machine_type=name, version=version
            )
        return mt

    async def GetMachineType(
        self, request: pb.GetMachineTypeRequest, context: Context
    ) -> pb.GetMachineTypeResponse:
        return pb.GetMachineTypeResponse(
            machine_type=convert.machine_type_pb(self._get(request.name, request.version))
        )

    async def ListMachineTypes(
        self, request: pb.ListMachineTypesRequest, context: Context
    ) -> pb.ListMachineTypesResponse:
        limit = check_page_size(request.page_size, self.engine.limits)
        after = None
        token = convert.decode_token(request.page_token)
        if token is not None:
            name, _, version = token.decode(errors="replace").rpartition("\x00")
            if not version.isdigit():
                raise InvalidArgument(
                    "INVALID_PAGE_TOKEN", "page_token is not a token this server issued", field="page_token"
                )
            after = (name, int(version))
        types = self.engine.catalog.list(after, limit + 1, request.all_versions)
        more = len(types) > limit
        types = types[:limit]
        next_token = convert.encode_token(f"{types[-1].name}\x00{types[-1].version}".encode()) if more else ""
        return pb.ListMachineTypesResponse(
            machine_types=[convert.machine_type_pb(mt) for mt in types], next_page_token=next_token
        )

    async def RenderMachineTypeDiagram(
        self, request: pb.RenderMachineTypeDiagramRequest, context: Context
    ) -> pb.RenderMachineTypeDiagramResponse:
        mt = self._get(request.name, request.version)
        if request.format == pb.DIAGRAM_FORMAT_DOT:
            return pb.RenderMachineTypeDiagramResponse(diagram=diagram.dot(mt), format=pb.DIAGRAM_FORMAT_DOT)
        if request.format in (pb.DIAGRAM_FORMAT_UNSPECIFIED, pb.DIAGRAM_FORMAT_MERMAID):
            return pb.RenderMachineTypeDiagramResponse(
                diagram=diagram.mermaid(mt), format=pb.DIAGRAM_FORMAT_MERMAID
            )
        raise InvalidArgument(
            "FIELD_INVALID", f"format {request.format} is not a known DiagramFormat", field="format"
        )
