#!/usr/bin/env python3
"""How long the inspector's pages take on a large store: a tree with 100,000 children and a
store with 1,000,000 nodes (and as many events), loaded with ExecuteBatch.

    .venv/bin/python scripts/inspector_load.py               # 1,000,000 nodes (loading ≈ 1-2 min)
    .venv/bin/python scripts/inspector_load.py --nodes 200000 --big 50000 --runs 3

The server runs as its own process (RocksDB, fsync on, --http-listen) in a temporary folder;
this script loads it through the SDK, then fetches each page --runs times over HTTP on loopback
and prints the median and the slowest time per page. The times are measured by the client, so
they include HTTP and are an upper bound of the server-side time. Figures, not a test: the
README quotes them (never asserted anywhere).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import statekeeper as sk  # noqa: E402
from tests.conftest import ITEM, ORDER, PART  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

BATCH = 10_000  # the server's largest batch


def load(client: sk.SyncClient, nodes: int, big: int) -> None:
    for mt in (ORDER, ITEM, PART):
        client.register_machine_type(mt)
    started = time.perf_counter()
    done = 0
    batch = sk.Batch()
    count = 0

    def flush() -> None:
        nonlocal batch, count, done
        if count:
            client.execute(batch)
            done += count
            batch, count = sk.Batch(), 0

    big_root = client.create_root("order", "big")
    done += 1
    for n in range(big - 1):
        batch.add_child(big_root, "item", f"i{n:06d}")
        count += 1
        if count == BATCH:
            flush()
    flush()
    tree = 0
    while done + count < nodes:
        size = min(1000, nodes - done - count)  # a root and up to 999 children
        root = sk.Ref(f"tree-{tree:06d}")
        batch.create_root("order", root.root_id)
        for n in range(size - 1):
            batch.add_child(root, "item", f"i{n:03d}")
        count += size
        tree += 1
        if count > BATCH - 1000:
            flush()
    flush()
    print(f"loaded {done:,} nodes in {time.perf_counter() - started:.0f} s", flush=True)
    client.transition("big", "pay")


def fetch(url: str) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read().decode()
        assert r.status == 200, url
    return time.perf_counter() - started, body


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1_000_000, help="nodes in the store")
    parser.add_argument(
        "--big", type=int, default=100_000, help="nodes of the big tree (the root's children + 1)"
    )
    parser.add_argument("--runs", type=int, default=5, help="fetches of each page")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data", "--http-listen", "127.0.0.1:0").start(timeout=60)
        try:
            ready = json.loads((Path(tmp) / "data.ready").read_text())
            base = "http://" + ready["http_address"]
            with sk.SyncClient.connect(proc.address, timeout=300) as client:
                load(client, args.nodes, args.big)
            # A page in the middle of the big collection: follow the links there.
            _, body = fetch(base + "/node?root=big")
            middle = "/node?root=big"
            for _ in range(3):
                found = re.search(r'href="(/node\?[^"]*page_token=[^"]+)"[^>]*rel="next"', body)
                assert found, "no next page of the big collection"
                middle = found.group(1).replace("&amp;", "&")
                _, body = fetch(base + middle)
            pages = [
                ("server facts", "/"),
                ("machine types", "/types"),
                ("machine type order (diagram)", "/types/order"),
                ("tree search", "/trees?root=big"),
                ("node with 100k children, first page", "/node?root=big"),
                ("node with 100k children, 4th page", middle),
                ("subtree walk of the big tree", "/tree?root=big"),
                ("history of the big root (1M events back)", "/history?root=big"),
                ("history with descendants", "/history?root=big&descendants=1"),
                ("history of a node in an old tree", "/history?root=tree-000001"),
                ("nodes of type item (1M index)", "/nodes?type=item"),
                ("nodes in state paid", "/nodes?type=order&state=paid"),
                ("tasks", "/tasks"),
                ("consumers", "/consumers"),
                ("runs", "/runs"),
                ("live events page", "/events"),
            ]
            print(f"\n{'page':<46} {'median ms':>10} {'max ms':>8}")
            for name, path in pages:
                times = [fetch(base + path)[0] * 1000 for _ in range(args.runs)]
                print(f"{name:<46} {statistics.median(times):>10.1f} {max(times):>8.1f}", flush=True)
        finally:
            proc.terminate(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
