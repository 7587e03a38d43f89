"""The inspector's pages. Each handler makes a few gRPC calls with the user's token and renders
one template; every list is one page of its RPC, with the RPC's own page token in the URL."""

from __future__ import annotations

import time
from typing import Any

import grpc
from aiohttp import web
from markupsafe import Markup

from statekeeper.v1 import (
    admin_pb2,
    common_pb2,
    event_pb2,
    machine_type_pb2,
    node_pb2,
    savepoint_pb2,
    task_pb2,
)
from statekeeper_server.entrypoints.http import diagram, render
from statekeeper_server.entrypoints.http.api import Api, ApiError
from statekeeper_server.entrypoints.http.lag import WINDOW_S, LagSampler, chart_svg
from statekeeper_server.entrypoints.http.web import call, flash, form_of, page, redirect

PAGE = 50
CHILDREN_PAGE = 50
MAX_TYPE_PAGES = 10  # pages of ListMachineTypes read to find versions and destinations
HISTORY_SCAN = 20_000  # events ListEvents examines per call for the history page
HISTORY_BUDGET_S = 0.15  # the history page asks for no more than fits in this time


def _api(request: web.Request) -> Api:
    api: Api = request.app["api"]
    return api


def node_ref(request: web.Request) -> common_pb2.NodeRef:
    """The node a page is about: ?root=ID&p=type:id&p=... (machine type names have no ':')."""
    root = request.query.get("root", "").strip()
    if not root:
        raise web.HTTPBadRequest(text="give a root id: ?root=ID")
    ref = common_pb2.NodeRef(root_id=root)
    for item in request.query.getall("p", []):
        type_name, sep, node_id = item.partition(":")
        if not sep:
            raise web.HTTPBadRequest(text=f"a path element is type:id, got {item!r}")
        ref.path.add(type=type_name, id=node_id)
    return ref


def _int(request: web.Request, name: str, default: int = 0) -> int:
    text = request.query.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number") from None


def _parent(ref: common_pb2.NodeRef) -> common_pb2.NodeRef | None:
    if not ref.path:
        return None
    return common_pb2.NodeRef(root_id=ref.root_id, path=ref.path[:-1])


# -- server facts ----------------------------------------------------------------------------------


async def server_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    info = await call(request, api.admin.GetServerInfo, admin_pb2.GetServerInfoRequest())
    return page(request, "server.html", nav="server", info=info)


# -- machine types -------------------------------------------------------------------------------


async def types_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    response = await call(
        request,
        api.types.ListMachineTypes,
        machine_type_pb2.ListMachineTypesRequest(
            page_size=PAGE, page_token=request.query.get("page_token", "")
        ),
    )
    return page(
        request, "types.html", nav="types", types=response.machine_types, next_token=response.next_page_token
    )


async def _all_types(request: web.Request) -> list[machine_type_pb2.MachineType]:
    """Every version of every type (there are few; bounded by MAX_TYPE_PAGES pages anyway)."""
    api = _api(request)
    out: list[machine_type_pb2.MachineType] = []
    token = ""
    for _ in range(MAX_TYPE_PAGES):
        response = await call(
            request,
            api.types.ListMachineTypes,
            machine_type_pb2.ListMachineTypesRequest(page_size=1000, page_token=token, all_versions=True),
        )
        out.extend(response.machine_types)
        token = response.next_page_token
        if not token:
            break
    return out


async def type_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    name = request.match_info["name"]
    version = _int(request, "version")
    response = await call(
        request, api.types.GetMachineType, machine_type_pb2.GetMachineTypeRequest(name=name, version=version)
    )
    mt = response.machine_type
    versions = sorted({t.version for t in await _all_types(request) if t.name == name})
    return page(
        request,
        "type.html",
        nav="types",
        mt=mt,
        versions=versions,
        svg=Markup(diagram.render_svg(mt)),
        terminal=set(mt.terminal_states),
    )


# -- nodes and trees -------------------------------------------------------------------------------


