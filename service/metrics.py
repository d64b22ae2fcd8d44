"""Prometheus metrics, in a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from service.core.batcher import BatchObserver
from service.core.generation import GenerationObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "attnserve_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "attnserve_request_latency_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "attnserve_queue_wait_seconds",
            "Time a row waited before its batch ran",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "attnserve_inference_seconds",
            "ONNX Runtime time per batch",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "attnserve_batch_size", "Rows per batch", ["endpoint"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("attnserve_queue_depth", "Rows waiting for a batch", ["endpoint"], registry=r)
        self.rejected = Counter(
            "attnserve_rejected_rows", "Rows refused because the queue was full", ["endpoint"], registry=r
        )
        self.model_info = Info("attnserve_model", "The model being served", registry=r)
        self.connection_events = Counter(
            "attnserve_connection_events",
            "Connections refused or closed by a limit: refused, header_timeout, body_timeout, too_large, write_timeout",
            ["event"],
            registry=r,
        )
        self.open_connections = Gauge("attnserve_open_connections", "Open client connections", registry=r)
        self.queue_capacity = Gauge(
            "attnserve_queue_capacity_rows", "Rows each endpoint's queue holds at most (MAX_QUEUE_ROWS)", registry=r
        )
        self.kv_cache_capacity = Gauge(
            "attnserve_kv_cache_capacity_tokens", "KV-cache budget in tokens (KV_CACHE_TOKENS)", registry=r
        )
        self.inflight_bytes = Gauge(
            "attnserve_inflight_response_bytes",
            "Bytes of large answers built or not yet read (MAX_INFLIGHT_BYTES)",
            registry=r,
        )
        self.active_sequences = Gauge(
            "attnserve_active_sequences", "Sequences generating (in the decode batch)", registry=r
        )
        self.waiting_sequences = Gauge(
            "attnserve_waiting_sequences", "Sequences waiting to start generating", registry=r
        )
        self.kv_cache_reserved = Gauge(
            "attnserve_kv_cache_reserved_tokens", "KV-cache tokens reserved by generating sequences", registry=r
        )
        self.generated_tokens = Counter("attnserve_generated_tokens", "Tokens generated", registry=r)
        self.generation_step = Histogram(
            "attnserve_generation_step_seconds",
            "Time of one scheduler hand-off (prefill of new sequences, then decode steps for up to 5 ms)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "attnserve_time_to_first_token_seconds",
            "From a sequence's arrival to its first token",
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

    def observer(self, endpoint: str) -> BatchObserver:
        return _EndpointObserver(self, endpoint)

    def generation_observer(self) -> GenerationObserver:
        return _GenerationObserver(self)


class _EndpointObserver(BatchObserver):
    def __init__(self, metrics: Metrics, endpoint: str) -> None:
        self._depth = metrics.queue_depth.labels(endpoint)
        self._wait = metrics.queue_wait.labels(endpoint)
        self._inference = metrics.inference.labels(endpoint)
        self._size = metrics.batch_size.labels(endpoint)

    def queue_depth(self, rows: int) -> None:
        self._depth.set(rows)

    def batch_done(self, size: int, queue_waits: list[float], inference_s: float) -> None:
        self._size.observe(size)
        self._inference.observe(inference_s)
        for w in queue_waits:
            self._wait.observe(w)


class _GenerationObserver(GenerationObserver):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def state(self, active: int, waiting: int, reserved_tokens: int) -> None:
        self._m.active_sequences.set(active)
        self._m.waiting_sequences.set(waiting)
        self._m.kv_cache_reserved.set(reserved_tokens)

    def step_done(self, prefilled: int, decode_widths: list[int], seconds: float) -> None:
        self._m.generation_step.observe(seconds)
        self._m.generated_tokens.inc(prefilled + sum(decode_widths))

    def first_token(self, seconds: float) -> None:
        self._m.time_to_first_token.observe(seconds)
