"""AdminService: online backups of the whole store, and the server's facts (GetServerInfo).

A backup is a RocksDB checkpoint: a consistent copy of every column family (files hard-linked
where the file system allows). It is taken on a thread, so the server goes on answering (a
checkpoint flushes the memtables first: up to seconds). Commits go on meanwhile: the copy holds
every group written when RocksDB took it, which can include the group whose fsync is still
under way. So the revision reported is the one read from the copy itself, and the call answers
only once that revision is durable in the live store too: the backup holds every write
acknowledged before the call, and nothing that the server could still lose. Restore: copy the
backup folder and start a server with --data-dir pointing at the copy.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statekeeper.v1 import admin_pb2 as pb
from statekeeper_server import __version__
from statekeeper_server.core.engine import Engine, now_ms
from statekeeper_server.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from statekeeper_server.storage.base import BackupNotSupported

Context = Any
log = logging.getLogger("statekeeper.admin")

DURABLE_WAIT_S = 30.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_MAX_NAME = 128


@dataclass(frozen=True, slots=True)
class ClusterMember:
    server_id: str
    address: str
    is_self: bool
    owned_shards: tuple[int, ...] = ()


@dataclass
class ServerFacts:
    """What GetServerInfo reports beside the engine's revisions (the composition root fills it)."""

    store: str = "rocksdb"
    store_location: str = ""
    fsync: bool = True
    start_time_ms: int = field(default_factory=now_ms)
    oldest_event_revision: Callable[[], int] = lambda: 1
    # Cluster mode: the shard count and the servers with their shards. The embedded store has
    # one server and no shards, so 0 and an empty list.
    shard_count: Callable[[], int] = lambda: 0
    cluster_members: Callable[[], list[ClusterMember]] = list
    # The newest durable revision of the whole store as this server has read it: in cluster
    # mode other servers commit too (the event tail follows them), so the engine's own
    # revisions alone would lag behind.
    store_revision: Callable[[], int] = lambda: 0


class AdminServicer:
    def __init__(self, engine: Engine, backup_dir: str, facts: ServerFacts | None = None) -> None:
        self.engine = engine
        self.backup_dir = backup_dir
        self.facts = facts or ServerFacts()
        self._running: set[str] = set()  # names of backups being taken

    async def _durable(self, revision: int, path: Path) -> None:
        """Wait until `revision` (held by the copy) is durable in the live store: its fsync was
        under way when the copy was taken. If that fsync fails the server stops (fail-stop) and
        the copy, which may hold a write no caller was told of, is removed."""
        deadline = time.monotonic() + DURABLE_WAIT_S
        while self.engine.durable_revision < revision:
            failed = self.engine.committer.failed
            if failed is not None or time.monotonic() > deadline:
                await asyncio.to_thread(shutil.rmtree, path, True)
                why = f"the store failed: {failed}" if failed else f"revision {revision} not durable in time"
                raise Unavailable("BACKUP_FAILED", f"the backup to {str(path)!r} failed: {why}")
            await asyncio.sleep(0.001)

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        f, engine = self.facts, self.engine
        store_revision = f.store_revision()
        return pb.GetServerInfoResponse(
            version=__version__,
            revision=max(engine.next_revision - 1, store_revision),
            durable_revision=max(engine.durable_revision, store_revision),
            store=f.store,
            store_location=f.store_location,
            fsync=f.fsync,
            start_time_ms=f.start_time_ms,
            server_time_ms=now_ms(),
            oldest_event_revision=f.oldest_event_revision(),
            shard_count=f.shard_count(),
            cluster_members=[
                pb.ClusterMember(
                    server_id=m.server_id, address=m.address, self=m.is_self, owned_shards=m.owned_shards
                )
                for m in f.cluster_members()
            ],
        )

    async def CreateBackup(
        self, request: pb.CreateBackupRequest, context: Context
    ) -> pb.CreateBackupResponse:
        name = request.name
        if name and (len(name) > _MAX_NAME or not _NAME.fullmatch(name)):
            raise InvalidArgument(
                "FIELD_INVALID",
                f"name must be 1 to {_MAX_NAME} letters, digits, '_', '-' or '.', starting with a letter or digit",
                field="name",
            )
        created = now_ms()
        name = name or f"backup-{self.engine.durable_revision}-{created}"
        root = Path(self.backup_dir).absolute()
        path = root / name
        if path.exists() or name in self._running:
            raise AlreadyExists("BACKUP_EXISTS", f"the backup {str(path)!r} exists already", name=name)
        if not getattr(self.engine.store, "supports_backup", True):
            # Before anything is created: the cluster store's backups are PostgreSQL's own.
            try:
                self.engine.store.checkpoint(str(path))
            except BackupNotSupported as e:
                raise FailedPrecondition("BACKUP_NOT_SUPPORTED", str(e)) from e
        self._running.add(name)
        try:
            try:
                root.mkdir(parents=True, exist_ok=True)
                revision = await asyncio.to_thread(self.engine.store.checkpoint, str(path))
            except Exception as e:
                log.error("backup to %s failed: %s", path, e)
                raise Unavailable("BACKUP_FAILED", f"the backup to {str(path)!r} failed: {e}") from e
            await self._durable(revision, path)
            size = await asyncio.to_thread(
                lambda: sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            )
        finally:
            self._running.discard(name)
        log.info("backup %s written to %s (revision %d, %d bytes)", name, path, revision, size)
        return pb.CreateBackupResponse(
            name=name, path=str(path), revision=revision, size_bytes=size, create_time_ms=created
        )
