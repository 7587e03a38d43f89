"""Prometheus metrics scraped over HTTP from a real server, and structured logs with request ids."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

import statekeeper as sk
from statekeeper.v1 import common_pb2, node_pb2
from statekeeper_server.app import metrics
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data = Path(tmp_path_factory.mktemp("metrics")) / "data"
    proc = ServerProcess(data, "--metrics-listen", "127.0.0.1:0", "--log-level", "DEBUG").start()
    ready = json.loads((data.parent / f"{data.name}.ready").read_text())
    yield proc, ready["metrics_address"]
    proc.terminate()


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(method: str, code: str) -> dict[str, str]:
    service = "MachineTypeService" if "Machine" in method else "NodeService"
    return {"service": f"statekeeper.v1.{service}", "method": method, "code": code}


def test_scrape_shows_rpcs_commits_and_the_revision_moving(observed: tuple[ServerProcess, str]) -> None:
    proc, address = observed
    before = scrape(address)

    async def drive() -> int:
        async with await sk.Client.connect(proc.address) as client:
            await client.register_machine_type(ORDER)
            await client.register_machine_type(ITEM)
            # Concurrent writes share commit groups.
            nodes = await asyncio.gather(*(client.create_root("order", f"m-{i}") for i in range(20)))
            await asyncio.gather(*(client.add_child(n, "item", "i") for n in nodes))
            for missing in ("nope-1", "nope-2"):
                with pytest.raises(sk.NotFoundError):
                    await client.get_node(missing)
            result = await client.transition(nodes[0], "pay")
            return result.revision

    revision = asyncio.run(drive())
    after = scrape(address)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("statekeeper_rpc_handled_total", **rpc("CreateRoot", "OK")) == 20
    assert moved("statekeeper_rpc_handled_total", **rpc("GetNode", "NOT_FOUND")) == 2
    assert moved("statekeeper_rpc_handled_total", **rpc("ApplyTransition", "OK")) == 1
    assert moved("statekeeper_rpc_duration_seconds_count", **rpc("CreateRoot", "OK")) == 20
    assert moved("statekeeper_rpc_duration_seconds_sum", **rpc("CreateRoot", "OK")) > 0
    # Group commit: 20 + 20 + 1 writes (+ type registrations) in at least one group each.
    commits = moved("statekeeper_commit_group_commits_sum")
    groups = moved("statekeeper_commit_group_commits_count")
    assert commits >= 41 and 1 <= groups <= commits
    assert moved("statekeeper_commit_group_mutations_sum") >= commits
    # (Equal but for a background commit caught mid-way by the scrape.)
    assert abs(moved("statekeeper_commit_write_seconds_count") - groups) <= 1
    assert 41 <= moved("statekeeper_commit_latency_seconds_count") <= commits
    assert value(after, "statekeeper_revision") == revision
    # Named and registered for the parts that will fill them.
    for gauge in (
        "statekeeper_subscribers",
        "statekeeper_subscriber_max_lag_revisions",
        "statekeeper_task_queue_depth",
        "statekeeper_timers_pending",
    ):
        assert (gauge, frozenset()) in after
    assert value(after, "process_resident_memory_bytes") > 0


def test_logs_carry_the_request_id(observed: tuple[ServerProcess, str]) -> None:
    proc, _ = observed
    with sk.SyncClient.connect(proc.address) as client:
        client.register_machine_type(ORDER)
        client.create_root("order", "log-1", request_id="rid-from-field")
    with grpc.insecure_channel(proc.address) as channel:
        get = channel.unary_unary(
            "/statekeeper.v1.NodeService/GetNode",
            request_serializer=node_pb2.GetNodeRequest.SerializeToString,
            response_deserializer=node_pb2.GetNodeResponse.FromString,
        )
        with pytest.raises(grpc.RpcError):
            get(
                node_pb2.GetNodeRequest(node=common_pb2.NodeRef(root_id="log-missing")),
                metadata=(("x-request-id", "rid-from-header"),),
                timeout=5,
            )
    # An error's status reaches the client before the server's log line is written: poll.
    deadline = time.monotonic() + 5
    while True:
        records = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
        by_id = {r.get("request_id"): r for r in records if r.get("logger") == "statekeeper.rpc"}
        if "rid-from-header" in by_id or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    ok = by_id["rid-from-field"]
    assert (ok["level"], ok["code"], ok["method"]) == (
        "debug",
        "OK",
        "/statekeeper.v1.NodeService/CreateRoot",
    )
    assert ok["duration_ms"] >= 0
    error = by_id["rid-from-header"]
    assert (error["level"], error["code"], error["reason"]) == ("info", "NOT_FOUND", "NODE_NOT_FOUND")
    generated = [r for r in records if r.get("method", "").endswith("RegisterMachineType")]
    assert generated and all(len(r["request_id"]) == 16 for r in generated)
    assert len({r["request_id"] for r in generated}) == len(generated)  # one per call


def test_gauges_for_other_parts_take_numbers_or_functions() -> None:
    metrics.set_subscribers(3)
    metrics.set_timers_pending(lambda: 7)
    metrics.set_task_queue_depth(lambda: 1 / 0)  # a broken callback does not break the scrape
    metrics.set_consumer_lag("billing", 12)
    text = metrics.render().decode()
    assert "statekeeper_subscribers 3.0" in text and "statekeeper_timers_pending 7.0" in text
    assert "statekeeper_task_queue_depth NaN" in text
    assert 'statekeeper_consumer_lag_revisions{consumer="billing"} 12.0' in text
    metrics.remove_consumer("billing")
    metrics.remove_consumer("billing")
    assert "billing" not in metrics.render().decode()
    metrics.set_task_queue_depth(0)


ALARM = sk.MachineType(
    name="alarm",
    version=1,
    states=["idle", "armed", "rung"],
    initial_state="idle",
    terminal_states=["rung"],
    transitions=[
        sk.Transition("arm", ["idle"], "armed", tasks=[sk.Timer("bell", "ring", delay_ms=3_600_000)]),
        sk.Transition("ring", ["armed"], "rung"),
    ],
)


def wait_for(address: str, check: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """Scrape until check passes (stream ends reach the server a moment after the client)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(address)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_scrape_shows_subscribers_lag_timers_and_the_task_queue_moving(
    observed: tuple[ServerProcess, str],
) -> None:
    proc, address = observed
    subscribers = "statekeeper_subscribers"
    lag = "statekeeper_consumer_lag_revisions"
    with sk.SyncClient.connect(proc.address) as client:
        for mt in (ORDER, ALARM):
            client.register_machine_type(mt)
        before = scrape(address)
        client.create_consumer("metrics-billing", root_id="g-order")
        assert value(scrape(address), lag, consumer="metrics-billing") == 0
        # A watch and a consumer's subscriber are open: two subscribers.
        watch = client.watch(root_id="g-order", progress=True)
        assert next(watch).kind == "progress"  # the server has the stream
        order = client.create_root("order", "g-order")
        deliveries = client.subscribe("metrics-billing")
        delivery = next(deliveries)
        assert delivery.event.kind == "node_created"
        client.create_root("alarm", "g-alarm")
        armed = client.transition("g-alarm", "arm")  # a timer due in an hour
        paid = client.transition(order, "pay")  # an outbound task for "payments", no worker
        during = scrape(address)
        assert value(during, subscribers) == value(before, subscribers) + 2
        assert value(during, "statekeeper_timers_pending") == value(before, "statekeeper_timers_pending") + 1
        depth = "statekeeper_task_queue_depth"
        assert value(during, depth) == value(before, depth) + 1
        # The consumer has acknowledged nothing since it was created: it lags by every commit.
        consumer_lag = value(during, lag, consumer="metrics-billing")
        assert consumer_lag == paid.revision - (delivery.event.revision - 1) > 0
        assert value(during, "statekeeper_subscriber_max_lag_revisions") >= consumer_lag
        assert [t.kind for t in armed.tasks] == ["timer"] and [t.kind for t in paid.tasks] == ["outbound"]
        client.ack("metrics-billing", up_to_revision=paid.revision)
        assert value(scrape(address), lag, consumer="metrics-billing") == 0
        cast(Generator[Any, None, None], watch).close()
        cast(Generator[Any, None, None], deliveries).close()
        after = wait_for(address, lambda s: value(s, subscribers) == value(before, subscribers))
        assert value(after, subscribers) == value(before, subscribers)
        client.delete_consumer("metrics-billing")
    assert (lag, frozenset({("consumer", "metrics-billing")})) not in scrape(address)


def test_timers_and_queued_tasks_are_counted_again_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = ServerProcess(data, "--metrics-listen", "127.0.0.1:0").start()
    try:
        with sk.SyncClient.connect(proc.address) as client:
            for mt in (ORDER, ALARM):
                client.register_machine_type(mt)
            for i in range(3):
                client.transition(client.create_root("alarm", f"a{i}"), "arm")
            client.transition(client.create_root("order", "o"), "pay")
            client.create_consumer("kept")
        proc.restart()
        samples = scrape(json.loads((tmp_path / "data.ready").read_text())["metrics_address"])
        assert value(samples, "statekeeper_timers_pending") == 3
        assert value(samples, "statekeeper_task_queue_depth") == 1
        assert (("statekeeper_consumer_lag_revisions", frozenset({("consumer", "kept")}))) in samples
    finally:
        proc.kill()
