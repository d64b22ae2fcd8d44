"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with OpenAI's status codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.core.errors import DrainingError, InferenceTimeoutError, InputError, QueueFullError
from service.problems import field_of, summary

log = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    """The request names a model this server does not serve (404)."""


def _body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """Status, body and headers for an exception raised while answering an OpenAI request."""
    retry = {"Retry-After": "1"}
    if isinstance(exc, RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            why = first.get("ctx", {}).get("error", "")
            return 400, _body(f"the request body is not valid JSON: {why}".rstrip(": "), "invalid_request_error"), None
        return 400, _body(summary(problems), "invalid_request_error", field_of(first).split(".")[0] or None), None
    if isinstance(exc, HTTPException):  # FastAPI's own, e.g. a body that is not UTF-8
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return exc.status_code, _body(str(exc.detail), kind), getattr(exc, "headers", None)
    if isinstance(exc, InputError):
        return 400, _body(str(exc), "invalid_request_error"), None
    if isinstance(exc, ModelNotFoundError):
        return 404, _body(str(exc), "invalid_request_error", "model", "model_not_found"), None
    if isinstance(exc, QueueFullError):
        return 503, _body(str(exc), "server_error", None, "overloaded"), retry
    if isinstance(exc, DrainingError):
        return 503, _body(str(exc), "server_error", None, "draining"), retry
    if isinstance(exc, InferenceTimeoutError):
        return 504, _body(str(exc), "server_error", None, "timeout"), None
    log.error("unhandled error in an OpenAI route", exc_info=exc)
    return 500, _body("internal error; see the server log", "server_error"), None


def plain_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error that no exception stands for (the middleware's: draining, a body over the limit)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(_body(message, kind, None, code), status_code=status, headers=headers)


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = error_body(exc)
    return JSONResponse(body, status_code=status, headers=headers)
