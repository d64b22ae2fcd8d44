"""Logging for the whole process: text for a terminal, or one JSON object per line for a log pipeline.

Every logger goes through the root handler set here, uvicorn's included (the server starts uvicorn
without its own logging config). With tracing on, each record of a request carries its trace_id and
span_id, so that a log line leads to its trace.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

ACCESS = logging.getLogger("attnserve.access")
# Attributes every LogRecord has; anything else on a record (logging's `extra=`) is a field of its own.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", ...extra fields, "exception"?} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The usual one-line text, with the access fields written out after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        return line + ("".join(f" {k}={v}" for k, v in extra.items()) if extra else "")


def setup_logging(level: str, fmt: str) -> None:
    """One handler on the root logger; uvicorn's loggers hand their records to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
