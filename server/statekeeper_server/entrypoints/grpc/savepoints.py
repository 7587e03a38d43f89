"""SavepointService: runs, entity saves, savepoints and tree snapshots (features/savepoints/runs.py,
features/savepoints/tree_snapshots.py do the work)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from google.protobuf.message import Message

from statekeeper.v1 import savepoint_pb2 as pb
from statekeeper_server.core.engine import Engine, ResponseCodec
from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.savepoints import RunHeader, SavepointInfo, TreeSnapshotInfo
from statekeeper_server.domain.validation import check_page_size, check_request_id
from statekeeper_server.entrypoints.grpc import convert
from statekeeper_server.entrypoints.grpc.nodes import fingerprint
from statekeeper_server.features import listings
from statekeeper_server.features.savepoints.runs import EntitySave, Runs, RunSpec, SaveOutcome, SaveResult
from statekeeper_server.features.savepoints.tree_snapshots import RestoreOutcome, TreeSnapshots

Context = Any
M = TypeVar("M", bound=Message)

# Entities per LoadSavepoint message: chunks stay near this size (one state may exceed it).
LOAD_CHUNK_BYTES = 1024 * 1024

_CODECS: dict[type[Any], ResponseCodec[Any]] = {
    cls: ResponseCodec(lambda m: m.SerializeToString(), cls.FromString)
    for cls in (
        pb.CreateRunResponse,
        pb.DeleteRunResponse,
        pb.SaveEntityStatesResponse,
        pb.AckProcessedTimeResponse,
        pb.UpdateSavepointResponse,
        pb.CreateTreeSnapshotResponse,
        pb.RestoreTreeSnapshotResponse,
        pb.ForkTreeSnapshotResponse,
        pb.DeleteTreeSnapshotResponse,
    )
}


def _save_result(r: SaveResult) -> pb.EntitySaveResult:
    f = r.fill
    if f is None:
        return pb.EntitySaveResult(next_savepoint_ms=r.next_savepoint)
    return pb.EntitySaveResult(
        filled_count=f.count,
        first_filled_ms=f.first,
        last_filled_ms=f.last,
        next_savepoint_ms=r.next_savepoint,
    )


def _completed(o: SaveOutcome) -> list[pb.CompletedSavepoint]:
    return [pb.CompletedSavepoint(run_id=run_id, timestamp_ms=t) for run_id, t in o.completed]


def _savepoint_info(s: SavepointInfo) -> pb.SavepointInfo:
    return pb.SavepointInfo(
        timestamp_ms=s.timestamp,
        schema_version=s.schema_version,
        entity_count=s.entity_count,
        size_bytes=s.size_bytes,
        revision=s.revision,
        create_time_ms=s.create_time_ms,
    )


def _tree_snapshot(s: TreeSnapshotInfo) -> pb.TreeSnapshot:
    return pb.TreeSnapshot(
        root_id=s.root_id,
        name=s.name,
        revision=s.revision,
        create_revision=s.create_revision,
        create_time_ms=s.create_time_ms,
        node_count=s.node_count,
        task_count=s.task_count,
    )


class SavepointServicer:
    def __init__(self, engine: Engine, runs: Runs, snapshots: TreeSnapshots) -> None:
        self.engine = engine
        self.runs = runs
        self.snapshots = snapshots

    def _run(self, h: RunHeader) -> pb.Run:
        return pb.Run(
            run_id=h.run_id,
            start_ms=h.start_ms,
            schedule_ms=h.schedule_ms,
            schema_version=h.schema_version,
            keep_count=h.keep_count(self.runs.default_keep),
            entity_count=h.entity_count,
            latest_savepoint_ms=h.latest or 0,
            savepoint_count=len(h.savepoints),
            next_savepoint_ms=h.next_to_complete() or 0,
            create_revision=h.create_revision,
            create_time_ms=h.create_time_ms,
        )

    def _idempotency(
        self, method: str, request: Any, response_cls: type[M]
    ) -> tuple[str, bytes, ResponseCodec[M]]:
        request_id: str = request.request_id
        if request_id:
            check_request_id(request_id, self.engine.limits)
        return request_id, fingerprint(method, request) if request_id else b"", _CODECS[response_cls]

    # -- runs ----------------------------------------------------------------------------------

    async def CreateRun(self, request: pb.CreateRunRequest, context: Context) -> pb.CreateRunResponse:
        spec = RunSpec(
            request.run_id,
            request.start_ms,
            request.schedule_ms,
            tuple((e.id, e.initial_state) for e in request.entities),
            request.schema_version,
            request.keep_count,
        )
        rid, fp, codec = self._idempotency("CreateRun", request, pb.CreateRunResponse)
        return await self.runs.init_run(
            spec,
            lambda h, revision: pb.CreateRunResponse(run=self._run(h), revision=revision),
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=self._run(await self.runs.get_run(request.run_id)))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        limit = check_page_size(request.page_size, self.engine.limits)
        token = convert.decode_token(request.page_token)
        try:
            after = token.decode() if token is not None else None
        except UnicodeDecodeError:
            raise InvalidArgument(
                "INVALID_PAGE_TOKEN", "page_token is not a token this server issued", field="page_token"
            ) from None
        headers, more = await listings.runs(self.engine.reads.view(), after, limit)
        return pb.ListRunsResponse(
            runs=[self._run(h) for h in headers],
            next_page_token=convert.encode_token(more.encode()) if more is not None else "",
        )

    async def DeleteRun(self, request: pb.DeleteRunRequest, context: Context) -> pb.DeleteRunResponse:
        rid, fp, codec = self._idempotency("DeleteRun", request, pb.DeleteRunResponse)
        return await self.runs.delete_run(
            request.run_id,
            lambda n, revision: pb.DeleteRunResponse(revision=revision, deleted_savepoint_count=n),
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )

    async def _save(
        self, method: str, request: Any, saves: list[EntitySave], field: str, response_cls: Any
    ) -> Any:
        """SaveEntityStates and AckProcessedTime: the same commit, answered alike."""
        rid, fp, codec = self._idempotency(method, request, response_cls)

        def respond(o: SaveOutcome, revision: int) -> Any:
            return response_cls(
                revision=revision if any(r.fill for r in o.results) else 0,
                results=[_save_result(r) for r in o.results],
                completed=_completed(o),
            )

        return await self.runs.save(
            saves, respond, field=field, request_id=rid, fingerprint=fp, response_codec=codec
        )

    async def SaveEntityStates(
        self, request: pb.SaveEntityStatesRequest, context: Context
    ) -> pb.SaveEntityStatesResponse:
        saves = [EntitySave(s.run_id, s.entity_id, s.timestamp_ms, s.state) for s in request.saves]
        response: pb.SaveEntityStatesResponse = await self._save(
            "SaveEntityStates", request, saves, "saves", pb.SaveEntityStatesResponse
        )
        return response

    async def UpdateEntityStates(
        self, request: pb.UpdateEntityStatesRequest, context: Context
    ) -> pb.UpdateEntityStatesResponse:
        n = await self.runs.update([(u.run_id, u.entity_id, u.state) for u in request.updates])
        return pb.UpdateEntityStatesResponse(updated_count=n)

    async def AckProcessedTime(
        self, request: pb.AckProcessedTimeRequest, context: Context
    ) -> pb.AckProcessedTimeResponse:
        acks = [EntitySave(a.run_id, a.entity_id, a.processed_time_ms) for a in request.acks]
        response: pb.AckProcessedTimeResponse = await self._save(
            "AckProcessedTime", request, acks, "acks", pb.AckProcessedTimeResponse
        )
        return response

    async def LoadSavepoint(
        self, request: pb.LoadSavepointRequest, context: Context
    ) -> AsyncIterator[pb.LoadSavepointResponse]:
        loaded = await self.runs.load(request.run_id, request.timestamp_ms)
        message = pb.LoadSavepointResponse(
            run_id=loaded.run_id,
            timestamp_ms=loaded.info.timestamp,
            schema_version=loaded.info.schema_version,
            entity_count=len(loaded.entities),
            damaged_timestamps=loaded.damaged,
            fell_back=loaded.fell_back,
        )
        size = 0
        for entity_id, state in loaded.entities:
            if size and size + len(state) > LOAD_CHUNK_BYTES:
                yield message
                message, size = pb.LoadSavepointResponse(), 0
            message.entities.append(pb.EntityState(entity_id=entity_id, state=state))
            size += len(state) + len(entity_id)
        yield message

    async def ListSavepoints(
        self, request: pb.ListSavepointsRequest, context: Context
    ) -> pb.ListSavepointsResponse:
        header, infos = await self.runs.list_savepoints(request.run_id)
        return pb.ListSavepointsResponse(
            run=self._run(header), savepoints=[_savepoint_info(s) for s in infos]
        )

    async def UpdateSavepoint(
        self, request: pb.UpdateSavepointRequest, context: Context
    ) -> pb.UpdateSavepointResponse:
        rid, fp, codec = self._idempotency("UpdateSavepoint", request, pb.UpdateSavepointResponse)
        return await self.runs.rewrite_savepoint(
            request.run_id,
            request.timestamp_ms,
            request.schema_version,
            [(e.entity_id, e.state) for e in request.entities],
            lambda h, revision: pb.UpdateSavepointResponse(run=self._run(h), revision=revision),
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )

    # -- tree snapshots ------------------------------------------------------------------------

    async def CreateTreeSnapshot(
        self, request: pb.CreateTreeSnapshotRequest, context: Context
    ) -> pb.CreateTreeSnapshotResponse:
        rid, fp, codec = self._idempotency("CreateTreeSnapshot", request, pb.CreateTreeSnapshotResponse)
        return await self.engine.commit(
            lambda c: self.snapshots.create(c, request.root_id, request.name),
            lambda s, revision: pb.CreateTreeSnapshotResponse(snapshot=_tree_snapshot(s), revision=revision),
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )

    async def ListTreeSnapshots(
        self, request: pb.ListTreeSnapshotsRequest, context: Context
    ) -> pb.ListTreeSnapshotsResponse:
        return pb.ListTreeSnapshotsResponse(
            snapshots=[_tree_snapshot(s) for s in await self.snapshots.list_snapshots(request.root_id)]
        )

    async def RestoreTreeSnapshot(
        self, request: pb.RestoreTreeSnapshotRequest, context: Context
    ) -> pb.RestoreTreeSnapshotResponse:
        rid, fp, codec = self._idempotency("RestoreTreeSnapshot", request, pb.RestoreTreeSnapshotResponse)

        def respond(o: RestoreOutcome, revision: int) -> pb.RestoreTreeSnapshotResponse:
            return pb.RestoreTreeSnapshotResponse(
                root=convert.snapshot(o.root),
                revision=revision,
                node_count=o.node_count,
                deleted_count=o.deleted_count,
                task_count=o.task_count,
            )

        return await self.engine.commit(
            lambda c: self.snapshots.restore(c, request.root_id, request.name),
            respond,
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )

    async def ForkTreeSnapshot(
        self, request: pb.ForkTreeSnapshotRequest, context: Context
    ) -> pb.ForkTreeSnapshotResponse:
        rid, fp, codec = self._idempotency("ForkTreeSnapshot", request, pb.ForkTreeSnapshotResponse)

        def respond(o: RestoreOutcome, revision: int) -> pb.ForkTreeSnapshotResponse:
            return pb.ForkTreeSnapshotResponse(
                root=convert.snapshot(o.root),
                revision=revision,
                node_count=o.node_count,
                task_count=o.task_count,
            )

        shards = self.engine.shards
        items = None
        if shards.of(request.root_id) != shards.of(request.new_root_id):
            # Cluster mode: the snapshot lives in another shard than the new tree.
            items = await self.snapshots.read_items(request.root_id, request.name)
        return await self.engine.commit(
            lambda c: self.snapshots.fork(c, request.root_id, request.name, request.new_root_id, items),
            respond,
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )

    async def DeleteTreeSnapshot(
        self, request: pb.DeleteTreeSnapshotRequest, context: Context
    ) -> pb.DeleteTreeSnapshotResponse:
        rid, fp, codec = self._idempotency("DeleteTreeSnapshot", request, pb.DeleteTreeSnapshotResponse)
        return await self.engine.commit(
            lambda c: self.snapshots.delete(c, request.root_id, request.name),
            lambda _, revision: pb.DeleteTreeSnapshotResponse(revision=revision),
            request_id=rid,
            fingerprint=fp,
            response_codec=codec,
        )
