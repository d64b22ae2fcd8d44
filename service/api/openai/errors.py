"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with OpenAI's status codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.api.plugin import RETRY_AFTER, core_problem
from service.api.problems import field_of, summary

log = logging.getLogger(__name__)


# A core error's class -> OpenAI's status, error type and code.
OPENAI_STATUS = {
    "invalid": (400, "invalid_request_error", None),
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "overloaded": (503, "server_error", "overloaded"),
    "draining": (503, "server_error", "draining"),
    "timeout": (504, "server_error", "timeout"),
}


def _body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """Status, body and headers for an exception raised while answering an OpenAI request."""
    if isinstance(exc, RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            why = first.get("ctx", {}).get("error", "")
            message = f"the request body is not valid JSON: {why}".rstrip(": ")
            return 400, _body(message, "invalid_request_error", code="malformed_json"), None
        return 400, _body(summary(problems), "invalid_request_error", field_of(first).split(".")[0] or None), None
    if isinstance(exc, HTTPException):  # FastAPI's own, e.g. a body that is not UTF-8
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return exc.status_code, _body(str(exc.detail), kind), getattr(exc, "headers", None)
    problem = core_problem(exc)
    if problem is not None:
        status, kind, code = OPENAI_STATUS[problem.kind]
        param = "model" if problem.kind == "not_found" else problem.field
        return status, _body(problem.message, kind, param, code), RETRY_AFTER if problem.retry else None
    log.error("unhandled error in an OpenAI route", exc_info=exc)
    return 500, _body("internal error; see the server log", "server_error"), None


def plain_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error that no exception stands for (the middleware's: draining, a body over the limit)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(_body(message, kind, None, code), status_code=status, headers=headers)


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = error_body(exc)
    return JSONResponse(body, status_code=status, headers=headers)
