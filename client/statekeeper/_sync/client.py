"""Client: the async statekeeper client. Its sync twin, SyncClient, is generated from this file
by scripts/gen_sync_client.py (unasync); edit here, then regenerate."""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import time
import warnings
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import grpc

from statekeeper import _convert, _pipeline
from statekeeper._batch import Batch
from statekeeper._channels import (
    DEFAULT_OPTIONS,
    SyncChannel,
    sync_channel,
    sync_probe,
    sync_sleep,
    sync_speaks_tls,
)
from statekeeper._errors import (
    ConnectInfo,
    ConnectionFailedError,
    NotFoundError,
    StatekeeperError,
    connection_error,
    from_rpc_error,
    is_transient,
)
from statekeeper._tls import PemSource, tls_credentials
from statekeeper._types import (
    Backup,
    BatchResult,
    CompleteResult,
    Consumer,
    Delivery,
    EntityAck,
    EntitySave,
    EntityUpdate,
    Event,
    FailResult,
    HeartbeatResult,
    LeasedTask,
    MachineType,
    Node,
    RefLike,
    Registration,
    Run,
    SaveOutcome,
    Savepoint,
    SavepointInfo,
    SaveResult,
    ServerInfo,
    State,
    Task,
    TaskInput,
    TransitionResult,
    TreeRestore,
    TreeSnapshot,
    Upgrade,
    as_ref,
    as_root_id,
)
from statekeeper.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    event_pb2,
    event_pb2_grpc,
    machine_type_pb2,
    machine_type_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    savepoint_pb2,
    savepoint_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
)

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
RETRY_BACKOFF_S = (0.2, 2.0)
"""First and largest pause between attempts; each pause doubles, with jitter (uniform in [d/2, d])."""

# Requests a retry cannot apply twice, whatever their content: reads, and writes whose repetition
# the server recognises (identical registration, acks, a lease token's first outcome, a state set).
_READ_PREFIXES = ("Get", "List", "Walk", "Render", "Load")
_IDEMPOTENT = frozenset(
    {
        "RegisterMachineTypeRequest",
        "AckRequest",
        "HeartbeatTaskRequest",
        "CompleteTaskRequest",
        "UpdateEntityStatesRequest",
    }
)


def _safe_to_retry(request: Any) -> bool:
    name = type(request).__name__
    return name.startswith(_READ_PREFIXES) or name in _IDEMPOTENT or bool(getattr(request, "request_id", ""))


def _backoff(attempt: int) -> float:
    first, largest = RETRY_BACKOFF_S
    pause = min(largest, first * 2**attempt)
    return random.uniform(pause / 2, pause)


_DIAGRAM_FORMATS = {
    "mermaid": machine_type_pb2.DIAGRAM_FORMAT_MERMAID,
    "dot": machine_type_pb2.DIAGRAM_FORMAT_DOT,
}


_log = logging.getLogger("statekeeper")


