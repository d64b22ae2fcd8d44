"""The server span each request (HTTP) or call (gRPC) opens, by one rule for every listener."""

from __future__ import annotations

from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()


def start_server_span(tracer: Any, name: str, carrier: dict[str, str], attributes: dict[str, Any]) -> tuple[Any, Any]:
    """The span and its context token, continuing the caller's W3C traceparent when the carrier has one;
    (None, None) when the sampler drops it. A dropped span is never exported, so it gets no attributes,
    no context (nothing below it makes spans: the batch and generation spans follow only sampled
    requests) and no end: with one trace in ten sampled, nine requests in ten pay only the sampler's
    decision. The sampler sees the span's name, kind and parent, not its attributes (none of
    OpenTelemetry's standard samplers reads them)."""
    parent = PROPAGATOR.extract(carrier)
    span = tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER)
    if not span.is_recording():
        return None, None
    span.set_attributes(attributes)
    return span, context.attach(trace.set_span_in_context(span, parent))
