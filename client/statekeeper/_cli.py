"""`statekeeper`: run the server, and inspect or operate a running one.

    statekeeper serve [server flags]        run the server (needs the `server` extra)
    statekeeper types list|show|diagram     machine types
    statekeeper get REF                     one node      (REF: root or root/type:id/...)
    statekeeper tree REF                    a subtree with its states
    statekeeper transition REF NAME         apply a transition

Every inspection command takes --server (or STATEKEEPER_ADDRESS) and --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from statekeeper._errors import StatekeeperError
from statekeeper._sync.client import SyncClient
from statekeeper._types import MachineType, Node, Ref


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


def _client(args: argparse.Namespace) -> SyncClient:
    return SyncClient.connect(
        args.server, token=args.token or None, timeout=args.timeout, wait_ready=args.timeout
    )


def _run(args: argparse.Namespace) -> int:
    with _client(args) as client:
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
                print(_table([[k, str(v)] for k, v in _jsonable(node).items()], ["field", "value"]))
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
    common.add_argument("--token", default=os.environ.get("STATEKEEPER_TOKEN", ""), help="bearer token")
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
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