class SyncClient:
    """A connection to a statekeeper server.

    Use `await Client.connect("127.0.0.1:50051")` (optionally as `async with`). Every call has a
    deadline (`timeout`, seconds) and raises a subclass of StatekeeperError carrying the gRPC
    code, the server's reason and its metadata. With `pipeline=True`, writes share one
    ExecuteStream (see connect).
    """

    def __init__(
        self,
        channel: SyncChannel,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
        retries: int = DEFAULT_RETRIES,
        auto_request_ids: bool = False,
        connection: ConnectInfo | None = None,
        pipeline: bool = False,
    ):
        self.channel = channel
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.retries = retries
        self.auto_request_ids = auto_request_ids
        self.connection = connection
        self._types = machine_type_pb2_grpc.MachineTypeServiceStub(channel)
        self._nodes = node_pb2_grpc.NodeServiceStub(channel)
        self._tasks = task_pb2_grpc.TaskServiceStub(channel)
        self._events = event_pb2_grpc.EventServiceStub(channel)
        self._savepoints = savepoint_pb2_grpc.SavepointServiceStub(channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)
        self._pipeline = _pipeline.SyncPipeline(channel, self.metadata, self._error) if pipeline else None

    @classmethod
    def connect(
        cls,
        target: str = "127.0.0.1:50051",
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        wait_ready: float | None = 10.0,
        wait_for_server: bool = False,
        retries: int = DEFAULT_RETRIES,
        auto_request_ids: bool = False,
        pipeline: bool = False,
        tls: bool = False,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        tls_server_name: str | None = None,
    ) -> SyncClient:
        """Open a channel to target and check that the server answers.

        The check fails fast with ConnectionFailedError when the cause is known (nothing
        listening, TLS on one side only, a missing or refused client certificate), else after
        wait_ready seconds without an answer; wait_ready=None skips it. wait_for_server=True
        keeps trying while nothing listens yet (a server still starting), up to wait_ready.

        TLS: pass tls_ca (the CA to trust: a PEM path or bytes), or tls=True for the system's
        roots; tls_cert and tls_key add a client certificate (mutual TLS); tls_server_name
        overrides the name the server's certificate is checked against. Or pass ready-made
        credentials (see tls_credentials). token is sent as `authorization: Bearer <token>`.

        Retries: a call that gets UNAVAILABLE is tried again up to `retries` times (pauses from
        0.2 s doubling to 2 s) when repeating it cannot apply it twice: reads, naturally
        idempotent calls, and writes that carry a request_id; not after a fail-stop of the server
        (STORE_FAILED, COMMIT_OUTCOME_UNKNOWN). auto_request_ids=True gives every
        write without one a fresh request_id, so every write is retried safely (each costs the
        server a stored outcome for its --request-ttl-s).

        Pipelining: with pipeline=True, transition(), execute(), create_root(), add_child() and
        delete_node() travel over one shared ExecuteStream instead of one unary call each, so
        that concurrent calls reach the server together and commit in one group. Each keeps its
        own request_id, deadline (timeout) and errors, exactly as unary; when the stream breaks
        its calls fail as a unary call whose connection broke (UnavailableError: retried as above
        when they carry a request_id) and the next call opens a new stream. A server that
        refuses the stream (one without ExecuteStream, a token that may not write) gets unary
        calls instead. Off by default: one stream sends every write to one server, which a
        load balancer in front of several cannot spread.
        """
        uses_tls = tls or tls_ca is not None or tls_cert is not None or tls_key is not None
        if uses_tls:
            if credentials is not None:
                raise ValueError("pass either credentials or tls/tls_ca/tls_cert/tls_key, not both")
            credentials = tls_credentials(tls_ca, tls_cert, tls_key)
        options = DEFAULT_OPTIONS
        if tls_server_name:
            options = (*options, ("grpc.ssl_target_name_override", tls_server_name))
        connection = ConnectInfo(target, credentials is not None, tls_cert is not None)
        channel = sync_channel(target, credentials, options)
        if wait_ready is not None:
            failure = cls._check_connection(channel, connection, wait_ready, wait_for_server)
            if failure is not None:
                channel.close()
                raise failure
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return cls(
            channel,
            timeout=timeout,
            metadata=metadata,
            retries=retries,
            auto_request_ids=auto_request_ids,
            connection=connection,
            pipeline=pipeline,
        )

    @staticmethod
    def _check_connection(
        channel: SyncChannel, connection: ConnectInfo, wait: float, wait_for_server: bool
    ) -> ConnectionFailedError | None:
        deadline = time.monotonic() + wait
        while True:
            details = sync_probe(channel, max(0.05, deadline - time.monotonic()))
            if details is None:
                return None
            server_tls = None
            if not connection.tls and "closed" in details.lower():
                server_tls = sync_speaks_tls(connection.target)
            failure = connection_error(
                connection.target,
                details,
                tls=connection.tls,
                client_cert=connection.client_cert,
                server_speaks_tls=server_tls,
            ) or ConnectionFailedError(connection.target, "CONNECTION_FAILED", details, "")
            if not (wait_for_server and failure.retryable) or time.monotonic() >= deadline:
                return failure
            sync_sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
        self.channel.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, error: grpc.RpcError) -> StatekeeperError:
        return from_rpc_error(error, self.connection)

    def _prepare(self, request: Any) -> bool:
        """Give a write its automatic request_id (if on); whether the request may be retried."""
        if self.auto_request_ids and hasattr(request, "request_id") and not request.request_id:
            request.request_id = "sk-" + secrets.token_hex(12)
        return _safe_to_retry(request)

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        retry = self._prepare(request)
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                error = self._error(e)
            if not (retry and attempt < self.retries and is_transient(error)):
                raise error
            sync_sleep(_backoff(attempt))
            attempt += 1

    def _write(self, kind: str, method: Any, request: Any) -> Any:
        """A node write: over the pipeline (its ExecuteStreamRequest member `kind`) when on, else
        unary; retried alike."""
        if self._pipeline is None:
            return self._call(method, request)
        retry = self._prepare(request)
        attempt = 0
        while True:
            try:
                return self._pipeline.call(kind, request, self.timeout)
            except _pipeline.StreamRefused:
                return self._call(method, request)
            except StatekeeperError as e:
                error = e
            if not (retry and attempt < self.retries and is_transient(error)):
                raise error
            sync_sleep(_backoff(attempt))
            attempt += 1

    # -- machine types -----------------------------------------------------------------------

    def register_machine_type(self, machine_type: MachineType) -> Registration:
        """Register a machine type; identical re-registration is a no-op (created=False)."""
        req = machine_type_pb2.RegisterMachineTypeRequest(machine_type=_convert.machine_type_pb(machine_type))
        resp = self._call(self._types.RegisterMachineType, req)
        return Registration(_convert.machine_type(resp.machine_type), resp.created, resp.revision)

    def get_machine_type(self, name: str, version: int = 0) -> MachineType:
        """One version of a machine type; the latest when version is 0."""
        resp = self._call(
            self._types.GetMachineType, machine_type_pb2.GetMachineTypeRequest(name=name, version=version)
        )
        return _convert.machine_type(resp.machine_type)

    def list_machine_types(self, *, all_versions: bool = False) -> list[MachineType]:
        """Every machine type (latest versions, or all), following page tokens."""
        out: list[MachineType] = []
        token = ""
        while True:
            req = machine_type_pb2.ListMachineTypesRequest(
                page_size=1000, page_token=token, all_versions=all_versions
            )
            resp = self._call(self._types.ListMachineTypes, req)
            out.extend(_convert.machine_type(m) for m in resp.machine_types)
            token = resp.next_page_token
            if not token:
                return out

    def render_diagram(self, name: str, version: int = 0, *, format: str = "mermaid") -> str:
        """A machine type as a Mermaid ("mermaid") or Graphviz ("dot") diagram."""
        if format not in _DIAGRAM_FORMATS:
            raise ValueError(f"format must be one of {sorted(_DIAGRAM_FORMATS)}")
        req = machine_type_pb2.RenderMachineTypeDiagramRequest(
            name=name, version=version, format=_DIAGRAM_FORMATS[format]
        )
        resp = self._call(self._types.RenderMachineTypeDiagram, req)
        return str(resp.diagram)

    # -- nodes -------------------------------------------------------------------------------

    def create_root(
        self,
        type: str,
        id: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        type_version: int = 0,
        request_id: str = "",
    ) -> Node:
        """Create the root of a new tree in its type's initial state."""
        req = node_pb2.CreateRootRequest(
            type=type,
            id=id,
            data=_convert.data(data, content_type),
            type_version=type_version,
            request_id=request_id,
        )
        resp = self._write("create_root", self._nodes.CreateRoot, req)
        return _convert.node(resp.node)

    def add_child(
        self,
        parent: RefLike,
        type: str,
        id: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        type_version: int = 0,
        request_id: str = "",
    ) -> Node:
        """Add a child node (type, id) under parent."""
        req = node_pb2.AddChildRequest(
            parent=_convert.ref_pb(as_ref(parent)),
            key=common_pb2.NodeKey(type=type, id=id),
            data=_convert.data(data, content_type),
            type_version=type_version,
            request_id=request_id,
        )
        resp = self._write("add_child", self._nodes.AddChild, req)
        return _convert.node(resp.node)

    def get_node(self, node: RefLike) -> Node:
        resp = self._call(self._nodes.GetNode, node_pb2.GetNodeRequest(node=_convert.ref_pb(as_ref(node))))
        return _convert.node(resp.node)

    def list_children(self, parent: RefLike, type: str, *, page_size: int = 1000) -> list[Node]:
        """The children of one type under parent, by id, following page tokens."""
        out: list[Node] = []
        token = ""
        while True:
            req = node_pb2.ListChildrenRequest(
                parent=_convert.ref_pb(as_ref(parent)), type=type, page_size=page_size, page_token=token
            )
            resp = self._call(self._nodes.ListChildren, req)
            out.extend(_convert.node(n) for n in resp.nodes)
            token = resp.next_page_token
            if not token:
                return out

    def walk(self, node: RefLike, *, page_size: int = 1000) -> list[Node]:
        """node and all its descendants, depth first, parents before children."""
        out: list[Node] = []
        token = ""
        while True:
            req = node_pb2.WalkTreeRequest(
                node=_convert.ref_pb(as_ref(node)), page_size=page_size, page_token=token
            )
            resp = self._call(self._nodes.WalkTree, req)
            out.extend(_convert.node(n) for n in resp.nodes)
            token = resp.next_page_token
            if not token:
                return out

    def delete_node(self, node: RefLike, *, request_id: str = "") -> int:
        """Delete node and its descendants; returns how many nodes were deleted."""
        req = node_pb2.DeleteNodeRequest(node=_convert.ref_pb(as_ref(node)), request_id=request_id)
        resp = self._write("delete_node", self._nodes.DeleteNode, req)
        return int(resp.deleted_count)

    def transition(
        self,
        node: RefLike,
        transition: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        expected_transition_count: int | None = None,
        request_id: str = "",
        task_inputs: list[TaskInput] | None = None,
    ) -> TransitionResult:
        """Apply a named transition. Raises FailedPreconditionError (reason INVALID_TRANSITION)
        when not allowed from the current state, AbortedError when expected_transition_count
        does not match."""
        ref = as_ref(node)
        req = node_pb2.ApplyTransitionRequest(
            node=_convert.ref_pb(ref),
            transition=transition,
            data=_convert.data(data, content_type),
            expected_transition_count=expected_transition_count,
            request_id=request_id,
            task_inputs=_convert.task_inputs(task_inputs),
        )
        return _convert.transition_result(
            self._write("apply_transition", self._nodes.ApplyTransition, req), ref
        )

    def execute(self, batch: Batch, *, request_id: str = "") -> BatchResult:
        """Apply a Batch atomically: one revision for all of it, or nothing."""
        req = node_pb2.ExecuteBatchRequest(operations=batch.operations, request_id=request_id)
        resp = self._write("execute_batch", self._nodes.ExecuteBatch, req)
        results: list[Any] = []
        for r in resp.results:
            which = r.WhichOneof("result")
            if which == "apply_transition":
                results.append(_convert.transition_result(r.apply_transition))
            elif which == "delete_node":
                results.append(int(r.delete_node.deleted_count))
            else:
                results.append(_convert.node(getattr(r, which).node))
        return BatchResult(resp.revision, tuple(results))

    def list_nodes(
        self, machine_type: str, *, state: str = "", status: str = "any", page_size: int = 1000
    ) -> list[Node]:
        """Nodes of a machine type: status "active" (not terminal), "terminal" or "any",
        optionally only those in `state`. Served from an index kept with every commit."""
        statuses = {
            "any": node_pb2.NODE_STATUS_FILTER_UNSPECIFIED,
            "active": node_pb2.NODE_STATUS_FILTER_ACTIVE,
            "terminal": node_pb2.NODE_STATUS_FILTER_TERMINAL,
        }
        if status not in statuses:
            raise ValueError(f"status must be one of {sorted(statuses)}")
        out: list[Node] = []
        token = ""
        while True:
            req = node_pb2.ListNodesRequest(
                machine_type=machine_type,
                state=state,
                status=statuses[status],
                page_size=page_size,
                page_token=token,
            )
            resp = self._call(self._nodes.ListNodes, req)
            out.extend(_convert.node(n) for n in resp.nodes)
            token = resp.next_page_token
            if not token:
                return out

    # -- events ------------------------------------------------------------------------------

    def watch(
        self,
        *,
        start_revision: int = 0,
        root_id: str = "",
        path_prefix: Sequence[tuple[str, str]] = (),
        machine_types: Sequence[str] = (),
        kinds: Sequence[str] = (),
        reconnect: bool = True,
        progress: bool = False,
    ) -> Generator[Event, None]:
        """Events from start_revision (0: only new ones) in revision order, history first.

        Reconnects by itself after the server goes away and resumes exactly after the last
        event (or progress notice) seen: no gap, no duplicate. With progress=True, idle
        progress notices are yielded as Event(kind="progress", revision=R): everything up to
        R has been delivered. Raises OutOfRangeError if start_revision was compacted.
        """
        flt = _convert.event_filter(root_id, path_prefix, machine_types, kinds)
        last = (start_revision - 1, 2**31) if start_revision else (-1, 0)  # last event yielded
        done = start_revision - 1 if start_revision else -1  # every event up to here delivered
        delay = 0.1
        while True:
            # Resume inside a revision whose events were not all seen (duplicates are skipped),
            # else after the last complete one; -1 means "from now" (nothing known yet).
            resume = max(done + 1, last[0]) if done >= 0 or last[0] >= 0 else 0
            req = event_pb2.WatchRequest(start_revision=resume, filter=flt)
            call = self._events.Watch(req, metadata=self.metadata)
            try:
                for resp in call:
                    delay = 0.1
                    for m in resp.events:
                        if (m.revision, m.index) <= last:
                            continue  # seen before a reconnect
                        last = (m.revision, m.index)
                        yield _convert.event(m)
                    done = max(done, resp.progress_revision)
                    if progress and not resp.events:
                        yield Event(resp.progress_revision, 0, "progress", 0, None)
            except grpc.RpcError as e:
                error = self._error(e)
                if not reconnect or not is_transient(error):
                    raise error from None
                _log.warning(
                    "watch: the stream broke (%s); resuming after revision %d in %.1f s", error, done, delay
                )
            finally:
                call.cancel()  # when the caller stops iterating, end the stream at the server too
            sync_sleep(delay)
            delay = min(delay * 2, 5.0)

    def create_consumer(
        self,
        name: str,
        *,
        start: str = "latest",
        start_revision: int = 0,
        root_id: str = "",
        path_prefix: Sequence[tuple[str, str]] = (),
        machine_types: Sequence[str] = (),
        kinds: Sequence[str] = (),
        ack_wait_ms: int = 0,
        max_unacked: int = 0,
    ) -> Consumer:
        """A named durable consumer; start is "latest", "earliest" or "revision" (with start_revision)."""
        starts = {
            "latest": event_pb2.CONSUMER_START_LATEST,
            "earliest": event_pb2.CONSUMER_START_EARLIEST,
            "revision": event_pb2.CONSUMER_START_REVISION,
        }
        if start not in starts:
            raise ValueError(f"start must be one of {sorted(starts)}")
        req = event_pb2.CreateConsumerRequest(
            name=name,
            filter=_convert.event_filter(root_id, path_prefix, machine_types, kinds),
            start=starts[start],
            start_revision=start_revision,
            ack_wait_ms=ack_wait_ms,
            max_unacked=max_unacked,
        )
        return _convert.consumer((self._call(self._events.CreateConsumer, req)).consumer)

    def get_consumer(self, name: str) -> Consumer:
        resp = self._call(self._events.GetConsumer, event_pb2.GetConsumerRequest(name=name))
        return _convert.consumer(resp.consumer)

    def list_consumers(self) -> list[Consumer]:
        out: list[Consumer] = []
        token = ""
        while True:
            req = event_pb2.ListConsumersRequest(page_size=1000, page_token=token)
            resp = self._call(self._events.ListConsumers, req)
            out.extend(_convert.consumer(c) for c in resp.consumers)
            token = resp.next_page_token
            if not token:
                return out

    def delete_consumer(self, name: str) -> None:
        self._call(self._events.DeleteConsumer, event_pb2.DeleteConsumerRequest(name=name))

    def subscribe(self, consumer: str, *, reconnect: bool = True) -> Generator[Delivery, None]:
        """The consumer's unacknowledged events, redelivered after a reconnect or the ack wait.
        Acknowledge with ack(); reconnects by itself when the server goes away."""
        delay = 0.1
        while True:
            call = self._events.Subscribe(
                event_pb2.SubscribeRequest(consumer=consumer), metadata=self.metadata
            )
            try:
                for resp in call:
                    delay = 0.1
                    for d in resp.deliveries:
                        yield Delivery(_convert.event(d.event), d.delivery_count)
                return  # the consumer was deleted
            except grpc.RpcError as e:
                error = self._error(e)
                if not reconnect or not is_transient(error):
                    raise error from None
                _log.warning(
                    "subscribe %s: the stream broke (%s); subscribing again in %.1f s", consumer, error, delay
                )
            finally:
                call.cancel()  # unacknowledged deliveries go back to the consumer at once
            sync_sleep(delay)
            delay = min(delay * 2, 5.0)

    def ack(self, consumer: str, *items: Delivery | Event, up_to_revision: int = 0) -> int:
        """Acknowledge deliveries (or events) of a consumer, and/or everything up to a revision.
        Returns the revision up to which everything is acknowledged. Repeating is harmless."""
        ids = []
        for item in items:
            e = item.event if isinstance(item, Delivery) else item
            ids.append(event_pb2.EventId(revision=e.revision, index=e.index))
        req = event_pb2.AckRequest(consumer=consumer, event_ids=ids, up_to_revision=up_to_revision)
        return int((self._call(self._events.Ack, req)).acked_revision)

    # -- tasks -------------------------------------------------------------------------------

    def get_task(self, task_id: str) -> Task:
        """One task with its attempts, last error, and (outbound) lease or next attempt time."""
        resp = self._call(self._tasks.GetTask, task_pb2.GetTaskRequest(task_id=task_id))
        lease = resp.lease if resp.HasField("lease") else None
        return _convert.task(resp.task, lease, resp.next_attempt_ms)

    def list_tasks(
        self,
        node: RefLike | None = None,
        *,
        tree: bool = False,
        destination: str = "",
        statuses: Sequence[str] = (),
        page_size: int = 1000,
    ) -> list[Task]:
        """Tasks of a node (with tree=True: of its whole subtree), or the pending and leased
        tasks of an outbound destination in hand-out order; optionally only some statuses
        ("pending", "leased", "completed", "stale", "dead_letter", "discarded")."""
        out: list[Task] = []
        token = ""
        wanted = [_convert.task_status_value(s) for s in statuses]
        while True:
            req = task_pb2.ListTasksRequest(
                node=_convert.ref_pb(as_ref(node)) if node is not None else None,
                include_descendants=tree,
                destination=destination,
                statuses=wanted,  # type: ignore[arg-type]
                page_size=page_size,
                page_token=token,
            )
            resp = self._call(self._tasks.ListTasks, req)
            out.extend(_convert.task(t) for t in resp.tasks)
            token = resp.next_page_token
            if not token:
                return out

    def list_dead_letters(self, destination: str = "", *, page_size: int = 1000) -> list[Task]:
        """Dead-lettered tasks, of one destination or all."""
        out: list[Task] = []
        token = ""
        while True:
            req = task_pb2.ListDeadLettersRequest(
                destination=destination, page_size=page_size, page_token=token
            )
            resp = self._call(self._tasks.ListDeadLetters, req)
            out.extend(_convert.task(t) for t in resp.tasks)
            token = resp.next_page_token
            if not token:
                return out

    def retry_dead_letter(self, task_id: str) -> Task:
        """Put a dead-lettered task back to pending, its attempts reset."""
        resp = self._call(self._tasks.RetryDeadLetter, task_pb2.RetryDeadLetterRequest(task_id=task_id))
        return _convert.task(resp.task)

    def discard_dead_letter(self, task_id: str) -> Task:
        """Drop a dead-lettered task for good (status "discarded")."""
        resp = self._call(self._tasks.DiscardDeadLetter, task_pb2.DiscardDeadLetterRequest(task_id=task_id))
        return _convert.task(resp.task)

    def lease_tasks(
        self,
        destinations: Sequence[str],
        *,
        max_in_flight: int = 1,
        lease_s: float = 0.0,
        worker_id: str = "",
    ) -> Generator[LeasedTask, None]:
        """Outbound tasks of the destinations as they become available, each leased for lease_s
        seconds (0: the server's default); at most max_in_flight are held unsettled at once.
        Runs until the caller stops iterating (or the server goes away: UnavailableError).
        Worker wraps this with heartbeats, completion and failure reporting."""
        req = task_pb2.LeaseTasksRequest(
            destinations=list(destinations),
            max_in_flight=max_in_flight,
            lease_duration_ms=int(lease_s * 1000),
            worker_id=worker_id,
        )
        call = self._tasks.LeaseTasks(req, metadata=self.metadata)
        try:
            for resp in call:
                for t in resp.tasks:
                    yield _convert.leased_task(t)
        except grpc.RpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()

    def heartbeat_task(self, leased: LeasedTask, *, lease_s: float = 0.0) -> HeartbeatResult:
        """Extend a lease (by lease_s seconds from now; 0: the stream's lease duration). Raises
        FailedPreconditionError (LEASE_NOT_HELD) when the lease is gone."""
        req = task_pb2.HeartbeatTaskRequest(
            task_id=leased.id, lease_token=leased.token, lease_duration_ms=int(lease_s * 1000)
        )
        resp = self._call(self._tasks.HeartbeatTask, req)
        return HeartbeatResult(resp.lease_expires_ms, resp.stale)

    def complete_task(
        self,
        leased: LeasedTask,
        transition: str = "",
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        task_inputs: Sequence[TaskInput] | None = None,
    ) -> CompleteResult:
        """Complete a leased task, optionally applying a transition (and data) to its node in
        the same commit. Raises FailedPreconditionError with reason STALE_REFERENCE when the
        node moved on (the task is dropped). Repeating returns the first outcome."""
        req = task_pb2.CompleteTaskRequest(
            task_id=leased.id,
            lease_token=leased.token,
            transition=transition,
            data=_convert.data(data, content_type),
            task_inputs=_convert.completion_inputs(task_inputs),
        )
        resp = self._call(self._tasks.CompleteTask, req)
        return CompleteResult(
            _convert.task(resp.task),
            resp.revision,
            resp.node_state,
            resp.node_transition_count,
            tuple(_convert.task(t) for t in resp.emitted_tasks),
        )

    def fail_task(self, leased: LeasedTask, error: str, *, permanent: bool = False) -> FailResult:
        """Report a failed attempt: retried after a backoff, or dead-lettered after the server's
        max attempts (at once when permanent)."""
        req = task_pb2.FailTaskRequest(
            task_id=leased.id, lease_token=leased.token, error=error, permanent=permanent
        )
        resp = self._call(self._tasks.FailTask, req)
        return FailResult(_convert.task(resp.task), resp.revision, resp.next_attempt_ms)

    def release_task(self, leased: LeasedTask) -> None:
        """Give a leased task back unsettled: available again at once, the attempt not counted."""
        req = task_pb2.ReleaseTaskRequest(task_id=leased.id, lease_token=leased.token)
        self._call(self._tasks.ReleaseTask, req)

    # -- savepoints: runs --------------------------------------------------------------------

    def _stream(self, method: Any, request: Any, timeout: float | None = None) -> list[Any]:
        """Every message of a server stream (a finite one), retried like _call."""
        retry = self._prepare(request)
        attempt = 0
        while True:
            try:
                call = method(request, timeout=timeout or self.timeout, metadata=self.metadata)
                return [message for message in call]
            except grpc.RpcError as e:
                error = self._error(e)
            if not (retry and attempt < self.retries and is_transient(error)):
                raise error
            sync_sleep(_backoff(attempt))
            attempt += 1

    def create_run(
        self,
        run_id: str,
        entities: Mapping[str, State] | Sequence[tuple[str, State]],
        *,
        start_ms: int = 0,
        schedule_ms: int = 0,
        schema_version: int = 1,
        keep: int = 0,
        request_id: str = "",
    ) -> Run:
        """Create a run (CreateRun; Runbox's init_run_state): its entities with their initial states, its
        start (epoch ms) and schedule (savepoint interval in ms; 0: never a savepoint). Savepoints
        are the multiples of the schedule after the start; the newest `keep` complete ones are
        kept (0: the server's default). An existing run is AlreadyExistsError (RUN_EXISTS)."""
        items = entities.items() if isinstance(entities, Mapping) else entities
        req = savepoint_pb2.CreateRunRequest(
            run_id=run_id,
            start_ms=start_ms,
            schedule_ms=schedule_ms,
            entities=[
                savepoint_pb2.EntityDefinition(id=i, initial_state=_convert.state(s)) for i, s in items
            ],
            schema_version=schema_version,
            keep_count=keep,
            request_id=request_id,
        )
        resp = self._call(self._savepoints.CreateRun, req)
        return _convert.run(resp.run)

    def init_run(
        self,
        run_id: str,
        entities: Mapping[str, State] | Sequence[tuple[str, State]],
        *,
        start_ms: int = 0,
        schedule_ms: int = 0,
        schema_version: int = 1,
        keep: int = 0,
        request_id: str = "",
    ) -> Run:
        """Deprecated: the old name of create_run (the RPC is CreateRun)."""
        warnings.warn("init_run is deprecated: use create_run", DeprecationWarning, stacklevel=2)
        return self.create_run(
            run_id,
            entities,
            start_ms=start_ms,
            schedule_ms=schedule_ms,
            schema_version=schema_version,
            keep=keep,
            request_id=request_id,
        )

    def get_run(self, run_id: str) -> Run:
        """A run; NotFoundError (reason RUN_NOT_FOUND) when it is not initialised."""
        resp = self._call(self._savepoints.GetRun, savepoint_pb2.GetRunRequest(run_id=run_id))
        return _convert.run(resp.run)

    def list_runs(self, *, page_size: int = 1000) -> list[Run]:
        """Every run, by id (all pages of ListRuns)."""
        out: list[Run] = []
        token = ""
        while True:
            req = savepoint_pb2.ListRunsRequest(page_size=page_size, page_token=token)
            resp = self._call(self._savepoints.ListRuns, req)
            out.extend(_convert.run(r) for r in resp.runs)
            token = resp.next_page_token
            if not token:
                return out

    def is_run_initialized(self, run_id: str) -> bool:
        """True once the run is initialised (durably: also after a server restart)."""
        try:
            self.get_run(run_id)
        except NotFoundError as e:
            if e.reason == "RUN_NOT_FOUND":
                return False
            raise
        return True

    def delete_run(self, run_id: str, *, request_id: str = "") -> int:
        """Delete a run and everything it holds; returns how many savepoints were deleted."""
        req = savepoint_pb2.DeleteRunRequest(run_id=run_id, request_id=request_id)
        resp = self._call(self._savepoints.DeleteRun, req)
        return int(resp.deleted_savepoint_count)

    def save_entity_states(self, saves: Sequence[EntitySave], *, request_id: str = "") -> SaveOutcome:
        """Save many entities' states (of any runs) in one atomic call. Each state goes into every
        incomplete savepoint at or before its timestamp that does not hold the entity yet."""
        req = savepoint_pb2.SaveEntityStatesRequest(
            saves=[
                savepoint_pb2.EntitySave(
                    run_id=s.run_id,
                    entity_id=s.entity_id,
                    timestamp_ms=s.timestamp_ms,
                    state=_convert.state(s.state),
                )
                for s in saves
            ],
            request_id=request_id,
        )
        return _convert.save_outcome(self._call(self._savepoints.SaveEntityStates, req))

    def save_entity_state(
        self, run_id: str, entity_id: str, timestamp_ms: int, state: State, *, request_id: str = ""
    ) -> SaveResult:
        """Save one entity's state at timestamp_ms (see save_entity_states)."""
        outcome = self.save_entity_states(
            [EntitySave(run_id, entity_id, timestamp_ms, state)], request_id=request_id
        )
        return outcome.results[0]

    def update_entity_states(self, updates: Sequence[EntityUpdate]) -> int:
        """Set entities' current states (Runbox's Entity.update_state), durably: kept across
        restarts until ack_processed_time saves them into the savepoints it reaches."""
        req = savepoint_pb2.UpdateEntityStatesRequest(
            updates=[
                savepoint_pb2.EntityStateUpdate(
                    run_id=u.run_id, entity_id=u.entity_id, state=_convert.state(u.state)
                )
                for u in updates
            ]
        )
        resp = self._call(self._savepoints.UpdateEntityStates, req)
        return int(resp.updated_count)

    def update_entity_state(self, run_id: str, entity_id: str, state: State) -> None:
        """Set one entity's current state (see update_entity_states)."""
        self.update_entity_states([EntityUpdate(run_id, entity_id, state)])

    def ack_processed_times(self, acks: Sequence[EntityAck], *, request_id: str = "") -> SaveOutcome:
        """Acknowledge processed time for many entities (Runbox's Entity.ack_processed_time): an
        entity whose next savepoint the time reaches has its current state saved, once."""
        req = savepoint_pb2.AckProcessedTimeRequest(
            acks=[
                savepoint_pb2.EntityAck(
                    run_id=a.run_id, entity_id=a.entity_id, processed_time_ms=a.processed_time_ms
                )
                for a in acks
            ],
            request_id=request_id,
        )
        return _convert.save_outcome(self._call(self._savepoints.AckProcessedTime, req))

    def ack_processed_time(
        self, run_id: str, entity_id: str, processed_time_ms: int, *, request_id: str = ""
    ) -> SaveResult:
        """Acknowledge one entity's processed time (see ack_processed_times)."""
        outcome = self.ack_processed_times(
            [EntityAck(run_id, entity_id, processed_time_ms)], request_id=request_id
        )
        return outcome.results[0]

    def load_savepoint(self, run_id: str, timestamp_ms: int = 0) -> Savepoint:
        """A complete savepoint: the latest (timestamp_ms 0; a damaged one is skipped, see
        Savepoint.fell_back) or the one at timestamp_ms. NotFoundError with reason NO_SAVEPOINT
        when the run has no complete savepoint."""
        req = savepoint_pb2.LoadSavepointRequest(run_id=run_id, timestamp_ms=timestamp_ms)
        return _convert.savepoint(self._stream(self._savepoints.LoadSavepoint, req))

    def load_latest_savepoint(
        self, run_id: str, *, upgrades: Mapping[int, Upgrade] | None = None, write_back: bool = False
    ) -> Savepoint:
        """The latest complete savepoint, upgraded (Runbox's update_fn): while its schema version
        v has an entry in `upgrades`, states = upgrades[v](states) and v becomes v + 1. With
        write_back, the upgraded states and version are stored (update_savepoint) and the run
        resumes from this savepoint."""
        loaded = self.load_savepoint(run_id)
        version, states = loaded.schema_version, dict(loaded.states)
        while upgrades and version in upgrades:
            states = {k: _convert.state(v) for k, v in upgrades[version](states).items()}
            version += 1
        if version == loaded.schema_version:
            return loaded
        if write_back:
            self.update_savepoint(run_id, loaded.timestamp_ms, states, schema_version=version)
        return dataclasses.replace(
            loaded,
            schema_version=version,
            states=states,
            upgraded_from=loaded.schema_version,
            written_back=write_back,
        )

    def list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        """A run's persisted complete savepoints, oldest first."""
        resp = self._call(self._savepoints.ListSavepoints, savepoint_pb2.ListSavepointsRequest(run_id=run_id))
        return [_convert.savepoint_info(s) for s in resp.savepoints]

    def latest_savepoint_timestamp(self, run_id: str) -> int | None:
        """The timestamp of the run's latest complete savepoint; None when there is none."""
        return (self.get_run(run_id)).latest_savepoint_ms

    def update_savepoint(
        self,
        run_id: str,
        timestamp_ms: int,
        states: Mapping[str, State],
        *,
        schema_version: int,
        request_id: str = "",
    ) -> Run:
        """Replace a complete savepoint's states (e.g. upgraded) and schema version; the run resumes
        from it (newer savepoints and pending contributions are dropped) and `states` become its
        entities."""
        req = savepoint_pb2.UpdateSavepointRequest(
            run_id=run_id,
            timestamp_ms=timestamp_ms,
            schema_version=schema_version,
            entities=[
                savepoint_pb2.EntityState(entity_id=k, state=_convert.state(v)) for k, v in states.items()
            ],
            request_id=request_id,
        )
        return _convert.run((self._call(self._savepoints.UpdateSavepoint, req)).run)

    # -- savepoints: trees -------------------------------------------------------------------

    def create_tree_snapshot(self, root: RefLike, name: str, *, request_id: str = "") -> TreeSnapshot:
        """Store the tree of `root` (its nodes and pending tasks, as durable now) under `name`."""
        req = savepoint_pb2.CreateTreeSnapshotRequest(
            root_id=as_root_id(root), name=name, request_id=request_id
        )
        resp = self._call(self._savepoints.CreateTreeSnapshot, req)
        return _convert.tree_snapshot(resp.snapshot)

    def list_tree_snapshots(self, root: RefLike) -> list[TreeSnapshot]:
        req = savepoint_pb2.ListTreeSnapshotsRequest(root_id=as_root_id(root))
        resp = self._call(self._savepoints.ListTreeSnapshots, req)
        return [_convert.tree_snapshot(s) for s in resp.snapshots]

    def restore_tree_snapshot(self, root: RefLike, name: str, *, request_id: str = "") -> TreeRestore:
        """Put the tree back to a snapshot: events are emitted, every node's transition count
        moves forward (older task references become stale), nodes added since are deleted, and
        the snapshot's pending tasks are created anew."""
        req = savepoint_pb2.RestoreTreeSnapshotRequest(
            root_id=as_root_id(root), name=name, request_id=request_id
        )
        resp = self._call(self._savepoints.RestoreTreeSnapshot, req)
        return TreeRestore(
            _convert.node(resp.root), resp.revision, resp.node_count, resp.deleted_count, resp.task_count
        )

    def fork_tree_snapshot(
        self, root: RefLike, name: str, new_root_id: str, *, request_id: str = ""
    ) -> TreeRestore:
        """Create a new tree, rooted at new_root_id, from a snapshot of `root`."""
        req = savepoint_pb2.ForkTreeSnapshotRequest(
            root_id=as_root_id(root), name=name, new_root_id=new_root_id, request_id=request_id
        )
        resp = self._call(self._savepoints.ForkTreeSnapshot, req)
        return TreeRestore(_convert.node(resp.root), resp.revision, resp.node_count, 0, resp.task_count)

    def delete_tree_snapshot(self, root: RefLike, name: str, *, request_id: str = "") -> int:
        """Delete a snapshot; returns the revision of the commit."""
        req = savepoint_pb2.DeleteTreeSnapshotRequest(
            root_id=as_root_id(root), name=name, request_id=request_id
        )
        return int((self._call(self._savepoints.DeleteTreeSnapshot, req)).revision)

    # -- admin -------------------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        """The server's version, revisions, store, uptime and, in cluster mode, the live servers
        with the shards each owns (GetServerInfo)."""
        resp = self._call(self._admin.GetServerInfo, admin_pb2.GetServerInfoRequest())
        return _convert.server_info(resp)

    def create_backup(self, name: str = "") -> Backup:
        """An online, consistent backup of the whole store, written on the server's machine under
        its --backup-dir. Restore: copy the folder and start a server with --data-dir on the copy."""
        resp = self._call(self._admin.CreateBackup, admin_pb2.CreateBackupRequest(name=name))
        return _convert.backup(resp)