async def nodes_page(request: web.Request) -> web.StreamResponse:
    """Nodes of a type by state (the active/terminal index): which trees are stuck where."""
    api = _api(request)
    type_name = request.query.get("type", "")
    state = request.query.get("state", "")
    status = request.query.get("status", "")
    nodes: list[node_pb2.Node] = []
    next_token = ""
    if type_name:
        response = await call(
            request,
            api.nodes.ListNodes,
            node_pb2.ListNodesRequest(
                machine_type=type_name,
                state=state,
                status={
                    "active": node_pb2.NODE_STATUS_FILTER_ACTIVE,
                    "terminal": node_pb2.NODE_STATUS_FILTER_TERMINAL,
                }.get(status, node_pb2.NODE_STATUS_FILTER_UNSPECIFIED),
                page_size=PAGE,
                page_token=request.query.get("page_token", ""),
            ),
        )
        nodes, next_token = list(response.nodes), response.next_page_token
    return page(
        request,
        "nodes.html",
        nav="trees",
        nodes=nodes,
        next_token=next_token,
        type_name=type_name,
        state=state,
        status_filter=status,
    )


async def trees_page(request: web.Request) -> web.StreamResponse:
    """Search a tree by its root id."""
    root = request.query.get("root", "").strip()
    if root:
        api = _api(request)
        try:
            await call(
                request, api.nodes.GetNode, node_pb2.GetNodeRequest(node=common_pb2.NodeRef(root_id=root))
            )
        except ApiError as e:
            if e.code is not grpc.StatusCode.NOT_FOUND:
                raise
            return page(request, "trees.html", nav="trees", root=root, missing=True, status=404)
        return redirect("/node?" + render.query(root=root))
    return page(request, "trees.html", nav="trees", root="", missing=False)


async def node_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    ref = node_ref(request)
    node = (await call(request, api.nodes.GetNode, node_pb2.GetNodeRequest(node=ref))).node
    # Each collection shows one page; ?coll=TYPE&page_token=... pages through one of them.
    paged_type = request.query.get("coll", "")
    collections = []
    for type_name in sorted(node.child_counts):
        token = request.query.get("page_token", "") if type_name == paged_type else ""
        children = await call(
            request,
            api.nodes.ListChildren,
            node_pb2.ListChildrenRequest(
                parent=ref, type=type_name, page_size=CHILDREN_PAGE, page_token=token
            ),
        )
        collections.append(
            {
                "type": type_name,
                "count": node.child_counts[type_name],
                "nodes": list(children.nodes),
                "next_token": children.next_page_token,
                "paged": bool(token),
            }
        )
    tasks = await call(request, api.tasks.ListTasks, task_pb2.ListTasksRequest(node=ref, page_size=20))
    snapshots: list[savepoint_pb2.TreeSnapshot] = []
    if not ref.path:
        snapshots = list(
            (
                await call(
                    request,
                    api.savepoints.ListTreeSnapshots,
                    savepoint_pb2.ListTreeSnapshotsRequest(root_id=ref.root_id),
                )
            ).snapshots
        )
    return page(
        request,
        "node.html",
        nav="trees",
        node=node,
        ref=ref,
        parent=_parent(ref),
        data=render.show_data(node.data.value, node.data.content_type),
        collections=collections,
        tasks=list(tasks.tasks),
        more_tasks=bool(tasks.next_page_token),
        snapshots=snapshots,
    )


async def tree_page(request: web.Request) -> web.StreamResponse:
    """A subtree walked depth first, one page at a time."""
    api = _api(request)
    ref = node_ref(request)
    response = await call(
        request,
        api.nodes.WalkTree,
        node_pb2.WalkTreeRequest(node=ref, page_size=100, page_token=request.query.get("page_token", "")),
    )
    return page(
        request,
        "tree.html",
        nav="trees",
        ref=ref,
        nodes=list(response.nodes),
        base_depth=len(ref.path),
        next_token=response.next_page_token,
    )


