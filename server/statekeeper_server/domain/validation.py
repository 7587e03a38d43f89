"""Input rules shared by every operation. Each failure names the offending field."""

from __future__ import annotations

import re

from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.model import MachineType, NodeAddress, TaskKind

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
# Ids are free text but for control characters: NUL separates key parts in storage, and the
# others only ever arrive by mistake.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# Names (types, states, transitions) are few and checked on every operation: remember the ones
# that matched _NAME. Bounded: past _MAX_KNOWN_NAMES, new names are simply checked each time.
_known_names: set[str] = set()
_MAX_KNOWN_NAMES = 4096


def _known_name(value: str, limits: Limits) -> bool:
    """The fast path of check_name: a name already found valid."""
    return value in _known_names and len(value) <= limits.max_name_length


def _plain_id(value: str, limits: Limits) -> bool:
    """The fast path of check_id: a printable string has no control characters."""
    return bool(value) and len(value) <= limits.max_id_length and value.isprintable()


def check_name(value: str, field: str, limits: Limits) -> None:
    if _known_name(value, limits):
        return
    if not value:
        raise InvalidArgument("FIELD_REQUIRED", f"{field} must not be empty", field=field)
    if len(value) > limits.max_name_length:
        raise InvalidArgument(
            "FIELD_TOO_LONG",
            f"{field} is {len(value)} characters; the limit is {limits.max_name_length}",
            field=field,
            limit="max_name_length",
        )
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            "FIELD_INVALID",
            f"{field} {value!r} must start with a letter and hold only letters, digits, '_', '-' and '.'",
            field=field,
        )
    if len(_known_names) < _MAX_KNOWN_NAMES:
        _known_names.add(value)


def check_id(value: str, field: str, limits: Limits) -> None:
    if _plain_id(value, limits):
        return
    if not value:
        raise InvalidArgument("FIELD_REQUIRED", f"{field} must not be empty", field=field)
    if len(value) > limits.max_id_length:
        raise InvalidArgument(
            "FIELD_TOO_LONG",
            f"{field} is {len(value)} characters; the limit is {limits.max_id_length}",
            field=field,
            limit="max_id_length",
        )
    if _CONTROL.search(value):
        raise InvalidArgument("FIELD_INVALID", f"{field} must not contain control characters", field=field)


def check_request_id(value: str, limits: Limits) -> None:
    if len(value) > limits.max_request_id_length:
        raise InvalidArgument(
            "FIELD_TOO_LONG",
            f"request_id is {len(value)} characters; the limit is {limits.max_request_id_length}",
            field="request_id",
            limit="max_request_id_length",
        )
    if _CONTROL.search(value):
        raise InvalidArgument(
            "FIELD_INVALID", "request_id must not contain control characters", field="request_id"
        )


def check_address(address: NodeAddress, field: str, limits: Limits) -> None:
    # Every write checks its address: the common case builds no field names (error text).
    path = address.path
    if (
        len(path) <= limits.max_path_depth
        and _plain_id(address.root_id, limits)
        and all(_known_name(t, limits) and _plain_id(i, limits) for t, i in path)
    ):
        return
    check_id(address.root_id, f"{field}.root_id", limits)
    if len(address.path) > limits.max_path_depth:
        raise InvalidArgument(
            "PATH_TOO_DEEP",
            f"{field}.path has {len(address.path)} keys; the limit is {limits.max_path_depth}",
            field=f"{field}.path",
            limit="max_path_depth",
        )
    for i, (type_name, node_id) in enumerate(address.path):
        check_name(type_name, f"{field}.path[{i}].type", limits)
        check_id(node_id, f"{field}.path[{i}].id", limits)


def check_data(data: bytes, content_type: str, field: str, limits: Limits) -> None:
    if len(data) > limits.max_data_bytes:
        raise InvalidArgument(
            "DATA_TOO_LARGE",
            f"{field}.value is {len(data)} bytes; the limit is {limits.max_data_bytes}",
            field=f"{field}.value",
            limit="max_data_bytes",
        )
    if len(content_type) > limits.max_content_type_length or _CONTROL.search(content_type):
        raise InvalidArgument(
            "FIELD_INVALID",
            f"{field}.content_type must be at most {limits.max_content_type_length} printable characters",
            field=f"{field}.content_type",
        )


def check_page_size(page_size: int, limits: Limits) -> int:
    if page_size < 0:
        raise InvalidArgument("FIELD_INVALID", "page_size must not be negative", field="page_size")
    return min(page_size or limits.default_page_size, limits.max_page_size)


def _check_unique(values: tuple[str, ...], field: str) -> None:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise InvalidArgument(
                "DUPLICATE_NAME", f"{field}[{i}] {v!r} appears twice", field=f"{field}[{i}]"
            )
        seen.add(v)


