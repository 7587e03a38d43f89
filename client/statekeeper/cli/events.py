"""The event stream: watch (live, history first) and durable consumers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from statekeeper._async.client import Client
from statekeeper._sync.client import SyncClient
from statekeeper._types import Consumer, Event
from statekeeper.cli._common import (
    cell,
    choice,
    connect_options,
    fields_table,
    json_line,
    print_json,
    ref_arg,
    show,
    table,
)
from statekeeper.v1 import event_pb2

EVENT_KINDS = [k.removeprefix("EVENT_KIND_").lower() for k in event_pb2.EventKind.keys()[1:]]
STARTS = ["latest", "earliest", "revision"]


def event_kind(text: str) -> str:
    """An event kind as the SDK names it ("node_transitioned"); EVENT_KIND_… and any case too."""
    return choice(EVENT_KINDS, "event kind")(text.strip().lower().removeprefix("event_kind_"))


def event_line(e: Event) -> str:
    parts = [
        f"{e.revision}.{e.index}",
        cell(e.time_ms, "time_ms"),
        e.kind.ljust(24),
        str(e.ref) if e.ref is not None else e.machine_type,
    ]
    if e.ref is not None and e.machine_type:
        parts.append(f"({e.machine_type})")
    if e.from_state:
        parts.append(f"{e.from_state} → {e.to_state}")
    elif e.to_state:
        parts.append(f"[{e.to_state}]")
    if e.transition:
        parts.append(f"via {e.transition}")
    if e.transition_count:
        parts.append(f"#{e.transition_count}")
    if e.task_id:
        parts.append(f"task {e.task_id}")
    if e.detail:
        parts.append(e.detail.splitlines()[0])
    return " ".join(p for p in parts if p)


def run_watch(args: argparse.Namespace) -> int:
    """Stream events until --count or Ctrl-C. Runs on the async client: asyncio turns SIGINT
    into a cancellation at once, where a blocked synchronous stream may not notice it."""
    if args.deprecated_from_revision is not None:
        print("statekeeper: --from-revision is deprecated: use --start-revision", file=sys.stderr)
        args.start_revision = args.deprecated_from_revision
    if args.start_revision < 0 or (args.count is not None and args.count < 1):
        raise ValueError("--start-revision must not be negative and --count must be at least 1")
    root = args.root

    async def watch() -> None:
        async with await Client.connect(args.server, **connect_options(args)) as client:
            events = client.watch(
                start_revision=args.start_revision,
                root_id=root.root_id if root is not None else "",
                path_prefix=root.path if root is not None else (),
                machine_types=args.types,
                kinds=args.kinds,
            )
            seen = 0
            try:
                async for event in events:
                    print(json_line(event) if args.json else event_line(event), flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
            finally:
                await events.aclose()  # ends the stream at the server too

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        asyncio.run(watch())
    return 0


def _consumer_rows(consumers: list[Consumer]) -> str:
    rows = []
    for c in consumers:
        scope = [f"root {c.root_id}"] if c.root_id else []
        scope += [f"types {','.join(c.machine_types)}"] if c.machine_types else []
        scope += [f"kinds {','.join(c.kinds)}"] if c.kinds else []
        rows.append(
            [
                c.name,
                str(c.acked_revision),
                str(c.unacked_count),
                str(c.lag_revisions),
                str(c.subscribers),
                "; ".join(scope) or "all events",
            ]
        )
    return table(rows, ["name", "acked revision", "unacked", "lag", "subscribers", "filter"])


def _list(client: SyncClient, args: argparse.Namespace) -> int:
    consumers = client.list_consumers()
    return show(args, consumers, lambda: _consumer_rows(consumers))


def _get(client: SyncClient, args: argparse.Namespace) -> int:
    consumer = client.get_consumer(args.name)
    return show(args, consumer, lambda: fields_table(consumer))


def _create(client: SyncClient, args: argparse.Namespace) -> int:
    if (args.start == "revision") != bool(args.start_revision):
        raise ValueError(
            "--start revision needs --start-revision N (and --start-revision needs --start revision)"
        )
    root = args.root
    consumer = client.create_consumer(
        args.name,
        start=args.start,
        start_revision=args.start_revision,
        root_id=root.root_id if root is not None else "",
        path_prefix=root.path if root is not None else (),
        machine_types=args.types,
        kinds=args.kinds,
        ack_wait_ms=args.ack_wait_ms,
        max_unacked=args.max_unacked,
    )
    return show(
        args,
        consumer,
        lambda: f"created consumer {consumer.name}: delivers events after revision {consumer.acked_revision}",
    )


def _delete(client: SyncClient, args: argparse.Namespace) -> int:
    client.delete_consumer(args.name)
    if args.json:
        print_json({"name": args.name, "deleted": True})
    else:
        print(f"deleted consumer {args.name}")
    return 0


def _filter_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--root",
        type=ref_arg,
        default=None,
        metavar="REF",
        help=f"only {what} of this tree or subtree (root or root/type:id/...)",
    )
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="only this machine type (repeatable)",
    )
    p.add_argument(
        "--kind",
        dest="kinds",
        action="append",
        default=[],
        type=event_kind,
        metavar="KIND",
        help=f"only this event kind (repeatable): {', '.join(EVENT_KINDS)}",
    )


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "watch",
        parents=[common],
        help="follow the event stream live (Ctrl-C ends it)",
        description="Print the store's change events as they are committed, one line each (JSON lines "
        "with --json). Filters combine: an event is shown when it matches all of them.",
    )
    p.add_argument(
        "--start-revision",
        type=int,
        default=0,
        metavar="N",
        help="start at revision N, history first (default: only events committed from now on)",
    )
    p.add_argument(
        "--from-revision", dest="deprecated_from_revision", type=int, default=None, help=argparse.SUPPRESS
    )
    _filter_flags(p, "events")
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N events")
    p.set_defaults(raw_handler=run_watch)

    consumers = sub.add_parser("consumers", help="durable event consumers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = consumers.add_parser(
        "list", parents=[common], help="every consumer: acked revision (position), unacked, lag, subscribers"
    )
    p.set_defaults(handler=_list)
    p = consumers.add_parser("get", parents=[common], help="one consumer with its filter and settings")
    p.add_argument("name")
    p.set_defaults(handler=_get)
    p = consumers.add_parser("create", parents=[common], help="create a durable consumer")
    p.add_argument("name")
    p.add_argument(
        "--start",
        type=choice(STARTS, "start"),
        default="latest",
        help="latest (events from now on), earliest (the retained history), or revision",
    )
    p.add_argument(
        "--start-revision",
        type=int,
        default=0,
        metavar="N",
        help="with --start revision: the first revision delivered",
    )
    _filter_flags(p, "events")
    p.add_argument(
        "--ack-wait-ms",
        type=int,
        default=0,
        metavar="MS",
        help="redeliver an unacknowledged event after this long (0: server default)",
    )
    p.add_argument(
        "--max-unacked",
        type=int,
        default=0,
        metavar="N",
        help="most deliveries awaiting an ack (0: server default)",
    )
    p.set_defaults(handler=_create)
    p = consumers.add_parser("delete", parents=[common], help="delete a consumer and its position")
    p.add_argument("name")
    p.set_defaults(handler=_delete)
