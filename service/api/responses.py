"""attnserve's own error envelope, {"error": {"type", "message", "details"?}}: the native protocol's
errors and the answers of the server's own routes (readiness) take this shape. OpenAI's and v2's
errors have theirs, written by their packages."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(
    status: int, kind: str, message: str, details: list | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)
