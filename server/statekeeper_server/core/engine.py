"""The engine: applies transactions in memory, hands them to the committer, answers once durable.

Everything here runs on the server's event loop. A transaction is applied without awaiting, so
transactions never interleave: each sees the effects of all earlier ones, and concurrent batches
on overlapping trees are serialised by construction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from statekeeper_server.core.catalog import TypeCatalog
from statekeeper_server.core.committer import Committer, Mutation, PendingCommit
from statekeeper_server.core.pending import PendingOverlay
from statekeeper_server.core.views import ReadView, WriteView
from statekeeper_server.domain.errors import DomainError, InvalidArgument, Unavailable
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.model import Event, EventKind, MachineType, NodeAddress
from statekeeper_server.domain.transaction import Transaction
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, Store
from statekeeper_server.storage.indexes import node_index_mutations, task_index_mutations

log = logging.getLogger("statekeeper.engine")

R = TypeVar("R")
M = TypeVar("M")


class ResponseCodec(Generic[M]):
    """How the service turns a response into bytes and back, so a retried request_id can be
    answered with the first outcome without the engine knowing the wire format."""

    def __init__(self, serialize: Callable[[M], bytes], parse: Callable[[bytes], M]) -> None:
        self.serialize = serialize
        self.parse = parse


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Engine:
    def __init__(
        self,
        store: Store,
        limits: Limits,
        *,
        fsync: bool = True,
        request_ttl_ms: int = 24 * 3600 * 1000,
        failpoints: dict[str, str] | None = None,
        on_fatal: Callable[[BaseException], None] = lambda e: None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.request_ttl_ms = request_ttl_ms
        self.catalog = TypeCatalog(store)
        self.pending = PendingOverlay()
        self.write_view = WriteView(store, self.pending, self.catalog)
        self.reads = ReadView(store, self.catalog)
        raw = store.get(Keyspace.META, keys.META_REVISION)
        durable = keys.read_u64(raw) if raw is not None else 0
        self.next_revision = durable + 1
        self._pending_requests: dict[str, tuple[PendingCommit, bytes, bytes]] = {}
        # Called with each durable group, in revision order (watchers, executors, metrics).
        self.durable_listeners: list[Callable[[list[PendingCommit]], None]] = []
        self.committer = Committer(
            store,
            fsync=fsync,
            durable_revision=durable,
            on_durable=self._on_durable,
            on_reset=self._on_reset,
            on_fatal=on_fatal,
            failpoints=failpoints,
        )
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def durable_revision(self) -> int:
        return self.committer.durable_revision

    async def start(self, sweep_interval_s: float = 60.0) -> None:
        self.committer.start()
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_loop(sweep_interval_s), name="sweeper"
        )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.committer.stop()

    # -- the write path ----------------------------------------------------------------------

    async def submit(
        self,
        body: Callable[[Transaction], R],
        respond: Callable[[R, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        """Run body in a new node transaction, commit it durably, return respond(result, revision).

        With a request_id, a retry returns the first outcome (kept request_ttl_ms) and applies
        nothing twice; the same id with a different request is refused.
        """
        return await self.commit(
            lambda c: body(c.transaction()),
            respond,
            request_id=request_id,
            fingerprint=fingerprint,
            response_codec=response_codec,
        )

    async def commit(
        self,
        build: Callable[[Commit], R],
        respond: Callable[[R, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        """The general write: build(commit) reads and writes through a Commit (nodes via
        commit.transaction(), any keyspace via commit.get/put/delete, events via commit.event);
        if it raises, nothing changes. A commit without events writes nothing (a no-op)."""
        if request_id and response_codec is not None:
            replay = await self._replay(request_id, fingerprint)
            if replay is not None:
                return response_codec.parse(replay)
        if self.committer.failed is not None:
            raise Unavailable(
                "STORE_FAILED", "the store failed and the server is stopping; retry on a healthy server"
            )
        revision = self.next_revision
        change = Commit(self, revision, now_ms())
        try:
            result = build(change)
        except DomainError:
            # The refusal may rest on state that is not durable yet: answer only once it is.
            await self.committer.wait_durable(revision - 1)
            raise
        if not change.events:
            await self.committer.wait_durable(revision - 1)
            return respond(result, self.durable_revision)
        self.next_revision = revision + 1
        pending_commit = change.seal()
        response = respond(result, revision)
        if request_id and response_codec is not None:
            response_bytes = response_codec.serialize(response)
            expires = change.now_ms + self.request_ttl_ms
            pending_commit.mutations.append(
                (
                    Keyspace.REQUESTS,
                    request_id.encode(),
                    codec.encode_request(fingerprint, response_bytes, expires, revision),
                )
            )
            pending_commit.mutations.append(
                (Keyspace.REQUEST_EXPIRY, keys.expiry_key(expires, request_id), b"")
            )
            self._pending_requests[request_id] = (pending_commit, fingerprint, response_bytes)
        self.committer.enqueue(pending_commit)
        try:
            await asyncio.shield(pending_commit.future)
        finally:
            if request_id:
                entry = self._pending_requests.get(request_id)
                if entry is not None and entry[0] is pending_commit:
                    del self._pending_requests[request_id]
        return response

    async def durable_barrier(self) -> None:
        """Wait until nothing in the store awaits its fsync. Call before any read whose
        result leaves the server (an RPC answer, a task handed to a worker)."""
        await self.committer.durable_barrier()

    async def write_unversioned(self, mutations: list[Mutation]) -> None:
        """Durably write bookkeeping that is not a change of state (e.g. a consumer's
        acknowledgements): no revision, no event, same group commit and fsync."""
        if self.committer.failed is not None:
            raise Unavailable("STORE_FAILED", "the store failed and the server is stopping")
        commit = PendingCommit(0, mutations, [], [])
        self.committer.enqueue(commit)
        await asyncio.shield(commit.future)

    async def _replay(self, request_id: str, fingerprint: bytes) -> bytes | None:
        pending = self._pending_requests.get(request_id)
        if pending is not None:
            commit, pending_fp, response = pending
            self._check_fingerprint(request_id, pending_fp, fingerprint)
            await asyncio.shield(commit.future)
            return response
        raw = self.store.get(Keyspace.REQUESTS, request_id.encode())
        if raw is None:
            return None
        stored_fp, response, expires, _ = codec.decode_request(raw)
        if expires < now_ms():
            return None
        self._check_fingerprint(request_id, stored_fp, fingerprint)
        return response

    @staticmethod
    def _check_fingerprint(request_id: str, stored: bytes, given: bytes) -> None:
        if stored != given:
            raise InvalidArgument(
                "REQUEST_ID_REUSED",
                f"request_id {request_id!r} was already used for a different request; use a new id",
                field="request_id",
            )

    def _on_durable(self, group: list[PendingCommit]) -> None:
        pending = self.pending
        last = self.committer.durable_revision
        for commit in group:
            pending.release(
                commit.node_keys, ((mt.name, mt.version) for mt in commit.new_types), commit.raw_keys, last
            )
            for mt in commit.new_types:
                self.catalog.add(mt)
        for listener in self.durable_listeners:
            listener(group)

    def _on_reset(self) -> None:
        self.pending.clear()
        self._pending_requests.clear()
        self.next_revision = self.committer.durable_revision + 1

    # -- housekeeping ------------------------------------------------------------------------

    async def _sweep_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.sweep_expired_requests()
            except Exception:
                log.exception("sweeping expired request ids failed; will retry")

    def sweep_expired_requests(self, limit: int = 10_000) -> int:
        """Delete request-id records past their expiry. Runs on the loop, so it never interleaves
        with a commit; a record re-used since (new expiry) is left alone."""
        now = now_ms()
        batch = self.store.new_batch()
        swept = 0
        for key, _ in self.store.scan(Keyspace.REQUEST_EXPIRY, b"", keys.u64(now + 1)):
            expires, request_id = keys.read_u64(key[:8]), key[8:]
            raw = self.store.get(Keyspace.REQUESTS, request_id)
            if raw is not None and codec.decode_request(raw)[2] == expires:
                batch.delete(Keyspace.REQUESTS, request_id)
            batch.delete(Keyspace.REQUEST_EXPIRY, key)
            swept += 1
            if swept >= limit:
                break
        if swept:
            self.store.write(batch, sync=False)
        return swept


class Commit:
    """One commit being built: a revision, a clock reading, and the changes made so far.

    Reads see durable state plus every earlier pending commit (never client-visible). Writes
    are buffered here and only reach the store through the committer.
    """

    def __init__(self, engine: Engine, revision: int, now: int) -> None:
        self.engine = engine
        self.revision = revision
        self.now_ms = now
        self.events: list[Event] = []
        self.mutations: list[Mutation] = []
        self._local: dict[tuple[Keyspace, bytes], bytes | None] = {}
        self._txn: Transaction | None = None

    def transaction(self) -> Transaction:
        """The node transaction of this commit (created on first use; shares its events)."""
        if self._txn is None:
            self._txn = Transaction(
                self.engine.write_view, self.revision, self.now_ms, self.engine.limits, self.events
            )
        return self._txn

    def get(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        local = self._local
        if (keyspace, key) in local:
            return local[(keyspace, key)]
        entry = self.engine.pending.raw.get((keyspace, key))
        if entry is not None:
            return entry[0]
        return self.engine.store.get(keyspace, key)

    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None:
        self._local[(keyspace, key)] = value

    def delete(self, keyspace: Keyspace, key: bytes) -> None:
        self._local[(keyspace, key)] = None

    def event(self, kind: EventKind, address: NodeAddress | None = None, **fields: Any) -> Event:
        event = Event(self.revision, len(self.events), kind, self.now_ms, address, **fields)
        self.events.append(event)
        return event

    def seal(self) -> PendingCommit:
        """Encode everything into mutations, publish them to the pending overlay."""
        engine, revision = self.engine, self.revision
        mutations = self.mutations
        node_keys: list[bytes] = []
        new_types: list[MachineType] = []
        txn = self._txn
        if txn is not None:
            before = txn.before
            view = engine.write_view
            for address, record in txn.nodes.items():
                key = keys.node_key(address)
                node_keys.append(key)
                mutations.append(
                    (Keyspace.NODES, key, codec.encode_node(record) if record is not None else None)
                )
                old = before[address] if address in before else view.get_node(address)
                node_index_mutations(mutations, key, old, record)
            for task in txn.tasks:
                tkey = keys.task_key(task.task_id)
                assert tkey is not None
                mutations.append((Keyspace.TASKS, tkey, codec.encode_task(task)))
                mutations.extend(task_index_mutations(task))
            for mt in txn.types:
                mutations.append(
                    (Keyspace.TYPES, keys.type_key(mt.name, mt.version), codec.encode_machine_type(mt))
                )
            new_types = list(txn.types)
            engine.pending.put_nodes(zip(node_keys, txn.nodes.values(), strict=True), revision)
            for mt in new_types:
                engine.pending.types[(mt.name, mt.version)] = mt
        raw_keys = list(self._local)
        raw = engine.pending.raw
        for (keyspace, key), value in self._local.items():
            mutations.append((keyspace, key, value))
            raw[(keyspace, key)] = (value, revision)
        for event in self.events:
            mutations.append(
                (Keyspace.EVENTS, keys.seq_key(revision, event.index), codec.encode_event(event))
            )
        return PendingCommit(revision, mutations, node_keys, new_types, raw_keys, self.events)
