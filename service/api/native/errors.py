"""attnserve's own error shape: {"error": {"type", "message", "details"?}}, and its status codes."""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.api.plugin import RETRY_AFTER, core_problem
from service.api.problems import message_of, summary
from service.api.responses import error_response as plain_error

log = logging.getLogger(__name__)

# A core error's class -> the native status and error type.
NATIVE_STATUS = {
    "invalid": (422, "invalid_input"),
    "not_found": (404, "model_not_found"),
    "overloaded": (503, "overloaded"),
    "draining": (503, "draining"),
    "timeout": (504, "timeout"),
}


def error_response(exc: BaseException) -> JSONResponse:
    """The answer for an exception raised while answering a native request."""
    if isinstance(exc, RequestValidationError):
        problems = exc.errors()
        invalid = [e for e in problems if e.get("type") == "json_invalid"]
        if invalid:
            why = invalid[0].get("ctx", {}).get("error", "")
            return plain_error(400, "malformed_json", f"the request body is not valid JSON: {why}".rstrip(": "))
        details = [{"loc": list(e.get("loc", ())), "msg": message_of(e), "type": e.get("type", "")} for e in problems]
        return plain_error(422, "invalid_request", summary(problems), details)
    if isinstance(exc, HTTPException):
        return plain_error(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))
    problem = core_problem(exc)
    if problem is not None:
        status, kind = NATIVE_STATUS[problem.kind]
        return plain_error(status, kind, problem.message, headers=RETRY_AFTER if problem.retry else None)
    log.error("unhandled error in a native route", exc_info=exc)
    return plain_error(500, "internal_error", "internal error; see the server log")


def render_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return plain_error(status, code, message, headers=headers)
