"""Overload with slow readers (issue 11, item 3): does the server stay answerable?

    scripts/overload                              # both scenarios, the issue's sizes (~2 min)
    scripts/overload --scenario shed --seconds 10 # one scenario; --help lists the options

The server runs as its own process (RocksDB, fsync on) with an event history (20,000 events by
default), restarted after the fill so that history is read from storage, not from memory. Then,
each from its own process:
  - stalled readers: 200 Watch streams from revision 1, each on its own connection, that never
    read a message (a client that hung, or a slow network);
  - unary load: 2,000 GetNode calls launched at once, again and again (each call waits for its
    answer, then the next wave starts), with a 30 s deadline;
  - a writer: one ApplyTransition after another.
It samples the server's resident memory (VmRSS) every 0.2 s and reports, per scenario: the peak
RSS over the run, unary calls answered OK / RESOURCE_EXHAUSTED / other, the p99 latency of each
kind, and the writer's p50 / p99.

Scenarios: `ceiling` (the same waves against a bare grpc.aio server: what a burst of 2,000 calls
costs on this machine with no work at all), `calm` (statekeeper, the same calls and writer, no
stalled streams: the reference), `default` (default limits: nothing should be refused, calls and the writer must stay
fast), `shed` (--max-concurrent-rpcs 300 and the rpc.delay failpoint at 0.3 s, so calls pile
up: the excess must be refused at once). Writes bench-results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import servers

SCENARIOS: dict[str, tuple[list[str], bool]] = {
    # name: (server flags, with the stalled readers)
    "calm": ([], False),  # the reference: the same calls and writer, no stalled streams
    "default": ([], True),
    "shed": (["--max-concurrent-rpcs", "300", "--failpoints", "rpc.delay=0.3"], True),
}
DEADLINE_S = 30.0


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


# -- the roles, each in its own process ------------------------------------------------------


async def _stall(address: str, streams: int) -> dict[str, Any]:
    """Open Watch streams from revision 1 and never read them; hold them until stdin closes."""
    import grpc

    from statekeeper.v1 import event_pb2

    request = event_pb2.WatchRequest(start_revision=1).SerializeToString()
    channels: list[Any] = [
        # Each stream its own connection (as separate slow clients would have).
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(streams)
    ]
    calls = [ch.unary_stream("/statekeeper.v1.EventService/Watch")(request, timeout=3600) for ch in channels]
    await asyncio.gather(*(ch.channel_ready() for ch in channels))
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for call in calls:
        call.cancel()
    for ch in channels:
        await ch.close()
    return {}


async def _unary(address: str, concurrency: int, seconds: float, roots: int, echo: bool) -> dict[str, Any]:
    """Waves of `concurrency` GetNode calls launched together, for `seconds` (echo: the bare
    server's Unary method instead, with a GetNode-sized answer)."""
    import grpc

    from bench import echo as bare
    from statekeeper.v1 import common_pb2, node_pb2

    method = bare.UNARY if echo else "/statekeeper.v1.NodeService/GetNode"
    requests = [
        bare.unary_request(16, 120)
        if echo
        else node_pb2.GetNodeRequest(node=common_pb2.NodeRef(root_id=f"r{i}")).SerializeToString()
        for i in range(min(roots, concurrency))
    ]
    # A few connections, as a fleet of callers would have (one connection caps its streams).
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)
    ]
    await asyncio.gather(*(ch.channel_ready() for ch in channels))
    stubs: list[Any] = [ch.unary_unary(method) for ch in channels]
    latencies: dict[str, list[float]] = {}
    clock = time.perf_counter
    end = clock() + seconds
    waves = 0

    async def one(i: int) -> None:
        t0 = clock()
        try:
            await stubs[i % len(stubs)](requests[i % len(requests)], timeout=DEADLINE_S)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        latencies.setdefault(code, []).append(clock() - t0)

    while clock() < end:
        await asyncio.gather(*(one(i) for i in range(concurrency)))
        waves += 1
    for ch in channels:
        await ch.close()
    return {
        "waves": waves,
        "codes": {code: len(v) for code, v in latencies.items()},
        "p50_ms": {code: _p(v, 0.5) for code, v in latencies.items()},
        "p99_ms": {code: _p(v, 0.99) for code, v in latencies.items()},
    }


