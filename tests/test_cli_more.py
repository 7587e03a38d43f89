"""The `statekeeper` CLI against a real server: watch and consumers.

Where the other subcommands are exercised: types, get, tree, transition in tests/test_cli.py;
tasks (list, get, dead-letters, retry, discard) in tests/server/test_tasks.py::test_cli_tasks;
savepoints in tests/server/test_savepoints.py::test_cli_savepoints; backup in
tests/server/test_savepoints.py::test_backup_and_restore.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any, cast

import pytest

import statekeeper as sk
from statekeeper._cli import build_parser, main
from tests.support import ServerProcess


def run(capsys: pytest.CaptureFixture[str], server: ServerProcess, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--server", server.address])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_help_lists_watch_and_consumers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "statekeeper watch" in out and "statekeeper consumers" in out


def test_watch_history_with_filters_and_count(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = client.create_root("order", uid)
    item = client.add_child(root, "item", "i1")
    client.transition(item, "pack")
    client.transition(root, "pay")
    start = str(root.create_revision)

    code, out, _ = run(capsys, server, "watch", "--start-revision", start, "--root", uid, "--count", "4")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert "node_created" in lines[0] and f" {uid} (order) [new]" in lines[0]
    assert f"{uid}/item:i1 (item) [open]" in lines[1]
    assert "open → packed via pack #1" in lines[2]
    assert lines[3].startswith(f"{root.create_revision + 3}.0 ") and "new → paid via pay #1" in lines[3]

    code, out, _ = run(
        capsys, server, "watch", "--start-revision", start, "--root", uid, "--json", "--count", "3"
    )
    events = json_lines(out)
    assert code == 0 and [e["kind"] for e in events] == ["node_created", "node_created", "node_transitioned"]
    assert events[1]["ref"] == f"{uid}/item:i1"

    # Filters: kinds (any spelling), machine types, a subtree.
    args = ["watch", "--start-revision", start, "--root", uid, "--json"]
    code, out, _ = run(
        capsys, server, *args, "--kind", "NODE_TRANSITIONED", "--kind", "task_created", "--count", "3"
    )
    assert [(e["kind"], e["transition"] or e["detail"]) for e in json_lines(out)] == [
        ("node_transitioned", "pack"),
        ("node_transitioned", "pay"),
        ("task_created", "charge"),
    ]
    code, out, _ = run(capsys, server, *args, "--type", "item", "--count", "2")
    assert [e["machine_type"] for e in json_lines(out)] == ["item", "item"]
    code, out, _ = run(
        capsys,
        server,
        "watch",
        "--start-revision",
        start,
        "--root",
        f"{uid}/item:i1",
        "--json",
        "--count",
        "2",
    )
    assert [(e["kind"], e["to_state"]) for e in json_lines(out)] == [
        ("node_created", "open"),
        ("node_transitioned", "packed"),
    ]


def test_watch_follows_live_events(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client.create_root("order", uid)
    codes: list[int] = []
    args = ["watch", "--root", uid, "--kind", "node_transitioned", "--count", "2", "--server", server.address]
    watcher = threading.Thread(target=lambda: codes.append(main(args)))
    watcher.start()
    # The watch starts at the revision current when its stream opens: keep transitioning until
    # it has seen two events.
    deadline = time.monotonic() + 20
    while watcher.is_alive() and time.monotonic() < deadline:
        client.transition(uid, "touch")
        watcher.join(0.1)
    watcher.join(5)
    assert codes == [0]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("node_transitioned" in line and "via touch" in line for line in lines)


def test_watch_ends_cleanly_on_ctrl_c(server: ServerProcess, client: sk.SyncClient, uid: str) -> None:
    root = client.create_root("order", uid)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "statekeeper._cli",
            "watch",
            "--server",
            server.address,
            "--start-revision",
            str(root.create_revision),
            "--root",
            uid,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A runner started in the background inherits SIGINT ignored, and Python then installs
        # no Ctrl-C handler: give the CLI the terminal's default, as a user's shell would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # history first, then it waits for more
        assert (first["kind"], first["ref"]) == ("node_created", uid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out == ""


def test_watch_refuses_bad_arguments_clearly(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["watch", "--kind", "nope", "--server", server.address])
    assert exc.value.code == 2 and "unknown event kind 'nope'; one of: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["watch", "--root", "r/no-colon", "--server", server.address])
    assert exc.value.code == 2 and "path element 'no-colon' must be type:id" in capsys.readouterr().err
    code, _, err = run(capsys, server, "watch", "--count", "0")
    assert code == 2 and "--count must be at least 1" in err


def test_watch_from_revision_still_works_as_a_deprecated_alias(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = client.create_root("order", uid)
    args = ["watch", "--from-revision", str(root.create_revision), "--root", uid, "--count", "1"]
    code, out, err = run(capsys, server, *args)
    assert code == 0 and "node_created" in out
    assert "--from-revision is deprecated: use --start-revision" in err


def test_consumers_list_and_get(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"cli-{uid}"
    created = client.create_consumer(name, root_id=uid, kinds=["node_created", "node_transitioned"])
    root = client.create_root("order", uid)
    paid = client.transition(root, "pay")
    deliveries = client.subscribe(name)
    try:
        first = next(deliveries)
        assert first.event.revision == root.create_revision

        code, out, _ = run(capsys, server, "consumers", "get", name, "--json")
        got = json.loads(out)
        assert code == 0 and got["name"] == name and got["root_id"] == uid
        assert got["kinds"] == ["node_created", "node_transitioned"]
        assert got["acked_revision"] == created.acked_revision
        assert got["lag_revisions"] >= paid.revision - created.acked_revision
        assert got["subscribers"] == 1 and got["unacked_count"] == 2  # create and pay delivered

        code, out, _ = run(capsys, server, "consumers", "list")
        header, *rows = out.splitlines()
        assert code == 0 and header.split()[:3] == ["NAME", "ACKED", "REVISION"]
        row = next(r for r in rows if r.startswith(name + " "))
        assert row.split()[1:5] == [str(created.acked_revision), "2", str(got["lag_revisions"]), "1"]
        assert "root " + uid in row and "kinds node_created,node_transitioned" in row

        client.ack(name, up_to_revision=paid.revision)
        code, out, _ = run(capsys, server, "consumers", "get", name)
        fields = dict(line.split(None, 1) for line in out.splitlines()[1:])
        assert code == 0 and fields["acked_revision"] == str(paid.revision)
        assert fields["unacked_count"] == "0" and fields["subscribers"] == "1"

        code, out, _ = run(capsys, server, "consumers", "list", "--json")
        assert name in {c["name"] for c in json.loads(out)}
    finally:
        cast(Any, deliveries).close()
        client.delete_consumer(name)
    code, _, err = run(capsys, server, "consumers", "get", name)
    assert code == 1 and f"NOT_FOUND CONSUMER_NOT_FOUND: consumer '{name}' does not exist" in err
