"""`statekeeper`: run the server, and inspect or operate a running one.

    statekeeper serve [server flags]        run the server (needs the `server` extra)
    statekeeper types list|show|diagram     machine types
    statekeeper get REF                     one node      (REF: root or root/type:id/...)
    statekeeper tree REF                    a subtree with its states
    statekeeper transition REF NAME         apply a transition
    statekeeper watch [--root REF] [--type T] [--kind K] [--from-revision N]   live events
    statekeeper tasks list|get|dead-letters|retry|discard   timers and outbound tasks
    statekeeper consumers list|get NAME     durable event consumers: position, unacked, lag
    statekeeper savepoints list|latest RUN   a run's savepoints, or its latest one loaded
    statekeeper backup [--name NAME]        an online backup of the whole store (on the server)

Every inspection command takes --server (or STATEKEEPER_ADDRESS) and --json; --token
(STATEKEEPER_TOKEN) for a server with tokens, --tls-ca / --tls-cert / --tls-key
(STATEKEEPER_TLS_CA, _CERT, _KEY) for TLS and mutual TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from statekeeper._async.client import Client
from statekeeper._errors import StatekeeperError
from statekeeper._sync.client import SyncClient
from statekeeper._types import Consumer, Event, MachineType, Node, Ref, Task
from statekeeper.v1 import event_pb2


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2, ensure_ascii=False, default=str))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _node_line(n: Node) -> str:
    label = f"{n.type}:{n.ref.path[-1][1]}" if n.ref.path else f"{n.type} {n.ref.root_id}"
    extra = " (terminal)" if n.terminal else ""
    return f"{label} [{n.state}]{extra} transitions={n.transition_count} rev={n.update_revision}"


def _print_tree(nodes: list[Node]) -> None:
    if not nodes:
        return
    base = len(nodes[0].ref.path)
    # Depth-first order with parents first, so a node is the last child of its parent when no
    # later node at the same depth shares the parent.
    for i, n in enumerate(nodes):
        depth = len(n.ref.path) - base
        if depth == 0:
            print(_node_line(n))
            continue
        prefix = ""
        for d in range(1, depth + 1):
            ancestor = n.ref.path[: base + d - 1]
            more = any(
                len(m.ref.path) - base == d and m.ref.path[: base + d - 1] == ancestor for m in nodes[i + 1 :]
            )
            if d == depth:
                prefix += "├── " if more else "└── "
            else:
                prefix += "│   " if more else "    "
        print(prefix + _node_line(n))


def _show_type(mt: MachineType) -> None:
    print(f"{mt.name} v{mt.version}" + (f" — {mt.description}" if mt.description else ""))
    print(f"  states:   {', '.join(mt.states)}")
    print(f"  initial:  {mt.initial_state}")
    print(f"  terminal: {', '.join(mt.terminal_states) or '-'}")
    rows = []
    for t in mt.transitions:
        tasks = ", ".join(
            f"timer {k.name}→{k.transition}"
            if hasattr(k, "transition")
            else f"outbound {k.name}→{k.destination}"
            for k in t.tasks
        )
        rows.append([t.name, ", ".join(t.sources), t.destination, tasks or "-"])
    if rows:
        print()
        print(_table(rows, ["transition", "from", "to", "tasks"]))


def _task_rows(tasks: list[Task]) -> str:
    rows = []
    for t in tasks:
        what = f"→{t.timer_transition}" if t.kind == "timer" else t.destination
        rows.append(
            [
                t.id,
                t.kind,
                t.name,
                str(t.ref),
                what,
                t.status,
                str(t.attempts),
                t.last_error.splitlines()[0] if t.last_error else "",
            ]
        )
    return _table(rows, ["id", "kind", "name", "node", "target", "status", "attempts", "last error"])


def _show_task(t: Task) -> None:
    fields = _jsonable(t)
    for name in ("next_attempt_ms", "lease_worker_id", "lease_expires_ms", "deadline_ms", "timer_transition"):
        if not fields[name]:
            del fields[name]
    print(_table([[k, str(v)] for k, v in fields.items()], ["field", "value"]))


def _run_tasks(client: SyncClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        if bool(args.node) == bool(args.destination):
            raise ValueError("give either --node REF or --destination NAME")
        node = Ref.parse(args.node) if args.node else None
        tasks = client.list_tasks(node, tree=args.tree, destination=args.destination, statuses=args.status)
        _print_json(tasks) if args.json else print(_task_rows(tasks))
    elif args.action == "dead-letters":
        tasks = client.list_dead_letters(args.destination)
        _print_json(tasks) if args.json else print(_task_rows(tasks))
    else:
        if args.action == "get":
            task = client.get_task(args.id)
        elif args.action == "retry":
            task = client.retry_dead_letter(args.id)
        else:
            task = client.discard_dead_letter(args.id)
        _print_json(task) if args.json else _show_task(task)
    return 0


def _run_savepoints(client: SyncClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        run = client.get_run(args.run_id)
        savepoints = client.list_savepoints(args.run_id)
        if args.json:
            _print_json({"run": run, "savepoints": savepoints})
            return 0
        schedule = f"every {run.schedule_ms} ms" if run.schedule_ms else "no schedule"
        print(
            f"run {run.run_id}: start {run.start_ms}, {schedule}, schema {run.schema_version}, "
            f"{run.entity_count} entities, keep {run.keep_count}, next savepoint {run.next_savepoint_ms or '-'}"
        )
        rows = [
            [
                str(s.timestamp_ms),
                str(s.schema_version),
                str(s.entity_count),
                str(s.size_bytes),
                str(s.revision),
            ]
            for s in savepoints
        ]
        print(_table(rows, ["timestamp", "schema", "entities", "bytes", "revision"]))
    else:
        sp = client.load_savepoint(args.run_id, args.timestamp)
        if args.json:
            _print_json(sp)
            return 0
        print(
            f"savepoint {sp.timestamp_ms} of run {sp.run_id} (schema {sp.schema_version}, {len(sp.states)} entities)"
        )
        if sp.fell_back:
            print(f"fell back: damaged savepoints {', '.join(map(str, sp.damaged_timestamps))}")
        rows = [[k, str(len(v)), str(_jsonable(v))[:60]] for k, v in sorted(sp.states.items())]
        print(_table(rows, ["entity", "bytes", "state"]))
    return 0


def _event_kind(text: str) -> str:
    """An event kind as the SDK names it ("node_transitioned"); EVENT_KIND_… and any case too."""
    name = text.strip().lower().removeprefix("event_kind_")
    known = [k.removeprefix("EVENT_KIND_").lower() for k in event_pb2.EventKind.keys()[1:]]
    if name not in known:
        raise argparse.ArgumentTypeError(f"unknown event kind {text!r}; one of: {', '.join(known)}")
    return name


def _event_line(e: Event) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time_ms / 1000)) + f".{e.time_ms % 1000:03d}"
    what = str(e.ref) if e.ref is not None else e.machine_type
    parts = [f"{e.revision}.{e.index}", stamp, e.kind.ljust(24), what]
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


def _run_watch(args: argparse.Namespace) -> int:
    """Stream events until --count or Ctrl-C. Runs on the async client: asyncio turns SIGINT
    into a cancellation at once, where a blocked synchronous stream may not notice it."""
    if args.from_revision < 0 or (args.count is not None and args.count < 1):
        raise ValueError("--from-revision must not be negative and --count must be at least 1")
    root = Ref.parse(args.root) if args.root else None

    async def watch() -> None:
        async with await Client.connect(args.server, **_connect_options(args)) as client:
            events = client.watch(
                start_revision=args.from_revision,
                root_id=root.root_id if root is not None else "",
                path_prefix=root.path if root is not None else (),
                machine_types=args.types,
                kinds=args.kinds,
            )
            seen = 0
            try:
                async for event in events:
                    if args.json:
                        line = json.dumps(_jsonable(event), ensure_ascii=False, separators=(",", ":"))
                    else:
                        line = _event_line(event)
                    print(line, flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
            finally:
                await events.aclose()  # ends the stream at the server too

    try:
        asyncio.run(watch())
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    except BrokenPipeError:  # the reader went away (`statekeeper watch | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
    return _table(rows, ["name", "acked revision", "unacked", "lag", "subscribers", "filter"])


def _run_consumers(client: SyncClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        consumers = client.list_consumers()
        _print_json(consumers) if args.json else print(_consumer_rows(consumers))
        return 0
    consumer = client.get_consumer(args.name)
    if args.json:
        _print_json(consumer)
    else:
        fields = _jsonable(consumer)
        for name in ("root_id", "machine_types", "kinds"):
            if not fields[name]:
                fields[name] = "-"
        print(_table([[k, str(v)] for k, v in fields.items()], ["field", "value"]))
    return 0


def _run_backup(client: SyncClient, args: argparse.Namespace) -> int:
    backup = client.create_backup(args.name)
    if args.json:
        _print_json(backup)
    else:
        print(
            f"backup {backup.name} at {backup.path} (revision {backup.revision}, {backup.size_bytes} bytes)"
        )
    return 0


def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "token": args.token or None,
        "timeout": args.timeout,
        "wait_ready": args.timeout,
        "tls": args.tls,
        "tls_ca": args.tls_ca or None,
        "tls_cert": args.tls_cert or None,
        "tls_key": args.tls_key or None,
        "tls_server_name": args.tls_server_name or None,
    }


def _client(args: argparse.Namespace) -> SyncClient:
    return SyncClient.connect(args.server, **_connect_options(args))


def _run(args: argparse.Namespace) -> int:
    if args.command == "watch":
        return _run_watch(args)
    with _client(args) as client:
        if args.command == "tasks":
            return _run_tasks(client, args)
        if args.command == "savepoints":
            return _run_savepoints(client, args)
        if args.command == "backup":
            return _run_backup(client, args)
        if args.command == "consumers":
            return _run_consumers(client, args)
        if args.command == "types":
            if args.action == "list":
                types = client.list_machine_types(all_versions=args.all_versions)
                if args.json:
                    _print_json(types)
                else:
                    rows = [
                        [m.name, str(m.version), str(len(m.states)), str(len(m.transitions)), m.description]
                        for m in types
                    ]
                    print(_table(rows, ["name", "version", "states", "transitions", "description"]))
            elif args.action == "show":
                mt = client.get_machine_type(args.name, args.version)
                _print_json(mt) if args.json else _show_type(mt)
            else:
                text = client.render_diagram(args.name, args.version, format=args.format)
                _print_json({"format": args.format, "diagram": text}) if args.json else print(text, end="")
        elif args.command == "get":
            node = client.get_node(Ref.parse(args.ref))
            if args.json:
                _print_json(node)
            else:
                rows = [[k, str(node.ref) if k == "ref" else str(v)] for k, v in _jsonable(node).items()]
                print(_table(rows, ["field", "value"]))
        elif args.command == "tree":
            nodes = client.walk(Ref.parse(args.ref))
            _print_json(nodes) if args.json else _print_tree(nodes)
        elif args.command == "transition":
            data = args.data.encode() if args.data is not None else None
            result = client.transition(
                Ref.parse(args.ref),
                args.name,
                data,
                content_type=args.content_type,
                expected_transition_count=args.expect_count,
                request_id=args.request_id,
            )
            if args.json:
                _print_json(result)
            else:
                print(
                    f"{result.node.ref}: {result.from_state} → {result.node.state} (revision {result.revision})"
                )
                for t in result.tasks:
                    print(f"  task {t.id} {t.kind} {t.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statekeeper", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server (flags: statekeeper serve --help)", add_help=False)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", default=os.environ.get("STATEKEEPER_ADDRESS", "127.0.0.1:50051"), help="host:port"
    )
    common.add_argument(
        "--token", default=os.environ.get("STATEKEEPER_TOKEN", ""), help="bearer token (STATEKEEPER_TOKEN)"
    )
    env = os.environ.get
    common.add_argument(
        "--tls",
        action="store_true",
        default=env("STATEKEEPER_TLS", "").lower() in ("1", "true", "yes", "on"),
        help="use TLS, trusting the system's CAs (implied by --tls-ca) (STATEKEEPER_TLS)",
    )
    common.add_argument(
        "--tls-ca",
        default=env("STATEKEEPER_TLS_CA", ""),
        help="PEM CA to trust for the server (STATEKEEPER_TLS_CA)",
    )
    common.add_argument(
        "--tls-cert",
        default=env("STATEKEEPER_TLS_CERT", ""),
        help="PEM client certificate, for mutual TLS (STATEKEEPER_TLS_CERT)",
    )
    common.add_argument(
        "--tls-key",
        default=env("STATEKEEPER_TLS_KEY", ""),
        help="PEM key of --tls-cert (STATEKEEPER_TLS_KEY)",
    )
    common.add_argument(
        "--tls-server-name",
        default=env("STATEKEEPER_TLS_SERVER_NAME", ""),
        help="name to check the server's certificate against, if not the --server host",
    )
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")

    types = sub.add_parser("types", help="machine types").add_subparsers(dest="action", required=True)
    p = types.add_parser("list", parents=[common], help="list machine types")
    p.add_argument("--all-versions", action="store_true")
    p = types.add_parser("show", parents=[common], help="show one machine type")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0)
    p = types.add_parser("diagram", parents=[common], help="render a machine type as Mermaid or DOT")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0)
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    p = sub.add_parser("get", parents=[common], help="show one node")
    p.add_argument("ref", help="root or root/type:id/...")
    p = sub.add_parser("tree", parents=[common], help="show a subtree with its states")
    p.add_argument("ref")
    p = sub.add_parser("transition", parents=[common], help="apply a transition to a node")
    p.add_argument("ref")
    p.add_argument("name")
    p.add_argument("--data", help="new data (text)")
    p.add_argument("--content-type", default="")
    p.add_argument(
        "--expect-count", type=int, default=None, help="expected transition count (compare-and-swap)"
    )
    p.add_argument("--request-id", default="")

    p = sub.add_parser(
        "watch",
        parents=[common],
        help="follow the event stream live (Ctrl-C ends it)",
        description="Print the store's change events as they are committed, one line each (JSON lines "
        "with --json). Filters combine: an event is shown when it matches all of them.",
    )
    p.add_argument(
        "--from-revision",
        type=int,
        default=0,
        metavar="N",
        help="start at revision N, history first (default: only events committed from now on)",
    )
    p.add_argument(
        "--root",
        default="",
        metavar="REF",
        help="only events of this tree or subtree (root or root/type:id/...)",
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
        type=_event_kind,
        metavar="KIND",
        help="only this event kind, e.g. node_transitioned, task_created (repeatable)",
    )
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N events")

    consumers = sub.add_parser("consumers", help="durable event consumers").add_subparsers(
        dest="action", required=True
    )
    consumers.add_parser(
        "list", parents=[common], help="every consumer: acked revision (position), unacked, lag, subscribers"
    )
    p = consumers.add_parser("get", parents=[common], help="one consumer with its filter and settings")
    p.add_argument("name")

    tasks = sub.add_parser("tasks", help="timers and outbound tasks").add_subparsers(
        dest="action", required=True
    )
    p = tasks.add_parser("list", parents=[common], help="tasks of a node, a tree, or a destination")
    p.add_argument("--node", help="REF: the tasks of this node")
    p.add_argument("--tree", action="store_true", help="with --node: also its descendants' tasks")
    p.add_argument("--destination", default="", help="the pending and leased tasks of a destination")
    p.add_argument("--status", action="append", default=[], help="only this status (repeatable)")
    p = tasks.add_parser("get", parents=[common], help="one task with its attempts and last error")
    p.add_argument("id")
    p = tasks.add_parser("dead-letters", parents=[common], help="dead-lettered tasks")
    p.add_argument("--destination", default="", help="only this destination")
    p = tasks.add_parser("retry", parents=[common], help="put a dead-lettered task back to pending")
    p.add_argument("id")
    p = tasks.add_parser("discard", parents=[common], help="drop a dead-lettered task")
    p.add_argument("id")

    savepoints = sub.add_parser("savepoints", help="run savepoints").add_subparsers(
        dest="action", required=True
    )
    p = savepoints.add_parser("list", parents=[common], help="a run and its complete savepoints")
    p.add_argument("run_id")
    p = savepoints.add_parser("latest", parents=[common], help="load a run's latest complete savepoint")
    p.add_argument("run_id")
    p.add_argument("--timestamp", type=int, default=0, help="load this savepoint instead of the latest")
    p = sub.add_parser("backup", parents=[common], help="an online backup of the whole store")
    p.add_argument("--name", default="", help="backup folder name (default: backup-<revision>-<ms>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        try:
            from statekeeper_server.app.main import main as serve_main
        except ImportError:
            print(
                "statekeeper: the server is not installed: pip install 'statekeeper[server]'", file=sys.stderr
            )
            return 2
        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except StatekeeperError as e:
        detail = f" ({', '.join(f'{k}={v}' for k, v in e.metadata.items())})" if e.metadata else ""
        print(f"error: {e.code.name} {e.reason}: {e.message}{detail}", file=sys.stderr)
        return 1
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a --tls-* file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
