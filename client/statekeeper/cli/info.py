"""`statekeeper info`: what the server says about itself, and the cluster's servers and shards."""

from __future__ import annotations

import argparse

from statekeeper._sync.client import SyncClient
from statekeeper._types import ServerInfo
from statekeeper.cli._common import fields_table, show, table


def _ranges(shards: tuple[int, ...]) -> str:
    """0,1,2,5 → 0-2,5"""
    out: list[str] = []
    for s in shards:
        if out and out[-1].split("-")[-1] == str(s - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out) or "-"


def _render(info: ServerInfo) -> str:
    text = fields_table(info, skip=["cluster_members"])
    if not info.cluster_members:
        return text
    rows = [
        [
            m.address + (" (this one)" if m.is_self else ""),
            m.server_id,
            str(len(m.owned_shards)),
            _ranges(m.owned_shards),
        ]
        for m in info.cluster_members
    ]
    return text + "\n\n" + table(rows, ["server", "id", "shards", "owned"])


def _info(client: SyncClient, args: argparse.Namespace) -> int:
    info = client.server_info()
    return show(args, info, lambda: _render(info))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "info",
        parents=[common],
        help="the server's version, revisions, store; in cluster mode its servers and shards",
    )
    p.set_defaults(handler=_info)
