"""Logging for the whole process: text for a terminal, or one JSON object per line for a log pipeline.

Every logger goes through the root handler set here, uvicorn's included (the server starts uvicorn
without its own logging config). With tracing on, each record of a request carries its trace_id and
span_id, so that a log line leads to its trace.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
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


# Line breaks, NUL and the other control characters. A request path, a header or a directory name
# can hold them; written as they are, "%0A2026-12-05 ... ERROR" would start a forged log line.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape_controls(text: str) -> str:
    """Each control character as its Python escape (\\n, \\x00): one record stays one line."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """The usual one-line text, with the access fields written out after the message. What a record
    carries is escaped (escape_controls); only a traceback, appended after the line, spans lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = escape_controls(super().formatMessage(record))
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        return line + "".join(f" {k}={escape_controls(str(v))}" for k, v in extra.items())


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