async def _writer(address: str, seconds: float) -> dict[str, Any]:
    """One ApplyTransition after another on one node."""
    import grpc

    from statekeeper.v1 import common_pb2, node_pb2

    request = node_pb2.ApplyTransitionRequest(
        node=common_pb2.NodeRef(root_id="writer"), transition="flip"
    ).SerializeToString()
    async with grpc.aio.insecure_channel(address) as ch:
        call: Any = ch.unary_unary("/statekeeper.v1.NodeService/ApplyTransition")
        latencies: dict[str, list[float]] = {}
        clock = time.perf_counter
        end = clock() + seconds
        while clock() < end:
            t0 = clock()
            try:
                await call(request, timeout=DEADLINE_S)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            latencies.setdefault(code, []).append(clock() - t0)
            if code == "RESOURCE_EXHAUSTED":
                await asyncio.sleep(0.01)  # as a client told to back off would
    every = [x for v in latencies.values() for x in v]
    return {
        "codes": {code: len(v) for code, v in latencies.items()},
        "p50_ms": _p(every, 0.5),
        "p99_ms": _p(every, 0.99),
        "ok_p99_ms": _p(latencies.get("OK", []), 0.99),
    }


def _role_main(args: argparse.Namespace) -> None:
    if args.role == "stall":
        result = asyncio.run(_stall(args.address, args.streams))
    elif args.role == "unary":
        result = asyncio.run(_unary(args.address, args.calls, args.seconds, args.roots, args.echo))
    else:
        result = asyncio.run(_writer(args.address, args.seconds))
    print(json.dumps(result), flush=True)


# -- the driver --------------------------------------------------------------------------------


