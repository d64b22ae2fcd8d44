"""What the core needs to know, and how it reports: its own small config and its observers.

The core imports nothing from the server floor (settings, metrics, HTTP): the server builds a
CoreConfig from its settings and hands in a CoreObservers that turns the core's events into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.batcher import BatchObserver
from service.core.generation import GenerationObserver


@dataclass(frozen=True)
class CoreConfig:
    """Limits and batching for every model the core serves (each model gets its own batchers)."""

    device: str = "cpu"  # "auto", "cuda" or "cpu"
    intra_op_threads: int = 0
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    batch_max_padding: float = 0.1
    max_queue_rows: int = 256
    max_texts_per_request: int = 64
    max_attention_values: int = 8_000_000
    max_attention_compute: int = 16_000_000
    max_active_sequences: int = 32
    kv_cache_tokens: int = 0  # 0: max_active_sequences x the model's context
    max_waiting_sequences: int = 256
    prefill_tokens_per_step: int = 512
    request_timeout_s: float = 30.0


class ModelObservers:
    """One model version's hooks for metrics; the default does nothing."""

    def batches(self, endpoint: str) -> BatchObserver:
        return BatchObserver()

    def generation(self) -> GenerationObserver:
        return GenerationObserver()

    def rejected(self, endpoint: str, rows: int) -> None:
        """Rows refused because a queue was full."""

    def kv_capacity(self, tokens: int) -> None:
        """The KV-cache budget in tokens, once known."""


class CoreObservers:
    """The registry's hooks: one ModelObservers per model version, and the models' states."""

    def model(self, name: str, version: str) -> ModelObservers:
        return ModelObservers()

    def model_state(self, name: str, version: str, state: str, resident_bytes: int) -> None:
        """A model version's state (READY, LOADING, UNLOADING, UNAVAILABLE, or "" once gone)."""
