"""attnserve's own error envelope, {"error": {"type", "message", "details"?}}, written here only: the
native protocol's errors, the server's own routes (readiness) and the connection layer's canned
answers (408, 431, 503) take this shape. OpenAI's and v2's errors have theirs, written by their packages."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def envelope(kind: str, message: str, details: list | None = None) -> dict:
    body: dict = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int, kind: str, message: str, details: list | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(envelope(kind, message, details), status_code=status, headers=headers)
