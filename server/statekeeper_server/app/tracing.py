"""OpenTelemetry tracing (the `otel` extra, `--otel-traces otlp|console`): a server span per
gRPC call (opentelemetry-instrumentation-grpc) with its method and status code, carrying the
call's request_id as `statekeeper.request_id` (the same id its log records carry). A client that propagates a trace context
(e.g. with GrpcInstrumentorClient) gets the server's spans as children of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from statekeeper_server.entrypoints.grpc.handler import current_request_id

if TYPE_CHECKING:
    from statekeeper_server.app.server import StatekeeperServer

REQUEST_ID_ATTRIBUTE = "statekeeper.request_id"
EXPORTERS = ("otlp", "console")


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        # Endpoint, headers and TLS from the standard OTEL_EXPORTER_OTLP_* variables.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"--otel-traces must be one of {', '.join(EXPORTERS)}, got {name!r}")


def setup(exporter: str) -> TracerProvider:
    """The process's tracer provider, exporting in batches (service.name from OTEL_SERVICE_NAME,
    else "statekeeper")."""
    provider = TracerProvider(resource=Resource.create({"service.name": "statekeeper"}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    trace.set_tracer_provider(provider)
    return provider


def _tag_request_id(method: str, code: str, seconds: float) -> None:
    # Observers run at the end of each call, inside its span and its request-id context.
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, current_request_id.get())


def instrument(server: StatekeeperServer, tracer_provider: Any = None) -> Any:
    """The interceptor that opens a span per call; registers the request-id tagging."""
    server.observers.append(_tag_request_id)
    return aio_server_interceptor(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
