"""ExecuteStream (pipelining, issue 13 item 5): every call of the stream is answered exactly as its
unary call (same google.rpc.Status, same request_id semantics, same deadline and cancellation
behaviour), calls that arrive together commit in few groups, the stream is bounded, and the
SDK's pipelined client (connect(pipeline=True)) raises what the unary client raises and retries
what it retries, also across a kill -9 of the server. Real server processes, RocksDB, gRPC."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

import statekeeper as sk
from statekeeper.v1 import common_pb2, node_pb2, node_pb2_grpc
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess

READ_TOKEN, WRITE_TOKEN = "stream-reader-token", "stream-writer-token"


def _start(data: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    proc = ServerProcess(data, *args, env=env).start()
    with sk.SyncClient.connect(proc.address, token=WRITE_TOKEN if env else None) as c:
        c.register_machine_type(ORDER)
        c.register_machine_type(ITEM)
    return proc


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _start(tmp_path_factory.mktemp("stream") / "data", "--metrics-listen", "127.0.0.1:0")
    yield proc
    proc.terminate()


def _ref(root: str, *path: tuple[str, str]) -> common_pb2.NodeRef:
    return common_pb2.NodeRef(root_id=root, path=[common_pb2.NodeKey(type=t, id=i) for t, i in path])


def _transition(root: str, name: str, **kw: Any) -> node_pb2.ApplyTransitionRequest:
    return node_pb2.ApplyTransitionRequest(node=_ref(root), transition=name, **kw)


def _call(call_id: int, kind: str, request: Any, timeout: float | None = None) -> node_pb2.StreamCall:
    out = node_pb2.StreamCall(call_id=call_id, **{kind: request})
    if timeout is not None:
        out.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
    return out


def _message(*calls: node_pb2.StreamCall) -> node_pb2.ExecuteStreamRequest:
    return node_pb2.ExecuteStreamRequest(calls=calls)


def _stream(
    address: str,
    calls: Sequence[node_pb2.StreamCall],
    metadata: Sequence[tuple[str, str]] = (),
    per_message: int = 1,
) -> dict[int, node_pb2.StreamCallResult]:
    """Send the calls (per_message in each message), half-close, and collect every result (by
    call_id) until the stream ends OK."""
    messages = [_message(*calls[i : i + per_message]) for i in range(0, len(calls), per_message)]
    with grpc.insecure_channel(address) as channel:
        responses = node_pb2_grpc.NodeServiceStub(channel).ExecuteStream(
            iter(messages), metadata=metadata, timeout=30
        )
        out = {r.call_id: r for response in responses for r in response.results}
    assert len(out) == len([c for c in calls if c.WhichOneof("call") != "cancel"])
    return out


UNARY = {
    "apply_transition": "ApplyTransition",
    "execute_batch": "ExecuteBatch",
    "create_root": "CreateRoot",
    "add_child": "AddChild",
    "delete_node": "DeleteNode",
}


def _unary_status(address: str, kind: str, request: Any) -> status_pb2.Status:
    """The google.rpc.Status a unary call ends with (it must fail)."""
    with grpc.insecure_channel(address) as channel:
        method = getattr(node_pb2_grpc.NodeServiceStub(channel), UNARY[kind])
        with pytest.raises(grpc.RpcError) as e:
            method(request, timeout=30)
    trailers = dict(e.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == e.value.code().value[0] and status.message == e.value.details()  # type: ignore[attr-defined]
    return status


def _reason(status: status_pb2.Status) -> str:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def _scrape(proc: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    ready = json.loads((proc.data_dir.parent / f"{proc.data_dir.name}.ready").read_text())
    with urllib.request.urlopen(f"http://{ready['metrics_address']}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _eventually(
    proc: ServerProcess, done: Callable[[dict[tuple[str, frozenset[tuple[str, str]]], float]], bool]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape once `done` holds for it (a stream is counted when the server has seen it end)."""
    deadline = time.monotonic() + 20
    while not done(samples := _scrape(proc)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def _handled(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "statekeeper_rpc_handled_total" and ("method", method) in labels
    )


# -- the protocol: each call answered as its unary call -----------------------------------------


def test_every_call_fails_with_exactly_the_status_of_its_unary_call(plain: ServerProcess, uid: str) -> None:
    with sk.SyncClient.connect(plain.address) as c:
        c.create_root("order", uid)
        c.transition(uid, "pay")
    failing: list[tuple[str, Any, str]] = [
        ("apply_transition", _transition("missing-" + uid, "pay"), "NODE_NOT_FOUND"),
        ("apply_transition", _transition(uid, "pay"), "INVALID_TRANSITION"),
        (
            "apply_transition",
            _transition(uid, "ship", expected_transition_count=7),
            "TRANSITION_COUNT_MISMATCH",
        ),
        ("apply_transition", _transition(uid, "ship", request_id="r" * 200), "FIELD_TOO_LONG"),
        ("apply_transition", _transition(uid, "nonesuch"), "UNKNOWN_TRANSITION"),
        ("create_root", node_pb2.CreateRootRequest(type="order", id=uid), "NODE_EXISTS"),
        ("create_root", node_pb2.CreateRootRequest(type="order", id=""), "FIELD_REQUIRED"),
        ("add_child", node_pb2.AddChildRequest(parent=_ref(uid)), "FIELD_REQUIRED"),
        ("delete_node", node_pb2.DeleteNodeRequest(node=_ref("missing-" + uid)), "NODE_NOT_FOUND"),
        ("execute_batch", node_pb2.ExecuteBatchRequest(), "FIELD_REQUIRED"),
        (
            "execute_batch",
            node_pb2.ExecuteBatchRequest(
                operations=[
                    node_pb2.BatchOperation(
                        create_root=node_pb2.CreateRootRequest(type="order", id=uid + "-b")
                    ),
                    node_pb2.BatchOperation(apply_transition=_transition(uid, "pay")),
                ]
            ),
            "INVALID_TRANSITION",
        ),
    ]
    unary = [_unary_status(plain.address, kind, request) for kind, request, _ in failing]
    answers = _stream(plain.address, [_call(i, kind, r) for i, (kind, r, _) in enumerate(failing)])
    for i, (kind, _, reason) in enumerate(failing):
        assert answers[i].WhichOneof("result") == "error", (kind, answers[i])
        # Code, message, ErrorInfo (reason, metadata) and BadRequest: byte for byte the same.
        assert answers[i].error == unary[i], (kind, answers[i].error, unary[i])
        assert _reason(unary[i]) == reason
    assert _unary_status(plain.address, "execute_batch", failing[-1][1]).details  # names the index
    with sk.SyncClient.connect(plain.address) as c:  # nothing of it was applied
        assert c.get_node(uid).transition_count == 1
        with pytest.raises(sk.NotFoundError):
            c.get_node(uid + "-b")


def test_writes_succeed_over_the_stream_and_are_durable(plain: ServerProcess, uid: str) -> None:
    a, b = uid + "-a", uid + "-b"
    answers = _stream(
        plain.address,
        [
            _call(
                1,
                "create_root",
                node_pb2.CreateRootRequest(type="order", id=a, data=common_pb2.Data(value=b"x")),
            ),
            _call(
                2,
                "execute_batch",
                node_pb2.ExecuteBatchRequest(
                    operations=[
                        node_pb2.BatchOperation(create_root=node_pb2.CreateRootRequest(type="order", id=b))
                    ]
                ),
            ),
        ],
    )
    assert answers[1].create_root.node.state == "new" and answers[1].create_root.revision > 0
    assert answers[2].execute_batch.results[0].create_root.node.ref.root_id == b
    answers = _stream(
        plain.address,
        [
            _call(
                3,
                "add_child",
                node_pb2.AddChildRequest(parent=_ref(a), key=common_pb2.NodeKey(type="item", id="i")),
            ),
            _call(2**64 - 1, "apply_transition", _transition(b, "pay", data=common_pb2.Data(value=b"paid"))),
            _call(0, "apply_transition", _transition(a, "cancel")),
        ],
        per_message=3,  # several calls in one message: each answered on its own
    )
    assert answers[3].add_child.node.ref.path[0].id == "i"
    assert answers[2**64 - 1].apply_transition.from_state == "new"
    assert [t.destination for t in answers[2**64 - 1].apply_transition.tasks] == ["payments"]
    assert answers[0].apply_transition.node.state == "cancelled"
    (deleted,) = _stream(
        plain.address, [_call(5, "delete_node", node_pb2.DeleteNodeRequest(node=_ref(a)))]
    ).values()
    assert deleted.delete_node.deleted_count == 2
    with sk.SyncClient.connect(plain.address) as c:
        assert c.get_node(b).data == b"paid" and c.get_node(b).state == "paid"
        with pytest.raises(sk.NotFoundError):
            c.get_node(a)


def test_a_request_id_on_the_stream_then_unary_returns_the_first_outcome_applied_once(
    plain: ServerProcess, uid: str
) -> None:
    with sk.SyncClient.connect(plain.address) as c:
        c.create_root("order", uid)
    request = _transition(uid, "touch", data=common_pb2.Data(value=b"once"), request_id="rid-" + uid)
    (first,) = _stream(plain.address, [_call(1, "apply_transition", request)]).values()
    (again,) = _stream(plain.address, [_call(2, "apply_transition", request)]).values()
    with grpc.insecure_channel(plain.address) as channel:
        unary = node_pb2_grpc.NodeServiceStub(channel).ApplyTransition(request, timeout=30)
    assert first.apply_transition == again.apply_transition == unary  # the same revision too
    assert unary.node.transition_count == 1
    # The same id with other content: the same refusal either way.
    reused = _transition(uid, "cancel", request_id="rid-" + uid)
    (refused,) = _stream(plain.address, [_call(3, "apply_transition", reused)]).values()
    assert refused.error == _unary_status(plain.address, "apply_transition", reused)
    assert _reason(refused.error) == "REQUEST_ID_REUSED"
    with sk.SyncClient.connect(plain.address) as c:
        assert c.get_node(uid).transition_count == 1


def test_a_call_without_a_call_or_with_a_negative_timeout_is_refused_alone(
    plain: ServerProcess, uid: str
) -> None:
    with sk.SyncClient.connect(plain.address) as c:
        c.create_root("order", uid)
    answers = _stream(
        plain.address,
        [
            node_pb2.StreamCall(call_id=1),
            _call(2, "apply_transition", _transition(uid, "pay"), timeout=-1.0),
            _call(3, "apply_transition", _transition(uid, "pay"), timeout=30.0),
        ],
    )
    assert (
        answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        and _reason(answers[1].error) == "FIELD_REQUIRED"
    )
    assert (
        answers[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        and _reason(answers[2].error) == "FIELD_INVALID"
    )
    assert answers[3].apply_transition.node.state == "paid"


def test_a_request_that_does_not_parse_ends_the_stream_after_the_calls_before_it(
    plain: ServerProcess, uid: str
) -> None:
    with sk.SyncClient.connect(plain.address) as c:
        c.create_root("order", uid)
    good = _message(_call(1, "apply_transition", _transition(uid, "pay"))).SerializeToString()
    with grpc.insecure_channel(plain.address) as channel:
        call = channel.stream_stream("/statekeeper.v1.NodeService/ExecuteStream")
        answers = call(iter([good, b"\xff\xff\xff\xff"]), timeout=30)
        got = []
        with pytest.raises(grpc.RpcError) as e:
            for raw in answers:
                got.extend(node_pb2.ExecuteStreamResponse.FromString(raw).results)
    assert [a.apply_transition.node.state for a in got] == ["paid"]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "MALFORMED_REQUEST" in str(dict(e.value.trailing_metadata())["grpc-status-details-bin"])  # type: ignore[attr-defined]


def test_concurrent_calls_on_one_stream_commit_in_few_groups(tmp_path: Path) -> None:
    # Every sync takes 50 ms longer: what arrives meanwhile waits and joins the next group.
    proc = _start(
        tmp_path / "data", "--metrics-listen", "127.0.0.1:0", "--failpoints", "commit.sync_delay=0.05"
    )
    calls = 200
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.execute(_roots(calls, "g"))
        before = _scrape(proc)

        async def drive() -> list[sk.TransitionResult]:
            async with await sk.Client.connect(proc.address, pipeline=True) as client:
                return await asyncio.gather(*(client.transition(f"g{i}", "pay") for i in range(calls)))

        results = asyncio.run(drive())
        after = _eventually(proc, lambda s: _handled(s, "ExecuteStream") > _handled(before, "ExecuteStream"))
    finally:
        proc.terminate()
    assert all(r.node.state == "paid" for r in results)

    def moved(name: str) -> float:
        return after[(name, frozenset())] - before.get((name, frozenset()), 0.0)

    commits, groups = (
        moved("statekeeper_commit_group_commits_sum"),
        moved("statekeeper_commit_group_commits_count"),
    )
    assert commits >= calls
    assert groups <= calls / 10, (commits, groups)  # a group each would be 200 syncs
    assert len({r.revision for r in results}) == calls  # still one revision per commit
    assert _handled(after, "ApplyTransition") - _handled(before, "ApplyTransition") == calls
    assert _handled(after, "ExecuteStream") - _handled(before, "ExecuteStream") == 1  # on one stream


def _roots(n: int, prefix: str) -> sk.Batch:
    batch = sk.Batch()
    for i in range(n):
        batch.create_root("order", f"{prefix}{i}")
    return batch


def test_the_stream_reads_no_more_than_its_limit_of_calls_in_flight(tmp_path: Path) -> None:
    """With every call slow (rpc.delay) and the server's limit of calls in flight equal to the
    stream's (1000), 1200 calls sent at once would be refused from the 1001st if the stream read
    them all; it reads the rest as the first ones are answered, so none is."""
    proc = _start(tmp_path / "data", "--max-concurrent-rpcs", "1000", "--failpoints", "rpc.delay=1")
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.execute(_roots(1200, "f"))
        answers = _stream(
            proc.address,
            [_call(i, "apply_transition", _transition(f"f{i}", "pay")) for i in range(1200)],
            per_message=300,  # the fourth message is read only in part at first
        )
    finally:
        proc.terminate()
    refused = [a.error for a in answers.values() if a.HasField("error")]
    assert not refused, refused[:3]
    assert all(a.apply_transition.node.state == "paid" for a in answers.values())


# -- deadlines and cancellation ---------------------------------------------------------------------


def test_a_deadline_ends_the_call_as_a_unary_deadline_does(tmp_path: Path) -> None:
    proc = _start(tmp_path / "data", "--failpoints", "rpc.delay=1")  # every call first waits 1 s
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.create_root("order", "d")
        # The server enforces the call's own timeout (nothing on the client side here) ...
        answers = _stream(
            proc.address,
            [
                _call(1, "apply_transition", _transition("d", "pay"), timeout=0.2),
                _call(2, "apply_transition", _transition("d", "touch"), timeout=20),
            ],
        )
        assert answers[1].error == status_pb2.Status(
            code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], message="Deadline Exceeded"
        )
        assert answers[2].apply_transition.node.state == "paid"  # ... and the stream went on
        # The SDK: the same error from a pipelined call as from a unary one.
        errors = []
        for pipeline in (False, True):
            with sk.SyncClient.connect(proc.address, timeout=0.2, pipeline=pipeline) as c:
                with pytest.raises(sk.DeadlineExceededError) as e:
                    c.transition("d", "touch")
                errors.append(
                    (type(e.value), e.value.code, e.value.message, e.value.reason, e.value.metadata)
                )
        assert errors[0] == errors[1], errors
        with sk.SyncClient.connect(proc.address) as c:
            assert c.get_node("d").transition_count == 1  # the calls cut short applied nothing
    finally:
        proc.terminate()


def test_a_call_timed_out_while_its_commit_was_queued_is_settled_by_a_retry_with_its_request_id(
    tmp_path: Path,
) -> None:
    """As test_failpoints' unary regression test, over the stream: the first attempt's commit
    stays queued whatever happens to its call; the retry returns its outcome, applied once."""
    proc = _start(tmp_path / "data", "--failpoints", "commit.sync_delay=0.4")
    try:

        async def main() -> None:
            async with (
                await sk.Client.connect(proc.address, timeout=10.0, pipeline=True) as c,
                await sk.Client.connect(proc.address, timeout=0.05, pipeline=True) as hasty,
            ):
                await c.create_root("order", "q")
                blocker = asyncio.ensure_future(c.create_root("order", "blocker"))
                await asyncio.sleep(0.1)
                with pytest.raises(sk.DeadlineExceededError):
                    await hasty.transition("q", "touch", b"once", request_id="rid-q")
                retried = await c.transition("q", "touch", b"once", request_id="rid-q")
                await blocker
                assert retried.node.transition_count == 1
                assert await c.transition("q", "touch", b"once", request_id="rid-q") == retried
                assert (await c.get_node("q")).transition_count == 1

        asyncio.run(main())
    finally:
        proc.terminate()


def test_cancelling_a_call_or_the_stream_cancels_its_calls_as_a_disconnect_does(tmp_path: Path) -> None:
    proc = _start(
        tmp_path / "data", "--metrics-listen", "127.0.0.1:0", "--failpoints", "commit.sync_delay=0.5"
    )
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.execute(_roots(11, "c"))
        before = _scrape(proc)

        async def main() -> None:
            async with grpc.aio.insecure_channel(proc.address) as channel:
                stub = node_pb2_grpc.NodeServiceStub(channel)
                # One call cancelled by the client while its commit waits behind the slow sync.
                call = stub.ExecuteStream()
                await call.write(
                    _message(_call(1, "create_root", node_pb2.CreateRootRequest(type="order", id="blocker")))
                )
                await call.write(
                    _message(_call(2, "apply_transition", _transition("c0", "pay", request_id="rid-c0")))
                )
                await asyncio.sleep(0.1)
                await call.write(_message(node_pb2.StreamCall(call_id=2, cancel=node_pb2.CancelCall())))
                (first,) = (await call.read()).results
                assert first.call_id == 2
                assert first.error == status_pb2.Status(
                    code=grpc.StatusCode.CANCELLED.value[0], message="Cancelled"
                )
                (blocker,) = (await call.read()).results
                assert blocker.create_root.node.ref.root_id == "blocker"
                # Ten calls in flight (in one message) when the whole stream is cancelled.
                await call.write(
                    _message(
                        *(
                            _call(
                                10 + i,
                                "apply_transition",
                                _transition(f"c{i}", "pay", request_id=f"rid-c{i}"),
                            )
                            for i in range(1, 11)
                        )
                    )
                )
                await asyncio.sleep(0.1)
                call.cancel()

        asyncio.run(main())
        # Their queued commits still resolved: a retry with each request_id gets that outcome.
        with sk.SyncClient.connect(proc.address, pipeline=True) as c:
            for i in range(11):
                result = c.transition(f"c{i}", "pay", request_id=f"rid-c{i}")
                assert result.node.transition_count == 1
                assert c.get_node(f"c{i}").transition_count == 1
        after = _scrape(proc)
    finally:
        proc.terminate()
    cancelled = sum(
        v - before.get(k, 0.0)
        for k, v in after.items()
        if k[0] == "statekeeper_rpc_handled_total"
        and ("method", "ApplyTransition") in k[1]
        and ("code", "CANCELLED") in k[1]
    )
    assert cancelled == 11  # each counted as a cancelled ApplyTransition, as a disconnect is


def test_a_cancelled_sdk_call_raises_cancelled_and_the_client_goes_on(tmp_path: Path) -> None:
    proc = _start(tmp_path / "data", "--failpoints", "rpc.delay=0.5")
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address, pipeline=True) as c:
                await c.create_root("order", "k")
                waiting = asyncio.ensure_future(c.transition("k", "pay"))
                await asyncio.sleep(0.1)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                assert (await c.transition("k", "touch")).node.transition_count == 1
                assert (await c.get_node("k")).state == "paid"

        asyncio.run(main())
    finally:
        proc.terminate()


