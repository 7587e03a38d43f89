"""(a) The gRPC ceiling: a bare grpc.aio server (bench/echo.py, its own process) answering the
same message sizes as ApplyTransition, unary at 1 and 64 callers, and messages on one stream."""

from __future__ import annotations

from bench import echo, servers, workload
from bench.core import Context, Figure, Section, median
from bench.stores import add_rate

KEY = "a"
TITLE = "ceiling: bare grpc.aio server"


def run(ctx: Context) -> Section:
    p = ctx.p
    section = Section(KEY, TITLE, client="raw bytes on both sides (no protobuf), one channel")
    server = ctx.keep_server("echo", servers.echo(ctx.work_dir).start())
    request_bytes = len(workload.transition_request(4_321_001, p.tree_size).SerializeToString())
    response_bytes = len(workload.sample_transition_response(p.data_bytes))
    request = echo.unary_request(request_bytes, response_bytes)
    for callers in p.unary_callers:
        runs = ctx.repeat(
            f"echo unary x{callers}",
            lambda callers=callers: {  # type: ignore[misc]
                k: v
                for k, v in ctx.load.run(
                    "unary",
                    address=server.address,
                    method=echo.UNARY,
                    requests=[request],
                    concurrency=callers,
                    seconds=p.seconds,
                    warmup=p.warmup,
                    cpu_pid=server.pid,
                ).items()
                if k in ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_us")
            },
        )
        add_rate(
            ctx, section, f"unary_{callers}", f"bare unary, {callers} callers", runs, "calls_per_s", "calls/s"
        )
    runs = ctx.repeat(
        "echo stream",
        lambda: {
            "messages_per_s": ctx.load.run(
                "stream",
                address=server.address,
                method=echo.STREAM,
                request=echo.stream_request(p.event_bytes),
                seconds=p.seconds,
                warmup=p.warmup,
            )["messages_per_s"]
        },
    )
    section.add(
        "stream",
        Figure(
            f"bare stream, one stream, {p.event_bytes} B messages",
            median(runs["messages_per_s"]),
            "messages/s",
            runs["messages_per_s"],
        ),
    )
    section.extra = {
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
        "stream_message_bytes": p.event_bytes,
    }
    ctx.load.run("forget", address=server.address)
    ctx.drop_server("echo")
    return section
