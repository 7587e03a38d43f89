"""What the inspector tests show: a store the SDK fills with one of everything the pages list,
including ids and data that carry markup (the pages must show them as text)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import statekeeper as sk
from tests.conftest import ITEM, ORDER, PART

EVIL = "<script>alert(1)</script>"
JOB = sk.MachineType(
    name="job",
    version=1,
    states=["idle", "armed", "done"],
    initial_state="idle",
    terminal_states=["done"],
    transitions=[
        sk.Transition("arm", ["idle"], "armed", tasks=[sk.Timer("deadline", "finish", delay_ms=3_600_000)]),
        sk.Transition("finish", ["armed"], "done"),
    ],
)


@dataclass
class Seeded:
    root: str  # an order with JSON data, paid (so its charge task is queued)
    evil_child: str  # an item whose id is EVIL
    timer_root: str  # a job with a pending timer
    consumer: str
    run: str


def seed(client: sk.SyncClient, prefix: str = "s") -> Seeded:
    for mt in (ORDER, ITEM, PART, JOB):
        client.register_machine_type(mt)
    root = f"{prefix}-order-1"
    data = json.dumps({"total": 42, "note": EVIL}).encode()
    order = client.create_root("order", root, data, content_type="application/json")
    client.add_child(order, "item", "i-1", b"plain text item", content_type="text/plain")
    client.add_child(order, "item", EVIL, bytes(range(40)), content_type="application/octet-stream")
    client.transition(order.ref.child("item", "i-1"), "pack")
    consumer = f"{prefix}-billing"
    client.create_consumer(consumer, start="earliest")
    client.transition(order, "pay")  # queues an outbound "charge" task for "payments"
    timer_root = f"{prefix}-job-1"
    client.create_root("job", timer_root)
    client.transition(timer_root, "arm")
    run = f"{prefix}-run-1"
    client.create_run(run, {"counter": b"0", "window": b"[]"}, start_ms=0, schedule_ms=60_000)
    client.save_entity_states(
        [sk.EntitySave(run, "counter", 190_000, b"42"), sk.EntitySave(run, "window", 130_000, b"[1,2]")]
    )
    client.create_tree_snapshot(root, "before-ship")
    return Seeded(root, EVIL, timer_root, consumer, run)


def dead_letter(client: sk.SyncClient, root: str) -> str:
    """A new order, paid, its charge task failed permanently: the id of the dead letter."""
    client.create_root("order", root)
    client.transition(root, "pay")
    leases = client.lease_tasks(["payments"], lease_s=30, max_in_flight=100)
    others = []
    try:
        for leased in leases:
            if leased.task.ref.root_id == root:
                client.fail_task(leased, f"card declined {EVIL}", permanent=True)
                return leased.task.id
            others.append(leased)  # held until the end: released now, it could come straight back
    finally:
        leases.close()
        for leased in others:
            client.release_task(leased)
    raise AssertionError("the charge task was never leased")
