"""statekeeper: the Python SDK for the statekeeper server.

    import asyncio, statekeeper as sk

    async def main():
        async with await sk.Client.connect("127.0.0.1:50051") as client:
            node = await client.create_root("order", "o-1")
            await client.transition(node, "pay")

`SyncClient` has the same methods without async. Errors are subclasses of StatekeeperError
carrying the gRPC code, the server's reason and metadata. The generated API lives in
statekeeper.v1 for calls the clients do not cover.
"""

from importlib import metadata as _metadata

from statekeeper._async.client import Client
from statekeeper._batch import Batch
from statekeeper._errors import (
    AbortedError,
    AlreadyExistsError,
    ConnectionFailedError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StatekeeperError,
    UnauthenticatedError,
    UnavailableError,
)
from statekeeper._sync.client import SyncClient
from statekeeper._tls import tls_credentials
from statekeeper._types import (
    Backup,
    BatchResult,
    ClusterMember,
    CompleteResult,
    Completion,
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
    Outbound,
    Ref,
    Registration,
    Run,
    SaveOutcome,
    Savepoint,
    SavepointInfo,
    SaveResult,
    ServerInfo,
    Task,
    TaskInput,
    Timer,
    Transition,
    TransitionResult,
    TreeRestore,
    TreeSnapshot,
)
from statekeeper._worker import PermanentTaskError, Worker, WorkerStats

try:
    __version__ = _metadata.version("statekeeper")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "Backup",
    "Batch",
    "BatchResult",
    "Client",
    "ClusterMember",
    "CompleteResult",
    "Completion",
    "ConnectionFailedError",
    "Consumer",
    "DeadlineExceededError",
    "Delivery",
    "EntityAck",
    "EntitySave",
    "EntityUpdate",
    "Event",
    "FailResult",
    "FailedPreconditionError",
    "HeartbeatResult",
    "InvalidArgumentError",
    "LeasedTask",
    "MachineType",
    "Node",
    "NotFoundError",
    "OutOfRangeError",
    "Outbound",
    "PermanentTaskError",
    "PermissionDeniedError",
    "Ref",
    "Registration",
    "ResourceExhaustedError",
    "Run",
    "SaveOutcome",
    "SaveResult",
    "Savepoint",
    "SavepointInfo",
    "ServerInfo",
    "StatekeeperError",
    "SyncClient",
    "Task",
    "TaskInput",
    "Timer",
    "Transition",
    "TransitionResult",
    "TreeRestore",
    "TreeSnapshot",
    "UnauthenticatedError",
    "UnavailableError",
    "Worker",
    "WorkerStats",
    "tls_credentials",
]
