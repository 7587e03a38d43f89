"""The engine: the one way to write. A write is a build function run by the committer (in
order, on the event loop, so transactions never interleave and each sees every earlier one),
sealed into key writes, and answered once its group is durable.

Reads that a client sees go through `reads` (ReadView): the store's durable view only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from statekeeper_server.core.catalog import TypeCatalog
from statekeeper_server.core.committer import Committer, Intent, Mutation, PendingCommit, store_failed
from statekeeper_server.core.pending import PendingOverlay
from statekeeper_server.core.requests import RequestLog
from statekeeper_server.core.requests import now_ms as now_ms  # the commits' clock, for features
from statekeeper_server.core.shards import ShardMap, current_shard
from statekeeper_server.core.views import ReadView, WriteView
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


def _unset(revision: int) -> tuple[PendingCommit | None, Any]:
    raise AssertionError("the intent's build is set before it is enqueued")


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
        shards: ShardMap | None = None,
        event_codec: codec.EventCodec = codec.MSGPACK_EVENTS,
    ) -> None:
        self.store = store
        self.event_codec = event_codec
        self.shards = shards or ShardMap()
        self.limits = limits
        self.catalog = TypeCatalog(store)
        # What the group being built has written so far (cleared when the next group starts:
        # by then the group is in the store).
        self.pending = PendingOverlay()
        self.write_view = WriteView(store, self.pending, self.catalog)
        self.reads = ReadView(store, self.catalog)
        raw = store.get(Keyspace.META, keys.META_REVISION)
        durable = keys.read_u64(raw) if raw is not None else 0
        # Called with each durable group, in revision order (watchers, executors, metrics).
        self.durable_listeners: list[Callable[[list[PendingCommit]], None]] = []
        self.committer = Committer(
            store,
            fsync=fsync,
            durable_revision=durable,
            on_durable=self._on_durable,
            on_group_start=self.pending.clear,
            on_fatal=on_fatal,
            failpoints=failpoints,
            is_owned=self.shards.is_owned,
        )
        self.requests = RequestLog(store, self.pending, request_ttl_ms, self.write_unversioned)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def durable_revision(self) -> int:
        return self.committer.durable_revision

    @property
    def next_revision(self) -> int:
        return self.committer.next_revision

    async def start(self, sweep_interval_s: float = 1.0, sweep: bool = True) -> None:
        """sweep: delete expired request ids (one server; in cluster mode each server sweeps
        the shards it owns, fenced: cluster/housekeeping.py)."""
        self.committer.start()
        if sweep:
            self._sweeper = asyncio.get_running_loop().create_task(
                self.requests.run(sweep_interval_s), name="request-sweeper"
            )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.committer.stop()
        await self.requests.close()

    # -- the write path ----------------------------------------------------------------------

    async def submit(
        self,
        body: Callable[[Transaction], R],
        respond: Callable[[R, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
        weight: int = 1,
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
            weight=weight,
        )

    async def commit(
        self,
        build: Callable[[Commit], R],
        respond: Callable[[R, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
        weight: int = 1,
        shard: int | None = None,
    ) -> M:
        """The general write: build(commit) reads and writes through a Commit (nodes via
        commit.transaction(), any keyspace via commit.get/put/delete, events via commit.event);
        if it raises, nothing changes. A commit without events writes nothing (a no-op).

        build may run more than once (a build that read what the store did not hold in memory
        runs again once it is loaded; a cluster store builds a group again from another
        revision): whatever it does besides its Commit must give the same result when repeated.

        The write is queued for the committer and stays queued whatever happens to the caller
        (a deadline, a disconnect): a retry with the same request_id then finds its outcome.
        `shard`: the shard whose data it reads and writes (default: the call's current_shard).
        """
        idempotent = bool(request_id) and response_codec is not None
        intent = Intent(
            _unset, versioned=True, weight=weight, shard=current_shard.get() if shard is None else shard
        )

        def run(revision: int) -> tuple[PendingCommit | None, M]:
            if idempotent:
                assert response_codec is not None
                replay = self.requests.replay(request_id, fingerprint)
                if replay is not None:
                    intent.replayed = True
                    return None, response_codec.parse(replay)
            change = Commit(self, revision, now_ms())
            result = build(change)
            if not change.events:
                return None, respond(result, revision - 1)
            sealed = change.seal()
            response = respond(result, revision)
            if idempotent:
                assert response_codec is not None
                self.requests.record(
                    sealed, change.now_ms, request_id, fingerprint, response_codec.serialize(response)
                )
            return sealed, response

        intent.build = run
        self.committer.enqueue(intent)
        # Not shielded: a caller that goes away cancels only its wait on the future (the
        # committer answers nobody then); the intent stays queued and commits all the same.
        answer: M = await intent.future
        return answer

    def admit(self) -> None:
        """Refuse a call once the store has failed (fail-stop: nothing more is served)."""
        if self.committer.failed is not None:
            raise store_failed()

    async def durable_barrier(self) -> None:
        """Awaited before every call (the handler): refuses it once the store has failed."""
        self.admit()

    async def write_unversioned(self, mutations: list[Mutation], shard: int | None = None) -> None:
        """Durably write bookkeeping that is not a change of state (e.g. a consumer's
        acknowledgements): no revision, no event, same group commit and fsync."""
        await asyncio.shield(self.enqueue_unversioned(mutations, shard))

    def enqueue_unversioned(
        self, mutations: list[Mutation], shard: int | None = None
    ) -> asyncio.Future[None]:
        """write_unversioned, queued at once (in call order with every other write); the future
        resolves once the write is durable."""

        def run(revision: int) -> tuple[PendingCommit | None, None]:
            raw = self.pending.writes()
            for keyspace, key, value in mutations:
                raw[(keyspace, key)] = (value, 0)
            return PendingCommit(0, list(mutations), [], []), None

        intent = Intent(run, versioned=False, shard=current_shard.get() if shard is None else shard)
        self.committer.enqueue(intent)
        future: asyncio.Future[None] = intent.future
        return future

    async def settled(self) -> None:
        """Return once every write queued so far is answered (and so durable or refused)."""
        await self.committer.settled()

    def _on_durable(self, group: list[PendingCommit]) -> None:
        for commit in group:
            for mt in commit.new_types:
                self.catalog.add(mt)
        for listener in self.durable_listeners:
            try:
                listener(group)
            except Exception:
                log.exception("a durable listener failed (the commit is durable)")


class Commit:
    """One commit being built (by the committer): a revision, a clock reading, and the changes
    made so far.

    Reads see the store's live state (every group written so far, durable or being synced)
    plus the earlier commits of the group being built; none of it leaves the server before it
    is durable. Writes are buffered here and reach the store only through the committer.
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
        entry = self.engine.pending.writes().get((keyspace, key))
        if entry is not None:
            return entry[0]
        return self.engine.store.get(keyspace, key)

    def scan(self, keyspace: Keyspace, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        """The pairs with start <= key < end, in key order, as this commit sees them (the store,
        the group's earlier commits, this commit's own writes)."""
        merged: dict[bytes, bytes | None] = dict(self.engine.store.scan(keyspace, start, end))
        for (ks, key), (value, _) in self.engine.pending.writes().items():
            if ks is keyspace and start <= key < end:
                merged[key] = value
        for (ks, key), value in self._local.items():
            if ks is keyspace and start <= key < end:
                merged[key] = value
        return sorted((k, v) for k, v in merged.items() if v is not None)

    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None:
        self._local[(keyspace, key)] = value

    def delete(self, keyspace: Keyspace, key: bytes) -> None:
        self._local[(keyspace, key)] = None

    def event(self, kind: EventKind, address: NodeAddress | None = None, **fields: Any) -> Event:
        event = Event(self.revision, len(self.events), kind, self.now_ms, address, **fields)
        self.events.append(event)
        return event

    def seal(self) -> PendingCommit:
        """Encode everything into mutations, publish them to the group's overlay."""
        engine, revision = self.engine, self.revision
        mutations = self.mutations
        append = mutations.append
        node_keys: list[bytes] = []
        new_types: list[MachineType] = []
        queues_tasks = False
        txn = self._txn
        if txn is not None:
            before = txn.before
            view = engine.write_view
            node_key, encode_node = keys.node_key, codec.encode_node
            nodes_ks = Keyspace.NODES
            for address, record in txn.nodes.items():
                key = node_key(address)
                node_keys.append(key)
                old = before[address] if address in before else view.get_node(address)
                append((nodes_ks, key, encode_node(record) if record is not None else None))
                node_index_mutations(mutations, key, old, record)
            for task in txn.tasks:
                tkey = keys.task_key(task.task_id)
                assert tkey is not None
                append((Keyspace.TASKS, tkey, codec.encode_task(task)))
                mutations.extend(task_index_mutations(task))
                queues_tasks = True
            for mt in txn.types:
                append((Keyspace.TYPES, keys.type_key(mt.name, mt.version), codec.encode_machine_type(mt)))
            new_types = list(txn.types)
            engine.pending.put_nodes(zip(node_keys, txn.nodes.values(), strict=True), revision)
            for mt in new_types:
                engine.pending.types[(mt.name, mt.version)] = mt
        raw_keys = list(self._local)
        for (keyspace, key), value in self._local.items():
            append((keyspace, key, value))
            if keyspace is Keyspace.TIMERS or keyspace is Keyspace.OUTBOUND_QUEUE:
                queues_tasks = True
        encode, seq_key, events_ks = engine.event_codec.encode, keys.seq_key, Keyspace.EVENTS
        rows: list[tuple[bytes, bytes]] = []
        for event in self.events:
            event.encoded = encoded = encode(event)
            row = (seq_key(revision, event.index), encoded)
            rows.append(row)
            append((events_ks, *row))
        # Every key written is visible to the later commits of the group (get and scan).
        engine.pending.add_sealed(mutations, revision)
        return PendingCommit(
            revision, mutations, node_keys, new_types, raw_keys, self.events, 0, rows, queues_tasks
        )
