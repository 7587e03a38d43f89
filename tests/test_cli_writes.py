"""The CLI for people, against a real server: writes (types from YAML/JSON, create-root,
add-child, delete, nodes, consumers, runs, tree snapshots), output rules (references as text,
maps as objects, no Python reprs, binary never raw, readable times), bad values that list the
valid ones, a quiet broken pipe, and shell completion."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import statekeeper as sk
from statekeeper.cli import main
from tests.support import ServerProcess

DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}")
REPRS = re.compile(r"b'|b\"|\{'|\('|Ref\(|Node\(")  # what a Python repr looks like


def run(capsys: pytest.CaptureFixture[str], server: ServerProcess, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--server", server.address])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], server: ServerProcess, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*args, "--server", server.address])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_register_types_from_yaml_and_json_files(
    server: ServerProcess, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"door{uid.replace('-', '')}"
    yaml_file = tmp_path / "door.yaml"
    yaml_file.write_text(
        f"""
name: {name}
version: 1
description: a door
states: [closed, open, locked]
initial_state: closed
terminal_states: [locked]
transitions:
  - name: open
    from: closed
    to: open
    tasks:
      - timer: autoclose
        transition: close
        delay_ms: 3600000
      - outbound: notify
        destination: {name}-alarms
        payload: '{{"door": 1}}'
  - name: close
    from: [open]
    to: closed
  - name: lock
    from: [closed]
    to: locked