async def history_page(request: web.Request) -> web.StreamResponse:
    """A node's events from the event log, newest first (with its descendants' on request).

    ListEvents examines a bounded number of events per call (the log has no index by node), so
    the page goes on calling it while it has fewer than a page of events and another call
    fits in HISTORY_BUDGET_S: far fewer empty pages on a long log, and still a bounded time per page."""
    api = _api(request)
    ref = node_ref(request)
    descendants = request.query.get("descendants", "") == "1"
    events: list[event_pb2.Event] = []
    token = request.query.get("page_token", "")
    started = time.monotonic()
    while True:
        before = time.monotonic()
        response = await call(
            request,
            api.events.ListEvents,
            event_pb2.ListEventsRequest(
                filter=event_pb2.EventFilter(root_id=ref.root_id, path_prefix=ref.path),
                exclude_descendants=not descendants,
                page_size=PAGE - len(events),
                page_token=token,
                scan_limit=HISTORY_SCAN,
            ),
        )
        events += response.events
        token = response.next_page_token
        now = time.monotonic()
        # Stop when another call like the last one would go past the budget.
        if not token or len(events) >= PAGE or (now - started) + (now - before) > HISTORY_BUDGET_S:
            break
    return page(
        request,
        "history.html",
        nav="trees",
        ref=ref,
        descendants=descendants,
        events=events,
        next_token=token,
        scanned=response.scanned_revision,
    )


# -- tasks -----------------------------------------------------------------------------------------


def _destinations(types: list[machine_type_pb2.MachineType]) -> list[str]:
    """Outbound destinations come only from machine type definitions."""
    return sorted(
        {
            k.outbound.destination
            for mt in types
            for t in mt.transitions
            for k in t.tasks
            if k.WhichOneof("kind") == "outbound"
        }
    )


async def _with_leases(request: web.Request, tasks: list[task_pb2.Task]) -> list[dict[str, Any]]:
    """Each task with its lease when a worker holds it (GetTask has the lease)."""
    api = _api(request)
    out = []
    for t in tasks:
        lease = None
        if t.status == task_pb2.TASK_STATUS_LEASED:
            try:
                got = await call(request, api.tasks.GetTask, task_pb2.GetTaskRequest(task_id=t.id))
                lease = got.lease if got.HasField("lease") else None
            except ApiError as e:
                if e.code is not grpc.StatusCode.NOT_FOUND:
                    raise
        out.append({"task": t, "lease": lease})
    return out


async def tasks_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    timers = await call(
        request,
        api.tasks.ListTimers,
        task_pb2.ListTimersRequest(page_size=PAGE, page_token=request.query.get("timers_token", "")),
    )
    queues = []
    for destination in _destinations(await _all_types(request)):
        queued = await call(
            request, api.tasks.ListTasks, task_pb2.ListTasksRequest(destination=destination, page_size=10)
        )
        queues.append(
            {
                "destination": destination,
                "tasks": await _with_leases(request, list(queued.tasks)),
                "more": bool(queued.next_page_token),
            }
        )
    dead = await call(
        request,
        api.tasks.ListDeadLetters,
        task_pb2.ListDeadLettersRequest(page_size=PAGE, page_token=request.query.get("dead_token", "")),
    )
    return page(
        request,
        "tasks.html",
        nav="tasks",
        timers=list(timers.tasks),
        timers_next=timers.next_page_token,
        queues=queues,
        dead=list(dead.tasks),
        dead_next=dead.next_page_token,
        now_ms=int(time.time() * 1000),
    )


async def queue_page(request: web.Request) -> web.StreamResponse:
    """One destination's queue (pending and leased, in hand-out order), page by page."""
    api = _api(request)
    destination = request.match_info["destination"]
    queued = await call(
        request,
        api.tasks.ListTasks,
        task_pb2.ListTasksRequest(
            destination=destination, page_size=PAGE, page_token=request.query.get("page_token", "")
        ),
    )
    return page(
        request,
        "queue.html",
        nav="tasks",
        destination=destination,
        tasks=await _with_leases(request, list(queued.tasks)),
        next_token=queued.next_page_token,
    )


