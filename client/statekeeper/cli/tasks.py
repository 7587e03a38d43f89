"""Timers and outbound tasks: list, get, dead letters, retry, discard."""

from __future__ import annotations

import argparse

from statekeeper._sync.client import SyncClient
from statekeeper._types import Task
from statekeeper.cli._common import cell, choice, fields_table, ref_arg, show, table
from statekeeper.v1 import task_pb2

TASK_STATUSES = [s.removeprefix("TASK_STATUS_").lower() for s in task_pb2.TaskStatus.keys()[1:]]


def task_rows(tasks: list[Task]) -> str:
    rows = []
    for t in tasks:
        target = f"→{t.timer_transition}" if t.kind == "timer" else t.destination
        when = (
            cell(t.deadline_ms, "deadline_ms")
            if t.kind == "timer"
            else cell(t.next_attempt_ms, "next_attempt_ms")
        )
        rows.append(
            [
                t.id,
                t.kind,
                t.name,
                str(t.ref),
                target,
                t.status,
                str(t.attempts),
                when,
                t.last_error.splitlines()[0] if t.last_error else "",
            ]
        )
    return table(rows, ["id", "kind", "name", "node", "target", "status", "attempts", "due", "last error"])


def _task_table(t: Task) -> str:
    return fields_table(
        t,
        omit_empty=(
            "next_attempt_ms",
            "lease_worker_id",
            "lease_expires_ms",
            "deadline_ms",
            "timer_transition",
            "destination",
            "last_error",
        ),
    )


def all_tasks(client: SyncClient, statuses: list[str]) -> list[Task]:
    """Every task of every tree: ListTasks needs a node or a destination, so this lists each
    machine type's roots (ListNodes) and each tree's tasks. One call per tree: on a big store,
    filter with --node or --destination instead."""
    tasks: dict[str, Task] = {}
    for mt in client.list_machine_types():
        for root in client.list_nodes(mt.name):
            if root.ref.is_root:
                for t in client.list_tasks(root, tree=True, statuses=statuses):
                    tasks[t.id] = t
    return sorted(tasks.values(), key=lambda t: (t.create_revision, t.id))


def _list(client: SyncClient, args: argparse.Namespace) -> int:
    if args.node is not None and args.destination:
        raise ValueError("give --node REF or --destination NAME, not both")
    if args.tree and args.node is None:
        raise ValueError("--tree needs --node REF")
    if args.node is None and not args.destination:
        tasks = all_tasks(client, args.status)
    else:
        tasks = client.list_tasks(
            args.node, tree=args.tree, destination=args.destination, statuses=args.status
        )
    return show(args, tasks, lambda: task_rows(tasks))


def _dead_letters(client: SyncClient, args: argparse.Namespace) -> int:
    tasks = client.list_dead_letters(args.destination)
    return show(args, tasks, lambda: task_rows(tasks))


def _one(action: str) -> object:
    def run(client: SyncClient, args: argparse.Namespace) -> int:
        method = {
            "get": client.get_task,
            "retry": client.retry_dead_letter,
            "discard": client.discard_dead_letter,
        }[action]
        task = method(args.id)
        return show(args, task, lambda: _task_table(task))

    return run


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    tasks = sub.add_parser("tasks", help="timers and outbound tasks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = tasks.add_parser("list", parents=[common], help="tasks of a node, a tree, a destination, or all")
    p.add_argument("--node", type=ref_arg, default=None, metavar="REF", help="the tasks of this node")
    p.add_argument("--tree", action="store_true", help="with --node: also its descendants' tasks")
    p.add_argument(
        "--destination", default="", help="the pending and leased tasks of an outbound destination"
    )
    p.add_argument(
        "--status",
        action="append",
        default=[],
        type=choice(TASK_STATUSES, "task status"),
        help=f"only this status (repeatable): {', '.join(TASK_STATUSES)}",
    )
    p.set_defaults(handler=_list)
    p = tasks.add_parser("get", parents=[common], help="one task with its attempts and last error")
    p.add_argument("id", help="task id, e.g. 12-0")
    p.set_defaults(handler=_one("get"))
    p = tasks.add_parser("dead-letters", parents=[common], help="dead-lettered tasks")
    p.add_argument("--destination", default="", help="only this destination")
    p.set_defaults(handler=_dead_letters)
    p = tasks.add_parser("retry", parents=[common], help="put a dead-lettered task back to pending")
    p.add_argument("id")
    p.set_defaults(handler=_one("retry"))
    p = tasks.add_parser("discard", parents=[common], help="drop a dead-lettered task")
    p.add_argument("id")
    p.set_defaults(handler=_one("discard"))
