"""Every setting of the service, read from environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "bundles" / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Model bundle directory to serve.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
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
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger ones get 413.")
    request_timeout_s: float = Field(30.0, gt=0, description="Longest wait for an answer; then 504.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