async def task_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    got = await call(
        request, api.tasks.GetTask, task_pb2.GetTaskRequest(task_id=request.match_info["task_id"])
    )
    return page(
        request,
        "task.html",
        nav="tasks",
        task=got.task,
        lease=got.lease if got.HasField("lease") else None,
        next_attempt_ms=got.next_attempt_ms,
        payload=render.show_data(got.task.payload, ""),
    )


async def dead_letter_action(request: web.Request) -> web.StreamResponse:
    """Retry or discard a dead letter (the buttons on the tasks page)."""
    form = await form_of(request)
    api = _api(request)
    task_id = request.match_info["task_id"]
    action = request.match_info["action"]
    try:
        if action == "retry":
            await call(request, api.tasks.RetryDeadLetter, task_pb2.RetryDeadLetterRequest(task_id=task_id))
            flash(request, "ok", f"task {task_id} is pending again")
        else:
            await call(
                request, api.tasks.DiscardDeadLetter, task_pb2.DiscardDeadLetterRequest(task_id=task_id)
            )
            flash(request, "ok", f"task {task_id} was discarded")
    except ApiError as e:
        if e.code is grpc.StatusCode.UNAUTHENTICATED:
            raise
        what = "retry" if action == "retry" else "discard"
        flash(request, "error", f"could not {what} task {task_id}: {e.code.name} {e.reason} — {e.message}")
    return redirect(str(form.get("back", "/tasks")))


# -- consumers -------------------------------------------------------------------------------------


async def consumers_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    response = await call(
        request,
        api.events.ListConsumers,
        event_pb2.ListConsumersRequest(page_size=PAGE, page_token=request.query.get("page_token", "")),
    )
    consumers = list(response.consumers)
    sampler: LagSampler = request.app["sampler"]
    chart = chart_svg(sampler.samples, [c.name for c in consumers], time.time())
    template = "consumers_body.html" if request.query.get("fragment") else "consumers.html"
    return page(
        request,
        template,
        nav="consumers",
        consumers=consumers,
        next_token=response.next_page_token,
        chart=Markup(chart),
        window_min=int(WINDOW_S // 60),
    )


# -- runs, savepoints, tree snapshots -----------------------------------------------------------


async def runs_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    response = await call(
        request,
        api.savepoints.ListRuns,
        savepoint_pb2.ListRunsRequest(page_size=PAGE, page_token=request.query.get("page_token", "")),
    )
    root = request.query.get("root", "").strip()
    snapshots = None
    if root:
        snapshots = list(
            (
                await call(
                    request,
                    api.savepoints.ListTreeSnapshots,
                    savepoint_pb2.ListTreeSnapshotsRequest(root_id=root),
                )
            ).snapshots
        )
    return page(
        request,
        "runs.html",
        nav="runs",
        runs=list(response.runs),
        next_token=response.next_page_token,
        root=root,
        snapshots=snapshots,
    )


async def run_page(request: web.Request) -> web.StreamResponse:
    api = _api(request)
    response = await call(
        request,
        api.savepoints.ListSavepoints,
        savepoint_pb2.ListSavepointsRequest(run_id=request.match_info["run_id"]),
    )
    return page(
        request,
        "run.html",
        nav="runs",
        run=response.run,
        savepoints=list(reversed(response.savepoints)),
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", server_page)
    router.add_get("/types", types_page)
    router.add_get("/types/{name}", type_page)
    router.add_get("/trees", trees_page)
    router.add_get("/nodes", nodes_page)
    router.add_get("/node", node_page)
    router.add_get("/tree", tree_page)
    router.add_get("/history", history_page)
    router.add_get("/tasks", tasks_page)
    router.add_get("/tasks/queue/{destination}", queue_page)
    router.add_get("/tasks/{task_id}", task_page)
    router.add_post("/tasks/{task_id}/{action:retry|discard}", dead_letter_action)
    router.add_get("/consumers", consumers_page)
    router.add_get("/runs", runs_page)
    router.add_get("/runs/{run_id}", run_page)
