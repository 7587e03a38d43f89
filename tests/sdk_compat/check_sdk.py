"""The SDK's common calls against a real server, run by tests/test_sdk_compat.py inside throwaway
virtual environments that hold only the SDK's dependencies (at the lowest and the newest versions
its ranges allow). Standard library and `statekeeper` only: no pytest, no server packages.

    python tests/sdk_compat/check_sdk.py HOST:PORT PREFIX
"""

from __future__ import annotations

import asyncio
import sys
import time

import statekeeper as sk


def check(address: str, prefix: str) -> None:
    order = sk.MachineType(
        name=f"{prefix}order",
        version=1,
        states=["new", "paid", "shipped"],
        initial_state="new",
        terminal_states=["shipped"],
        transitions=[
            sk.Transition("pay", ["new"], "paid", tasks=[sk.Outbound("charge", f"{prefix}payments")]),
            sk.Transition("ship", ["paid"], "shipped"),
        ],
    )
    item = sk.MachineType(
        name=f"{prefix}item",
        version=1,
        states=["open", "packed"],
        initial_state="open",
        transitions=[sk.Transition("pack", ["open"], "packed")],
    )
    with sk.SyncClient.connect(address, auto_request_ids=True) as client:
        assert client.register_machine_type(order).machine_type.name == order.name
        client.register_machine_type(item)
        root = client.create_root(
            order.name, f"{prefix}o-1", b'{"total": 42}', content_type="application/json"
        )
        client.add_child(root, item.name, "i-1")
        # the text form of a reference, as the CLI prints it
        packed = client.transition(f"{prefix}o-1/{item.name}:i-1", "pack")
        assert packed.node.state == "packed", packed
        try:
            client.transition(root, "pay", expected_transition_count=7)
        except sk.AbortedError as e:
            assert e.reason == "TRANSITION_COUNT_MISMATCH", e.reason
        else:
            raise AssertionError("expected AbortedError")
        paid = client.transition(root, "pay", request_id=f"{prefix}pay-1")
        assert paid.node.state == "paid" and paid.tasks[0].destination == f"{prefix}payments"
        try:
            client.transition(root, "pay")
        except sk.FailedPreconditionError as e:
            assert e.reason == "INVALID_TRANSITION" and e.metadata["current_state"] == "paid"
        else:
            raise AssertionError("expected FailedPreconditionError")
        result = client.execute(
            sk.Batch().create_root(item.name, f"{prefix}b-1").transition(f"{prefix}b-1", "pack")
        )
        assert len(result.results) == 2
        events = client.watch(start_revision=root.create_revision, root_id=f"{prefix}o-1")
        kinds = [next(events).kind for _ in range(3)]
        events.close()
        assert kinds == ["node_created", "node_created", "node_transitioned"], kinds
        client.create_consumer(f"{prefix}c", start="earliest", root_id=f"{prefix}o-1")
        deliveries = client.subscribe(f"{prefix}c")
        first = next(deliveries)
        deliveries.close()
        assert client.ack(f"{prefix}c", first) >= 0
        client.create_run(f"{prefix}run", {"a": b"0"}, start_ms=0, schedule_ms=60_000)
        client.save_entity_state(f"{prefix}run", "a", 60_000, b"1")
        assert client.load_latest_savepoint(f"{prefix}run").states == {"a": b"1"}

    async def work() -> None:
        async with await sk.Client.connect(address) as client:
            worker = sk.Worker(client)

            @worker.handler(f"{prefix}payments")
            async def charge(task: sk.LeasedTask) -> str:
                return "ship"

            runner = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 30
            while (await client.get_node(f"{prefix}o-1")).state != "shipped":
                assert time.monotonic() < deadline, "the worker did not complete the task"
                await asyncio.sleep(0.05)
            await worker.stop()
            await runner

    asyncio.run(work())
    try:
        sk.SyncClient.connect("127.0.0.1:1")
    except sk.ConnectionFailedError as e:
        assert e.reason == "CONNECTION_REFUSED", e.reason
    else:
        raise AssertionError("expected ConnectionFailedError")


if __name__ == "__main__":
    import google.protobuf
    import grpc

    check(sys.argv[1], sys.argv[2])
    print(f"ok grpcio {grpc.__version__} protobuf {google.protobuf.__version__}")
