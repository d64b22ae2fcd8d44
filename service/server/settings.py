"""Every setting of the service, read from environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.config import CoreConfig
from service.core.repository import scan

# The committed repository: the Shakespeare model and the lectures' toy model.
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "bundles"
DEFAULT_MODEL_NAME = "attnserve-shakespeare"


class Settings(BaseSettings, CoreConfig):
    """The core's limits and batching (CoreConfig, declared there) and the server's own settings."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    model_repository: Path = Field(
        DEFAULT_REPOSITORY,
        description="Model repository: each <dir>/<name>/<version>/ holding a bundle is that version of the "
        "model <name>; the highest version of each serves.",
    )
    model_dir: Path | None = Field(
        None, description="One bundle directory to serve instead (a repository of one, named by its manifest)."
    )
    default_model: str = Field(
        DEFAULT_MODEL_NAME,
        description="The model a request gets when it names none; when it is not loaded and only one model "
        "is, that one. Readiness means this model is loaded.",
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="none: what the repository holds at start serves; explicit: also load, reload and unload "
        "through the repository API; poll: the repository is read again every REPOSITORY_POLL_S.",
    )
    repository_poll_s: float = Field(10.0, gt=0, description="How often MODEL_CONTROL_MODE=poll reads the repository.")
    max_loaded_models: int = Field(
        0, ge=0, description="Most models loaded at once (0: no limit); a load past it is refused."
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port for KServe v2 over gRPC (Triton's 8001), on HOST beside the HTTP port; 0 turns it off.",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes on the port, each a whole server with its own model copy, batcher "
        "and limits (the limits below are per worker); connections are spread across them.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger ones get 413.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line, from every logger."
    )
    access_log: bool = Field(True, description="One log line per request (id, route, status, time, model, rows...).")

    # -- the connection layer (service/server/connection.py) ---------------------------------------
    max_connections: int = Field(
        1024, ge=1, description="Open connections at most; more are answered 503 and closed at once."
    )
    max_header_bytes: int = Field(16384, ge=1024, description="Request line and headers, in bytes; larger get 431.")
    max_headers: int = Field(100, ge=8, description="Header fields per request; more get 431.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time a connection has to send a request's headers; then 408 (or a close when idle)."
    )
    body_timeout_s: float = Field(30.0, gt=0, description="Time a request has to send its whole body; then 408.")
    write_timeout_s: float = Field(
        30.0, gt=0, description="Time a client may go without reading its answer; then it is dropped."
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="Idle time before a kept-alive connection is closed.")
    max_inflight_bytes: int = Field(
        1_000_000_000,
        ge=1_000_000,
        description="Bytes of large answers (attention) being built or not yet read by their clients; beyond, 503.",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, readiness turns 503 at once but requests are served for this long before the "
        "listener closes (a Kubernetes pre-stop window); then in-flight work finishes.",
    )

    # -- access -----------------------------------------------------------------------------------
    api_keys: str = Field(
        "", description="Comma-separated API keys; when set, requests need 'Authorization: Bearer KEY'."
    )
    api_keys_file: Path | None = Field(None, description="A file of API keys, one per line, added to API_KEYS.")
    admin_api_keys: str = Field(
        "",
        description="Comma-separated keys for the repository's load and unload routes; with API_KEYS set, only "
        "these keys may change what the server serves.",
    )
    metrics_need_key: bool = Field(True, description="With API keys set, /metrics needs one too.")
    docs_need_key: bool = Field(False, description="With API keys set, /docs and /openapi.json need one too.")
    explorer_need_key: bool = Field(False, description="With API keys set, the explorer's page needs one too.")
    docs_enabled: bool = Field(True, description="Serve /docs and /openapi.json.")
    cors_allow_origins: str = Field(
        "", description="Comma-separated origins allowed to call the API from a browser (CORS); none by default."
    )

    def api_key_list(self) -> list[str]:
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines() if line.strip()]
        return keys

    def admin_key_list(self) -> list[str]:
        return [k.strip() for k in self.admin_api_keys.split(",") if k.strip()]

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_allow_origins.split(",") if o.strip()]

    @field_validator("api_keys_file", "model_dir", mode="before")
    @classmethod
    def _unset_when_empty(cls, v: object) -> object:
        return None if v == "" else v  # compose passes every setting, unset ones as ""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # A request larger than the queue could never be queued: it would get "retry later" for ever.
        if self.max_texts_per_request > self.max_queue_rows:
            raise ValueError(
                f"MAX_TEXTS_PER_REQUEST={self.max_texts_per_request} is larger than MAX_QUEUE_ROWS="
                f"{self.max_queue_rows}: such requests could never be queued"
            )
        if self.workers > 1 and self.model_control_mode == "explicit":
            raise ValueError(
                f"WORKERS={self.workers} with MODEL_CONTROL_MODE=explicit: a load or unload call would reach "
                "one worker only; use MODEL_CONTROL_MODE=poll (every worker reads the repository) or none"
            )
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"API_KEYS_FILE={self.api_keys_file} is not a file")
        return self


def repository_problem(settings: Settings) -> str | None:
    """Why these settings could serve nothing, before anything loads; None when they can. A repository
    that is not a directory never serves; with MODEL_CONTROL_MODE=none an empty one never will, nor
    will a DEFAULT_MODEL that it does not hold (the one model of a repository of one is the default)."""
    if settings.model_dir is not None:
        return None
    repository = settings.model_repository
    if not repository.is_dir():
        return f"MODEL_REPOSITORY={repository} is not a directory"
    if settings.model_control_mode != "none":
        return None  # models may come later: the server starts, not ready until the default model loads
    names = sorted(scan(repository))
    if not names:
        return f"MODEL_REPOSITORY={repository} holds no model (<name>/<version>/manifest.json) to serve"
    if settings.default_model not in names and len(names) > 1:
        return (
            f"DEFAULT_MODEL={settings.default_model} is not a model of MODEL_REPOSITORY={repository} "
            f"({', '.join(names)}); name one of them"
        )
    return None