def check_machine_type(mt: MachineType, limits: Limits) -> None:
    """Validate a definition before registration; the error names the first bad field."""
    f = "machine_type"
    check_name(mt.name, f"{f}.name", limits)
    if mt.version < 1:
        raise InvalidArgument("FIELD_INVALID", f"{f}.version must be at least 1", field=f"{f}.version")
    if not mt.states:
        raise InvalidArgument("FIELD_REQUIRED", f"{f}.states must not be empty", field=f"{f}.states")
    if len(mt.states) > limits.max_states_per_type:
        raise InvalidArgument(
            "TOO_MANY",
            f"{f}.states: the limit is {limits.max_states_per_type}",
            field=f"{f}.states",
            limit="max_states_per_type",
        )
    for i, s in enumerate(mt.states):
        check_name(s, f"{f}.states[{i}]", limits)
    _check_unique(mt.states, f"{f}.states")
    states = set(mt.states)
    if not mt.initial_state:
        raise InvalidArgument(
            "FIELD_REQUIRED", f"{f}.initial_state must not be empty", field=f"{f}.initial_state"
        )
    if mt.initial_state not in states:
        raise InvalidArgument(
            "UNKNOWN_STATE",
            f"{f}.initial_state {mt.initial_state!r} is not one of the states",
            field=f"{f}.initial_state",
        )
    for i, s in enumerate(mt.terminal_states):
        if s not in states:
            raise InvalidArgument(
                "UNKNOWN_STATE",
                f"{f}.terminal_states[{i}] {s!r} is not one of the states",
                field=f"{f}.terminal_states[{i}]",
            )
    _check_unique(mt.terminal_states, f"{f}.terminal_states")
    if len(mt.transitions) > limits.max_transitions_per_type:
        raise InvalidArgument(
            "TOO_MANY",
            f"{f}.transitions: the limit is {limits.max_transitions_per_type}",
            field=f"{f}.transitions",
            limit="max_transitions_per_type",
        )
    _check_unique(tuple(t.name for t in mt.transitions), f"{f}.transitions.name")
    terminal = set(mt.terminal_states)
    names = {t.name for t in mt.transitions}
    for i, t in enumerate(mt.transitions):
        tf = f"{f}.transitions[{i}]"
        check_name(t.name, f"{tf}.name", limits)
        if not t.sources:
            raise InvalidArgument("FIELD_REQUIRED", f"{tf}.sources must not be empty", field=f"{tf}.sources")
        _check_unique(t.sources, f"{tf}.sources")
        for j, s in enumerate(t.sources):
            if s not in states:
                raise InvalidArgument(
                    "UNKNOWN_STATE",
                    f"{tf}.sources[{j}] {s!r} is not one of the states",
                    field=f"{tf}.sources[{j}]",
                )
            if s in terminal:
                raise InvalidArgument(
                    "TERMINAL_SOURCE",
                    f"{tf}.sources[{j}] {s!r} is terminal: nothing transitions out of a terminal state",
                    field=f"{tf}.sources[{j}]",
                )
        if t.destination not in states:
            raise InvalidArgument(
                "UNKNOWN_STATE",
                f"{tf}.destination {t.destination!r} is not one of the states",
                field=f"{tf}.destination",
            )
        if len(t.tasks) > limits.max_tasks_per_transition:
            raise InvalidArgument(
                "TOO_MANY",
                f"{tf}.tasks: the limit is {limits.max_tasks_per_transition}",
                field=f"{tf}.tasks",
                limit="max_tasks_per_transition",
            )
        _check_unique(tuple(k.name for k in t.tasks), f"{tf}.tasks.name")
        for j, task in enumerate(t.tasks):
            kf = f"{tf}.tasks[{j}]"
            check_name(task.name, f"{kf}.name", limits)
            if task.kind is TaskKind.TIMER:
                if task.delay_ms < 0:
                    raise InvalidArgument(
                        "FIELD_INVALID",
                        f"{kf}.timer.delay_ms must not be negative",
                        field=f"{kf}.timer.delay_ms",
                    )
                if task.timer_transition not in names:
                    raise InvalidArgument(
                        "UNKNOWN_TRANSITION",
                        f"{kf}.timer.transition {task.timer_transition!r} is not a transition of this type",
                        field=f"{kf}.timer.transition",
                    )
            elif task.kind is TaskKind.OUTBOUND:
                check_name(task.destination, f"{kf}.outbound.destination", limits)
                if len(task.payload) > limits.max_payload_bytes:
                    raise InvalidArgument(
                        "DATA_TOO_LARGE",
                        f"{kf}.outbound.payload is {len(task.payload)} bytes; the limit is {limits.max_payload_bytes}",
                        field=f"{kf}.outbound.payload",
                        limit="max_payload_bytes",
                    )
            else:
                raise InvalidArgument("FIELD_REQUIRED", f"{kf} must be a timer or an outbound task", field=kf)
    if len(mt.description) > 4096:
        raise InvalidArgument(
            "FIELD_TOO_LONG", f"{f}.description: the limit is 4096 characters", field=f"{f}.description"
        )