---
name: {name}-knob
version: 1
states: [still]
initial_state: still
"""
    )
    code, out, _ = run(capsys, server, "types", "register", str(yaml_file))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith(f"{name} v1: registered at revision ")
    assert lines[1].startswith(f"{name}-knob v1: registered at revision ")
    code, out, _ = run(capsys, server, "types", "register", str(yaml_file))
    assert code == 0 and out.count("already registered, identical") == 2
    with sk.SyncClient.connect(server.address) as client:
        mt = client.get_machine_type(name)
    assert mt.description == "a door" and tuple(mt.terminal_states) == ("locked",)
    assert list(mt.transitions[0].tasks) == [
        sk.Timer("autoclose", "close", 3_600_000),
        sk.Outbound("notify", f"{name}-alarms", b'{"door": 1}'),
    ]
    json_file = tmp_path / "gate.json"
    json_file.write_text(
        json.dumps({"name": f"{name}-gate", "version": 1, "states": ["a"], "initial_state": "a"})
    )
    code, out, _ = run(capsys, server, "types", "register", str(json_file), "--json")
    registered = json.loads(out)
    assert code == 0 and [(r["name"], r["created"]) for r in registered] == [(f"{name}-gate", True)]
    # a bad file names what is wrong and what is valid
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nversion: 1\nstates: [a]\ninitial_state: a\ntransitions:\n  - name: t\n    source: a\n    to: a\n"
    )
    code, _, err = run(capsys, server, "types", "register", str(bad))
    assert code == 2 and "unknown key(s) source; valid: from, name, tasks, to" in err


def test_create_add_get_nodes_delete(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(
        capsys,
        server,
        "create-root",
        "order",
        uid,
        "--data",
        '{"total": 42}',
        "--content-type",
        "application/json",
    )
    assert code == 0 and out.startswith(f"created {uid} (order v1) in state new, revision ")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)))
    code, out, _ = run(capsys, server, "add-child", uid, "item", "i/1", "--data-file", str(blob), "--json")
    child = json.loads(out)
    assert code == 0 and child["ref"] == f"{uid}/item:i%2F1"  # a "/" in an id is escaped
    assert child["data"] == {"encoding": "base64", "value": base64.b64encode(bytes(range(256))).decode()}
    code, out, _ = run(capsys, server, "add-child", f"{uid}/item:i%2F1", "part", "p1")
    assert code == 0 and f"created {uid}/item:i%2F1/part:p1" in out

    # get: a table of readable values, no Python reprs; binary data as base64 with its size
    code, out, _ = run(capsys, server, "get", uid)
    fields = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert fields["data"] == '{"total": 42}  (application/json)' and fields["child_counts"] == "item=1"
    assert fields["terminal"] == "no" and not REPRS.search(out)
    code, out, _ = run(capsys, server, "get", f"{uid}/item:i%2F1")
    assert "base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIj" in out and "(256 bytes)" in out
    assert "\x00" not in out and not REPRS.search(out)
    code, out, _ = run(capsys, server, "get", uid, "--json")
    node = json.loads(out)
    assert node["ref"] == uid and node["child_counts"] == {"item": 1} and node["data"] == '{"total": 42}'

    # nodes of a type, by state and as roots only
    client.transition(uid, "pay")
    code, out, _ = run(capsys, server, "nodes", "order", "--state", "paid", "--roots", "--json")
    assert uid in [n["ref"] for n in json.loads(out)] and all(n["state"] == "paid" for n in json.loads(out))
    code, out, _ = run(capsys, server, "nodes", "item", "--status", "active")
    assert f"{uid}/item:i%2F1" in out and out.splitlines()[0].split()[:2] == ["NODE", "STATE"]
    code, _, err = run(capsys, server, "nodes", "order", "--state", "lost")
    assert (
        code == 2
        and "machine type 'order' has no state 'lost'; its states: new, paid, shipped, cancelled" in err
    )

    code, out, _ = run(capsys, server, "delete", f"{uid}/item:i%2F1")
    assert code == 0 and out.strip() == f"deleted {uid}/item:i%2F1 and its subtree: 2 nodes"
    code, _, err = run(capsys, server, "get", f"{uid}/item:i%2F1")
    assert code == 1 and "NODE_NOT_FOUND" in err


def test_bad_values_list_the_valid_ones(
    server: ServerProcess, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, server, "tasks", "list", "--status", "done")
    assert (
        "unknown task status 'done'; one of: pending, leased, completed, stale, dead_letter, discarded" in err
    )
    err = usage_error(capsys, server, "nodes", "order", "--status", "alive")
    assert "unknown status 'alive'; one of: any, active, terminal" in err
    err = usage_error(capsys, server, "types", "diagram", "order", "--format", "svg")
    assert "unknown format 'svg'; one of: mermaid, dot" in err
    err = usage_error(capsys, server, "consumers", "create", "c", "--start", "now")
    assert "one of: latest, earliest, revision" in err
    err = usage_error(capsys, server, "get", f"{uid}/item")
    assert "must be type:id" in err
    code, _, err = run(capsys, server, "create-root", "nosuchtype", uid)
    assert (
        code == 1
        and "MACHINE_TYPE_NOT_FOUND" in err
        and "registered machine types: " in err
        and "order" in err
    )
    code, _, err = run(capsys, server, "transition", uid, "pay")
    assert code == 1 and "NODE_NOT_FOUND" in err
    run(capsys, server, "create-root", "order", uid)
    code, _, err = run(capsys, server, "transition", uid, "fly")
    assert code == 1 and "UNKNOWN_TRANSITION" in err and "allowed_transitions=pay,cancel,touch" in err


def test_tasks_list_without_a_filter_and_readable_times(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    timed = sk.MachineType(
        name="timed",
        version=1,
        states=["a", "b"],
        initial_state="a",
        transitions=[sk.Transition("go", ["a"], "b", tasks=[sk.Timer("later", "go", delay_ms=3_600_000)])],
    )
    client.register_machine_type(timed)
    client.create_root("timed", uid)
    timer = client.transition(uid, "go").tasks[0]
    client.create_root("order", uid + "-o")
    outbound = client.transition(uid + "-o", "pay").tasks[0]
    code, out, _ = run(capsys, server, "tasks", "list")
    assert code == 0 and timer.id in out and outbound.id in out  # across trees and kinds
    row = next(line for line in out.splitlines() if line.startswith(timer.id + " "))
    assert DATE.search(row) and str(timer.deadline_ms) not in row  # the deadline, readable
    code, out, _ = run(capsys, server, "tasks", "list", "--status", "pending", "--json")
    assert {timer.id, outbound.id} <= {t["id"] for t in json.loads(out)}
    code, out, _ = run(capsys, server, "tasks", "get", timer.id)
    fields = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert DATE.fullmatch(fields["deadline_ms"]) and fields["ref"] == uid and not REPRS.search(out)
    code, out, _ = run(capsys, server, "tasks", "get", timer.id, "--json")
    assert json.loads(out)["deadline_ms"] == timer.deadline_ms and json.loads(out)["ref"] == uid


def test_consumers_create_and_delete(
    server: ServerProcess, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"cli-c-{uid}"
    code, out, _ = run(
        capsys, server, "consumers", "create", name, "--root", uid, "--kind", "node_created", "--json"
    )
    created = json.loads(out)
    assert (
        code == 0
        and created["name"] == name
        and created["root_id"] == uid
        and created["kinds"] == ["node_created"]
    )
    code, out, _ = run(capsys, server, "consumers", "delete", name)
    assert code == 0 and out.strip() == f"deleted consumer {name}"
    code, _, err = run(capsys, server, "consumers", "get", name)
    assert code == 1 and "CONSUMER_NOT_FOUND" in err and "consumers: " in err


def test_runs_create_list_get_delete(
    server: ServerProcess, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, server, "runs", "create", uid, "--entity", "a=0", "--entity", "b=x", "--schedule-ms", "60000"
    )
    assert code == 0 and out.startswith(f"created run {uid}: start 0, every 60000 ms")
    code, out, _ = run(capsys, server, "runs", "list", "--json")
    assert code == 0 and uid in [r["run_id"] for r in json.loads(out)]
    code, out, _ = run(capsys, server, "runs", "get", uid)
    fields = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert (
        fields["entity_count"] == "2"
        and fields["latest_savepoint_ms"] == "-"
        and DATE.fullmatch(fields["create_time_ms"])
    )
    code, out, _ = run(capsys, server, "runs", "delete", uid)
    assert code == 0 and out.strip() == f"deleted run {uid} and its 0 savepoints"
    code, out, _ = run(capsys, server, "runs", "list")
    assert uid not in out


def test_tree_snapshots_create_list_restore_fork_delete(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client.create_root("order", uid)
    client.add_child(uid, "item", "i1")
    code, out, _ = run(capsys, server, "snapshots", "create", uid, "before")
    assert code == 0 and out.startswith(f"snapshot before of {uid}: 2 nodes")
    client.transition(uid, "pay")
    client.add_child(uid, "item", "i2")
    code, out, _ = run(capsys, server, "snapshots", "list", uid)
    assert out.splitlines()[1].split()[0] == "before" and DATE.search(out)
    code, out, _ = run(capsys, server, "snapshots", "restore", uid, "before")
    assert code == 0 and "2 nodes, 1 deleted" in out
    assert client.get_node(uid).state == "new"
    code, out, _ = run(capsys, server, "snapshots", "fork", uid, "before", uid + "-copy", "--json")
    assert code == 0 and json.loads(out)["root"]["ref"] == uid + "-copy"
    code, out, _ = run(capsys, server, "snapshots", "delete", uid, "before")
    assert code == 0 and out.startswith(f"deleted snapshot before of {uid}")


def test_tree_into_head_exits_quietly(server: ServerProcess, client: sk.SyncClient, uid: str) -> None:
    client.create_root("order", uid)
    batch = sk.Batch()
    for i in range(3000):  # far more output than a pipe holds
        batch.add_child(uid, "item", f"i{i:04d}")
    client.execute(batch)
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m statekeeper tree {uid} --server {server.address} | head -n 2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and len(result.stdout.splitlines()) == 2


def test_shell_completion_covers_commands_and_serve_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "statekeeper.bash"
    script.write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        line = " ".join(["statekeeper", *words])
        result = subprocess.run(
            [
                "bash",
                "-c",
                f"source {script}; COMP_WORDS=(statekeeper {' '.join(words)}); COMP_CWORD={len(words)}; "
                f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; _shtab_statekeeper; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout.split()

    assert complete("snap") == ["snapshots"]
    assert complete("snapshots", "f") == ["fork"]
    assert complete("serve", "--data-d") == ["--data-dir"]  # the server's own flags
    assert complete("serve", "--conf") == ["--config"]
    assert "--start-revision" in complete("watch", "--st")
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("#compdef statekeeper")


def test_info_shows_the_server_facts(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, server, "info")
    fields = dict(line.split(None, 1) for line in out.splitlines()[1:] if line.strip())
    assert code == 0 and fields["store"] == "rocksdb" and fields["shard_count"] == "0", out
    code, out, _ = run(capsys, server, "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["revision"] >= 1 and info["cluster_members"] == [], info
