"""Task rules: stale references, retry backoff, the per-destination circuit breaker, and the
status changes a task goes through. Pure: no clocks (callers pass times), no I/O."""

from __future__ import annotations

import dataclasses
import enum
import random
from dataclasses import dataclass

from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.model import NodeRecord, TaskRecord, TaskStatus
from statekeeper_server.domain.validation import check_name

MAX_ERROR_LENGTH = 4096
MAX_WORKER_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """How outbound tasks are retried, leased and protected (server configuration)."""

    max_attempts: int = 5
    backoff_base_ms: int = 1_000
    backoff_max_ms: int = 60_000
    lease_ms: int = 30_000
    max_lease_ms: int = 3_600_000
    breaker_threshold: int = 5
    breaker_cooldown_ms: int = 30_000
    max_in_flight: int = 1_000
    timer_batch: int = 500
    finished_retention_ms: int = 7 * 24 * 3600 * 1000  # completed, stale, discarded; 0: for ever


def stale_reason(task: TaskRecord, node: NodeRecord | None) -> str:
    """Why the task's reference no longer matches its node ("" when it still does)."""
    if node is None:
        return "the node was deleted"
    if node.create_revision != task.node_create_revision:
        return (
            f"the node was deleted and recreated (created at revision {node.create_revision}, "
            f"the task belongs to revision {task.node_create_revision})"
        )
    if node.transition_count != task.transition_count:
        return (
            f"the node moved on (transition count {node.transition_count}, "
            f"the task belongs to {task.transition_count})"
        )
    return ""


def backoff_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Delay before the retry that follows failed attempt `attempt` (1-based): exponential
    (base * 2^(attempt-1), capped at max) with "equal jitter": uniformly in [d/2, d], so retries
    spread out but still grow."""
    exp = min(max(attempt, 1) - 1, 62)
    ceiling = min(max_ms, base_ms * (1 << exp))
    if ceiling <= 0:
        return 0
    half = ceiling / 2
    return int(half + (rng or random).random() * half)


def with_status(task: TaskRecord, status: TaskStatus, **changes: object) -> TaskRecord:
    """A copy of task with a new status (records are values: never changed in place)."""
    return dataclasses.replace(task, status=status, **changes)  # type: ignore[arg-type]


def clip_error(message: str) -> str:
    """A failure message as stored: at most MAX_ERROR_LENGTH characters."""
    if len(message) <= MAX_ERROR_LENGTH:
        return message
    return message[: MAX_ERROR_LENGTH - 1] + "…"


def is_task_id(task_id: str) -> bool:
    """Task ids are "<revision>-<index>" (revision < 2^64, index < 2^32)."""
    revision, sep, index = task_id.partition("-")
    if not sep or not (revision + index).isascii() or not revision.isdigit() or not index.isdigit():
        return False
    return int(revision) < 1 << 64 and int(index) < 1 << 32


def check_task_id(task_id: str, field: str = "task_id") -> None:
    if not task_id:
        raise InvalidArgument("FIELD_REQUIRED", f"{field} must not be empty", field=field)
    if len(task_id) > 40 or not is_task_id(task_id):
        raise InvalidArgument(
            "FIELD_INVALID", f"{field} {task_id[:80]!r} is not a task id (<revision>-<index>)", field=field
        )


def check_lease_token(token: str) -> None:
    if not token:
        raise InvalidArgument("FIELD_REQUIRED", "lease_token must not be empty", field="lease_token")
    if len(token) > 128:
        raise InvalidArgument(
            "FIELD_INVALID", "lease_token is not a token this server issued", field="lease_token"
        )


def check_destinations(destinations: list[str], limits: Limits) -> list[str]:
    if not destinations:
        raise InvalidArgument(
            "FIELD_REQUIRED", "destinations must name at least one destination", field="destinations"
        )
    if len(destinations) > 100:
        raise InvalidArgument(
            "TOO_MANY", "destinations: at most 100 per stream", field="destinations", limit="100"
        )
    out: list[str] = []
    for i, d in enumerate(destinations):
        check_name(d, f"destinations[{i}]", limits)
        if d not in out:
            out.append(d)
    return out


def check_lease_ms(value: int, field: str, settings: TaskSettings) -> int:
    """A requested lease duration; 0 means the server default."""
    if value < 0:
        raise InvalidArgument("FIELD_INVALID", f"{field} must not be negative", field=field)
    if value > settings.max_lease_ms:
        raise InvalidArgument(
            "FIELD_INVALID",
            f"{field} is {value} ms; the limit is {settings.max_lease_ms} ms",
            field=field,
            limit="max_lease_ms",
        )
    return value or settings.lease_ms


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per destination: opens after `threshold` consecutive failures, then hands out nothing for
    `cooldown_ms`; after that one probe task goes out (half-open): its success closes the
    breaker, its failure opens it again. threshold 0 disables the breaker."""

    __slots__ = ("_opened_at", "_probe", "cooldown_ms", "failures", "state", "threshold")

    def __init__(self, threshold: int, cooldown_ms: int) -> None:
        self.threshold = threshold
        self.cooldown_ms = cooldown_ms
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0
        self._probe: str | None = None

    def allows(self, now_ms: int) -> int:
        """How many tasks may go out now: -1 any number, 0 none, 1 a single probe."""
        if self.state is BreakerState.CLOSED:
            return -1
        if self.state is BreakerState.OPEN:
            if now_ms < self._opened_at + self.cooldown_ms:
                return 0
            self.state = BreakerState.HALF_OPEN
        return 0 if self._probe is not None else 1

    def reopens_at(self) -> int:
        """When an open breaker lets a probe out (epoch ms)."""
        return self._opened_at + self.cooldown_ms

    def leased(self, task_id: str) -> None:
        if self.state is BreakerState.HALF_OPEN and self._probe is None:
            self._probe = task_id

    def released(self, task_id: str) -> None:
        """The task went back without an outcome (released, or its commit failed)."""
        if self._probe == task_id:
            self._probe = None

    def succeeded(self, task_id: str) -> None:
        self.failures = 0
        self._probe = None
        self.state = BreakerState.CLOSED

    def failed(self, task_id: str, now_ms: int) -> None:
        self.failures += 1
        probe_failed = self._probe == task_id
        if probe_failed:
            self._probe = None
        if self.threshold <= 0:
            return
        if probe_failed or (self.state is BreakerState.CLOSED and self.failures >= self.threshold):
            self.state = BreakerState.OPEN
            self._opened_at = now_ms
