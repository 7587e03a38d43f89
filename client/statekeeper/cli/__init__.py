"""`statekeeper`: run the server, and inspect or operate a running one.

    statekeeper serve [--config FILE] [flags]    run the server (needs the `server` extra)
    statekeeper types list|show|diagram|register FILE    machine types
    statekeeper create-root TYPE ID [--data TEXT]        a new tree
    statekeeper add-child PARENT TYPE ID                 a child node (PARENT: root/type:id/...)
    statekeeper get REF | tree REF                       one node | a subtree with its states
    statekeeper transition REF NAME                      apply a transition
    statekeeper delete REF                               a node and its subtree
    statekeeper nodes TYPE [--state S] [--roots]         nodes of a type (ListNodes)
    statekeeper watch [--start-revision N] [--root REF] [--type T] [--kind K]   live events
    statekeeper consumers list|get|create|delete         durable event consumers
    statekeeper tasks list|get|dead-letters|retry|discard    timers and outbound tasks
    statekeeper runs create|list|get|delete              runs (savepoint schedules)
    statekeeper savepoints list|latest RUN               a run's savepoints, or its latest loaded
    statekeeper snapshots create|list|restore|fork|delete    tree snapshots
    statekeeper backup [--name NAME]                     an online backup of the whole store
    statekeeper info                                     the server's facts; a cluster's servers and shards
    statekeeper completion bash|zsh|tcsh                 a shell completion script

REF is `root/type:id/...` ("/" or "%" inside an id written %2F, %25). Every command that talks
to a server takes --server (STATEKEEPER_ADDRESS) and --json; --token (STATEKEEPER_TOKEN) for a
server with tokens; --tls-ca / --tls-cert / --tls-key (STATEKEEPER_TLS_CA, _CERT, _KEY) for TLS
and mutual TLS. Exit codes: 0 done, 1 the server refused or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from statekeeper._errors import ConnectionFailedError, StatekeeperError
from statekeeper._sync.client import SyncClient
from statekeeper.cli import events, info, nodes, runs, tasks, types
from statekeeper.cli._common import common_parser, connect

SHELLS = ("bash", "zsh", "tcsh")


def _version() -> str:
    from statekeeper import __version__

    return __version__


def _server_parser() -> argparse.ArgumentParser | None:
    try:
        from statekeeper_server.app.config import build_parser
    except ImportError:
        return None
    return build_parser({})


def build_parser(*, with_server_flags: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statekeeper", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"statekeeper {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server = _server_parser() if with_server_flags else None
    # `serve` is dispatched to the server before parsing; its flags are here for completion.
    sub.add_parser(
        "serve",
        help="run the server (flags: statekeeper serve --help)",
        add_help=False,
        parents=[server] if server else [],
    )
    common = common_parser()
    types.register(sub, common)
    nodes.register(sub, common)
    events.register(sub, common)
    tasks.register(sub, common)
    runs.register(sub, common)
    info.register(sub, common)
    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description=_COMPLETION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS, help="bash, zsh or tcsh")
    return parser


_COMPLETION_HELP = """Print a completion script for your shell, e.g.

    statekeeper completion bash > ~/.local/share/bash-completion/completions/statekeeper
    statekeeper completion zsh > "${fpath[1]}/_statekeeper"

It completes commands and flags, `serve` flags included (with the server installed)."""


def _completion(shell: str) -> int:
    try:
        import shtab
    except ImportError:
        print("statekeeper: completion needs shtab: pip install 'statekeeper[cli]'", file=sys.stderr)
        return 2
    print(shtab.complete(build_parser(with_server_flags=True), shell=shell))
    return 0


def _hint(client: SyncClient, error: StatekeeperError) -> str:
    """The valid values, when the server refused a name it does not know."""
    try:
        if error.reason == "MACHINE_TYPE_NOT_FOUND":
            known = sorted({m.name for m in client.list_machine_types()})
            return f"registered machine types: {', '.join(known) or 'none'}"
        if error.reason == "CONSUMER_NOT_FOUND":
            known = [c.name for c in client.list_consumers()]
            return f"consumers: {', '.join(known) or 'none'}"
    except StatekeeperError:
        pass
    return ""


def _report(error: StatekeeperError, hint: str = "") -> None:
    if isinstance(error, ConnectionFailedError):
        print(f"error: {error}", file=sys.stderr)
        return
    detail = f" ({', '.join(f'{k}={v}' for k, v in error.metadata.items())})" if error.metadata else ""
    print(f"error: {error.code.name} {error.reason}: {error.message}{detail}", file=sys.stderr)
    if hint:
        print(f"  {hint}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    if args.command == "completion":
        return _completion(args.shell)
    if getattr(args, "raw_handler", None):
        return int(args.raw_handler(args))
    with connect(args) as client:
        try:
            return int(args.handler(client, args))
        except StatekeeperError as e:
            _report(e, _hint(client, e))
            return 1


def _quiet_broken_pipe() -> int:
    """The reader went away (`statekeeper tree x | head`): stop quietly, as other tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


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
        code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except StatekeeperError as e:  # connecting
        _report(e)
        return 1
    except OSError as e:  # e.g. a --tls-* or --data-file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
