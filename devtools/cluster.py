"""scripts/cluster N: a throwaway local cluster — a PostgreSQL in a temporary folder and N
statekeeper servers on loopback ports over it; prints their addresses; Ctrl-C stops all.

    scripts/cluster 3                      # 127.0.0.1:50051, :50052, :50053
    scripts/cluster 3 --base-port 7000     # 127.0.0.1:7000 ...
    scripts/cluster 3 -- --lease-s 2       # extra flags for every server after --
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.local_postgres import LocalPostgres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/cluster",
        description=__doc__.split("\n\n")[0],
        epilog="Flags after -- go to every server, e.g. scripts/cluster 3 -- --lease-s 2",
    )
    parser.add_argument("servers", type=int, nargs="?", default=3, help="how many servers (default 3)")
    parser.add_argument(
        "--base-port", type=int, default=50051, help="the first server's port (default 50051)"
    )
    parser.add_argument("--shards", type=int, default=64, help="logical shards of the new store (default 64)")
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:  # flags for every server follow a --
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(argv)
    if args.servers < 1:
        parser.error("at least one server")
    work = Path(tempfile.mkdtemp(prefix="statekeeper-cluster-"))
    print(f"starting PostgreSQL (logs and ready files in {work} ) ...", flush=True)
    pg: LocalPostgres | None = None
    procs: list[subprocess.Popen[bytes]] = []
    reported: set[int] = set()  # servers whose exit was printed
    try:
        pg = LocalPostgres()
        pg.start()
        for i in range(args.servers):
            address = f"127.0.0.1:{args.base_port + i}"
            ready = work / f"server{i}.ready"
            log = open(work / f"server{i}.log", "ab")  # the server's output, for as long as it runs
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "statekeeper_server",
                        "--store", pg.dsn, "--listen", address, "--advertise", address,
                        "--shards", str(args.shards), "--ready-file", str(ready), *extra,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while not ready.exists():
                if procs[-1].poll() is not None or time.monotonic() > deadline:
                    print((work / f"server{i}.log").read_text(errors="replace")[-3000:], file=sys.stderr)
                    raise SystemExit(f"server {i} did not start")
                time.sleep(0.05)
            print(
                f"server {i}: {json.loads(ready.read_text())['address']}  (log: {work}/server{i}.log)",
                flush=True,
            )
        print(f"store: {pg.dsn}")
        print("every server takes every call, e.g.:")
        print(f"  statekeeper types list --server 127.0.0.1:{args.base_port + args.servers - 1}")
        print("Ctrl-C stops the servers and PostgreSQL and removes the temporary folder.", flush=True)
        stop = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop:
            for i, proc in enumerate(procs):
                if proc.poll() is not None and i not in reported:
                    reported.add(i)  # once; keep watching the others
                    print(f"server {i} exited with {proc.returncode} (log: {work}/server{i}.log)", flush=True)
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("interrupted while starting", file=sys.stderr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
        if pg is not None:
            pg.close()
        crashed = [i for i, p in enumerate(procs) if p.returncode not in (0, -signal.SIGTERM)]
        if crashed:
            # Keep the logs of a server that did not stop cleanly: they say why.
            print(
                f"stopped; servers {crashed} did not exit cleanly, their logs are kept in {work}", flush=True
            )
        else:
            with contextlib.suppress(OSError):
                for f in work.iterdir():
                    f.unlink()
                work.rmdir()
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
