"""Prometheus metrics, in a registry of the app's own (several apps can live in one process).

Metrics is the core's observer (service.core.config.CoreObservers): every model version's batchers
and scheduler report through it with `model` and `version` labels, and a version's series are
removed once it is released, so that a swap leaves no stale series behind.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.core.batcher import BatchObserver
from service.core.config import CoreObservers, ModelObservers
from service.core.generation import GenerationObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATES = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE")
MODEL = ["model", "version"]


class Metrics(CoreObservers):
    """Prometheus metrics, and (with a tracer) each batch as a span linked to its requests' spans."""

    def __init__(self, tracer: Any = None) -> None:
        self.tracer = tracer
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "attnserve_requests",
            "Requests by route, status code (gRPC calls: the HTTP status of the same failure), model and "
            "protocol (http, grpc)",
            ["route", "status", "model", "protocol"],
            registry=r,
        )
        self.latency = Histogram(
            "attnserve_request_latency_seconds",
            "Request latency, to the last byte written (gRPC: to the answer handed to gRPC)",
            ["route", "model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "attnserve_queue_wait_seconds",
            "Time a row waited for its batch to start",
            [*MODEL, "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "attnserve_inference_seconds",
            "ONNX Runtime time per batch",
            [*MODEL, "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "attnserve_batch_size", "Rows per batch", [*MODEL, "endpoint"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("attnserve_queue_depth", "Rows waiting for a batch", [*MODEL, "endpoint"], registry=r)
        self.rejected = Counter(
            "attnserve_rejected_rows", "Rows refused because the queue was full", [*MODEL, "endpoint"], registry=r
        )
        self.model_states = Gauge(
            "attnserve_model_state", "1 for each model version's current state", [*MODEL, "state"], registry=r
        )
        self.model_resident = Gauge(
            "attnserve_model_resident_bytes", "Memory a loaded model version added to the process", MODEL, registry=r
        )
        self.connection_events = Counter(
            "attnserve_connection_events",
            "Connections refused at MAX_CONNECTIONS or closed for a limit (header_timeout, body_timeout, too_large, "
            "write_timeout)",
            ["event"],
            registry=r,
        )
        self.open_connections = Gauge("attnserve_open_connections", "Open client connections", registry=r)
        self.queue_capacity = Gauge(
            "attnserve_queue_capacity_rows", "Rows each endpoint's queue holds at most (MAX_QUEUE_ROWS)", registry=r
        )
        self.kv_cache_capacity = Gauge(
            "attnserve_kv_cache_capacity_tokens", "KV-cache budget in tokens (KV_CACHE_TOKENS)", MODEL, registry=r
        )
        self.inflight_bytes = Gauge(
            "attnserve_inflight_response_bytes",
            "Bytes of large answers built or not yet read (MAX_INFLIGHT_BYTES)",
            registry=r,
        )
        self.active_sequences = Gauge(
            "attnserve_active_sequences", "Sequences generating (in the decode batch)", MODEL, registry=r
        )
        self.waiting_sequences = Gauge(
            "attnserve_waiting_sequences", "Sequences waiting to start generating", MODEL, registry=r
        )
        self.kv_cache_reserved = Gauge(
            "attnserve_kv_cache_reserved_tokens", "KV-cache tokens reserved by generating sequences", MODEL, registry=r
        )
        self.generated_tokens = Counter("attnserve_generated_tokens", "Tokens generated", MODEL, registry=r)
        self.generation_step = Histogram(
            "attnserve_generation_step_seconds",
            "Time of one scheduler hand-off (prefill of new sequences, then decode steps for up to 5 ms)",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "attnserve_time_to_first_token_seconds",
            "From a sequence's arrival to its first token",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def connection_event(self, kind: str) -> None:
        if kind == "opened":
            self.open_connections.inc()
        elif kind == "closed":
            self.open_connections.dec()
        else:
            self.connection_events.labels(kind).inc()

    # -- the core's observer -------------------------------------------------------------------------

    def model(self, name: str, version: str) -> ModelObservers:
        return _ModelObservers(self, name, version)

    def model_state(self, name: str, version: str, state: str, resident_bytes: int) -> None:
        for s in STATES:
            self.model_states.labels(name, version, s).set(1 if s == state else 0)
        if state == "READY":
            self.model_resident.labels(name, version).set(resident_bytes)
        if not state:  # released: its series go, so that dashboards show only what is loaded
            self._forget(name, version)

    def _forget(self, name: str, version: str) -> None:
        for metric in (self.queue_wait, self.inference, self.batch_size, self.queue_depth, self.rejected):
            for labels in list(metric._metrics):  # noqa: SLF001 (prometheus_client has no public listing)
                if labels[:2] == (name, version):
                    metric.remove(*labels)
        for metric in (
            self.model_resident,
            self.kv_cache_capacity,
            self.active_sequences,
            self.waiting_sequences,
            self.kv_cache_reserved,
            self.generated_tokens,
            self.generation_step,
            self.time_to_first_token,
        ):
            if (name, version) in metric._metrics:  # noqa: SLF001
                metric.remove(name, version)
        for s in STATES:
            if (name, version, s) in self.model_states._metrics:  # noqa: SLF001
                self.model_states.remove(name, version, s)


class _ModelObservers(ModelObservers):
    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self._m = metrics
        self._labels = (name, version)

    def batches(self, endpoint: str) -> BatchObserver:
        if self._m.tracer is not None:
            return _TracedEndpointObserver(self._m, *self._labels, endpoint)
        return _EndpointObserver(self._m, *self._labels, endpoint)

    def generation(self) -> GenerationObserver:
        return _GenerationObserver(self._m, *self._labels)

    def rejected(self, endpoint: str, rows: int) -> None:
        self._m.rejected.labels(*self._labels, endpoint).inc(rows)

    def kv_capacity(self, tokens: int) -> None:
        self._m.kv_cache_capacity.labels(*self._labels).set(tokens)


class _EndpointObserver(BatchObserver):
    def __init__(self, metrics: Metrics, name: str, version: str, endpoint: str) -> None:
        self._depth = metrics.queue_depth.labels(name, version, endpoint)
        self._wait = metrics.queue_wait.labels(name, version, endpoint)
        self._inference = metrics.inference.labels(name, version, endpoint)
        self._size = metrics.batch_size.labels(name, version, endpoint)

    def queue_depth(self, rows: int) -> None:
        self._depth.set(rows)

    def batch_done(self, size: int, queue_waits: list[float], inference_s: float) -> None:
        self._size.observe(size)
        self._inference.observe(inference_s)
        for w in queue_waits:
            self._wait.observe(w)


class _TracedEndpointObserver(_EndpointObserver):
    """Each batch's inference as one span linked to every request in the batch (a batch serves many
    traces, so links; its parent is the first of them, so that a parent-based sampler keeps it with
    them), and on each request's span a `batch` event at the start of each batch that ran its rows,
    with how long they waited. (The wait was a child span of its own: a third of the spans a request
    made, and spans are most of what tracing costs the event loop and the exporter.)"""

    def __init__(self, metrics: Metrics, name: str, version: str, endpoint: str) -> None:
        super().__init__(metrics, name, version, endpoint)
        self._tracer = metrics.tracer
        self._attributes = {"attnserve.model": name, "attnserve.model_version": version, "attnserve.job": endpoint}

    def origin(self) -> Any:
        span = trace.get_current_span()
        # Only a sampled request's batch is traced: an unsampled one costs nothing here.
        return span if span.is_recording() else None

    def batch_traced(self, origins: list[Any], enqueued: list[float], started: float, finished: float) -> None:
        to_ns = time.time_ns() - time.perf_counter_ns()  # perf_counter() seconds -> epoch nanoseconds
        start_ns, end_ns = int(started * 1e9) + to_ns, int(finished * 1e9) + to_ns
        firsts: dict[Any, float] = {}  # each request's span, and when its first row in this batch was queued
        for span, queued in zip(origins, enqueued, strict=True):
            firsts[span] = min(queued, firsts.get(span, queued))
        for span, queued in firsts.items():
            if span.is_recording():  # not a request that has already left (its client gone)
                wait = {
                    "attnserve.queue_wait_ms": round((started - queued) * 1000, 3),
                    "attnserve.batch_rows": len(origins),
                }
                span.add_event("batch", wait, timestamp=start_ns)
        contexts = [span.get_span_context() for span in firsts]
        attributes = {**self._attributes, "attnserve.batch_rows": len(origins)}
        # In the trace of the first request it served, linked to every one: as a root it would meet the
        # sampler on its own, and a ratio sampler would drop most batches of the requests it kept.
        first = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        span = self._tracer.start_span(
            "inference",
            context=first,
            links=[trace.Link(c) for c in contexts],
            attributes=attributes,
            start_time=start_ns,
        )
        span.end(end_time=end_ns)


class _GenerationObserver(GenerationObserver):
    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self._active = metrics.active_sequences.labels(name, version)
        self._waiting = metrics.waiting_sequences.labels(name, version)
        self._reserved = metrics.kv_cache_reserved.labels(name, version)
        self._step = metrics.generation_step.labels(name, version)
        self._tokens = metrics.generated_tokens.labels(name, version)
        self._ttft = metrics.time_to_first_token.labels(name, version)

    def state(self, active: int, waiting: int, reserved_tokens: int) -> None:
        self._active.set(active)
        self._waiting.set(waiting)
        self._reserved.set(reserved_tokens)

    def step_done(self, prefilled: int, decode_widths: list[int], seconds: float) -> None:
        self._step.observe(seconds)
        self._tokens.inc(prefilled + sum(decode_widths))

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)
