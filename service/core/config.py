"""What the core needs to know, and how it reports: its own small config and its observers.

The core imports nothing from the server floor (settings, metrics, HTTP): the server's settings are
a CoreConfig, and the server hands in a CoreObservers that turns the core's events into metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.batcher import BatchObserver
from service.core.generation import GenerationObserver


class CoreConfig(BaseModel):
    """Limits and batching for every model the core serves (each model gets its own batchers).

    Declared once, here: the server's Settings is a CoreConfig (it inherits these fields, read from
    environment variables like the rest), and hands itself to the registry."""

    model_config = ConfigDict(frozen=True)

    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: CUDA when a GPU works, else CPU; cuda: fail at start without a GPU."
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per inference; 0 means one per core.")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most rows (texts) in one ONNX Runtime call.")
    max_batch_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest wait for more rows after the first row of a batch arrives."
    )
    batch_max_padding: float = Field(
        0.1,
        ge=0,
        description="Rows of a batch run in length groups whose padding stays under this fraction of "
        "their real tokens; large values pad the whole batch to its longest row.",
    )
    max_queue_rows: int = Field(256, ge=1, description="Rows waiting per endpoint before new requests get 503.")
    max_texts_per_request: int = Field(64, ge=1, description="Most inputs in one request.")
    max_attention_values: int = Field(
        8_000_000,
        ge=1,
        description="Most attention weights in one response (about 10 bytes of JSON each); ask for fewer "
        "layers, heads or inputs beyond it.",
    )
    max_attention_compute: int = Field(
        16_000_000,
        ge=1,
        description="Attention weights held at once for one request: the maps it asks for plus one layer's "
        "maps while that layer runs, at every query and key of every input; beyond, 422. A batch of "
        "attention requests closes before its rows pass it.",
    )
    max_active_sequences: int = Field(
        32, ge=1, le=1024, description="Most sequences generating at once (one decode step runs them all)."
    )
    kv_cache_tokens: int = Field(
        0,
        ge=0,
        description="KV-cache budget in tokens, shared by the generating sequences (each reserves prompt + "
        "max_tokens); 0 means MAX_ACTIVE_SEQUENCES x the context length.",
    )
    max_waiting_sequences: int = Field(
        256, ge=1, description="Sequences waiting to start generating before new requests get 503."
    )
    prefill_tokens_per_step: int = Field(
        512,
        ge=1,
        description="Most prompt tokens that start generating in one step (a longer prompt still starts, "
        "alone): running sequences wait for at most one such prefill between their tokens.",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Longest wait for an answer; then 504.")


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
