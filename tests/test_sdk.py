"""The SDK: the sync client mirrors the async one; the async client works end to end."""

from __future__ import annotations

import asyncio
import inspect

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


def test_connect_to_nothing_fails_fast() -> None:
    try:
        sk.SyncClient.connect("127.0.0.1:1", wait_ready=0.5)
    except ConnectionError as e:
        assert "not reachable" in str(e)
    else:
        raise AssertionError("expected ConnectionError")


def test_ref_parse_round_trip() -> None:
    ref = sk.Ref.parse("o-1/item:i-1/part:p:2")
    assert ref == sk.Ref("o-1", (("item", "i-1"), ("part", "p:2")))
    assert sk.Ref.parse(str(ref)) == ref
