"""The `statekeeper` CLI against a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import statekeeper as sk
from statekeeper._cli import main
from tests.support import ServerProcess


def run(capsys: pytest.CaptureFixture[str], server: ServerProcess, *args: str) -> tuple[int, str, str]:
    code = main(
        [*args[:2], "--server", server.address, *args[2:]]
        if args[0] == "types"
        else [args[0], "--server", server.address, *args[1:]]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_types_list_show_diagram(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, server, "types", "list")
    assert code == 0 and out.splitlines()[0].split()[:2] == ["NAME", "VERSION"] and "order" in out
    code, out, _ = run(capsys, server, "types", "list", "--json")
    assert {"order", "item"} <= {t["name"] for t in json.loads(out)}
    code, out, _ = run(capsys, server, "types", "show", "order")
    assert code == 0 and "initial:  new" in out and "outbound charge→payments" in out
    code, out, _ = run(capsys, server, "types", "diagram", "order")
    assert out.startswith("stateDiagram-v2")
    code, out, _ = run(capsys, server, "types", "diagram", "order", "--format", "dot")
    assert out.startswith("digraph")


def test_get_tree_transition(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = client.create_root("order", uid)
    item = client.add_child(root, "item", "i1")
    client.add_child(item, "part", "p1")
    client.add_child(root, "item", "i2")
    code, out, _ = run(capsys, server, "transition", f"{uid}/item:i1", "pack")
    assert code == 0 and "open → packed" in out
    code, out, _ = run(capsys, server, "get", f"{uid}/item:i1", "--json")
    assert json.loads(out)["state"] == "packed"
    code, out, _ = run(capsys, server, "get", uid)
    assert "state" in out and "new" in out
    code, out, _ = run(capsys, server, "tree", uid)
    lines = out.splitlines()
    assert lines[0].startswith(f"order {uid} [new]")
    assert lines[1].startswith("├── item:i1 [packed]") and lines[2].startswith("│   └── part:p1 [ok]")
    assert lines[3].startswith("└── item:i2 [open]")
    code, out, _ = run(capsys, server, "tree", uid, "--json")
    assert len(json.loads(out)) == 4


def test_errors_are_clear_with_reason(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client.create_root("order", uid)
    client.transition(uid, "pay")
    code, _, err = run(capsys, server, "transition", uid, "pay")
    assert code == 1 and "FAILED_PRECONDITION INVALID_TRANSITION" in err and "current_state=paid" in err
    code, _, err = run(capsys, server, "get", uid + "-missing")
    assert code == 1 and "NOT_FOUND NODE_NOT_FOUND" in err


def test_entry_point_runs_and_unreachable_server_is_clear() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "statekeeper._cli", "get", "x", "--server", "127.0.0.1:1", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot connect to 127.0.0.1:1: connection refused")
