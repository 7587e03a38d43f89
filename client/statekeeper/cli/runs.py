"""Runs and their savepoints, tree snapshots, and backups."""

from __future__ import annotations

import argparse
from pathlib import Path

from statekeeper._sync.client import SyncClient
from statekeeper._types import Run
from statekeeper.cli._common import cell, fields_table, fmt_bytes, print_json, show, table


def _entity(text: str) -> tuple[str, bytes]:
    """ID=TEXT, or ID=@PATH for a file's bytes."""
    entity, sep, value = text.partition("=")
    if not sep or not entity:
        raise argparse.ArgumentTypeError(f"entity {text!r} must be ID=STATE (or ID=@FILE)")
    if value.startswith("@"):
        try:
            return entity, Path(value[1:]).read_bytes()
        except OSError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return entity, value.encode()


def _run_line(run: Run) -> str:
    schedule = f"every {run.schedule_ms} ms" if run.schedule_ms else "no schedule"
    return (
        f"run {run.run_id}: start {run.start_ms}, {schedule}, schema {run.schema_version}, "
        f"{run.entity_count} entities, keep {run.keep_count}, next savepoint {run.next_savepoint_ms or '-'}"
    )


def _create(client: SyncClient, args: argparse.Namespace) -> int:
    run = client.create_run(
        args.run_id,
        args.entities,
        start_ms=args.start_ms,
        schedule_ms=args.schedule_ms,
        schema_version=args.schema_version,
        keep=args.keep,
        request_id=args.request_id,
    )
    return show(args, run, lambda: "created " + _run_line(run))


def _list(client: SyncClient, args: argparse.Namespace) -> int:
    runs = client.list_runs()
    rows = [
        [
            r.run_id,
            str(r.entity_count),
            str(r.schedule_ms or "-"),
            cell(r.latest_savepoint_ms, "latest_savepoint_ms"),
            str(r.savepoint_count),
        ]
        for r in runs
    ]
    return show(
        args, runs, lambda: table(rows, ["run", "entities", "schedule ms", "latest savepoint", "savepoints"])
    )


def _get(client: SyncClient, args: argparse.Namespace) -> int:
    run = client.get_run(args.run_id)
    return show(args, run, lambda: fields_table(run))


def _delete(client: SyncClient, args: argparse.Namespace) -> int:
    count = client.delete_run(args.run_id, request_id=args.request_id)
    if args.json:
        print_json({"run_id": args.run_id, "deleted_savepoint_count": count})
    else:
        print(f"deleted run {args.run_id} and its {count} savepoint{'s' if count != 1 else ''}")
    return 0


def _savepoints(client: SyncClient, args: argparse.Namespace) -> int:
    run = client.get_run(args.run_id)
    savepoints = client.list_savepoints(args.run_id)
    if args.json:
        print_json({"run": run, "savepoints": savepoints})
        return 0
    print(_run_line(run))
    rows = [
        [
            str(s.timestamp_ms),
            cell(s.timestamp_ms, "time_ms"),
            str(s.schema_version),
            str(s.entity_count),
            str(s.size_bytes),
            str(s.revision),
        ]
        for s in savepoints
    ]
    print(table(rows, ["timestamp", "as time", "schema", "entities", "bytes", "revision"]))
    return 0


def _latest(client: SyncClient, args: argparse.Namespace) -> int:
    sp = client.load_savepoint(args.run_id, args.timestamp)
    if args.json:
        print_json(sp)
        return 0
    print(
        f"savepoint {sp.timestamp_ms} of run {sp.run_id} (schema {sp.schema_version}, {len(sp.states)} entities)"
    )
    if sp.fell_back:
        print(f"fell back: damaged savepoints {', '.join(map(str, sp.damaged_timestamps))}")
    rows = [[k, str(len(v)), fmt_bytes(v, width=60)] for k, v in sorted(sp.states.items())]
    print(table(rows, ["entity", "bytes", "state"]))
    return 0


# -- tree snapshots ------------------------------------------------------------------------------


def _snapshot_create(client: SyncClient, args: argparse.Namespace) -> int:
    snap = client.create_tree_snapshot(args.root, args.name, request_id=args.request_id)
    return show(
        args,
        snap,
        lambda: (
            f"snapshot {snap.name} of {snap.root_id}: {snap.node_count} nodes, {snap.task_count} tasks, as of revision {snap.revision}"
        ),
    )


def _snapshot_list(client: SyncClient, args: argparse.Namespace) -> int:
    snaps = client.list_tree_snapshots(args.root)
    rows = [
        [
            s.name,
            str(s.revision),
            str(s.node_count),
            str(s.task_count),
            cell(s.create_time_ms, "create_time_ms"),
        ]
        for s in snaps
    ]
    return show(args, snaps, lambda: table(rows, ["name", "revision", "nodes", "tasks", "created"]))


