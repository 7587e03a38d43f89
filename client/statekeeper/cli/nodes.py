"""Nodes and trees: create-root, add-child, get, tree, transition, delete, nodes (ListNodes)."""

from __future__ import annotations

import argparse

from statekeeper._sync.client import SyncClient
from statekeeper._types import Node
from statekeeper.cli._common import (
    add_data_flags,
    cell,
    choice,
    fmt_bytes,
    print_json,
    read_data,
    ref_arg,
    show,
    table,
)

STATUSES = ["any", "active", "terminal"]


def node_table(n: Node) -> str:
    rows = [[name, cell(getattr(n, name), name)] for name in ("ref", "type", "type_version", "state")]
    rows.append(["data", fmt_bytes(n.data, n.content_type)])
    rows += [
        [name, cell(getattr(n, name), name)]
        for name in ("transition_count", "create_revision", "update_revision", "terminal", "child_counts")
    ]
    return table(rows, ["field", "value"])


def _node_line(n: Node) -> str:
    label = f"{n.type}:{n.ref.path[-1][1]}" if n.ref.path else f"{n.type} {n.ref.root_id}"
    extra = " (terminal)" if n.terminal else ""
    return f"{label} [{n.state}]{extra} transitions={n.transition_count} rev={n.update_revision}"


def tree_lines(nodes: list[Node]) -> list[str]:
    if not nodes:
        return []
    base = len(nodes[0].ref.path)
    lines = []
    # Depth-first order with parents first, so a node is the last child of its parent when no
    # later node at the same depth shares the parent.
    for i, n in enumerate(nodes):
        depth = len(n.ref.path) - base
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
        lines.append(prefix + _node_line(n))
    return lines


def _get(client: SyncClient, args: argparse.Namespace) -> int:
    node = client.get_node(args.ref)
    return show(args, node, lambda: node_table(node))


def _tree(client: SyncClient, args: argparse.Namespace) -> int:
    nodes = client.walk(args.ref)
    if args.json:
        print_json(nodes)
    else:
        for line in tree_lines(nodes):
            print(line)
    return 0


def _created(args: argparse.Namespace, node: Node) -> int:
    return show(
        args,
        node,
        lambda: (
            f"created {node.ref} ({node.type} v{node.type_version}) in state {node.state}, revision {node.create_revision}"
        ),
    )


def _create_root(client: SyncClient, args: argparse.Namespace) -> int:
    node = client.create_root(
        args.type,
        args.id,
        read_data(args),
        content_type=args.content_type,
        type_version=args.type_version,
        request_id=args.request_id,
    )
    return _created(args, node)


def _add_child(client: SyncClient, args: argparse.Namespace) -> int:
    node = client.add_child(
        args.parent,
        args.type,
        args.id,
        read_data(args),
        content_type=args.content_type,
        type_version=args.type_version,
        request_id=args.request_id,
    )
    return _created(args, node)


def _transition(client: SyncClient, args: argparse.Namespace) -> int:
    result = client.transition(
        args.ref,
        args.name,
        read_data(args),
        content_type=args.content_type,
        expected_transition_count=args.expected_transition_count,
        request_id=args.request_id,
    )
    if args.json:
        print_json(result)
        return 0
    print(f"{result.node.ref}: {result.from_state} → {result.node.state} (revision {result.revision})")
    for t in result.tasks:
        print(f"  task {t.id} {t.kind} {t.name}")
    return 0


def _delete(client: SyncClient, args: argparse.Namespace) -> int:
    count = client.delete_node(args.ref, request_id=args.request_id)
    if args.json:
        print_json({"ref": args.ref, "deleted_count": count})
    else:
        print(f"deleted {args.ref} and its subtree: {count} node{'s' if count != 1 else ''}")
    return 0


def _nodes(client: SyncClient, args: argparse.Namespace) -> int:
    if args.state:
        states = client.get_machine_type(args.type).states
        if args.state not in states:
            raise ValueError(
                f"machine type {args.type!r} has no state {args.state!r}; its states: {', '.join(states)}"
            )
    nodes = client.list_nodes(args.type, state=args.state, status=args.status)
    if args.roots:
        nodes = [n for n in nodes if n.ref.is_root]
    rows = [
        [str(n.ref), n.state, cell(n.terminal), str(n.transition_count), str(n.update_revision)]
        for n in nodes
    ]
    return show(args, nodes, lambda: table(rows, ["node", "state", "terminal", "transitions", "revision"]))


def _write_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--request-id",
        default="",
        metavar="ID",
        help="idempotency key: a retry with it applies nothing twice",
    )


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("create-root", parents=[common], help="create a tree: its root node")
    p.add_argument("type", metavar="TYPE", help="machine type")
    p.add_argument("id", metavar="ID", help="root id, unique in the store")
    add_data_flags(p)
    p.add_argument("--type-version", type=int, default=0, help="machine type version (default: the latest)")
    _write_flags(p)
    p.set_defaults(handler=_create_root)

    p = sub.add_parser("add-child", parents=[common], help="add a child node under a node")
    p.add_argument("parent", type=ref_arg, metavar="PARENT", help="root or root/type:id/...")
    p.add_argument("type", metavar="TYPE")
    p.add_argument("id", metavar="ID")
    add_data_flags(p)
    p.add_argument("--type-version", type=int, default=0)
    _write_flags(p)
    p.set_defaults(handler=_add_child)

    p = sub.add_parser("get", parents=[common], help="show one node")
    p.add_argument("ref", type=ref_arg, metavar="REF", help="root or root/type:id/...")
    p.set_defaults(handler=_get)
    p = sub.add_parser("tree", parents=[common], help="show a subtree with its states")
    p.add_argument("ref", type=ref_arg, metavar="REF")
    p.set_defaults(handler=_tree)

    p = sub.add_parser("transition", parents=[common], help="apply a transition to a node")
    p.add_argument("ref", type=ref_arg, metavar="REF")
    p.add_argument("name", metavar="TRANSITION")
    add_data_flags(p, "new data")
    p.add_argument(
        "--expected-transition-count",
        "--expect-count",
        dest="expected_transition_count",
        type=int,
        default=None,
        metavar="N",
        help="apply only if the node has had exactly N transitions (compare-and-swap)",
    )
    _write_flags(p)
    p.set_defaults(handler=_transition)

    p = sub.add_parser("delete", parents=[common], help="delete a node and its subtree")
    p.add_argument("ref", type=ref_arg, metavar="REF")
    _write_flags(p)
    p.set_defaults(handler=_delete)

    p = sub.add_parser(
        "nodes", parents=[common], help="list the nodes (or roots) of a machine type, by state"
    )
    p.add_argument("type", metavar="TYPE", help="machine type")
    p.add_argument("--state", default="", help="only nodes in this state")
    p.add_argument(
        "--status",
        type=choice(STATUSES, "status"),
        default="any",
        help="any, active (not terminal) or terminal",
    )
    p.add_argument("--roots", action="store_true", help="only roots of trees")
    p.set_defaults(handler=_nodes)
