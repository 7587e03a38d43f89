"""Model-based test: Hypothesis drives random sequences of operations — register machine types
(new, identical again, conflicting, invalid), create roots, add children, transitions (valid,
invalid, unknown, with and without expected_transition_count), deletes, batches (including
failing ones), retries and reuses of request ids — through the SDK against one real server, and
compares every answer (success or the exact code, reason and metadata; returned nodes, states,
transition counts and revisions) with a small pure-Python reference model. After every step the
store itself is compared with the model: every root the example knows is walked (nodes, states,
data, counts, revisions, child counts), and the (type, state) index is listed.

One server (its own data folder, small limits so limits are part of the model) serves the whole
run; each example namespaces its type names and root ids, so examples do not interfere. Only
this test writes to that server, so revisions are predicted exactly (gap-free).

Counts: 50 examples of up to 30 steps each by default (about 1,500 compared answers, ~15 s);
STATEKEEPER_MODEL_EXAMPLES=500 (and STATEKEEPER_MODEL_STEPS) for longer runs.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import statekeeper as sk
from statekeeper.v1 import event_pb2, event_pb2_grpc
from tests.support import ServerProcess

EXAMPLES = int(os.environ.get("STATEKEEPER_MODEL_EXAMPLES", "50"))
STEPS = int(os.environ.get("STATEKEEPER_MODEL_STEPS", "30"))

MAX_DEPTH = 3
MAX_CHILDREN = 3
MAX_OPS = 4
MAX_DELETED = 5
SERVER_ARGS = (
    "--max-path-depth",
    str(MAX_DEPTH),
    "--max-children-per-node",
    str(MAX_CHILDREN),
    "--max-batch-operations",
    str(MAX_OPS),
    "--max-deleted-nodes",
    str(MAX_DELETED),
)

TYPE_KEYS = ("A", "B")
ROOT_KEYS = ("r0", "r1", "r2")
CHILD_IDS = ("a", "b")
TRANSITIONS = ("go", "back", "stop", "jump")
UNKNOWN_TRANSITION = "nope"

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


# -- the reference model ---------------------------------------------------------------------


class Refused(Exception):
    """What the model says the server must answer instead of success."""

    def __init__(self, code: grpc.StatusCode, reason: str, **metadata: object) -> None:
        super().__init__(f"{code.name} {reason} {metadata}")
        self.code = code
        self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class MNode:
    type: str
    version: int
    state: str
    count: int
    data: bytes
    content_type: str
    create_revision: int
    update_revision: int
    terminal: bool


# Operations, as plain tuples (also used to build the requests):
#   ("create_root", root_id, type, version, data, content_type)
#   ("add_child", parent, type, id, version, data, content_type)
#   ("transition", ref, name, data | None, content_type, expected | None)
#   ("delete", ref)
Op = tuple[Any, ...]


def norm_type(mt: sk.MachineType) -> tuple[Any, ...]:
    return (
        mt.name,
        mt.version,
        tuple(mt.states),
        mt.initial_state,
        tuple(mt.terminal_states),
        tuple((t.name, tuple(t.sources), t.destination, tuple(t.tasks)) for t in mt.transitions),
        mt.description,
    )


@dataclass
class Scratch:
    """The state one commit is applied to (a copy: a refused commit is simply dropped)."""

    types: dict[tuple[str, int], sk.MachineType]
    nodes: dict[sk.Ref, MNode]
    revision: int  # the revision this commit gets if it succeeds
    deleted: set[sk.Ref] = field(default_factory=set)

    def machine_type(self, name: str, version: int) -> sk.MachineType:
        if version:
            mt = self.types.get((name, version))
        else:
            versions = [v for (n, v) in self.types if n == name]
            mt = self.types[(name, max(versions))] if versions else None
        if mt is None:
            raise Refused(NOT_FOUND, "MACHINE_TYPE_NOT_FOUND")
        return mt

    def child_counts(self, ref: sk.Ref) -> dict[str, int]:
        counts: dict[str, int] = {}
        for other in self.nodes:
            if (
                other.root_id == ref.root_id
                and other.path[:-1] == ref.path
                and len(other.path) == len(ref.path) + 1
            ):
                counts[other.path[-1][0]] = counts.get(other.path[-1][0], 0) + 1
        return counts

    def node(self, ref: sk.Ref) -> sk.Node:
        n = self.nodes[ref]
        return sk.Node(
            ref=ref,
            type=n.type,
            type_version=n.version,
            state=n.state,
            data=n.data,
            content_type=n.content_type,
            transition_count=n.count,
            create_revision=n.create_revision,
            update_revision=n.update_revision,
            terminal=n.terminal,
            child_counts=self.child_counts(ref),
        )

    def _require(self, ref: sk.Ref) -> MNode:
        if len(ref.path) > MAX_DEPTH:
            raise Refused(INVALID, "PATH_TOO_DEEP", limit="max_path_depth")
        n = self.nodes.get(ref)
        if n is None:
            raise Refused(NOT_FOUND, "NODE_NOT_FOUND")
        return n

    def _new(self, ref: sk.Ref, mt: sk.MachineType, data: bytes | None, content_type: str) -> sk.Node:
        if ref in self.deleted:
            raise Refused(INVALID, "RECREATED_IN_BATCH")
        if ref in self.nodes:
            raise Refused(EXISTS, "NODE_EXISTS")
        self.nodes[ref] = MNode(
            mt.name,
            mt.version,
            mt.initial_state,
            0,
            data or b"",
            content_type if data is not None else "",
            self.revision,
            self.revision,
            mt.initial_state in mt.terminal_states,
        )
        return self.node(ref)

    def apply(self, op: Op) -> Any:
        kind = op[0]
        if kind == "create_root":
            _, root_id, type_name, version, data, content_type = op
            mt = self.machine_type(type_name, version)
            return self._new(sk.Ref(root_id), mt, data, content_type)
        if kind == "add_child":
            _, parent, type_name, child_id, version, data, content_type = op
            if len(parent.path) + 1 > MAX_DEPTH:
                raise Refused(INVALID, "PATH_TOO_DEEP", limit="max_path_depth")
            self._require(parent)
            if sum(self.child_counts(parent).values()) >= MAX_CHILDREN:
                raise Refused(EXHAUSTED, "TOO_MANY_CHILDREN", limit="max_children_per_node")
            mt = self.machine_type(type_name, version)
            return self._new(parent.child(type_name, child_id), mt, data, content_type)
        if kind == "transition":
            _, ref, name, data, content_type, expected = op
            n = self._require(ref)
            mt = self.types[(n.type, n.version)]
            allowed = ",".join(t.name for t in mt.transitions if n.state in t.sources)
            definition = next((t for t in mt.transitions if t.name == name), None)
            if definition is None:
                raise Refused(
                    INVALID, "UNKNOWN_TRANSITION", current_state=n.state, allowed_transitions=allowed
                )
            if expected is not None and expected != n.count:
                raise Refused(ABORTED, "TRANSITION_COUNT_MISMATCH", expected=expected, actual=n.count)
            if n.state not in definition.sources:
                raise Refused(
                    PRECONDITION,
                    "INVALID_TRANSITION",
                    current_state=n.state,
                    allowed_transitions=allowed,
                    terminal=str(n.terminal).lower(),
                )
            updated = replace(
                n,
                state=definition.destination,
                count=n.count + 1,
                update_revision=self.revision,
                terminal=definition.destination in mt.terminal_states,
            )
            if data is not None:
                updated = replace(updated, data=data, content_type=content_type)
            self.nodes[ref] = updated
            return sk.TransitionResult(self.node(ref), self.revision, n.state, ())
        if kind == "delete":
            _, ref = op
            self._require(ref)
            doomed = [
                r for r in self.nodes if r.root_id == ref.root_id and r.path[: len(ref.path)] == ref.path
            ]
            if len(doomed) > MAX_DELETED:
                raise Refused(EXHAUSTED, "TOO_MANY_NODES", limit="max_deleted_nodes")
            for r in doomed:
                del self.nodes[r]
                self.deleted.add(r)
            return len(doomed)
        raise AssertionError(kind)


class Model:
    def __init__(self, revision: int) -> None:
        self.types: dict[tuple[str, int], sk.MachineType] = {}
        self.nodes: dict[sk.Ref, MNode] = {}
        self.revision = revision  # the last revision committed

    def scratch(self) -> Scratch:
        return Scratch(dict(self.types), dict(self.nodes), self.revision + 1)

    def commit(self, s: Scratch) -> None:
        self.types, self.nodes, self.revision = s.types, s.nodes, s.revision

    def register(self, mt: sk.MachineType) -> sk.Registration:
        existing = self.types.get((mt.name, mt.version))
        if existing is not None:
            if norm_type(existing) == norm_type(mt):
                return sk.Registration(mt, False, 0)
            raise Refused(EXISTS, "MACHINE_TYPE_EXISTS")
        self.revision += 1
        self.types[(mt.name, mt.version)] = mt
        return sk.Registration(mt, True, self.revision)

    def one(self, op: Op) -> Any:
        s = self.scratch()
        result = s.apply(op)
        self.commit(s)
        return result

    def batch(self, ops: list[Op]) -> sk.BatchResult:
        if len(ops) > MAX_OPS:
            raise Refused(INVALID, "TOO_MANY_OPERATIONS", limit="max_batch_operations")
        s = self.scratch()
        results = []
        for i, op in enumerate(ops):
            try:
                results.append(s.apply(op))
            except Refused as e:
                raise Refused(e.code, e.reason, operation_index=i, **e.metadata) from None
        self.commit(s)
        return sk.BatchResult(s.revision, tuple(results))


# -- requests ------------------------------------------------------------------------------


def add_to_batch(batch: sk.Batch, op: Op) -> None:
    kind = op[0]
    if kind == "create_root":
        _, root_id, type_name, version, data, ct = op
        batch.create_root(type_name, root_id, data, content_type=ct, type_version=version)
    elif kind == "add_child":
        _, parent, type_name, child_id, version, data, ct = op
        batch.add_child(parent, type_name, child_id, data, content_type=ct, type_version=version)
    elif kind == "transition":
        _, ref, name, data, ct, expected = op
        batch.transition(ref, name, data, content_type=ct, expected_transition_count=expected)
    else:
        batch.delete(op[1])


def send(client: sk.SyncClient, op: Op, request_id: str) -> Any:
    kind = op[0]
    if kind == "create_root":
        _, root_id, type_name, version, data, ct = op
        return client.create_root(
            type_name, root_id, data, content_type=ct, type_version=version, request_id=request_id
        )
    if kind == "add_child":
        _, parent, type_name, child_id, version, data, ct = op
        return client.add_child(
            parent, type_name, child_id, data, content_type=ct, type_version=version, request_id=request_id
        )
    if kind == "transition":
        _, ref, name, data, ct, expected = op
        return client.transition(
            ref, name, data, content_type=ct, expected_transition_count=expected, request_id=request_id
        )
    return client.delete_node(op[1], request_id=request_id)


OUTCOMES: Counter[str] = Counter()
"""How often each outcome was compared (success or the reason), to check the run covered them."""


def expect(call: Callable[[], Any], model_step: Callable[[], Any]) -> Any:
    """Run the model, then the server; their answers must agree."""
    try:
        expected: Any = model_step()
    except Refused as refusal:
        expected = refusal
    OUTCOMES[expected.reason if isinstance(expected, Refused) else "OK"] += 1
    if isinstance(expected, Refused) and "operation_index" in expected.metadata:
        OUTCOMES["batch refused"] += 1
    try:
        got = call()
    except sk.StatekeeperError as e:
        assert isinstance(expected, Refused), f"the server refused ({e!r}); the model expected {expected!r}"
        assert (e.code, e.reason) == (expected.code, expected.reason), (e, expected)
        for key, value in expected.metadata.items():
            assert e.metadata.get(key) == value, (key, e.metadata, expected.metadata)
        return None
    assert not isinstance(expected, Refused), f"the server answered {got!r}; the model expected {expected!r}"
    if isinstance(got, sk.Registration):
        assert (norm_type(got.machine_type), got.created, got.revision) == (
            norm_type(expected.machine_type),
            expected.created,
            expected.revision,
        )
    else:
        assert got == expected, f"\nserver: {got!r}\nmodel:  {expected!r}"
    return got


# -- the state machine ---------------------------------------------------------------------

_examples = itertools.count()


@st.composite
def machine_types(draw: st.DrawFn, name: str, version: int) -> sk.MachineType:
    """A valid definition: 1-3 states, some terminal, transitions only out of non-terminal ones."""
    states = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    terminal = draw(st.lists(st.sampled_from(states), unique=True, max_size=max(1, len(states) - 1)))
    live = [s for s in states if s not in terminal]
    transitions = []
    if live:
        for t in draw(st.lists(st.sampled_from(TRANSITIONS), unique=True, min_size=1, max_size=4)):
            sources = draw(st.lists(st.sampled_from(live), unique=True, min_size=1))
            transitions.append(sk.Transition(t, sources, draw(st.sampled_from(states))))
    return sk.MachineType(name, version, states, "s0", transitions, terminal)


INVALID_TYPES: list[tuple[Callable[[str], sk.MachineType], str]] = [
    (lambda n: sk.MachineType(n, 1, ["s0"], "s9"), "UNKNOWN_STATE"),
    (lambda n: sk.MachineType(n, 0, ["s0"], "s0"), "FIELD_INVALID"),
    (lambda n: sk.MachineType(n, 1, ["s0", "s0"], "s0"), "DUPLICATE_NAME"),
    (
        lambda n: sk.MachineType(n, 1, ["s0"], "s0", [sk.Transition("go", ["s0"], "s0")], ["s0"]),
        "TERMINAL_SOURCE",
    ),
    (lambda n: sk.MachineType(n, 1, ["s0"], "s0", [sk.Transition("go", [], "s0")]), "FIELD_REQUIRED"),
]

COVERED = (
    "NODE_NOT_FOUND",
    "NODE_EXISTS",
    "MACHINE_TYPE_NOT_FOUND",
    "MACHINE_TYPE_EXISTS",
    "INVALID_TRANSITION",
    "UNKNOWN_TRANSITION",
    "TRANSITION_COUNT_MISMATCH",
    "TOO_MANY_OPERATIONS",
    "REQUEST_ID_REUSED",
)

datas = st.one_of(st.none(), st.binary(max_size=8))
content_types = st.sampled_from(["", "text/plain", "application/json"])


class StoreMachine(RuleBasedStateMachine):
    address = ""
    revision_channel: grpc.Channel | None = None

    def __init__(self) -> None:
        super().__init__()
        self.client = sk.SyncClient.connect(self.address)
        self.prefix = f"m{next(_examples)}"
        self.model = Model(current_revision())
        self.request_ids = itertools.count()
        # Successful writes sent with a request_id: (what was sent, request_id, the answer).
        self.replays: list[tuple[Op | list[Op], str, Any]] = []

    def teardown(self) -> None:
        try:
            self.check_types()
        finally:
            self.client.close()

    # -- helpers ---------------------------------------------------------------------------

    def type_name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def roots(self) -> list[str]:
        return [f"{self.prefix}-{r}" for r in ROOT_KEYS]

    def existing(self) -> list[sk.Ref]:
        return sorted(self.model.nodes, key=str)

    def pick_ref(self, data: st.DataObject) -> sk.Ref:
        """Mostly an existing node; else a missing root or a missing child of an existing node."""
        existing = self.existing()
        if existing and data.draw(st.sampled_from([True, True, True, False]), label="existing?"):
            return data.draw(st.sampled_from(existing), label="node")
        missing = [sk.Ref(r) for r in self.roots() if sk.Ref(r) not in self.model.nodes]
        missing += [
            ref.child(self.type_name(t), i)
            for ref in existing
            for t in TYPE_KEYS
            for i in CHILD_IDS
            if ref.child(self.type_name(t), i) not in self.model.nodes
        ]
        return data.draw(st.sampled_from(missing or existing), label="missing node")

    def draw_op(self, data: st.DataObject, kind: str = "") -> Op:
        if not kind:
            kind = data.draw(
                st.sampled_from(["create_root", "add_child", "transition", "transition", "delete"])
            )
        version = data.draw(st.sampled_from([0, 0, 0, 1, 2]), label="type_version")
        type_name = self.type_name(data.draw(st.sampled_from(TYPE_KEYS), label="type"))
        payload = data.draw(datas, label="data")
        ct = data.draw(content_types, label="content_type") if payload is not None else ""
        if kind == "create_root":
            return (
                kind,
                data.draw(st.sampled_from(self.roots()), label="root"),
                type_name,
                version,
                payload,
                ct,
            )
        if kind == "add_child":
            parent = self.pick_ref(data)
            child_id = data.draw(st.sampled_from(CHILD_IDS), label="child id")
            return (kind, parent, type_name, child_id, version, payload, ct)
        ref = self.pick_ref(data)
        if kind == "delete":
            return (kind, ref)
        node = self.model.nodes.get(ref)
        choices = list(TRANSITIONS)
        if node is not None:
            choices += [t.name for t in self.model.types[(node.type, node.version)].transitions] * 2
        name = data.draw(st.sampled_from([*choices, UNKNOWN_TRANSITION]), label="transition")
        count = node.count if node is not None else 0
        expected = data.draw(
            st.sampled_from([None, None, count, count + 1]), label="expected_transition_count"
        )
        return (kind, ref, name, payload, ct, expected)

    def request_id(self, data: st.DataObject) -> str:
        if data.draw(st.booleans(), label="with request_id"):
            return f"{self.prefix}-q{next(self.request_ids)}"
        return ""

    # -- rules -------------------------------------------------------------------------------

    def register(self, mt: sk.MachineType) -> None:
        expect(lambda: self.client.register_machine_type(mt), lambda: self.model.register(mt))

    @initialize(data=st.data())
    def first_type_and_root(self, data: st.DataObject) -> None:
        self.register(data.draw(machine_types(self.type_name(TYPE_KEYS[0]), 1), label="first type"))
        op = ("create_root", self.roots()[0], self.type_name(TYPE_KEYS[0]), 0, None, "")
        expect(lambda: send(self.client, op, ""), lambda: self.model.one(op))

    @rule(data=st.data())
    def register_type(self, data: st.DataObject) -> None:
        """A new definition (created, or ALREADY_EXISTS under a taken version), the same one
        again (a no-op), or an invalid one."""
        what = data.draw(st.sampled_from(["new", "new", "again", "invalid"]), label="registration")
        if what == "again" and self.model.types:
            self.register(data.draw(st.sampled_from(sorted(self.model.types.values(), key=norm_type))))
        elif what == "invalid":
            make, reason = data.draw(st.sampled_from(INVALID_TYPES))
            mt = make(self.type_name(data.draw(st.sampled_from(TYPE_KEYS))))

            def refuse() -> None:
                raise Refused(INVALID, reason)

            expect(lambda: self.client.register_machine_type(mt), refuse)
        else:
            name = self.type_name(data.draw(st.sampled_from(TYPE_KEYS), label="type"))
            version = data.draw(st.integers(1, 2), label="version")
            self.register(data.draw(machine_types(name, version), label="definition"))

    def single(self, data: st.DataObject, kind: str) -> None:
        op = self.draw_op(data, kind)
        rid = self.request_id(data)
        got = expect(lambda: send(self.client, op, rid), lambda: self.model.one(op))
        if got is not None and rid:
            self.replays.append((op, rid, got))

    @rule(data=st.data())
    def create_root(self, data: st.DataObject) -> None:
        self.single(data, "create_root")

    @rule(data=st.data())
    def add_child(self, data: st.DataObject) -> None:
        self.single(data, "add_child")

    @rule(data=st.data())
    def transition(self, data: st.DataObject) -> None:
        self.single(data, "transition")

    @rule(data=st.data())
    def another_transition(self, data: st.DataObject) -> None:
        self.single(data, "transition")

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self.single(data, "delete")

    @rule(data=st.data())
    def batch(self, data: st.DataObject) -> None:
        ops = [self.draw_op(data) for _ in range(data.draw(st.integers(1, MAX_OPS + 1), label="operations"))]
        rid = self.request_id(data)
        batch = sk.Batch()
        for op in ops:
            add_to_batch(batch, op)
        got = expect(lambda: self.client.execute(batch, request_id=rid), lambda: self.model.batch(ops))
        if got is not None and rid:
            self.replays.append((ops, rid, got))

    @precondition(lambda self: bool(self.replays))
    @rule(data=st.data())
    def retry_with_request_id(self, data: st.DataObject) -> None:
        """A retry returns the first outcome and applies nothing (the model does not change)."""
        sent, rid, first = data.draw(st.sampled_from(self.replays))
        if isinstance(sent, list):
            batch = sk.Batch()
            for op in sent:
                add_to_batch(batch, op)
            again = self.client.execute(batch, request_id=rid)
        else:
            again = send(self.client, sent, rid)
        assert again == first

    @precondition(lambda self: bool(self.replays))
    @rule(data=st.data())
    def reuse_request_id_for_another_request(self, data: st.DataObject) -> None:
        _, rid, _ = data.draw(st.sampled_from(self.replays))

        def refuse() -> None:
            raise Refused(INVALID, "REQUEST_ID_REUSED")

        other = sk.Ref(f"{self.prefix}-never")
        expect(lambda: self.client.delete_node(other, request_id=rid), refuse)

    # -- the store equals the model ----------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        view = self.model.scratch()
        for root in self.roots():
            ref = sk.Ref(root)
            if ref not in self.model.nodes:
                with pytest.raises(sk.NotFoundError):
                    self.client.get_node(ref)
                continue
            walked = self.client.walk(ref)
            seen: set[sk.Ref] = set()
            for node in walked:  # parents before children, each node once
                assert node.ref not in seen
                assert not node.ref.path or sk.Ref(root, node.ref.path[:-1]) in seen
                seen.add(node.ref)
            expected = {r: view.node(r) for r in self.model.nodes if r.root_id == root}
            assert {n.ref: n for n in walked} == expected
        # The (type, terminal, state) index agrees with the nodes.
        for key in TYPE_KEYS:
            name = self.type_name(key)
            if not any(n == name for n, _ in self.model.types):
                continue
            listed = {n.ref: n for n in self.client.list_nodes(name)}
            assert listed == {r: view.node(r) for r, n in self.model.nodes.items() if n.type == name}
            active = {n.ref for n in self.client.list_nodes(name, status="active")}
            assert active == {r for r, n in self.model.nodes.items() if n.type == name and not n.terminal}

    def check_types(self) -> None:
        for (name, version), mt in self.model.types.items():
            assert norm_type(self.client.get_machine_type(name, version)) == norm_type(mt)
        for key in TYPE_KEYS:
            name = self.type_name(key)
            versions = [v for n, v in self.model.types if n == name]
            if versions:
                assert self.client.get_machine_type(name).version == max(versions)
            else:
                with pytest.raises(sk.NotFoundError):
                    self.client.get_machine_type(name)
        assert current_revision() == self.model.revision, "a write the model does not know of"


def current_revision() -> int:
    """The server's durable revision: the first message of a Watch says where it stands."""
    assert StoreMachine.revision_channel is not None
    call = event_pb2_grpc.EventServiceStub(StoreMachine.revision_channel).Watch(
        event_pb2.WatchRequest(), timeout=10
    )
    try:
        return int(next(call).progress_revision)
    finally:
        call.cancel()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("model")) / "data", *SERVER_ARGS).start()
    yield proc
    proc.terminate()


def test_store_behaves_like_the_model(model_server: ServerProcess) -> None:
    StoreMachine.address = model_server.address
    with grpc.insecure_channel(model_server.address) as channel:
        StoreMachine.revision_channel = channel
        try:
            run_state_machine_as_test(
                StoreMachine,
                settings=settings(
                    max_examples=EXAMPLES,
                    stateful_step_count=STEPS,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
        finally:
            StoreMachine.revision_channel = None
    assert model_server.health() == 1
    print(f"model test outcomes: {dict(OUTCOMES.most_common())}")
    # The run compared each kind of answer, not just a few.
    for outcome in ("OK", "batch refused", *COVERED):
        assert OUTCOMES[outcome] > 0, f"never compared {outcome}: {dict(OUTCOMES)}"
