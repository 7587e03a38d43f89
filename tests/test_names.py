"""docs/names.md maps every RPC to its SDK method(s) and CLI command, and what it names exists:
every RPC of the proto is listed once, every SDK method named is a method of sk.Client, every
public sk.Client method appears, and every CLI command named parses."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import statekeeper as sk
from statekeeper.cli import build_parser
from statekeeper.v1 import admin_pb2, event_pb2, machine_type_pb2, node_pb2, savepoint_pb2, task_pb2

NAMES = Path(__file__).resolve().parent.parent / "docs" / "names.md"
ROW = re.compile(r"^\| `(\w+)\.(\w+)` \| (.+?) \| (.+?) \|$")


def rows() -> list[tuple[str, str, str, str]]:
    rpc_table = NAMES.read_text().split("## Fields", 1)[0]
    return [m.groups() for line in rpc_table.splitlines() if (m := ROW.match(line))]  # type: ignore[misc]


def cli_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.add((*prefix, name))
                out |= cli_commands(sub, (*prefix, name))
    return out


def test_every_rpc_is_mapped_to_what_exists() -> None:
    rpcs = {
        (s.name, m.name)
        for f in (admin_pb2, event_pb2, machine_type_pb2, node_pb2, savepoint_pb2, task_pb2)
        for s in f.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    table = rows()
    assert sorted((s, m) for s, m, _, _ in table) == sorted(rpcs)
    commands = cli_commands(build_parser())
    named_methods = set()
    for _, _, sdk, cli in table:
        for method in re.findall(r"`(\w+)`", sdk):
            if method[0].islower():
                assert callable(getattr(sk.Client, method, None)), method
                named_methods.add(method)
        if cli != "\u2013":  # an en dash: no CLI command
            words = tuple(w for w in cli.strip("`").split() if w.islower() or "-" in w)
            assert words in commands, cli
    public = {n for n, f in vars(sk.Client).items() if callable(f) and not n.startswith("_")}
    assert public - named_methods <= {"connect", "close"}  # connect is a classmethod
