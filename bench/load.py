"""The load process: a separate process (its own interpreter and GIL) that drives the servers.

The parent sends commands over a pipe; the worker runs them on its own asyncio loop with
grpc.aio and answers with figures. Calls go through raw-bytes multicallables on the generated
method paths (requests serialized once, responses not parsed), so the load side costs the same
per call for the bare echo server and for statekeeper, and SDK conversions do not distort the
figures. Set-up calls (registering types) use the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class LoadWorker:
    """Parent side: start the worker process, send it commands, get figures back."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), name="bench-load", daemon=True)
        self.process.start()
        child.close()

    def run(self, command: str, **kwargs: Any) -> dict[str, Any]:
        self._conn.send((command, kwargs))
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load process failed in {command}:\n{payload}")
        result: dict[str, Any] = payload
        return result

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# -- the worker process -------------------------------------------------------------------


def _worker_main(conn: Connection) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = _Worker()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message is None:
            break
        command, kwargs = message
        try:
            result = loop.run_until_complete(getattr(worker, command)(**kwargs))
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    loop.run_until_complete(worker.close())
    loop.close()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    n = len(latencies)
    if not n:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(0.99 * n))] * 1000,
    }


class _Worker:
    def __init__(self) -> None:
        self._channels: dict[str, Any] = {}

    def _channel(self, address: str) -> Any:
        import grpc

        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def forget(self, address: str) -> dict[str, Any]:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()
        return {}

    async def call(self, address: str, method: str, request: bytes) -> dict[str, Any]:
        """One call; its response bytes."""
        response = await self._channel(address).unary_unary(method)(request, timeout=60)
        return {"response": response}

    async def unary(
        self,
        address: str,
        method: str,
        requests: list[bytes],
        concurrency: int,
        seconds: float,
        warmup: float,
        ops_per_call: int = 1,
        cpu_pid: int = 0,
    ) -> dict[str, Any]:
        """`concurrency` callers, each calling back-to-back, cycling through requests. Throughput
        counts completions inside the measured window; latency is of calls started inside it.
        With cpu_pid, also that server process's CPU inside the window per operation."""
        import grpc

        from bench import cpu

        call = self._channel(address).unary_unary(method)
        await call(requests[0], timeout=60)  # connect outside the measurement
        latencies: list[float] = []
        errors: list[str] = []
        done = 0
        n = len(requests)
        clock = time.perf_counter
        start = clock() + warmup
        end = start + seconds

        async def caller(k: int) -> None:
            nonlocal done
            i = k
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                try:
                    await call(requests[i % n], timeout=60)
                except grpc.RpcError as e:
                    errors.append(f"{e.code()}: {e.details()}")
                    if len(errors) > 100:
                        return
                    continue
                t1 = clock()
                if start <= t1 <= end:
                    done += 1
                    if t0 >= start:
                        latencies.append(t1 - t0)
                i += concurrency

        sampler = (
            asyncio.ensure_future(cpu.during(start, end, lambda: cpu.process_seconds(cpu_pid)))
            if cpu_pid
            else None
        )
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        if errors:
            if sampler is not None:
                sampler.cancel()
            raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
        out = {
            "calls_per_s": done / seconds,
            "ops_per_s": done * ops_per_call / seconds,
            "calls": done,
            **_percentiles(latencies),
        }
        if sampler is not None:
            out["server_cpu_us"] = await sampler / max(1, done * ops_per_call) * 1e6
        return out

    async def stream(
        self, address: str, method: str, request: bytes, seconds: float, warmup: float
    ) -> dict[str, Any]:
        """One stream; messages received per second inside the measured window."""
        call = self._channel(address).unary_stream(method)(request, timeout=seconds + warmup + 60)
        clock = time.perf_counter
        start = clock() + warmup
        end = start + seconds
        received = 0
        async for _ in call:
            now = clock()
            if now >= end:
                break
            if now >= start:
                received += 1
        call.cancel()
        return {"messages_per_s": received / seconds, "messages": received}

    async def watch(
        self,
        address: str,
        method: str,
        request: bytes,
        seconds: float,
        warmup: float,
        latency: bool,
        unary: dict[str, Any] | None = None,
        limit: int = 0,
    ) -> dict[str, Any]:
        """One Watch stream (parsed: statekeeper.v1.WatchResponse). With latency, each event's
        delivery time minus its commit time (time_ms, same clock), while `unary` load (the
        arguments of unary()) runs alongside; without, it reads the backlog as fast as it comes
        and stops once caught up (the first message without events after some with) or once
        `limit` events (when given) have arrived."""
        from statekeeper.v1 import event_pb2

        parse = event_pb2.WatchResponse.FromString
        stream = self._channel(address).unary_stream(method)(request, timeout=seconds + warmup + 120)
        clock = time.perf_counter
        start = clock() + warmup
        end = start + seconds
        received = 0
        delays: list[float] = []
        first = last = 0.0

        async def consume() -> None:
            nonlocal received, first, last
            async for raw in stream:
                now = clock()
                if now >= end:
                    return
                events = parse(raw).events
                if not latency:
                    if not events:
                        if received:
                            return  # caught up
                        continue
                    received += len(events)
                    last = now
                    if limit and received >= limit:
                        return
                elif now >= start and events:
                    received += len(events)
                    wall_ms = time.time() * 1000
                    delays.extend([wall_ms - e.time_ms for e in events])

        load = asyncio.ensure_future(self.unary(**unary)) if unary else None
        first = clock()
        try:
            await asyncio.wait_for(consume(), seconds + warmup + 60)
        finally:
            stream.cancel()
        result: dict[str, Any] = {"load": await load if load else None}
        if latency:
            result["events_per_s"] = received / seconds
            result.update(_percentiles([d / 1000 for d in delays]))
        else:
            span = last - first  # from the request to the last event of the backlog
            result["events_per_s"] = received / span if span > 0 else 0.0
        result["events"] = received
        return result

    async def watch_many(
        self, address: str, method: str, request: bytes, seconds: float, subscribers: int
    ) -> dict[str, Any]:
        """`subscribers` Watch streams reading the same backlog at once, each on its own
        channel; events/s is the total delivered over the time the slowest took to catch up."""
        workers = [_Worker() for _ in range(subscribers)]
        started = time.perf_counter()
        try:
            results = await asyncio.gather(
                *(w.watch(address, method, request, seconds, 0.0, False) for w in workers)
            )
        finally:
            for w in workers:
                await w.close()
        span = time.perf_counter() - started
        total = sum(r["events"] for r in results)
        return {"events_per_s": total / span if span > 0 else 0.0, "events": total}

    async def pipeline(
        self, address: str, method: str, requests: list[bytes], concurrency: int, ops_per_call: int
    ) -> dict[str, Any]:
        """Every request once, `concurrency` in flight (loading a store)."""
        call = self._channel(address).unary_unary(method)
        queue = list(reversed(requests))
        started = time.perf_counter()

        async def caller() -> None:
            while queue:
                await call(queue.pop(), timeout=600)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "ops_per_s": len(requests) * ops_per_call / seconds}

    async def seed(
        self,
        address: str,
        first_tree: int,
        trees: int,
        tree_size: int,
        ops_per_call: int,
        concurrency: int,
        data_bytes: int,
    ) -> dict[str, Any]:
        """Create trees [first_tree, first_tree + trees) through ExecuteBatch, building each
        request while earlier ones are in flight."""
        from bench import workload

        call = self._channel(address).unary_unary(workload.EXECUTE_BATCH)
        trees_per_call = max(1, ops_per_call // tree_size)
        chunks = list(range(first_tree, first_tree + trees, trees_per_call))
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        tasks: list[asyncio.Task[Any]] = []

        async def send(request: bytes) -> None:
            try:
                await call(request, timeout=600)
            finally:
                semaphore.release()

        for lo in chunks:
            hi = min(lo + trees_per_call, first_tree + trees)
            request = workload.create_trees_request(lo, hi, tree_size, data_bytes)
            await semaphore.acquire()
            tasks.append(asyncio.create_task(send(request)))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
        nodes = trees * tree_size
        return {"seconds": seconds, "nodes": nodes, "nodes_per_s": nodes / seconds}

    async def sdk_transitions(
        self,
        address: str,
        picks: list[tuple[int, str]],
        tree_size: int,
        concurrency: int,
        seconds: float,
        warmup: float,
        pipeline: bool = False,
        cpu_pid: int = 0,
    ) -> dict[str, Any]:
        """`concurrency` tasks calling the SDK's `await client.transition(ref, name)` back-to-back
        on one sk.Client (one channel; with pipeline, over its one ExecuteStream), cycling
        through the picks; counted as in unary(), server CPU too with cpu_pid."""
        import statekeeper as sk
        from bench import cpu, workload

        work = [(sk.Ref.parse(workload.node_text(i, tree_size)), f"to_{to}") for i, to in picks]
        latencies: list[float] = []
        done = 0
        n = len(work)
        clock = time.perf_counter
        async with await sk.Client.connect(address, pipeline=pipeline) as client:
            await client.transition(*work[0])  # connect (and open the stream) outside the measurement
            start = clock() + warmup
            end = start + seconds

            async def caller(k: int) -> None:
                nonlocal done
                i = k
                while True:
                    t0 = clock()
                    if t0 >= end:
                        return
                    await client.transition(*work[i % n])
                    t1 = clock()
                    if start <= t1 <= end:
                        done += 1
                        if t0 >= start:
                            latencies.append(t1 - t0)
                    i += concurrency

            sampler = (
                asyncio.ensure_future(cpu.during(start, end, lambda: cpu.process_seconds(cpu_pid)))
                if cpu_pid
                else None
            )
            await asyncio.gather(*(caller(k) for k in range(concurrency)))
        out = {"calls_per_s": done / seconds, "calls": done, **_percentiles(latencies)}
        if sampler is not None:
            out["server_cpu_us"] = await sampler / max(1, done) * 1e6
        return out

    # -- the PostgreSQL reference (bench/pg_load.py) ------------------------------------------

    async def pg_setup(self, dsn: str, ids: list[str], data: list[bytes]) -> dict[str, Any]:
        from bench import pg_load

        return await pg_load.setup(dsn, ids, data)

    async def pg_cas(self, **kwargs: Any) -> dict[str, Any]:
        from bench import pg_load

        return await pg_load.cas(**kwargs)

    async def pg_cas_batch(self, **kwargs: Any) -> dict[str, Any]:
        from bench import pg_load

        return await pg_load.cas_batch(**kwargs)

    async def pg_fill_replay(self, **kwargs: Any) -> dict[str, Any]:
        from bench import pg_load

        return await pg_load.fill_replay(**kwargs)

    async def pg_replay(self, **kwargs: Any) -> dict[str, Any]:
        from bench import pg_load

        return await pg_load.replay(**kwargs)

    async def register(self, address: str, machine_types: list[Any]) -> dict[str, Any]:
        import statekeeper as sk

        async with await sk.Client.connect(address) as client:
            for mt in machine_types:
                await client.register_machine_type(mt)
        return {}

    async def rocks(
        self, path: str, units: int, seconds: float, warmup: float, key_space: int, data_bytes: int
    ) -> dict[str, Any]:
        """Raw rocksdict: synced WriteBatches of `units` transitions' worth of records each."""
        from bench import workload

        return workload.raw_rocks_writes(path, units, seconds, warmup, key_space, data_bytes)
