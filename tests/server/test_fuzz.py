"""Fuzzing every RPC of every service in statekeeper.v1 (found through the generated descriptors,
so a new method is fuzzed without touching this file) against a real server:

(a) random bytes as the request body;
(b) Hypothesis-generated messages of the method's input type, built from its descriptor: strings
    (known-good ids and names, empty, huge beyond the limits, control characters, odd unicode),
    integers at and beyond their edges, unknown enum values, nested messages, repeated fields of
    odd lengths (long enough to be too deep a path), bytes beyond the size limits — plus the same
    messages with invalid UTF-8 spliced into a string field;
(c) deep paths: every list of NodeKeys a request can carry (a NodeRef's path, an event filter's
    path_prefix), 17, 100 and 1,000 keys deep.

Every answer must be one a client can act on: never INTERNAL, UNKNOWN, UNAVAILABLE, CANCELLED or
UNIMPLEMENTED; an error carries an ErrorInfo reason (except a message refused by gRPC itself for
its size). A rejected call changes nothing: the store's revision, the known trees, machine types,
consumers, runs and tree snapshots are compared before and after it. The server stays up and
SERVING, and logs no unexpected exception.

Counts: 44 methods x (6 random-bytes + 12 generated + 4 invalid-UTF-8 examples) + 12 NodeKey
lists x 3 depths: about 1,000 calls, ~15 s (run with -s for the answers by method, code and
reason). STATEKEEPER_FUZZ_EXAMPLES=N sets the generated examples per method (default 12) for
longer runs; 150 (about 9,300 calls) passed when this was written.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import statekeeper as sk
from statekeeper.v1 import (
    admin_pb2,
    event_pb2,
    event_pb2_grpc,
    machine_type_pb2,
    node_pb2,
    savepoint_pb2,
    task_pb2,
)
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess

GENERATED = int(os.environ.get("STATEKEEPER_FUZZ_EXAMPLES", "12"))
FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    derandomize=False,
)

MODULES = (admin_pb2, event_pb2, machine_type_pb2, node_pb2, savepoint_pb2, task_pb2)
METHODS: list[tuple[str, MethodDescriptor]] = [
    (f"/{service.full_name}/{method.name}", method)
    for module in MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]

MAX_MESSAGE = 200_000
LIMIT_ARGS = (
    "--max-message-bytes",
    str(MAX_MESSAGE),
    "--max-data-bytes",
    "1000",
    "--max-payload-bytes",
    "500",
    "--max-state-bytes",
    "1000",
    "--task-lease-s",
    "3600",
)

# Values that pass validation, so generated requests reach past the first checks. Not "pay" nor
# "payments": an outbound task leased with a 1 ms lease would expire and commit on its own, in
# the middle of a before/after comparison.
KNOWN = [
    "fz-root",
    "fz-other",
    "order",
    "item",
    "fzt",
    "touch",
    "cancel",
    "go",
    "pack",
    "fzc",
    "fz-run",
    "e1",
    "snap",
    "a",
    "s0",
]

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}


# -- strategies built from descriptors ---------------------------------------------------------
#
# Each generated message is plausible (known-good values throughout, so it reaches deep into the
# handlers), hostile (edge and garbage values throughout), or mixed: plausible with some fields
# hostile, the classic mutation of a good request.

hostile_strings = st.one_of(
    st.just(""),
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), min_size=1, max_size=4),
    st.sampled_from(
        [
            "a\x00b",
            "a\nb",
            "\x7f",
            "../../etc/passwd",
            "a/b:c",
            "\u202e",
            "\ufeff",
            "\U0010ffff",
            "名前",
            " ",
            "-1",
        ]
    ),
    st.sampled_from([129, 257, 5_000]).map(lambda n: "x" * n),  # past the name, id, ... limits
)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
PLAUSIBLE_INTS = [1, 0, 2, 5, 1000, 1500, 60_000]


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, 2, 10, 1000, low, high, low + 1, high - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def scalar(field: FieldDescriptor, hostile: bool) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return hostile_strings if hostile else st.sampled_from(KNOWN)
    if t == FieldDescriptor.TYPE_BYTES:
        if hostile:
            return st.one_of(
                st.binary(max_size=16), st.sampled_from([501, 1001, 100_000]).map(lambda n: b"x" * n)
            )
        return st.sampled_from([b"x", b"", b'{"a": 1}'])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        if hostile:
            return st.one_of(st.sampled_from(values), st.sampled_from([-1, 99, 2**31 - 1]))
        return st.sampled_from(sorted(values, key=lambda v: v == 0))
    if t in _INT_RANGES:
        return _ints(*_INT_RANGES[t]) if hostile else st.sampled_from(PLAUSIBLE_INTS)
    raise AssertionError(f"no strategy for {field.full_name} (type {t})")


def messages(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    @st.composite
    def build(draw: st.DrawFn) -> Message:
        mode = draw(st.sampled_from(["plausible", "mixed", "hostile"]), label="mode")
        return draw(_message(descriptor, {"plausible": 0.0, "mixed": 0.2, "hostile": 1.0}[mode], 0))

    return build()


def _message(descriptor: Descriptor, hostility: float, depth: int) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for field in descriptor.fields:
            hostile = draw(st.floats(0, 1)) < hostility
            if not draw(st.sampled_from([True, True, True, False] if not hostile else [True, False])):
                continue
            lengths = [0, 3, 17] if hostile else [0, 1, 2]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if depth >= 3:
                    continue
                sub = _message(field.message_type, hostility, depth + 1)
                if field.is_repeated:
                    n = draw(st.sampled_from(lengths))
                    getattr(msg, field.name).extend(draw(st.lists(sub, min_size=n, max_size=n)))
                else:
                    getattr(msg, field.name).CopyFrom(draw(sub))
            elif field.is_repeated:
                n = draw(st.sampled_from(lengths))
                getattr(msg, field.name).extend(
                    draw(st.lists(scalar(field, hostile), min_size=n, max_size=n))
                )
            else:
                setattr(msg, field.name, draw(scalar(field, hostile)))
        return msg

    return build()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[list[int]]:
    """Field-number paths to every string field, through singular message fields (depth <= 2)."""
    out = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            out.append([field.number])
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            out += [[field.number, *p] for p in _string_paths(field.message_type, depth + 1)]
    return out


def invalid_utf8(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A generated message with a string field (maybe nested) replaced by invalid UTF-8."""
    paths = _string_paths(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        base = draw(messages(descriptor)).SerializeToString()
        if not paths:
            return base
        path = draw(st.sampled_from(paths))
        payload = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"a\xed\xa0\x80b", b"\xf8\x88\x80\x80\x80"]))
        for number in reversed(path):
            payload = _delimited(number, payload)
        return base + payload  # the last occurrence of a field wins when parsing

    return build()


