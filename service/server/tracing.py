"""OpenTelemetry traces, configured only by the standard OTEL_* variables, and off when none is set.

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and neither
OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none says otherwise). OTEL_EXPORTER_OTLP_PROTOCOL
(or ..._TRACES_PROTOCOL) picks `http/protobuf` (the default) or `grpc`; OTEL_SERVICE_NAME names the
service (attnserve by default); OTEL_TRACES_SAMPLER and its argument, the headers, timeouts and the
rest are read by the OpenTelemetry SDK and its exporters themselves.
"""

from __future__ import annotations

import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOLS = ("http/protobuf", "grpc")


class TracingConfigError(ValueError):
    pass


def tracing_wanted() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(os.environ.get(name) for name in ENDPOINTS)


def exporter_protocol() -> str:
    """The OTLP protocol the settings ask for; TracingConfigError for one that is not supported (checked
    at start with the other settings)."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or PROTOCOLS[0]
    ).strip()
    if protocol not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use {' or '.join(PROTOCOLS)}"
        )
    return protocol


def setup_tracing(version: str) -> TracerProvider | None:
    """The process's tracer provider, installed as OpenTelemetry's global one; None when tracing is off."""
    if not tracing_wanted():
        return None
    protocol = exporter_protocol()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter: object = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter()
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "attnserve", "service.version": version}
    )
    # The sampler comes from OTEL_TRACES_SAMPLER. No exit hook: the server flushes at its own stop,
    # bounded (stop_tracing); the SDK's hook would wait up to 30 s for an endpoint that does not answer.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    log.info("tracing: OTLP %s to %s", protocol, next(os.environ[n] for n in reversed(ENDPOINTS) if os.environ.get(n)))
    return provider


# The last spans' export at stop is given this long (or OTEL_EXPORTER_OTLP_TIMEOUT's seconds, as the
# SDK's exporters read it, where set): an endpoint that never answers must not hold up the exit.
FLUSH_TIMEOUT_S = 2.0
TIMEOUTS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def flush_timeout_s() -> float:
    for name in TIMEOUTS:
        try:
            return float(os.environ[name])
        except (KeyError, ValueError):
            continue
    return FLUSH_TIMEOUT_S


def stop_tracing(provider: TracerProvider) -> None:
    """Send the last spans, for at most flush_timeout_s(); what is not sent by then is dropped. The
    SDK's shutdown waits up to 30 s on its own, so it runs in a thread that is not waited for."""
    limit = flush_timeout_s()
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        log.warning("tracing: the last spans were not sent within %.3g s; dropped", limit)


class TraceIds(logging.Filter):
    """Adds trace_id and span_id to every record made inside a traced request."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
