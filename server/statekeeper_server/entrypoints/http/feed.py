"""The live event feed: a page with the CLI's watch filters, and a server-sent-events stream
that relays a Watch call made with the user's token.

Every message carries the Watch progress revision as its SSE id, so the browser resumes exactly
where it stood: EventSource sends it back as Last-Event-ID when it reconnects, and the page's
Pause closes the stream and Resume opens a new one from that revision + 1 (events committed in
between come from the log's history). A resumed revision may repeat events already shown; the
page drops those by (revision, index).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from statekeeper.v1 import admin_pb2, event_pb2
from statekeeper_server.entrypoints.http import render
from statekeeper_server.entrypoints.http.api import Api, ApiError
from statekeeper_server.entrypoints.http.web import call, page, session_of

MAX_FEEDS = 100  # live feeds open at once (each holds one Watch stream on the server)
KINDS = [render.kind_name(v.number) for v in event_pb2.EventKind.DESCRIPTOR.values if v.number]


def _filter(request: web.Request) -> event_pb2.EventFilter:
    q = request.query
    types = [t.strip() for value in q.getall("type", []) for t in value.split(",") if t.strip()]
    flt = event_pb2.EventFilter(root_id=q.get("root", "").strip(), machine_types=types)
    for item in q.getall("p", []):
        type_name, sep, node_id = item.partition(":")
        if not sep:
            raise web.HTTPBadRequest(text=f"a path element is type:id, got {item!r}")
        flt.path_prefix.add(type=type_name, id=node_id)
    for name in q.getall("kind", []):
        if name not in KINDS:
            raise web.HTTPBadRequest(text=f"unknown event kind {name!r}; kinds: {', '.join(KINDS)}")
        flt.kinds.append(event_pb2.EventKind.Value("EVENT_KIND_" + name.upper()))
    return flt


def _start(request: web.Request) -> int:
    text = request.headers.get("Last-Event-ID") or ""
    if text.isdigit():
        return int(text) + 1  # resume after the last progress the browser saw
    text = request.query.get("from", "")
    if text and not text.isdigit():
        raise web.HTTPBadRequest(text="from must be a revision number")
    return int(text or 0)


def event_json(e: event_pb2.Event) -> dict[str, Any]:
    has_node = e.HasField("node")
    return {
        "revision": e.revision,
        "index": e.index,
        "kind": render.kind_name(e.kind),
        "time": render.when(e.time_ms),
        "node": render.ref_text(e.node) if has_node else "",
        "node_query": render.ref_query(e.node) if has_node else "",
        "type": e.machine_type,
        "from": e.from_state,
        "to": e.to_state,
        "transition": e.transition,
        "count": e.transition_count,
        "task": e.task_id,
        "detail": e.detail,
    }


async def feed_page(request: web.Request) -> web.StreamResponse:
    flt = _filter(request)
    api: Api = request.app["api"]
    info = await call(request, api.admin.GetServerInfo, admin_pb2.GetServerInfoRequest())
    # Without ?from the feed starts right after what is durable now, so nothing committed
    # between this page and its stream's start is missed.
    start = request.query.get("from", "") or str(info.durable_revision + 1)
    return page(
        request,
        "feed.html",
        nav="events",
        flt=flt,
        path=[f"{k.type}:{k.id}" for k in flt.path_prefix],
        kinds=KINDS,
        chosen_kinds=set(request.query.getall("kind", [])),
        start=start,
        stream_query=render.query(
            root=flt.root_id,
            p=[f"{k.type}:{k.id}" for k in flt.path_prefix],
            type=list(flt.machine_types),
            kind=request.query.getall("kind", []),
        ),
    )


def _sse(event: str, data: Any, id_: int | None = None) -> bytes:
    lines = [f"id: {id_}"] if id_ is not None else []
    lines += [f"event: {event}", "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))]
    return ("\n".join(lines) + "\n\n").encode()


async def feed_stream(request: web.Request) -> web.StreamResponse:
    feeds: set[asyncio.Task[Any]] = request.app["feeds"]
    if len(feeds) >= MAX_FEEDS:
        return web.Response(status=503, text=f"{MAX_FEEDS} live feeds are open, the inspector's limit")
    flt = _filter(request)
    start = _start(request)
    api: Api = request.app["api"]
    watch = event_pb2.WatchRequest(start_revision=start, filter=flt, progress_interval_ms=1000)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store"}
    )
    task = asyncio.current_task()
    assert task is not None
    feeds.add(task)
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        stream = api.stream(api.events.Watch, watch, session_of(request).token)
        try:
            async for message in stream:
                if message.events:
                    data = {
                        "events": [event_json(e) for e in message.events],
                        "progress": message.progress_revision,
                    }
                    await response.write(_sse("events", data, message.progress_revision))
                else:
                    await response.write(
                        _sse("progress", message.progress_revision, message.progress_revision)
                    )
        except ApiError as e:
            # Told to the page, which stops (a refused watch would fail again on every retry).
            await response.write(
                _sse("failure", {"code": e.code.name, "reason": e.reason, "message": e.message})
            )
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    except ConnectionResetError:
        pass  # the browser left
    finally:
        feeds.discard(task)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/events", feed_page)
    app.router.add_get("/events/stream", feed_stream)