# -- the server and what a call does to it -------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str
    details: str


def _outcome(e: grpc.RpcError) -> Outcome:
    call: Any = e
    reason = ""
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    reason = info.reason
    return Outcome(call.code(), reason, call.details() or "")


def _pipelined_outcome(path: str, results: list[node_pb2.StreamCallResult]) -> tuple[Outcome, bool]:
    """The outcome of a message of pipelined calls: each call's status must be one a client can
    act on, with a reason, as a unary call's (or DEADLINE_EXCEEDED / CANCELLED, as gRPC's own:
    a fuzzed per-call timeout may be tiny, a fuzzed cancellation may name a call). OK when any
    call succeeded or its outcome is unknown (the store may have changed), else the first
    call's error (then nothing may have changed); and whether an outcome is unknown."""
    refusals, changed, unknown = [], not results, False
    for r in results:
        if not r.HasField("error"):
            changed = True
            continue
        code = next(c for c in grpc.StatusCode if c.value[0] == r.error.code)
        reason = ""
        for d in r.error.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info):
                reason = info.reason
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            changed = unknown = True  # its write may have been queued
            continue
        assert code in ALLOWED and reason, (
            f"{path}: a call answered {code.name} {reason}: {r.error.message!r}"
        )
        refusals.append(Outcome(code, reason, r.error.message))
    return (Outcome(grpc.StatusCode.OK, "", "") if changed else refusals[0]), unknown


