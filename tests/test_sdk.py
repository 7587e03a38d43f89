"""The SDK: the sync client mirrors the async one; the async client works end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from pathlib import Path

import pytest

import statekeeper as sk
from tests.support import ServerProcess


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(f) for n, f in vars(cls).items() if callable(f) and not n.startswith("_")
        }

    a, s = public(sk.Client), public(sk.SyncClient)
    assert a.keys() == s.keys()
    for name in a:
        assert list(a[name].parameters) == list(s[name].parameters), name
        # every async method is a coroutine function (or, for a stream, an async generator
        # function), and no sync one is
        method = getattr(sk.Client, name).__func__ if name == "connect" else getattr(sk.Client, name)
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name
        sync_method = getattr(sk.SyncClient, name)
        assert not inspect.iscoroutinefunction(sync_method), name
        assert not inspect.isasyncgenfunction(sync_method), name


def test_async_client_end_to_end(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as client:
            root = await client.create_root("order", uid)
            await client.add_child(root, "item", "a")
            result = await client.transition(root, "pay")
            assert result.node.state == "paid" and result.tasks[0].kind == "outbound"
            assert [n.state for n in await client.walk(root)] == ["paid", "open"]
            try:
                await client.transition(root, "pay")
            except sk.FailedPreconditionError as e:
                assert e.reason == "INVALID_TRANSITION"
            else:
                raise AssertionError("expected FailedPreconditionError")

    asyncio.run(main())


def test_ref_text_form_round_trips_every_id() -> None:
    ref = sk.Ref.parse("o-1/item:i-1/part:p:2")
    assert ref == sk.Ref("o-1", (("item", "i-1"), ("part", "p:2")))
    assert sk.Ref.parse(str(ref)) == ref
    # "/" and "%" inside ids are escaped, so every id has a text form
    odd = sk.Ref("tenant/7", (("item", "50%/off"),))
    assert str(odd) == "tenant%2F7/item:50%25%2Foff"
    assert sk.Ref.parse(str(odd)) == odd
    assert sk.Ref.parse("50%off").root_id == "50%off"  # other "%" stay as typed
    for bad, says in [("", "empty root id"), ("o-1/item", "must be type:id"), ("o-1/:x", "must be type:id")]:
        with pytest.raises(ValueError, match=says):
            sk.Ref.parse(bad)


def test_text_references_work_wherever_a_node_is_expected(client: sk.SyncClient, uid: str) -> None:
    root = client.create_root("order", uid)
    client.add_child(f"{uid}", "item", "i-1")
    client.add_child(f"{uid}/item:i-1", "part", "p:1")
    result = client.transition(f"{uid}/item:i-1", "pack")
    assert result.node.ref == sk.Ref(uid, (("item", "i-1"),)) and result.node.state == "packed"
    assert client.get_node(f"{uid}/item:i-1/part:p:1").ref.path[-1] == ("part", "p:1")
    assert [str(n.ref) for n in client.walk(uid)] == [uid, f"{uid}/item:i-1", f"{uid}/item:i-1/part:p:1"]
    batch = sk.Batch().transition(f"{uid}", "pay").delete(f"{uid}/item:i-1/part:p:1")
    assert client.execute(batch).results[1] == 1
    assert client.get_node(root).state == "paid"
    # a malformed reference is refused before anything is sent
    with pytest.raises(ValueError, match="must be type:id"):
        client.transition(f"{uid}/item", "pack")
    with pytest.raises(ValueError, match="not a root"):
        client.create_tree_snapshot(f"{uid}/item:i-1", "s")


def test_ids_the_notation_must_escape_round_trip_through_the_server(client: sk.SyncClient, uid: str) -> None:
    root = client.create_root("order", f"{uid}/tenant%1")
    child = client.add_child(root, "item", "a/b")
    text = str(child.ref)
    assert text == f"{uid}%2Ftenant%251/item:a%2Fb"
    assert client.get_node(text).ref == sk.Ref(f"{uid}/tenant%1", (("item", "a/b"),))
    assert client.transition(text, "pack").node.state == "packed"


def test_create_run_is_the_rpc_name_and_init_run_a_deprecated_alias(client: sk.SyncClient, uid: str) -> None:
    assert client.create_run(uid, {"e": b"0"}, schedule_ms=1000).run_id == uid
    with pytest.warns(DeprecationWarning, match="use create_run"):
        assert client.init_run(uid + "-old", {"e": b"0"}).run_id == uid + "-old"


# -- retries -------------------------------------------------------------------------------------

ITEM = sk.MachineType(
    name="item",
    version=1,
    states=["open", "packed"],
    initial_state="open",
    transitions=[
        sk.Transition("pack", ["open"], "packed"),
        sk.Transition("touch", ["open", "packed"], "packed"),
    ],
)


def test_unavailable_is_retried_only_where_a_retry_cannot_apply_twice(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data").start()

    def fail_next_commit_groups(n: int) -> None:
        """Restart the server so that its next n commit groups fail before anything is written
        (UNAVAILABLE / COMMIT_FAILED); it serves normally after that."""
        proc.terminate()
        proc.extra_args = ["--failpoints", f"commit.before_write=error*{n}"]
        proc.start()

    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.register_machine_type(ITEM)
            c.create_root("item", "r")

        fail_next_commit_groups(1)
        with sk.SyncClient.connect(proc.address) as plain:
            # a write without a request_id is not retried (a retry would have applied it)
            with pytest.raises(sk.UnavailableError) as failed:
                plain.transition("r", "touch")
            assert failed.value.reason == "COMMIT_FAILED"
            assert plain.get_node("r").transition_count == 0

        fail_next_commit_groups(2)
        with sk.SyncClient.connect(proc.address) as plain:
            # with a request_id it is retried past both failures, and applied once
            first = plain.transition("r", "touch", request_id="touch-1")
            again = plain.transition("r", "touch", request_id="touch-1")
            assert first.node.transition_count == again.node.transition_count == 1
            assert plain.get_node("r").transition_count == 1

        fail_next_commit_groups(2)
        with sk.SyncClient.connect(proc.address, auto_request_ids=True) as auto:
            # a registration is idempotent (retried; the first failed attempt wrote nothing);
            # a write gets an automatic request_id
            assert auto.register_machine_type(dataclasses.replace(ITEM, name="box")).created
            assert auto.create_root("box", "r2").state == "open"
            assert [n.ref.root_id for n in auto.list_nodes("box")] == ["r2"]

        fail_next_commit_groups(4)
        with sk.SyncClient.connect(proc.address, retries=2) as few:
            # retries are bounded: three attempts, then the error
            with pytest.raises(sk.UnavailableError):
                few.transition("r", "touch", request_id="touch-2")
            assert few.transition("r", "touch", request_id="touch-2").node.transition_count == 2
    finally:
        proc.terminate()
