"""Online backups while writes go on (issue 11, item 9): the checkpoint runs off the event loop,
and the revision a backup reports is exactly the one it holds, with every write acknowledged
before the call. Before, the checkpoint ran on the loop and reported the durable revision, but
the copy also held the group written and still being fsynced: one revision more than reported."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import statekeeper as sk
from tests.support import ServerProcess

COUNTER = sk.MachineType("counter", 1, ["on"], "on", [sk.Transition("bump", ["on"], "on")])
WRITERS = 16


def _revision_of(data: Path) -> tuple[int, dict[str, int]]:
    """Start a server on a store folder: its revision, and each counter's transition count."""
    server = ServerProcess(data).start()
    try:
        with sk.SyncClient.connect(server.address) as c:
            counts = {f"c{i}": c.get_node(f"c{i}").transition_count for i in range(WRITERS)}
            # The next commit gets the revision after the store's.
            revision = c.create_root("counter", "probe").update_revision - 1
        return revision, counts
    finally:
        assert server.terminate() == 0


def test_backups_under_load_hold_exactly_the_revision_they_report(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    server = ServerProcess(tmp_path / "data", "--backup-dir", str(backups)).start()

    async def scenario() -> list[tuple[sk.Backup, dict[str, int]]]:
        async with await sk.Client.connect(server.address) as c:
            await c.register_machine_type(COUNTER)
            for i in range(WRITERS):
                await c.create_root("counter", f"c{i}")
            acked = dict.fromkeys((f"c{i}" for i in range(WRITERS)), 0)
            stop = asyncio.Event()

            async def writer(root: str) -> None:
                while not stop.is_set():
                    await c.transition(root, "bump")
                    acked[root] += 1

            tasks = [asyncio.ensure_future(writer(r)) for r in acked]
            taken = []
            try:
                await asyncio.sleep(0.3)
                for n in range(4):
                    before = dict(acked)  # acknowledged before the call: must be in the backup
                    taken.append((await c.create_backup(f"b{n}"), before))
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            return taken

    try:
        taken = asyncio.run(scenario())
    finally:
        assert server.terminate() == 0
    for n, (backup, before) in enumerate(taken):
        copy = tmp_path / f"restored-{n}"
        shutil.copytree(backup.path, copy)
        revision, counts = _revision_of(copy)
        assert revision == backup.revision, (n, revision, backup.revision)
        assert all(counts[root] >= before[root] for root in before), (n, counts, before)