# -- the SDK: the same outcomes as unary ----------------------------------------------------------


def _outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        result = call()
    except sk.StatekeeperError as e:
        return (type(e), e.code, e.message, e.reason, e.metadata)
    return ("ok", type(result))


def test_the_pipelined_sdk_raises_what_the_unary_sdk_raises(plain: ServerProcess, uid: str) -> None:
    with sk.SyncClient.connect(plain.address) as c:
        c.create_root("order", uid)
        c.transition(uid, "pay")
    calls: list[Callable[[sk.SyncClient], Any]] = [
        lambda c: c.transition("missing-" + uid, "pay"),
        lambda c: c.transition(uid, "pay"),
        lambda c: c.transition(uid, "ship", expected_transition_count=9),
        lambda c: c.transition(uid, "ship", request_id="x" * 500),
        lambda c: c.create_root("order", uid),
        lambda c: c.add_child("missing-" + uid, "item", "i"),
        lambda c: c.delete_node("missing-" + uid),
        lambda c: c.execute(sk.Batch().transition(uid, "touch").transition(uid, "nonesuch")),
        lambda c: c.get_node("missing-" + uid),
    ]
    with (
        sk.SyncClient.connect(plain.address) as unary,
        sk.SyncClient.connect(plain.address, pipeline=True) as pipelined,
    ):
        expected = [_outcome(functools.partial(call, unary)) for call in calls]
        got = [_outcome(functools.partial(call, pipelined)) for call in calls]
    assert got == expected
    assert {e[0] for e in expected} >= {
        sk.NotFoundError,
        sk.FailedPreconditionError,
        sk.AbortedError,
        sk.InvalidArgumentError,
        sk.AlreadyExistsError,
    }

    async def concurrently() -> list[tuple[Any, ...]]:
        async with await sk.Client.connect(plain.address, pipeline=True) as c:

            async def one(i: int) -> tuple[Any, ...]:
                try:
                    await c.transition(uid if i % 2 else "missing-" + uid, "pay")
                except sk.StatekeeperError as e:
                    return (type(e), e.code, e.message, e.reason, e.metadata)
                return ("ok",)

            return await asyncio.gather(*(one(i) for i in range(50)))

    outcomes = asyncio.run(concurrently())
    assert outcomes[0::2] == [expected[0]] * 25 and outcomes[1::2] == [expected[1]] * 25
    with sk.SyncClient.connect(plain.address) as c:
        assert c.get_node(uid).transition_count == 1


