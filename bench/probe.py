"""The statekeeper server with a probe on its committer, for profiling runs only (bench.profile):
`python -m bench.probe <statekeeper_server flags>` serves exactly as `python -m statekeeper_server`
and, at exit, writes what each commit group held (commits, keys, seconds of the synced write)
to the JSON file named by $BENCH_PROBE_OUT. It uses the committer's public write_listeners."""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

from statekeeper_server.app import server as server_mod
from statekeeper_server.app.main import main

groups: list[tuple[int, int, float]] = []


def _dump() -> None:
    path = os.environ.get("BENCH_PROBE_OUT")
    if path:
        with open(path, "w") as f:
            json.dump({"groups": groups}, f)


def _install() -> None:
    original = server_mod.StatekeeperServer.start

    async def start(self: Any) -> None:
        await original(self)
        # Attached before the load can arrive: nothing awaits between the ready file and here.
        self.engine.committer.write_listeners.append(lambda c, k, s: groups.append((c, k, s)))

    server_mod.StatekeeperServer.start = start  # type: ignore[method-assign]
    atexit.register(_dump)


if __name__ == "__main__":
    _install()
    raise SystemExit(main())