def _snapshot_restore(client: SyncClient, args: argparse.Namespace) -> int:
    r = client.restore_tree_snapshot(args.root, args.name, request_id=args.request_id)
    return show(
        args,
        r,
        lambda: (
            f"restored {r.root.ref} from {args.name}: {r.node_count} nodes, {r.deleted_count} deleted, {r.task_count} tasks, revision {r.revision}"
        ),
    )


def _snapshot_fork(client: SyncClient, args: argparse.Namespace) -> int:
    r = client.fork_tree_snapshot(args.root, args.name, args.new_root_id, request_id=args.request_id)
    return show(
        args,
        r,
        lambda: (
            f"forked {args.name} of {args.root} into {r.root.ref}: {r.node_count} nodes, {r.task_count} tasks, revision {r.revision}"
        ),
    )


def _snapshot_delete(client: SyncClient, args: argparse.Namespace) -> int:
    revision = client.delete_tree_snapshot(args.root, args.name, request_id=args.request_id)
    if args.json:
        print_json({"root_id": args.root, "name": args.name, "revision": revision})
    else:
        print(f"deleted snapshot {args.name} of {args.root} (revision {revision})")
    return 0


def _backup(client: SyncClient, args: argparse.Namespace) -> int:
    b = client.create_backup(args.name)
    return show(args, b, lambda: f"backup {b.name} at {b.path} (revision {b.revision}, {b.size_bytes} bytes)")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    request_id = argparse.ArgumentParser(add_help=False)
    request_id.add_argument(
        "--request-id",
        default="",
        metavar="ID",
        help="idempotency key: a retry with it applies nothing twice",
    )

    runs = sub.add_parser(
        "runs", help="runs: entities whose states are kept in scheduled savepoints"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = runs.add_parser("create", parents=[common, request_id], help="create a run (CreateRun)")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument(
        "--entity",
        dest="entities",
        action="append",
        type=_entity,
        default=[],
        required=True,
        metavar="ID=STATE",
        help="an entity and its initial state (ID=@FILE: from a file); repeatable",
    )
    p.add_argument(
        "--start-ms",
        type=int,
        default=0,
        metavar="MS",
        help="the run's start, epoch ms: savepoints are the multiples of the schedule after it",
    )
    p.add_argument(
        "--schedule-ms", type=int, default=0, metavar="MS", help="savepoint interval (0: no savepoints)"
    )
    p.add_argument("--schema-version", type=int, default=1)
    p.add_argument(
        "--keep",
        type=int,
        default=0,
        metavar="N",
        help="complete savepoints kept (0: the server's --savepoint-keep)",
    )
    p.set_defaults(handler=_create)
    p = runs.add_parser("list", parents=[common], help="the runs found in the retained event history")
    p.set_defaults(handler=_list)
    p = runs.add_parser("get", parents=[common], help="one run")
    p.add_argument("run_id", metavar="RUN")
    p.set_defaults(handler=_get)
    p = runs.add_parser("delete", parents=[common, request_id], help="delete a run and its savepoints")
    p.add_argument("run_id", metavar="RUN")
    p.set_defaults(handler=_delete)

    savepoints = sub.add_parser("savepoints", help="a run's savepoints").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = savepoints.add_parser("list", parents=[common], help="a run and its complete savepoints")
    p.add_argument("run_id", metavar="RUN")
    p.set_defaults(handler=_savepoints)
    p = savepoints.add_parser("latest", parents=[common], help="load a run's latest complete savepoint")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument(
        "--timestamp", type=int, default=0, metavar="MS", help="load this savepoint instead of the latest"
    )
    p.set_defaults(handler=_latest)

    snapshots = sub.add_parser(
        "snapshots", help="tree snapshots: create, list, restore, fork, delete"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    root_help = "the tree's root id"
    p = snapshots.add_parser("create", parents=[common, request_id], help="snapshot a tree under a name")
    p.add_argument("root", metavar="ROOT", help=root_help)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=_snapshot_create)
    p = snapshots.add_parser("list", parents=[common], help="a tree's snapshots")
    p.add_argument("root", metavar="ROOT", help=root_help)
    p.set_defaults(handler=_snapshot_list)
    p = snapshots.add_parser("restore", parents=[common, request_id], help="put a tree back to a snapshot")
    p.add_argument("root", metavar="ROOT", help=root_help)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=_snapshot_restore)
    p = snapshots.add_parser("fork", parents=[common, request_id], help="a new tree from a snapshot")
    p.add_argument("root", metavar="ROOT", help=root_help)
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_root_id", metavar="NEW_ROOT")
    p.set_defaults(handler=_snapshot_fork)
    p = snapshots.add_parser("delete", parents=[common, request_id], help="delete a snapshot")
    p.add_argument("root", metavar="ROOT", help=root_help)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=_snapshot_delete)

    p = sub.add_parser("backup", parents=[common], help="an online backup of the whole store")
    p.add_argument("--name", default="", help="backup folder name (default: backup-<revision>-<ms>)")
    p.set_defaults(handler=_backup)