def test_a_read_token_is_refused_as_unary(tmp_path: Path) -> None:
    env = {"STATEKEEPER_TOKENS": f"{READ_TOKEN} read dashboards; {WRITE_TOKEN} write workers"}
    proc = _start(tmp_path / "data", env=env)
    try:
        with grpc.insecure_channel(proc.address) as channel:  # the stream itself: refused at once
            stream = node_pb2_grpc.NodeServiceStub(channel).ExecuteStream(
                iter([_message(_call(1, "create_root", node_pb2.CreateRootRequest(type="order", id="p")))]),
                metadata=[("authorization", f"Bearer {READ_TOKEN}")],
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as e:
                list(stream)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        outcomes = []
        for pipeline in (False, True):
            with sk.SyncClient.connect(proc.address, token=READ_TOKEN, pipeline=pipeline) as reader:
                outcomes.append(_outcome(lambda: reader.create_root("order", "p")))
                outcomes.append(_outcome(lambda: reader.transition("p", "pay")))
        assert outcomes[0][0] is sk.PermissionDeniedError and outcomes[0][3] == "INSUFFICIENT_PERMISSION"
        assert outcomes[:2] == outcomes[2:]
        with sk.SyncClient.connect(proc.address, token=WRITE_TOKEN, pipeline=True) as writer:
            assert writer.create_root("order", "p").state == "new"  # a write token pipelines
            with pytest.raises(sk.NotFoundError):
                writer.transition("nope", "pay")
    finally:
        proc.terminate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kill_9_mid_flight_is_retried_with_request_ids_and_applied_once(tmp_path: Path) -> None:
    """Calls in flight on the stream when the server dies: those with a request_id are retried
    by the SDK (a new stream, once the server is back) and applied once; those without one fail
    with UnavailableError, as a unary call whose connection broke, and are not retried."""
    listen = ("--listen", f"127.0.0.1:{_free_port()}")
    data = tmp_path / "data"
    proc = _start(data, *listen)
    with sk.SyncClient.connect(proc.address) as c:
        c.execute(_roots(30, "k"))
    proc.terminate()
    # Every sync takes 3 s: the calls are all in flight (queued or syncing) at the kill.
    proc = ServerProcess(data, *listen, "--failpoints", "commit.sync_delay=3").start()
    try:

        async def main() -> list[Any]:
            async with await sk.Client.connect(proc.address, pipeline=True, retries=30, timeout=60) as client:
                calls = [
                    asyncio.ensure_future(
                        client.transition(f"k{i}", "pay", request_id=f"rid-k{i}" if i < 20 else "")
                    )
                    for i in range(30)
                ]
                await asyncio.sleep(1.0)
                assert not any(call.done() for call in calls)
                proc.kill()
                proc.extra_args = list(listen)
                await asyncio.to_thread(proc.start)  # meanwhile the client retries, refused
                return list(await asyncio.gather(*calls, return_exceptions=True))

        outcomes = asyncio.run(main())
        for i, outcome in enumerate(outcomes[:20]):
            assert isinstance(outcome, sk.TransitionResult), (i, outcome)
            assert outcome.node.transition_count == 1
        for outcome in outcomes[20:]:
            assert isinstance(outcome, sk.UnavailableError), outcome
        with sk.SyncClient.connect(proc.address) as c:
            for i in range(20):
                assert c.get_node(f"k{i}").transition_count == 1  # applied once
                assert c.transition(f"k{i}", "pay", request_id=f"rid-k{i}") == outcomes[i]
            for i in range(20, 30):
                assert c.get_node(f"k{i}").transition_count in (0, 1)  # unknown: not retried
    finally:
        proc.kill()


def test_stopping_the_server_ends_open_streams_at_once(tmp_path: Path) -> None:
    """SIGTERM with an idle pipelined client connected: the stream is ended (it would otherwise
    hold the server for its whole shutdown grace), calls in flight are answered first."""
    proc = _start(tmp_path / "data", "--shutdown-grace-s", "60", "--failpoints", "commit.sync_delay=0.3")
    try:

        async def main() -> tuple[Any, float]:
            async with await sk.Client.connect(proc.address, pipeline=True) as client:
                await client.create_root("order", "s")
                in_flight = asyncio.ensure_future(client.transition("s", "pay"))
                await asyncio.sleep(0.1)
                assert proc.proc is not None
                started = time.monotonic()
                proc.proc.terminate()
                outcome = await asyncio.gather(in_flight, return_exceptions=True)
                code = await asyncio.to_thread(proc.proc.wait, 50)
                assert code == 0
                return outcome[0], time.monotonic() - started

        outcome, took = asyncio.run(main())
    finally:
        proc.kill()
    assert isinstance(outcome, sk.TransitionResult) and outcome.node.state == "paid"
    assert took < 30, took  # far below the 60 s grace it would otherwise have waited out


def test_a_call_cancelled_in_the_message_that_carries_it_is_answered_cancelled(
    plain: ServerProcess, uid: str
) -> None:
    """Regression: a cancellation right behind its call (in one message) reached the call's task
    before it had started; the task ended without an answer and the stream never finished."""
    with sk.SyncClient.connect(plain.address) as c:
        c.create_root("order", uid)
    answers = _stream(
        plain.address,
        [
            _call(1, "apply_transition", _transition(uid, "pay")),
            node_pb2.StreamCall(call_id=1, cancel=node_pb2.CancelCall()),
            _call(2, "apply_transition", _transition("missing-" + uid, "pay")),
        ],
        per_message=3,
    )
    assert answers[1].error == status_pb2.Status(code=grpc.StatusCode.CANCELLED.value[0], message="Cancelled")
    assert _reason(answers[2].error) == "NODE_NOT_FOUND"
    with sk.SyncClient.connect(plain.address) as c:
        assert c.get_node(uid).transition_count == 0  # cancelled before it ran: nothing applied