def _spawn(role: str, address: str, args: argparse.Namespace, echo: bool = False) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.overload", "--role", role, "--address", address]
    argv += ["--streams", str(args.streams), "--calls", str(args.calls), "--seconds", str(args.seconds)]
    argv += ["--roots", str(args.roots), *(["--echo"] if echo else [])]
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=servers.child_env(),
        cwd=servers.REPO,
    )


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load process failed ({proc.returncode}): {out[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _fill(address: str, events: int, roots: int) -> None:
    import statekeeper as sk

    flip = sk.MachineType(
        "flipper", 1, ["a", "b"], "a", [sk.Transition("flip", ["a", "b"], "b")], description="overload"
    )
    with sk.SyncClient.connect(address) as client:
        client.register_machine_type(flip)
        client.create_root("flipper", "writer")
        made = 0
        while made < roots:
            batch = sk.Batch()
            for i in range(made, min(roots, made + 1000)):
                batch.create_root("flipper", f"r{i}")
            client.execute(batch)
            made += len(batch)
        left = events - roots
        while left > 0:
            batch = sk.Batch()
            for i in range(min(left, 1000)):
                batch.transition(f"r{i % roots}", "flip")
            client.execute(batch)
            left -= len(batch)


class _RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.samples.append((time.perf_counter() - started, int(line.split()[1]) // 1024))

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> int:
        return max((mb for _, mb in self.samples), default=0)


def run_ceiling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same waves against the bare grpc.aio server (bench/echo.py): what answering a burst
    of that many calls costs this machine at all, with no work per call."""
    (work / "ceiling").mkdir()
    server = servers.echo(work / "ceiling").start()
    try:
        with _RssSampler(server.pid) as rss:
            unary = _result(
                _spawn("unary", server.address, args, echo=True), args.seconds + 2 * DEADLINE_S + 60
            )
    finally:
        server.stop()
    return {
        "scenario": "ceiling",
        "calls": args.calls,
        "seconds": args.seconds,
        "rss_peak_mb": rss.peak_mb,
        "unary": unary,
    }


def run_scenario(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / name / "data"
    data.parent.mkdir(parents=True)
    flags, stalled = SCENARIOS[name]
    extra = [*flags, *args.server_args]
    server = servers.statekeeper(name, data, data.parent, *extra).start()
    if args.history == "storage":
        try:
            _fill(server.address, args.events, args.roots)
        finally:
            server.stop()
        # Restarted: the history is read from storage, not from the in-memory window.
        server = servers.statekeeper(name, data, data.parent, *extra).start()
    else:
        _fill(server.address, args.events, args.roots)
    try:
        start_mb = server.memory_kb()["VmRSS"] // 1024
        with _RssSampler(server.pid) as rss:
            stall = _spawn("stall", server.address, args) if stalled else None
            if stall is not None:
                assert stall.stdout is not None
                if not stall.stdout.readline():
                    raise RuntimeError("the stalled readers did not start")
                time.sleep(args.settle)
            unary = _spawn("unary", server.address, args)
            writer = _spawn("writer", server.address, args)
            timeout = args.seconds + 2 * DEADLINE_S + 60
            unary_result = _result(unary, timeout)
            writer_result = _result(writer, timeout)
            if stall is not None:
                stall.communicate(input="", timeout=60)
        alive = server.alive()
        end_mb = server.memory_kb()["VmRSS"] // 1024 if alive else 0
    finally:
        server.stop()
    return {
        "scenario": name,
        "server_args": extra,
        "streams": args.streams if stalled else 0,
        "calls": args.calls,
        "events": args.events,
        "seconds": args.seconds,
        "history": args.history,
        "rss_start_mb": start_mb,
        "rss_peak_mb": rss.peak_mb,
        "rss_end_mb": end_mb,
        "rss_samples": rss.samples[:: max(1, len(rss.samples) // 50)],
        "server_alive": alive,
        "unary": unary_result,
        "writer": writer_result,
    }


def _print(result: dict[str, Any]) -> None:
    u = result["unary"]
    if result["scenario"] == "ceiling":
        print(f"== ceiling (bare grpc.aio server, {result['calls']} calls a wave)")
        print(f"  {u['waves']} waves: p50 {u['p50_ms']['OK']:.1f} ms, p99 {u['p99_ms']['OK']:.1f} ms")
        return
    w = result["writer"]
    flags = " ".join(result["server_args"]) or "default limits"
    print(f"== {result['scenario']} ({flags}; {result['streams']} stalled Watch streams)")
    print(
        f"  server RSS: {result['rss_start_mb']} MB at start, peak {result['rss_peak_mb']} MB, "
        f"{result['rss_end_mb']} MB at the end"
    )
    print(f"  unary: {u['waves']} waves of {result['calls']} GetNode calls")
    for code in sorted(u["codes"]):
        print(
            f"    {code:20} {u['codes'][code]:7} calls  p50 {u['p50_ms'][code]:8.1f} ms  "
            f"p99 {u['p99_ms'][code]:8.1f} ms"
        )
    codes = ", ".join(f"{c} {n}" for c, n in sorted(w["codes"].items()))
    print(
        f"  writer: {codes}; p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms (OK only {w['ok_p99_ms']:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=["ceiling", *SCENARIOS, "all"], default="all")
    parser.add_argument("--streams", type=int, default=200, help="stalled Watch streams")
    parser.add_argument("--calls", type=int, default=2000, help="unary calls per wave")
    parser.add_argument("--events", type=int, default=20_000, help="events of history")
    parser.add_argument("--roots", type=int, default=2000, help="nodes the calls read")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the load runs")
    parser.add_argument(
        "--history",
        choices=["storage", "memory"],
        default="storage",
        help="restart after the fill (history read from storage) or not (from the in-memory window)",
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between the stall and the load")
    parser.add_argument("--server-arg", dest="server_args", action="append", default=[])
    parser.add_argument("--out", default=str(servers.REPO / "bench-results" / "overload.json"))
    parser.add_argument("--role", choices=["stall", "unary", "writer"], help=argparse.SUPPRESS)
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _role_main(args)
        return
    names = ["ceiling", *SCENARIOS] if args.scenario == "all" else [args.scenario]
    results = []
    with tempfile.TemporaryDirectory(prefix="sk-overload-") as tmp:
        for name in names:
            result = (
                run_ceiling(args, Path(tmp)) if name == "ceiling" else run_scenario(name, args, Path(tmp))
            )
            _print(result)
            results.append(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