class Fuzzed:
    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.channel = grpc.insecure_channel(
            proc.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        self.client = sk.SyncClient.connect(proc.address)
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (method, code, reason)

    def close(self) -> None:
        self.client.close()
        self.channel.close()

    def call(self, method: MethodDescriptor, path: str, body: bytes) -> Outcome:
        outcome = self._call(method, path, body)
        self.outcomes[(method.name, outcome.code.name, outcome.reason)] += 1
        return outcome

    def _call(self, method: MethodDescriptor, path: str, body: bytes) -> Outcome:
        if method.client_streaming:  # ExecuteStream: body is one message of calls
            pipelined: Any = self.channel.stream_stream(path)(iter([body]), timeout=10)
            try:
                results = [
                    r for raw in pipelined for r in node_pb2.ExecuteStreamResponse.FromString(raw).results
                ]
            except grpc.RpcError as e:
                return _outcome(e)
            outcome, unknown = _pipelined_outcome(path, results)
            if unknown:  # a write cut short may still be queued: let it land before the next check
                self.client.register_machine_type(ORDER)  # (a no-op commit, answered after it)
            return outcome
        if method.server_streaming:
            stream = self.channel.unary_stream(path)
            call: Any = stream(body, timeout=1.0)
            try:
                next(call)
            except StopIteration:
                pass
            except grpc.RpcError as e:
                return _outcome(e)
            finally:
                call.cancel()
            return Outcome(grpc.StatusCode.OK, "", "")
        try:
            self.channel.unary_unary(path)(body, timeout=10)
        except grpc.RpcError as e:
            return _outcome(e)
        return Outcome(grpc.StatusCode.OK, "", "")

    def revision(self) -> int:
        call = event_pb2_grpc.EventServiceStub(self.channel).Watch(event_pb2.WatchRequest(), timeout=10)
        try:
            return int(next(call).progress_revision)
        finally:
            call.cancel()

    def snapshot(self) -> tuple[Any, ...]:
        c = self.client
        trees = []
        for root in ("fz-root", "fz-other"):
            try:
                trees.append(c.walk(root))
            except sk.NotFoundError:
                trees.append(None)
        try:
            run: Any = c.get_run("fz-run")
        except sk.NotFoundError:
            run = None
        consumers = [(x.name, x.acked_revision, x.create_revision) for x in c.list_consumers()]
        return (
            self.revision(),
            trees,
            c.list_machine_types(all_versions=True),
            consumers,
            run,
            c.list_savepoints("fz-run") if run is not None else None,
            c.list_tree_snapshots("fz-root") if trees[0] is not None else None,
        )

    def check(self, method: MethodDescriptor, path: str, body: bytes) -> Outcome:
        """Send body; the answer is allowed, carries a reason, and a refusal changed nothing."""
        before = self.snapshot()
        outcome = self.call(method, path, body)
        code = outcome.code
        if method.server_streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return outcome  # an accepted stream with nothing to send yet, or a call's own timeout
        assert code in ALLOWED, f"{path} answered {code.name} {outcome.reason}: {outcome.details!r}"
        if code == grpc.StatusCode.OK:
            return outcome
        if not (code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(body) > MAX_MESSAGE):
            assert outcome.reason, (
                f"{path} answered {code.name} without an ErrorInfo reason: {outcome.details!r}"
            )
        after = self.snapshot()
        assert after == before, f"{path} refused ({code.name} {outcome.reason}) but the store changed"
        return outcome

    def alive(self) -> None:
        assert self.proc.proc is not None and self.proc.proc.poll() is None, self.proc.log()[-3000:]
        assert self.proc.health() == 1  # SERVING


def _ensure_setup(c: sk.SyncClient) -> None:
    """The known state the generated requests aim at; recreated where an earlier (legitimately
    successful) fuzzed call deleted part of it."""
    c.register_machine_type(ORDER)
    c.register_machine_type(ITEM)
    c.register_machine_type(
        sk.MachineType(
            "fzt",
            1,
            ["s0", "s1"],
            "s0",
            [sk.Transition("go", ["s0"], "s1", tasks=[sk.Timer("later", "go", delay_ms=10**9)])],
        )
    )
    try:
        c.get_node("fz-root")
    except sk.NotFoundError:
        # Versions named: a fuzzed call may have registered newer ones.
        root = c.create_root("order", "fz-root", b"{}", content_type="application/json", type_version=1)
        c.add_child(root, "item", "a", type_version=1)
        c.add_child(root, "item", "b", type_version=1)
        c.transition(root, "touch")
    try:
        c.get_node("fz-other")
    except sk.NotFoundError:
        c.create_root("fzt", "fz-other", type_version=1)
        c.transition("fz-other", "go")  # a timer task, due in ~11 days
    if "fzc" not in {x.name for x in c.list_consumers()}:
        c.create_consumer("fzc")
    if not c.is_run_initialized("fz-run"):
        c.create_run("fz-run", {"e1": b"1", "e2": b"2"}, start_ms=0, schedule_ms=1000)
        c.save_entity_states(
            [sk.EntitySave("fz-run", "e1", 1500, b"x"), sk.EntitySave("fz-run", "e2", 1500, b"y")]
        )
    if "snap" not in {x.name for x in c.list_tree_snapshots("fz-root")}:
        c.create_tree_snapshot("fz-root", "snap")
    for task in c.list_tasks("fz-other"):
        if task.id not in KNOWN:
            KNOWN.append(task.id)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    base = Path(tmp_path_factory.mktemp("fuzz"))
    proc = ServerProcess(base / "data", *LIMIT_ARGS, "--backup-dir", str(base / "backups")).start()
    env = Fuzzed(proc)
    yield env
    env.close()
    ok = sum(n for (_, code, _), n in env.outcomes.items() if code == "OK")
    print(f"\nfuzz: {sum(env.outcomes.values())} calls, {ok} accepted; by method, code and reason:")
    for (name, code, reason), n in sorted(env.outcomes.items()):
        print(f"  {name:28} {code:20} {reason:28} {n}")
    # No handler ever failed unexpectedly (that would be logged with its traceback).
    unexpected = [
        line for line in proc.log().splitlines() if "failed unexpectedly" in line or '"UNKNOWN"' in line
    ]
    try:
        assert not unexpected, unexpected[:3]
    finally:
        proc.terminate()


_IDS = [path.rsplit(".", 1)[-1] for path, _ in METHODS]


def test_every_method_of_every_service_is_fuzzed() -> None:
    services = {m.containing_service.name for _, m in METHODS}
    assert services >= {
        "MachineTypeService",
        "NodeService",
        "TaskService",
        "EventService",
        "SavepointService",
        "AdminService",
    }
    assert len(METHODS) >= 44


@pytest.mark.parametrize(("path", "method"), METHODS, ids=_IDS)
def test_random_bytes(fuzzed: Fuzzed, path: str, method: MethodDescriptor) -> None:
    _ensure_setup(fuzzed.client)

    @settings(FUZZ_SETTINGS, max_examples=6)
    @given(
        body=st.one_of(
            st.binary(max_size=64),
            st.binary(min_size=1, max_size=8).map(lambda b: b * 500),
            st.just(b"\x0a" + _varint(2**31) + b"x"),  # a length far past the end
        )
    )
    def run(body: bytes) -> None:
        fuzzed.check(method, path, body)

    run()
    fuzzed.alive()


@pytest.mark.parametrize(("path", "method"), METHODS, ids=_IDS)
def test_generated_messages(fuzzed: Fuzzed, path: str, method: MethodDescriptor) -> None:
    _ensure_setup(fuzzed.client)

    @settings(FUZZ_SETTINGS, max_examples=GENERATED)
    @given(message=messages(method.input_type))
    def run(message: Message) -> None:
        fuzzed.check(method, path, message.SerializeToString())

    @settings(FUZZ_SETTINGS, max_examples=max(4, GENERATED // 3))
    @given(body=invalid_utf8(method.input_type))
    def run_invalid_utf8(body: bytes) -> None:
        outcome = fuzzed.check(method, path, body)
        if _string_paths(method.input_type) and len(body) <= MAX_MESSAGE:
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (path, outcome)
            assert outcome.reason == "MALFORMED_REQUEST"

    run()
    run_invalid_utf8()
    fuzzed.alive()


def _key_list_paths(descriptor: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Paths of fields from descriptor down to each repeated NodeKey field (a NodeRef's path, an
    event filter's path_prefix), through message fields, depth <= 3."""
    out = []
    for field in descriptor.fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.full_name == "statekeeper.v1.NodeKey" and field.is_repeated:
            out.append([field])
        elif depth < 3:
            out += [[field, *p] for p in _key_list_paths(field.message_type, depth + 1)]
    return out


DEEP = [(path, method, fields) for path, method in METHODS for fields in _key_list_paths(method.input_type)]


def _deep_request(method: MethodDescriptor, fields: list[FieldDescriptor], depth: int) -> Message:
    """A request whose NodeKey list at `fields` is `depth` keys long (under root fz-root)."""
    msg = message_factory.GetMessageClass(method.input_type)()
    current: Any = msg
    for field in fields[:-1]:
        value = getattr(current, field.name)
        current = value.add() if field.is_repeated else value
    if "root_id" in current.DESCRIPTOR.fields_by_name:
        current.root_id = "fz-root"
    keys = getattr(current, fields[-1].name)
    for i in range(depth):
        keys.add(type="item", id=f"i{i}")
    return msg


def test_deep_paths_cover_every_node_ref() -> None:
    covered = {p.rsplit("/", 1)[-1] for p, _, _ in DEEP}
    assert {"GetNode", "AddChild", "ApplyTransition", "ExecuteBatch", "ListTasks", "Watch"} <= covered


@pytest.mark.parametrize(
    ("path", "method", "fields"),
    DEEP,
    ids=[f"{p.rsplit('/', 1)[-1]}.{'.'.join(f.name for f in fs)}" for p, _, fs in DEEP],
)
@pytest.mark.parametrize("depth", [17, 100, 1000])
def test_deep_paths(
    fuzzed: Fuzzed, path: str, method: MethodDescriptor, fields: list[FieldDescriptor], depth: int
) -> None:
    _ensure_setup(fuzzed.client)
    outcome = fuzzed.check(method, path, _deep_request(method, fields, depth).SerializeToString())
    assert outcome.code != grpc.StatusCode.OK, (path, outcome)
    fuzzed.alive()


def test_fuzzing_left_the_known_state_intact(fuzzed: Fuzzed) -> None:
    """A last look (this runs after the fuzz tests in this module): the server is serving and
    answers; nothing logged says a handler failed."""
    fuzzed.alive()
    records = []
    for line in fuzzed.proc.log().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    errors = [r for r in records if str(r.get("level", "")).upper() in ("ERROR", "CRITICAL")]
    assert not errors, errors[:3]
