"""The RPCs added for the inspector, through real gRPC: GetServerInfo, ListEvents (newest first,
bounded work per page), ListTimers, ListRuns."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from statekeeper.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    event_pb2,
    event_pb2_grpc,
    savepoint_pb2,
    savepoint_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
)
from statekeeper_server import __version__
from tests.inspector.conftest import READ, Inspected
from tests.inspector.seed import JOB


def _reason(e: grpc.RpcError) -> str:
    for key, value in e.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            status_pb2.Status.FromString(value).details[0].Unpack(info)
            return info.reason
    return ""


def test_server_info(inspected: Inspected) -> None:
    with grpc.insecure_channel(inspected.grpc) as ch:
        before = time.time() * 1000
        info = admin_pb2_grpc.AdminServiceStub(ch).GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=10)
    assert info.version == __version__
    assert info.durable_revision >= 1 and info.revision >= info.durable_revision
    assert info.store == "rocksdb" and info.store_location.endswith("/data") and info.fsync
    assert info.start_time_ms <= info.server_time_ms and info.server_time_ms >= before - 1
    assert info.oldest_event_revision == 1
    # The embedded store: one server, no shards (cluster mode fills these).
    assert info.shard_count == 0 and list(info.cluster_members) == []


def test_a_read_token_may_get_server_info_but_not_back_up(secured: Inspected) -> None:
    with grpc.insecure_channel(secured.grpc) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        md = [("authorization", f"Bearer {READ}")]
        assert admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), metadata=md, timeout=10).durable_revision
        with pytest.raises(grpc.RpcError) as e:
            admin.CreateBackup(admin_pb2.CreateBackupRequest(), metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def _list(ch: grpc.Channel, **fields: object) -> event_pb2.ListEventsResponse:
    stub = event_pb2_grpc.EventServiceStub(ch)
    return stub.ListEvents(event_pb2.ListEventsRequest(**fields), timeout=10)  # type: ignore[arg-type]


def test_list_events_newest_first_for_a_node_or_its_subtree(inspected: Inspected) -> None:
    with inspected.client() as c:
        root = c.create_root("order", "hist-1")
        child = c.add_child(root, "item", "a")
        c.transition(child, "pack")
        c.transition(root, "touch")
        c.create_root("order", "hist-10")  # shares a prefix of the root id: not part of the tree
    path = [common_pb2.NodeKey(type="item", id="a")]
    with grpc.insecure_channel(inspected.grpc) as ch:
        tree = _list(ch, filter=event_pb2.EventFilter(root_id="hist-1"))
        kinds = [
            (e.node.root_id, [k.id for k in e.node.path], event_pb2.EventKind.Name(e.kind))
            for e in tree.events
        ]
        assert kinds == [
            ("hist-1", [], "EVENT_KIND_NODE_TRANSITIONED"),
            ("hist-1", ["a"], "EVENT_KIND_NODE_TRANSITIONED"),
            ("hist-1", ["a"], "EVENT_KIND_NODE_CREATED"),
            ("hist-1", [], "EVENT_KIND_NODE_CREATED"),
        ]
        revisions = [(e.revision, e.index) for e in tree.events]
        assert revisions == sorted(revisions, reverse=True)
        only_root = _list(ch, filter=event_pb2.EventFilter(root_id="hist-1"), exclude_descendants=True)
        assert [e.revision for e in only_root.events] == [tree.events[0].revision, tree.events[3].revision]
        child_only = _list(ch, filter=event_pb2.EventFilter(root_id="hist-1", path_prefix=path))
        assert [e.revision for e in child_only.events] == [tree.events[1].revision, tree.events[2].revision]
        older = _list(
            ch, filter=event_pb2.EventFilter(root_id="hist-1"), before_revision=tree.events[1].revision - 1
        )
        assert [e.revision for e in older.events] == [tree.events[2].revision, tree.events[3].revision]


def test_list_events_pages_and_bounded_scans_cover_everything_once(inspected: Inspected) -> None:
    with inspected.client() as c:
        c.create_root("order", "pages-1")
        for _ in range(25):
            c.transition("pages-1", "touch")
            c.create_root("order", f"noise-{time.monotonic_ns()}")  # events of other trees between
    flt = event_pb2.EventFilter(root_id="pages-1")
    with grpc.insecure_channel(inspected.grpc) as ch:
        everything = _list(ch, filter=flt, page_size=1000)
        assert len(everything.events) == 26 and not everything.next_page_token
        for page_size, scan_limit in ((7, 0), (1000, 5), (3, 4)):
            seen: list[tuple[int, int]] = []
            token, calls = "", 0
            while True:
                page = _list(ch, filter=flt, page_size=page_size, scan_limit=scan_limit, page_token=token)
                calls += 1
                assert len(page.events) <= page_size
                seen += [(e.revision, e.index) for e in page.events]
                token = page.next_page_token
                if not token:
                    break
                assert page.scanned_revision >= 1
            assert seen == [(e.revision, e.index) for e in everything.events]
            if scan_limit:
                # At most scan_limit events examined per call: the whole log took many calls.
                assert calls * scan_limit >= everything.events[0].revision
        # A token continues only the listing it came from.
        token = _list(ch, filter=flt, page_size=1).next_page_token
        with pytest.raises(grpc.RpcError) as e:
            _list(ch, filter=event_pb2.EventFilter(root_id="other"), page_token=token)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _reason(e.value) == "INVALID_PAGE_TOKEN"  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as e:
            _list(ch, exclude_descendants=True)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_list_timers_by_deadline(inspected: Inspected) -> None:
    with inspected.client() as c:
        c.register_machine_type(JOB)
        for n in range(5):
            c.create_root("job", f"timer-{n}")
            c.transition(f"timer-{n}", "arm")
    with grpc.insecure_channel(inspected.grpc) as ch:
        stub = task_pb2_grpc.TaskServiceStub(ch)
        seen: list[task_pb2.Task] = []
        token = ""
        while True:
            page = stub.ListTimers(task_pb2.ListTimersRequest(page_size=2, page_token=token), timeout=10)
            assert len(page.tasks) <= 2
            seen += page.tasks
            token = page.next_page_token
            if not token:
                break
    assert all(t.kind == task_pb2.TASK_KIND_TIMER and t.status == task_pb2.TASK_STATUS_PENDING for t in seen)
    assert [t.deadline_ms for t in seen] == sorted(t.deadline_ms for t in seen)
    roots = [t.reference.node.root_id for t in seen]
    assert [f"timer-{n}" for n in range(5)] == [r for r in roots if r.startswith("timer-")]
    assert len(roots) == len(set(roots))


def test_list_runs_by_id(inspected: Inspected) -> None:
    with inspected.client() as c:
        for name in ("runs-b", "runs-a", "runs-c"):
            c.create_run(name, {"e": b"0"}, start_ms=0, schedule_ms=1000)
    with grpc.insecure_channel(inspected.grpc) as ch:
        stub = savepoint_pb2_grpc.SavepointServiceStub(ch)
        ids: list[str] = []
        token = ""
        while True:
            page = stub.ListRuns(savepoint_pb2.ListRunsRequest(page_size=1, page_token=token), timeout=10)
            ids += [r.run_id for r in page.runs]
            token = page.next_page_token
            if not token:
                break
    assert ids == sorted(ids) and {"runs-a", "runs-b", "runs-c", inspected.seeded.run} <= set(ids)
    assert len(ids) == len(set(ids))


def test_bad_page_tokens_and_sizes_are_invalid_argument(inspected: Inspected) -> None:
    with grpc.insecure_channel(inspected.grpc) as ch:
        with pytest.raises(grpc.RpcError) as e:
            savepoint_pb2_grpc.SavepointServiceStub(ch).ListRuns(
                savepoint_pb2.ListRunsRequest(page_token="%%%"), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as e:
            task_pb2_grpc.TaskServiceStub(ch).ListTimers(task_pb2.ListTimersRequest(page_size=-1), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
