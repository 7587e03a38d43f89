"""statekeeper types list | show NAME | diagram NAME | register FILE"""

from __future__ import annotations

import argparse

from statekeeper._sync.client import SyncClient
from statekeeper._types import MachineType
from statekeeper.cli import _type_files
from statekeeper.cli._common import choice, print_json, show, table


def _show_type(mt: MachineType) -> str:
    lines = [
        f"{mt.name} v{mt.version}" + (f" — {mt.description}" if mt.description else ""),
        f"  states:   {', '.join(mt.states)}",
        f"  initial:  {mt.initial_state}",
        f"  terminal: {', '.join(mt.terminal_states) or '-'}",
    ]
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
        lines += ["", table(rows, ["transition", "from", "to", "tasks"])]
    return "\n".join(lines)


def _list(client: SyncClient, args: argparse.Namespace) -> int:
    types = client.list_machine_types(all_versions=args.all_versions)
    rows = [
        [m.name, str(m.version), str(len(m.states)), str(len(m.transitions)), m.description] for m in types
    ]
    return show(args, types, lambda: table(rows, ["name", "version", "states", "transitions", "description"]))


def _show(client: SyncClient, args: argparse.Namespace) -> int:
    mt = client.get_machine_type(args.name, args.version)
    return show(args, mt, lambda: _show_type(mt))


def _diagram(client: SyncClient, args: argparse.Namespace) -> int:
    text = client.render_diagram(args.name, args.version, format=args.format)
    if args.json:
        print_json({"format": args.format, "diagram": text})
    else:
        print(text, end="")
    return 0


def _register(client: SyncClient, args: argparse.Namespace) -> int:
    results = [client.register_machine_type(mt) for mt in _type_files.load(args.file)]
    if args.json:
        print_json(
            [
                {
                    "name": r.machine_type.name,
                    "version": r.machine_type.version,
                    "created": r.created,
                    "revision": r.revision,
                }
                for r in results
            ]
        )
        return 0
    for r in results:
        mt = r.machine_type
        what = f"registered at revision {r.revision}" if r.created else "already registered, identical"
        print(f"{mt.name} v{mt.version}: {what}")
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    types = sub.add_parser("types", help="machine types").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = types.add_parser("list", parents=[common], help="list machine types")
    p.add_argument("--all-versions", action="store_true", help="every version, not only the latest")
    p.set_defaults(handler=_list)
    p = types.add_parser("show", parents=[common], help="show one machine type")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0, help="this version (default: the latest)")
    p.set_defaults(handler=_show)
    p = types.add_parser("diagram", parents=[common], help="render a machine type as Mermaid or DOT")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0)
    p.add_argument(
        "--format", type=choice(["mermaid", "dot"], "format"), default="mermaid", help="mermaid or dot"
    )
    p.set_defaults(handler=_diagram)
    p = types.add_parser(
        "register",
        parents=[common],
        help="register machine types from a YAML or JSON file",
        description=_type_files.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help=".yaml, .yml or .json ('-': standard input)")
    p.set_defaults(handler=_register)
